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

from tiger.analysis.callbacks import RoutingMonitor
from tiger.analysis.report import split_metrics, write_report
from tiger.options import OptionError
from tiger.training.callbacks import AtomicCheckpointIO, BestCheckpoint, LastCheckpoint
from tiger.training.console import quiet_intended_messages
from tiger.training.preemption import fit
from tiger.training.preflight import check_trained, resume_checkpoint, start_run

__all__ = ["checkpoint_results", "instantiate_option", "main", "resume_checkpoint", "train", "user_key"]


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

    The one place that names a config key: objects raise :class:`tiger.options.OptionError` with keys
    relative to themselves, Hydra says which node they were built from, and :func:`user_key` follows
    interpolations to where the user sets the value.

    Raises:
        OptionError: e.g. ``data.grid must be 2 integers (H, W) >= 1, got [4.5, 5]: 4.5 is not``.
    """
    try:
        return hydra.utils.instantiate(OmegaConf.select(cfg, key), _convert_="all")
    except InstantiationException as error:
        if isinstance(error.__cause__, OptionError):
            cause = error.__cause__
            # the node whose target raised (Hydra names it on the message's last line), e.g. model.net
            node = re.search(r"^full_key: (\S+)$", str(error), flags=re.MULTILINE)
            raise OptionError(
                user_key(cfg, f"{node.group(1) if node else key}.{cause.key}"), cause.problem
            ) from None
        raise


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, validate the best checkpoint, write results.json and the routing report; return the results.

    ``results["checkpoint"]`` is the best checkpoint (else ``last.ckpt``), ``results["monitor"]`` the
    metric that picked it.
    """
    quiet_intended_messages()
    set_threads(cfg.get("torch_threads"))
    output_dir = Path(cfg.paths.output_dir)
    # the folder claimed (or a requeued SLURM job's own run continued), checked before anything is built
    ckpt_path = start_run(output_dir, cfg.trainer, cfg.get("ckpt_path"))
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate_option(cfg, "data.datamodule")
    datamodule.setup("fit")  # fail at once on missing data, before building the experts
    module = instantiate_option(cfg, "model")
    callbacks = [instantiate_option(cfg, f"callbacks.{name}") for name in configured(cfg, "callbacks")]
    loggers = [instantiate_option(cfg, f"logger.{name}") for name in configured(cfg, "logger")]
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()]
    )
    if trainer.is_global_zero:
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    fit(trainer, module, datamodule, ckpt_path)  # a stop signal: last.ckpt, the resume command, exit 128+n
    check_trained(trainer)
    results = checkpoint_results(trainer, output_dir)
    if cfg.get("final_report", True):
        (logged,) = trainer.validate(  # not verbose: the report below prints the results table
            module,
            datamodule=datamodule,
            ckpt_path=results["checkpoint"] or None,
            weights_only=True,
            verbose=False,
        )
        monitor = _callback(trainer, RoutingMonitor)
        results["metrics"] = split_metrics(logged, module.net.task_names)
        results["routing"] = monitor.last if monitor else {}
        results["routing_history"] = monitor.history if monitor else []
        if trainer.is_global_zero:
            images = next(iter(datamodule.val_dataloader()))["image"]
            results.update(
                write_report(
                    module.net, module.dataset, results["metrics"], results["routing"], images, output_dir
                )
            )
    if trainer.is_global_zero:
        (output_dir / "results.json").write_text(json.dumps(results, indent=2))
        print(f"\nCheckpoint: {results['checkpoint']}\nResults: {output_dir / 'results.json'}")
    return results


def configured(cfg: DictConfig, group: str) -> list[str]:
    """The entries of a group of callbacks or loggers that are set (``callbacks.best_checkpoint: null``
    switches one off)."""
    return [name for name, node in (cfg.get(group) or {}).items() if node is not None]


def checkpoint_results(trainer: L.Trainer, output_dir: Path) -> dict[str, Any]:
    """``{"checkpoint": the best checkpoint (else last.ckpt), "output_dir", "monitor", "best_score"}``."""
    best, last = _callback(trainer, BestCheckpoint), _callback(trainer, LastCheckpoint)
    checkpoint = (best.best_model_path if best else "") or (last.last_model_path if last else "")
    results: dict[str, Any] = {"checkpoint": checkpoint, "output_dir": str(output_dir)}
    if best is not None:
        results["monitor"] = best.monitor
        if best.best_model_score is not None:
            results["best_score"] = float(best.best_model_score)
    return results


def set_threads(threads: Any) -> None:
    """``torch_threads``: CPU threads of torch in this process (None: torch's default)."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise OptionError("torch_threads", f"must be a positive integer or null, got {threads!r}")
        torch.set_num_threads(threads)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train; return the best checkpoint's monitored validation metric (for Hydra's sweepers), or None."""
    return train(cfg).get("best_score")


if __name__ == "__main__":
    main()
