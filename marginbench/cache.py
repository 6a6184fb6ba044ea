"""Content-addressed stage artifacts: keys, atomic writes, integrity checks, resumable parts.

Layout under the cache root::

    <root>/<stage>/<key>/meta.json       written last: its presence marks the artifact complete
    <root>/<stage>/<key>/<files>         listed in meta.json with size and sha256
    <root>/<stage>/<key>.parts/part-*.npz   finished batches of a stage still in progress

An artifact is built in a temporary sibling directory and renamed into place, so a killed
process never leaves a directory that looks complete. A directory whose files do not match
the sizes and hashes recorded in its meta.json is treated as corrupt: deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

META_FILE = "meta.json"

log = logging.getLogger("marginbench")

# A stage's file writers: file name -> function writing that file at the given path
Writers = Mapping[str, Callable[[Path], None]]


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the same value always hashes the same."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def artifact_key(stage: str, version: int, params: Mapping[str, Any], inputs: Mapping[str, str]) -> str:
    """Hash of what can change a stage's numbers: its name, version, params and input keys.

    Device, batch size, paths and logging must never be passed in ``params``.
    """
    payload = canonical_json({"stage": stage, "version": version, "params": params, "inputs": inputs})
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_arrays(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        contiguous = np.ascontiguousarray(array)
        digest.update(str((contiguous.dtype.str, contiguous.shape)).encode())
        digest.update(contiguous.view(np.uint8).reshape(-1).data)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


# What a damaged npz raises: a truncated zip (BadZipFile), a flipped bit (BadZipFile "Bad
# CRC-32", or a header numpy cannot parse), a member cut short (EOFError/ValueError).
DAMAGED_FILE_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


def meta_digest(record: Mapping[str, Any]) -> str:
    """Hash of a meta.json's own content, so a flipped digit in a stored summary is caught."""
    return hashlib.sha256(canonical_json({k: v for k, v in record.items() if k != "meta_sha256"}).encode()).hexdigest()


_ENVIRONMENT: dict[str, Any] | None = None


def environment_record() -> dict[str, Any]:
    """Versions and git commit, stored in every meta.json (computed once per process)."""
    global _ENVIRONMENT
    if _ENVIRONMENT is None:
        versions: dict[str, str] = {"python": platform.python_version()}
        for name in ("marginbench", "torch", "numpy", "pyautoattack", "adv_lib", "robustbench"):
            module = sys.modules.get(name)
            version = getattr(module, "__version__", None) if module else None
            if version is None:
                try:
                    from importlib.metadata import version as dist_version

                    version = dist_version(name.replace("_", "-"))
                except Exception:  # noqa: BLE001 - a missing optional package is not an error
                    version = None
            if version:
                versions[name] = str(version)
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).resolve().parent,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            commit = None
        _ENVIRONMENT = {"versions": versions, "git_commit": commit, "host": platform.node()}
    return _ENVIRONMENT


@dataclass(frozen=True)
class Artifact:
    stage: str
    key: str
    path: Path

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / META_FILE).read_text())

    def file(self, name: str) -> Path:
        return self.path / name

    def arrays(self, name: str = "arrays.npz") -> dict[str, np.ndarray]:
        return load_npz(self.path / name)


