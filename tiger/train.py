"""Train TIGER: ``python -m tiger.train [experiment=<name>] [key=value ...]`` (Hydra; ``-m`` sweeps).

With no arguments it runs the embedded default: synthetic scenes, tiny experts, the real MiniLM
instructions, a few minutes on a CPU; it ends with the validation table, the checkpoint path, the
expert-usage table and a routing figure.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from tiger.callbacks import AtomicCheckpointIO, BestCheckpoint, LastCheckpoint
from tiger.checkpoint import check_resumable
from tiger.options import OptionError
from tiger.report import write_report
from tiger.runs import refuse_existing_run, resolve_checkpoint


def _callback(trainer: L.Trainer, kind: type) -> Any:
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


def user_key(cfg: DictConfig, key: str) -> str:
    """The config key a user sets for ``key``: ``model.net.grid`` -> ``data.grid`` (``${data.grid}``)."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        parent = OmegaConf.select(cfg, ".".join(parts[: end - 1])) if end > 1 else cfg
        name = parts[end - 1]
        if isinstance(parent, DictConfig) and name in parent and OmegaConf.is_interpolation(parent, name):
            raw = OmegaConf.to_container(parent, resolve=False)[name]
            source = re.fullmatch(r"\$\{([\w.]+)\}", str(raw))
            if source:
                return user_key(cfg, ".".join([source.group(1), *parts[end:]]))
    return key


def instantiate_option(cfg: DictConfig, key: str) -> Any:
    """``hydra.utils.instantiate`` of ``cfg.<key>``; an option out of range names the key the user sets.

    Raises:
        OptionError: e.g. ``data.grid must be 2 integers (H, W) >= 1, got [4.5, 5]: 4.5 is not``.
    """
    try:
        return hydra.utils.instantiate(OmegaConf.select(cfg, key), _convert_="all")
    except InstantiationException as error:
        if isinstance(error.__cause__, OptionError):
            cause = error.__cause__
            raise OptionError(user_key(cfg, f"{key}.{cause.key}"), cause.problem) from None
        raise


def resume_checkpoint(path: str | None) -> str | None:
    """The checkpoint ``ckpt_path=`` names (a file, or the newest complete one of a run folder, see
    :func:`tiger.runs.resolve_checkpoint`), checked to be a TIGER checkpoint before Lightning reads it."""
    resolved = resolve_checkpoint(path)
    if resolved is not None:
        check_resumable(resolved)
    return resolved


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, validate the best checkpoint, write results.json and the routing report; return the results.

    ``results["checkpoint"]`` is the best checkpoint (else ``last.ckpt``), ``results["monitor"]`` the
    metric that picked it.
    """
    threads = cfg.get("torch_threads")
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"torch_threads must be a positive integer or null, got {threads!r}")
        torch.set_num_threads(threads)
    output_dir = Path(cfg.paths.output_dir)
    # Hydra's RunFolderGuard refused an earlier run's folder before Hydra wrote .hydra/ and the log
    refuse_existing_run(output_dir, "hydra.run.dir", ignore=(".hydra",))
    L.seed_everything(cfg.seed, workers=True)
    ckpt_path = resume_checkpoint(cfg.get("ckpt_path"))

    datamodule = instantiate_option(cfg, "data.datamodule")
    datamodule.setup("fit")  # fail at once on missing data, before building the experts
    module = instantiate_option(cfg, "model")
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    plugins = [AtomicCheckpointIO()]
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers, plugins=plugins
    )
    if trainer.is_global_zero:
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    best, last = _callback(trainer, BestCheckpoint), _callback(trainer, LastCheckpoint)
    checkpoint = (best.best_model_path if best else "") or (last.last_model_path if last else "")
    results: dict[str, Any] = {"checkpoint": checkpoint, "output_dir": str(output_dir)}
    if best is not None:
        results["monitor"] = best.monitor
        if best.best_model_score is not None:
            results["best_score"] = float(best.best_model_score)
    if cfg.get("final_report", True):
        trainer.validate(module, datamodule=datamodule, ckpt_path=checkpoint or None, weights_only=True)
        results["metrics"] = module.last_val_results
        if trainer.is_global_zero:
            results.update(write_report(module, datamodule, output_dir))
    if trainer.is_global_zero:
        (output_dir / "results.json").write_text(json.dumps(results, indent=2))
        print(f"\nCheckpoint: {checkpoint}\nResults: {output_dir / 'results.json'}")
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train; return the best checkpoint's monitored validation metric (for Hydra's sweepers), or None."""
    return train(cfg).get("best_score")


if __name__ == "__main__":
    main()
