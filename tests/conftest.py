"""Shared, generic fixtures (keep module-specific ones in their test files)."""

from __future__ import annotations

import os
from pathlib import Path

# Tiny test models gain nothing from intra-op threads, and OpenMP spin-waiting makes them up
# to 10x slower on a busy 2-core machine; subprocesses inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared folder (../shared next to the repository): test data, docs."""
    return Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def cifar10_first100_npz(shared_dir: Path) -> Path:
    """The first 100 CIFAR-10 test images (exact pixels); skip where the shared folder is absent."""
    path = shared_dir / "data" / "cifar10_test_first100.npz"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture
def tiny_cifar_npz(tmp_path: Path) -> Path:
    """A random CIFAR-shaped npz: images uint8 (8, 32, 32, 3) NHWC, labels int64 (8,) = 0..7."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(8, dtype=np.int64)
    path = tmp_path / "tiny_cifar.npz"
    np.savez(path, images=images, labels=labels)
    return path
