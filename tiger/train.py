"""Train TIGER: ``python -m tiger.train [experiment=<name>] [key=value ...]`` (Hydra; ``-m`` sweeps).

With no arguments it runs the embedded default: synthetic scenes, tiny experts, the real MiniLM
instructions, a few minutes on a CPU; it ends with the validation table, the checkpoint path, the
expert-usage table and a routing figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from tiger.checkpoint import check_resumable
from tiger.report import write_report


def resolve_checkpoint(path: str | None) -> str | None:
    """A checkpoint file, or an earlier run's directory (-> its checkpoints/last.ckpt); None stays None."""
    if path is None:
        return None
    candidate = Path(path)
    if candidate.is_dir():
        candidate = candidate / "checkpoints" / "last.ckpt"
    if not candidate.is_file():
        raise FileNotFoundError(f"ckpt_path={path!r}: no checkpoint at {candidate}")
    return str(check_resumable(candidate))  # a clear error before Lightning reads the file


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, validate the best checkpoint, write results.json and the routing report; return the results."""
    threads = cfg.get("torch_threads")
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"torch_threads must be a positive integer or null, got {threads!r}")
        torch.set_num_threads(threads)
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_checkpoint(cfg.get("ckpt_path"))

    datamodule = hydra.utils.instantiate(cfg.data.datamodule, _convert_="all")
    datamodule.setup("fit")  # fail at once on missing data, before building the experts
    module = hydra.utils.instantiate(cfg.model, _convert_="all")
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    if trainer.is_global_zero:
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    checkpoint = trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
    results: dict[str, Any] = {"checkpoint": checkpoint, "output_dir": str(output_dir)}
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
    results = train(cfg)
    monitor = cfg.callbacks.model_checkpoint.monitor if cfg.get("callbacks") else None
    if monitor and "metrics" in results:
        _, task, name = monitor.split("/")
        return results["metrics"].get(task, {}).get(name)
    return None


if __name__ == "__main__":
    main()
