"""The artifact cache: keys, atomic writes, corruption detection, resumable parts."""

from __future__ import annotations

import json

import numpy as np
import pytest

import marginbench.cache as cache_module
from marginbench.cache import ArtifactStore, artifact_key, atomic_save_npz


def test_key_depends_on_params_and_inputs_but_not_on_order():
    a = artifact_key("margins", 1, {"name": "fab", "steps": 100}, {"model": "m", "data": "d"})
    b = artifact_key("margins", 1, {"steps": 100, "name": "fab"}, {"data": "d", "model": "m"})
    assert a == b
    assert a != artifact_key("margins", 1, {"name": "fab", "steps": 101}, {"model": "m", "data": "d"})
    assert a != artifact_key("margins", 2, {"name": "fab", "steps": 100}, {"model": "m", "data": "d"})
    assert a != artifact_key("margins", 1, {"name": "fab", "steps": 100}, {"model": "m2", "data": "d"})


def _put(store: ArtifactStore, key: str, values: np.ndarray, stage: str = "stage") -> None:
    store.put(stage, key, {"arrays.npz": lambda p: atomic_save_npz(p, {"v": values})}, {"note": "x"})


def test_put_get_roundtrip_records_meta(tmp_path):
    store = ArtifactStore(tmp_path)
    _put(store, "k1", np.arange(5))
    artifact = store.get("stage", "k1")
    assert artifact is not None
    np.testing.assert_array_equal(artifact.arrays()["v"], np.arange(5))
    meta = artifact.meta
    assert meta["note"] == "x" and "arrays.npz" in meta["files"] and "versions" in meta
    assert not list((tmp_path / "stage").glob(".tmp-*")), "no temporary directory left behind"


def test_corrupt_artifact_is_detected_and_removed(tmp_path):
    store = ArtifactStore(tmp_path)
    _put(store, "k1", np.arange(1000))
    data = tmp_path / "stage" / "k1" / "arrays.npz"
    raw = bytearray(data.read_bytes())
    raw[-10] ^= 0xFF  # same size, different content
    data.write_bytes(bytes(raw))
    assert store.get("stage", "k1") is None
    assert not (tmp_path / "stage" / "k1").exists()


def test_directory_without_meta_is_not_trusted(tmp_path):
    store = ArtifactStore(tmp_path)
    partial = tmp_path / "stage" / "k2"
    partial.mkdir(parents=True)
    (partial / "arrays.npz").write_bytes(b"half written")
    assert store.get("stage", "k2") is None


def test_meta_with_wrong_file_list_is_corrupt(tmp_path):
    store = ArtifactStore(tmp_path)
    _put(store, "k3", np.arange(3))
    meta_path = tmp_path / "stage" / "k3" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["files"]["missing.npz"] = {"size": 1, "sha256": "0"}
    meta_path.write_text(json.dumps(meta))
    assert store.get("stage", "k3") is None


def test_parts_roundtrip_and_unreadable_part_is_dropped(tmp_path):
    store = ArtifactStore(tmp_path)
    store.save_part("margins", "k", 0, 2, {"position": np.array([0, 1])})
    store.save_part("margins", "k", 2, 4, {"position": np.array([2, 3])})
    (store.parts_dir("margins", "k") / "part-00000004-00000006.npz").write_bytes(b"garbage")
    parts = store.load_parts("margins", "k")
    assert sorted(int(p) for part in parts for p in part["position"]) == [0, 1, 2, 3]
    assert not (store.parts_dir("margins", "k") / "part-00000004-00000006.npz").exists()
    # completing the same key in another stage leaves these parts alone; completing it here removes them
    _put(store, "k", np.arange(2))
    assert store.parts_dir("margins", "k").is_dir()
    _put(store, "k", np.arange(2), stage="margins")
    assert not store.parts_dir("margins", "k").exists()


def test_part_written_while_a_concurrent_run_assembles_the_artifact_is_dropped(tmp_path, monkeypatch):
    # CI round 19 (test_concurrent_identical_runs_share_one_cache, 3 copies): one run's put
    # removed the parts directory between another run's temp file and its rename, and that
    # run died with FileNotFoundError although the finished artifact was already there.
    store = ArtifactStore(tmp_path)
    store.save_part("margins", "k", 0, 2, {"position": np.array([0, 1])})
    real_replace = cache_module.os.replace

    def concurrent_put_first(src, dst):
        if str(dst).endswith("part-00000002-00000004.npz"):
            _put(store, "k", np.arange(2), stage="margins")  # removes the parts directory, our temp file with it
        real_replace(src, dst)

    monkeypatch.setattr(cache_module.os, "replace", concurrent_put_first)
    store.save_part("margins", "k", 2, 4, {"position": np.array([2, 3])})  # no error: superseded
    monkeypatch.setattr(cache_module.os, "replace", real_replace)
    assert store.get("margins", "k") is not None
    assert not store.parts_dir("margins", "k").exists()
    store.save_part("margins", "k", 4, 6, {"position": np.array([4, 5])})  # after it: not written
    assert not store.parts_dir("margins", "k").exists()


def test_parts_written_after_the_artifact_was_assembled_are_removed_by_get(tmp_path):
    # The narrow window save_part's check leaves: a run checks finished() just before a
    # concurrent put completes and writes its part just after it. The part re-creates the
    # parts directory beside the finished artifact; the next get clears it.
    store = ArtifactStore(tmp_path)
    _put(store, "k", np.arange(2), stage="margins")
    atomic_save_npz(store.parts_dir("margins", "k") / "part-00000000-00000002.npz", {"position": np.array([0, 1])})
    assert store.get("margins", "k") is not None
    assert not store.parts_dir("margins", "k").exists()
    assert store.get("margins", "missing") is None  # no artifact: nothing to clear, no error


def test_part_write_failing_without_a_finished_artifact_still_raises(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path)

    def vanish(src, dst):
        raise FileNotFoundError(src)

    monkeypatch.setattr(cache_module.os, "replace", vanish)
    with pytest.raises(FileNotFoundError):
        store.save_part("margins", "k", 0, 2, {"position": np.array([0, 1])})
