"""Prefect's cache as the stages use it (tasks/core/caching.py): a cache hit only while the
files behind the record exist (VerifiedCache, on the real engine), and records written in a
folder that has since moved: re-anchored with their paths, or a miss that says why. The whole
flow after a move: tests/flows/test_moved_folders.py."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.mark.engine
def test_verified_cache_hits_until_the_files_behind_it_go(prefect_engine, tmp_path):
    from prefect import flow, task

    from flows.cifar import _Stages
    from tasks.core.caching import VerifiedCache

    out = tmp_path / "out.txt"
    calls = []

    @task(cache_policy=VerifiedCache(key_fn=lambda i: f"k-{i['x']}", valid_fn=lambda i, k: out.exists()),
          persist_result=True)
    def work(x):
        calls.append(x)
        out.write_text(str(x))
        return {"x": x}

    @flow
    def f():
        stages = _Stages(str(tmp_path / "data"))
        stages.run("s", work, 3)
        return stages.times["s"]["cache_hit"]

    assert f() is False and calls == [3]
    assert f() is True and calls == [3]            # Prefect's cache, stored under data/prefect/
    assert (tmp_path / "data/prefect/cache-keys/k-3").exists()
    out.unlink()                                    # the record says "ran", the file says otherwise
    assert f() is False and calls == [3, 3]
    assert f() is True and calls == [3, 3]


# --------------------------------------------------------------------------- records in moved folders
@dataclass(frozen=True)
class Record:
    path: str
    sha256: str
    source: str


def _write_record(keys: Path, results: Path, key: str, value) -> None:
    """A cache record as Prefect writes one: metadata under ``keys``, the value under ``results``."""
    from prefect.results import ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    meta = ResultRecordMetadata(storage_key=str(results.resolve() / key), serializer=PickleSerializer())
    results.mkdir(parents=True, exist_ok=True)
    keys.mkdir(parents=True, exist_ok=True)
    (results / key).write_bytes(meta.serializer.dumps(value))
    (keys / key).write_bytes(meta.dump_bytes())


def _read_record(keys: Path, results: Path, key: str):
    from prefect.results import ResultRecordMetadata

    meta = ResultRecordMetadata.load_bytes((keys / key).read_bytes())
    return meta.storage_key, meta.serializer.loads((results / key).read_bytes())


def test_the_folders_that_moved_are_found_from_the_common_tail():
    from tasks.core.caching import moved_roots, relocated

    assert moved_roots(Path("/a/data/prefect/results"), Path("/b/c/data/prefect/results")) == (Path("/a"), Path("/b/c"))
    assert moved_roots(Path("/a/data/prefect/results"), Path("/a/data/prefect/results")) == (Path("/"), Path("/"))
    rec = Record("/a/data/models/k", "/a/data/not-a-path-but-absolute", "http://host/a/data/x")
    moved = relocated(rec, Path("/a"), Path("/b/c"))
    assert moved == Record("/b/c/data/models/k", "/b/c/data/not-a-path-but-absolute", "http://host/a/data/x")
    assert relocated(rec, Path("/elsewhere"), Path("/b")) is rec and relocated({"path": "/a/x"}, Path("/a"), Path("/b")) == {"path": "/a/x"}


def test_a_record_written_in_a_moved_folder_is_re_anchored_with_its_paths(tmp_path):
    from tasks.core.caching import anchor_record

    old, new = tmp_path / "old" / "data", tmp_path / "new" / "data"
    _write_record(old / "prefect/cache-keys", old / "prefect/results", "k1", Record(str(old / "models/k1"), "ab", "src"))
    shutil.copytree(old, new)
    keys, results = new / "prefect/cache-keys", new / "prefect/results"
    fits = lambda value: Path(value.path) == new / "models/k1"  # noqa: E731
    assert anchor_record(keys / "k1", results, fits) is None
    assert _read_record(keys, results, "k1") == (str(results.resolve() / "k1"), Record(str(new / "models/k1"), "ab", "src"))
    assert _read_record(old / "prefect/cache-keys", old / "prefect/results", "k1")[1].path == str(old / "models/k1")
    assert anchor_record(keys / "k1", results, fits) is None  # now at home: as it is
    assert anchor_record(keys / "missing", results, fits) is None  # nothing cached: Prefect runs the task


@pytest.mark.parametrize("damage", ["elsewhere", "no result", "not a record", "unreadable value"])
def test_a_record_that_cannot_be_carried_over_is_a_miss_with_the_reason(tmp_path, damage):
    from tasks.core.caching import anchor_record

    old, new = tmp_path / "old" / "data", tmp_path / "new" / "data"
    _write_record(old / "prefect/cache-keys", old / "prefect/results", "k1", Record(str(old / "models/k1"), "ab", "src"))
    shutil.copytree(old, new)
    keys, results = new / "prefect/cache-keys", new / "prefect/results"
    fits = lambda value: Path(value.path) == new / "models/k1"  # noqa: E731
    if damage == "elsewhere":  # its files are in a folder that did not move with it
        fits = lambda value: Path(value.path) == tmp_path / "third/models/k1"  # noqa: E731
        want = "names files outside this run's folders"
    elif damage == "no result":
        (results / "k1").unlink()
        want = "names a result"
    elif damage == "not a record":
        (keys / "k1").write_text("{not json")
        want = "is not a Prefect cache record"
    else:
        (results / "k1").write_bytes(b"garbage")
        want = "cannot be read"
    assert want in (anchor_record(keys / "k1", results, fits) or ""), damage


def test_a_cached_result_whose_class_is_gone_is_a_miss_whatever_the_task_checks(tmp_path, monkeypatch):
    """A record class that moved (tasks/core/records.py, issue 27) leaves cached results that no
    longer unpickle: a miss with the reason, also for a task without ``record_fn`` (validate_dataset),
    where Prefect's own read would fail the task run."""
    import dataclasses

    import tasks.core.records as records
    from tasks.core.caching import anchor_record

    @dataclasses.dataclass(frozen=True)
    class Gone:  # a record class where it was before it moved
        path: str

    Gone.__module__, Gone.__qualname__ = records.__name__, "Gone"
    keys, results = tmp_path / "prefect/cache-keys", tmp_path / "prefect/results"
    with monkeypatch.context() as m:
        m.setattr(records, "Gone", Gone, raising=False)
        _write_record(keys, results, "k1", Gone(str(tmp_path / "models/k1")))
    for fits in (None, lambda value: True):
        assert "cannot be read (AttributeError" in (anchor_record(keys / "k1", results, fits) or "")