class ArtifactStore:
    """Stage artifacts under one root directory (``paths.cache_dir``)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def parts_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / f"{key}.parts"

    def get(self, stage: str, key: str, verify: bool = True) -> Artifact | None:
        """The complete artifact, or None. A corrupt one is removed so it gets rebuilt.
        Parts left beside a complete artifact are removed: a concurrent run of the same key
        can write its last part just after another run's ``put`` cleared them, and nothing
        reads parts once the artifact exists."""
        path = self.path(stage, key)
        meta_path = path / META_FILE
        if not meta_path.is_file():
            if path.exists():  # a directory without meta.json is not ours to trust
                shutil.rmtree(path, ignore_errors=True)
            return None
        if verify and not self.intact(path):
            print(f"marginbench: cached {stage}/{key} is corrupt; recomputing it", file=sys.stderr)
            shutil.rmtree(path, ignore_errors=True)
            return None
        shutil.rmtree(self.parts_dir(stage, key), ignore_errors=True)
        return Artifact(stage, key, path)

    @staticmethod
    def intact(path: Path) -> bool:
        """Every file meta.json lists is there with its recorded size and sha256 (and meta.json
        its own self-hash, where it has one)."""
        try:
            meta = json.loads((path / META_FILE).read_text())
            # older artifacts have no self-hash; their files are still checked below
            if "meta_sha256" in meta and meta["meta_sha256"] != meta_digest(meta):
                return False
            for name, record in meta["files"].items():
                file = path / name
                if not file.is_file() or file.stat().st_size != record["size"]:
                    return False
                if sha256_file(file) != record["sha256"]:
                    return False
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        return True

    def put(
        self,
        stage: str,
        key: str,
        writers: Writers,
        meta: Mapping[str, Any],
    ) -> Artifact:
        """Build an artifact atomically.

        ``writers`` maps a file name to a function that writes that file at the given path.
        meta.json (with file sizes and hashes) is written last, then the directory is renamed
        into place; a concurrent writer of the same key simply loses the race.
        """
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            files: dict[str, dict[str, Any]] = {}
            for name, write in writers.items():
                write(tmp / name)
                files[name] = {"size": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
            record = {
                "stage": stage,
                "key": key,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **environment_record(),
                **meta,
                "files": files,
            }
            record = json.loads(json.dumps(record, default=str))  # what meta.json will read back as
            record["meta_sha256"] = meta_digest(record)
            (tmp / META_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
            # A concurrent run of the same key may have finished first: keep its intact copy
            # (another process may be reading it right now) and drop ours.
            if final.exists() and not (self.finished(stage, key) and self.intact(final)):
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.replace(tmp, final)
            except OSError:
                if not self.finished(stage, key):
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(self.parts_dir(stage, key), ignore_errors=True)
        return Artifact(stage, key, final)

    def get_or_compute(
        self,
        stage: str,
        key: str,
        compute: Callable[[], tuple[Writers, Mapping[str, Any]]],
        label: str,
    ) -> Artifact:
        """The cached artifact, else ``compute()`` -> (writers, meta) stored atomically."""
        cached = self.get(stage, key)
        if cached is not None:
            log.info("%s: cached (%s/%s)", label, stage, key)
            return cached
        writers, meta = compute()
        return self.put(stage, key, writers, meta)

    # -- finished batches of a stage in progress -------------------------------------------

    def save_part(self, stage: str, key: str, start: int, stop: int, arrays: Mapping[str, np.ndarray]) -> None:
        """One finished batch of a stage in progress. Skipped once the whole artifact exists:
        a concurrent run of the same key that assembled it (``put``) removes the parts
        directory, possibly while this write is under way, and no part is needed after it."""
        if self.finished(stage, key):
            return
        try:
            atomic_save_npz(self.parts_dir(stage, key) / f"part-{start:08d}-{stop:08d}.npz", arrays)
        except FileNotFoundError:
            if not self.finished(stage, key):
                raise

    def finished(self, stage: str, key: str) -> bool:
        """The artifact has been put (its meta.json, written last, is in place)."""
        return (self.path(stage, key) / META_FILE).is_file()

    def load_parts(
        self, stage: str, key: str, check: Callable[[dict[str, np.ndarray]], str | None] | None = None
    ) -> list[dict[str, np.ndarray]]:
        """Every intact finished batch. A part that cannot be read in full, or that ``check``
        finds wrong (a missing field, inconsistent lengths), is logged, deleted and redone."""
        parts = []
        directory = self.parts_dir(stage, key)
        for path in sorted(directory.glob("part-*.npz")) if directory.is_dir() else []:
            try:
                part = load_npz(path)
                problem = check(part) if check is not None else None
            except FileNotFoundError:  # a concurrent run assembled the parts and removed them
                continue
            except DAMAGED_FILE_ERRORS as error:
                problem = f"unreadable ({type(error).__name__})"
            if problem is None:
                parts.append(part)
                continue
            log.warning("cached batch %s/%s is damaged (%s); deleting it, it will be recomputed",
                        path.parent.name, path.name, problem)
            path.unlink(missing_ok=True)
        return parts

    def stages(self) -> Iterable[str]:
        return [p.name for p in self.root.iterdir() if p.is_dir()] if self.root.is_dir() else []
