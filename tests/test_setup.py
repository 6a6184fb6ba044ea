"""`make data` (scripts/ensure_fashion_mnist.sh): finds Fashion-MNIST where marginbench.data
finds it, installs Debian's package when it can, and otherwise stops with one line. apt-get
and the Debian folder are stand-ins here: the real package is never touched."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from marginbench.config import DatasetConfig
from marginbench.data import load_eval_set

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "ensure_fashion_mnist.sh"
FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte")


def _write_idx(folder: Path, gz: bool = True) -> None:
    """Tiny but valid IDX files (3 images) under Fashion-MNIST's file names."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        array = np.zeros((3, 28, 28), np.uint8) if "images" in name else np.arange(3, dtype=np.uint8)
        raw = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + array.tobytes()
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as fh:
                fh.write(raw)
        else:
            (folder / name).write_bytes(raw)


def _ensure(tmp_path: Path, apt: str = "false", debian: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "FASHION_MNIST_DEBIAN": str(debian or tmp_path / "debian"),
           "APT_GET": apt}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("folder", "gz"), [("fashion-mnist", True), ("fashion_mnist", True), ("FashionMNIST/raw", False)])
def test_a_copy_in_the_data_dir_is_enough_and_marginbench_reads_it(tmp_path, folder, gz):
    _write_idx(tmp_path / "data" / folder, gz)
    result = _ensure(tmp_path)  # apt-get would fail: it must not be called
    assert result.returncode == 0 and result.stdout == result.stderr == ""
    # the same folder is one marginbench.data reads
    data = load_eval_set(DatasetConfig(name="fashion_mnist", download=False), tmp_path / "data", None, None)
    assert len(data) == 3


def test_one_split_is_not_enough(tmp_path):
    _write_idx(tmp_path / "data" / "fashion-mnist")
    (tmp_path / "data" / "fashion-mnist" / "train-labels-idx1-ubyte.gz").unlink()
    assert _ensure(tmp_path).returncode == 1


def test_cannot_install_stops_with_one_line(tmp_path):
    result = _ensure(tmp_path, apt="false")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Fashion-MNIST missing")
    assert "sudo apt-get install dataset-fashion-mnist" in lines[0] and str(tmp_path / "data" / "fashion-mnist") in lines[0]


@pytest.mark.skipif(os.geteuid() != 0 and shutil.which("sudo") is None, reason="installs as root or with sudo -n")
def test_installs_with_apt_get_when_missing(tmp_path):
    """A stand-in apt-get that fails until `update` ran (a bare machine's empty package
    lists), then 'installs' the files into the stand-in Debian folder."""
    debian = tmp_path / "debian"
    fake = tmp_path / "apt-get"
    fake.write_text(
        "#!/bin/bash\n"
        f"case \" $* \" in *' update '*) touch {tmp_path}/updated; exit 0;; esac\n"
        f"[ -f {tmp_path}/updated ] || exit 100\n"
        f"mkdir -p {debian} && cp {tmp_path}/pkg/* {debian}/\n"
    )
    fake.chmod(0o755)
    _write_idx(tmp_path / "pkg")
    result = _ensure(tmp_path, apt=str(fake), debian=debian)
    if result.returncode and "no passwordless sudo" in result.stderr:
        pytest.skip("not root and sudo asks for a password")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in debian.iterdir()) == sorted(f"{n}.gz" for n in FILES)


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_data_passes_its_variables(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL")}
    args = ["make", "--no-print-directory", "-C", str(REPO), "data", f"DATA_DIR={tmp_path / 'data'}",
            f"FASHION_MNIST_DEBIAN={tmp_path / 'debian'}", "APT_GET=false"]
    failed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0 and "Fashion-MNIST missing" in failed.stderr
    _write_idx(tmp_path / "data" / "fashion-mnist")
    assert subprocess.run(args, env=env, capture_output=True, text=True, timeout=60).returncode == 0
