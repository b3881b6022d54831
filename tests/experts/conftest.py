"""Shared fixtures for the expert tests: seeded images and an offline, empty Hugging Face hub."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch


@pytest.fixture
def images() -> torch.Tensor:
    """(2, 3, 40, 50) RGB in [0, 1]."""
    return torch.rand(2, 3, 40, 50, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def hub_offline(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """No network and an empty cache, whatever the environment says (the hub reads its constants once)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
