"""Shared fixtures: tiny random-init timm ViTs and a few real Fashion-MNIST images. Never downloads."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):  # one torch thread per worker: the workers share the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

from .helpers import save_tiny_fashion_model, tiny_vit  # noqa: E402


@pytest.fixture
def tiny_model() -> torch.nn.Module:
    return tiny_vit()


@pytest.fixture(scope="session")
def fashion_dir() -> str:
    from vitprune.data import FASHION_MNIST_DIR

    if not os.path.isdir(FASHION_MNIST_DIR):
        pytest.skip("Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
    return FASHION_MNIST_DIR


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VITPRUNE_CACHE", str(tmp_path_factory.getbasetemp() / "vitprune-cache"))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    """A tiny random 28x28 grayscale 10-class ViT saved as a vitprune checkpoint folder."""
    return str(save_tiny_fashion_model(tmp_path_factory.mktemp("m") / "tiny"))
