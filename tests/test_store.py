"""Tests for the checkpoint store, run against SQLite and a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import torch

from searchmerge.core.errors import SearchmergeError
from searchmerge.storage import atomic as atomic_module
from searchmerge.storage import store as store_module
from searchmerge.storage.store import (
    TABLE_NAME,
    CheckpointCorruptError,
    CheckpointKey,
    CheckpointStore,
)

POSTGRES_URL = os.environ.get(
    "SEARCHMERGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
_postgres_error: list[str] = []  # filled once: why PostgreSQL is unusable, or ""


def _postgres_unreachable_reason() -> str:
    if not _postgres_error:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        try:
            with engine.connect():
                pass
            _postgres_error.append("")
        except Exception as exc:  # noqa: BLE001 - any failure means: skip
            _postgres_error.append(f"PostgreSQL at {POSTGRES_URL} unreachable: {exc}")
        finally:
            engine.dispose()
    return _postgres_error[0]


@pytest.fixture(params=["sqlite", "postgres"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    reason = _postgres_unreachable_reason()
    if reason:
        pytest.skip(reason)
    return POSTGRES_URL


@pytest.fixture
def workload() -> str:
    """A workload fingerprint unique to this test, so rows can be cleaned up."""
    return f"test-store-{uuid.uuid4().hex}"


@pytest.fixture
def store(storage_url: str, tmp_path: Path, workload: str) -> Iterator[CheckpointStore]:
    checkpoint_store = CheckpointStore(storage_url, tmp_path / "blobs")
    yield checkpoint_store
    # The table is shared with other runs on PostgreSQL: remove only our rows.
    with checkpoint_store._engine.begin() as conn:
        conn.execute(
            sa.delete(store_module._table).where(
                store_module._table.c.workload_fingerprint == workload
            )
        )
    checkpoint_store.close()


def _key(workload: str, plan: str = "plan-1", kind: str = "merged") -> CheckpointKey:
    return CheckpointKey(workload, plan, "data-1", kind)


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "backbone.conv1.weight": torch.randn(4, 3, 3, 3, generator=generator),
        "backbone.bn1.running_mean": torch.randn(4, generator=generator).half(),
        "head.weight": torch.randn(2, 4, generator=generator).to(torch.bfloat16),
        "head.num_batches_tracked": torch.tensor(seed, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
    }


def _assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name], tensor), name


def _blob_path(store: CheckpointStore, checkpoint_id: str) -> Path:
    return Path(store.blob_location) / store.record(checkpoint_id).blob


def test_roundtrip(store: CheckpointStore, workload: str) -> None:
    key = _key(workload)
    tensors = _tensors()
    checkpoint_id = store.put(key, tensors, {"accuracy": {"resnet18": 0.93}, "cost_s": 12.5})

    record = store.find(key)
    assert record is not None
    assert record.id == checkpoint_id
    assert record.key == key
    assert record.metadata == {"accuracy": {"resnet18": 0.93}, "cost_s": 12.5}
    assert record.size == _blob_path(store, checkpoint_id).stat().st_size
    assert record.blob == f"{record.sha256}.safetensors"
    assert record.created_at.tzinfo is not None
    assert store.record(checkpoint_id) == record
    assert store.verify(checkpoint_id) == record

    _assert_same(store.load(key), tensors)
    _assert_same(store.load(checkpoint_id), tensors)
    loaded = store.load(key)["backbone.conv1.weight"]
    loaded.add_(1)  # retraining updates loaded weights in place


def test_list_filters(store: CheckpointStore, workload: str) -> None:
    original = store.put(_key(workload, "resnet18", "original"), _tensors(1))
    merged = store.put(_key(workload, "plan-1"), _tensors(2))
    other = store.put(_key(workload, "plan-2"), _tensors(3))

    assert [r.id for r in store.list(workload)] == [original, merged, other]
    assert [r.id for r in store.list(workload, kind="merged")] == [merged, other]
    assert [r.id for r in store.list(workload, kind="original")] == [original]
    assert {original, merged, other} <= {r.id for r in store.list()}


def test_tied_tensors_roundtrip_and_stay_tied(store: CheckpointStore, workload: str) -> None:
    shared = torch.randn(6, 4)
    tensors = {
        "model_a.layer1.weight": shared,
        "model_b.layer1.weight": shared,  # the merged layer: one tensor, two names
        "model_b.layer1_alias.weight": shared.view(6, 4),  # same view, other object
        "rows": shared[2:],  # overlapping view: stored as its own copy
        "transposed": shared.t(),  # non-contiguous
        "empty_a": torch.empty(0),
        "empty_b": torch.empty(0),
    }
    checkpoint_id = store.put(_key(workload), tensors)

    loaded = store.load(checkpoint_id)
    _assert_same(loaded, tensors)
    assert loaded["model_a.layer1.weight"] is loaded["model_b.layer1.weight"]
    assert loaded["model_b.layer1_alias.weight"] is loaded["model_a.layer1.weight"]
    assert loaded["rows"].data_ptr() != loaded["model_a.layer1.weight"][2:].data_ptr()


def test_records_are_immutable_a_stored_key_keeps_its_first_record(store: CheckpointStore, workload: str) -> None:
    key = _key(workload)
    first = store.put(key, _tensors(1), {"round": 1})
    again = store.put(key, _tensors(2), {"round": 2})

    assert again == first  # the id a trial keeps still resolves, to the same bytes
    record = store.find(key)
    assert record is not None and record.id == first and record.metadata == {"round": 1}
    _assert_same(store.load(first), _tensors(1))
    assert [r.id for r in store.list(workload)] == [first]


def test_a_variant_is_a_record_of_its_own(store: CheckpointStore, workload: str) -> None:
    seed0 = store.put(CheckpointKey(workload, "plan-1", "data-1", "merged", "seed-0"), _tensors(1))
    seed1 = store.put(CheckpointKey(workload, "plan-1", "data-1", "merged", "seed-1"), _tensors(2))
    assert seed0 != seed1
    _assert_same(store.load(seed0), _tensors(1))
    _assert_same(store.load(seed1), _tensors(2))


def test_replace_gives_a_new_record(store: CheckpointStore, workload: str) -> None:
    key = _key(workload, "resnet18", "original")
    first = store.put(key, _tensors(1), {"round": 1})
    second = store.put(key, _tensors(2), {"round": 2}, replace=True)

    assert second != first
    record = store.find(key)
    assert record is not None and record.id == second and record.metadata == {"round": 2}
    _assert_same(store.load(key), _tensors(2))
    assert [r.id for r in store.list(workload)] == [second]
    with pytest.raises(SearchmergeError, match=first):
        store.record(first)


def test_a_put_repairs_a_damaged_blob_of_the_same_bytes(store: CheckpointStore, workload: str) -> None:
    first = store.put(_key(workload), _tensors(1))
    _blob_path(store, first).write_bytes(b"garbage")
    with pytest.raises(CheckpointCorruptError):
        store.load(first)
    assert store.put(_key(workload), _tensors(1)) == first
    _assert_same(store.load(first), _tensors(1))


def test_identical_content_shares_one_blob(store: CheckpointStore, workload: str) -> None:
    first = store.put(_key(workload, "plan-1"), _tensors())
    second = store.put(_key(workload, "plan-2"), _tensors())
    assert store.record(first).blob == store.record(second).blob
    _assert_same(store.load(second), _tensors())


def test_truncated_blob_detected(store: CheckpointStore, workload: str) -> None:
    checkpoint_id = store.put(_key(workload), _tensors())
    path = _blob_path(store, checkpoint_id)
    path.write_bytes(path.read_bytes()[:-10])

    with pytest.raises(CheckpointCorruptError) as excinfo:
        store.load(checkpoint_id)
    assert checkpoint_id in str(excinfo.value) and path.name in str(excinfo.value)
    with pytest.raises(CheckpointCorruptError):
        store.verify(checkpoint_id)


def test_altered_byte_detected_before_parsing(
    store: CheckpointStore, workload: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = _key(workload)
    checkpoint_id = store.put(key, _tensors())
    path = _blob_path(store, checkpoint_id)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the tensor data: same size, still parseable
    path.write_bytes(bytes(data))

    def must_not_parse(_data: bytes) -> dict[str, torch.Tensor]:
        raise AssertionError("a corrupt blob was parsed")

    monkeypatch.setattr(store_module.safetensors.torch, "load", must_not_parse)
    with pytest.raises(CheckpointCorruptError) as excinfo:
        store.load(key)
    assert checkpoint_id in str(excinfo.value) and path.name in str(excinfo.value)


def test_missing_blob_is_a_clear_error(store: CheckpointStore, workload: str) -> None:
    checkpoint_id = store.put(_key(workload), _tensors())
    path = _blob_path(store, checkpoint_id)
    path.unlink()
    with pytest.raises(SearchmergeError, match="missing") as excinfo:
        store.load(checkpoint_id)
    assert str(path) in str(excinfo.value)


def test_crash_while_renaming_blob_keeps_previous(
    store: CheckpointStore, workload: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = _key(workload)
    first = store.put(key, _tensors(1))

    def crash(*_args: Any) -> None:
        raise OSError("simulated crash")

    monkeypatch.setattr(atomic_module.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        store.put(key, _tensors(2))
    monkeypatch.undo()

    assert store.find(key) is not None and store.find(key).id == first  # type: ignore[union-attr]
    _assert_same(store.load(key), _tensors(1))
    assert not list(Path(store.blob_location).glob(".*.part")), "temporary file left behind"


def test_crash_inside_db_transaction_keeps_previous(store: CheckpointStore, workload: str) -> None:
    key = _key(workload)
    first = store.put(key, _tensors(1))

    class SimulatedCrash(Exception):
        pass

    def crash_after_write(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # The new row has replaced the old one inside the transaction; die before COMMIT.
        if statement.lstrip().upper().startswith(f"INSERT INTO {TABLE_NAME.upper()}"):
            raise SimulatedCrash

    sa.event.listen(store._engine, "after_cursor_execute", crash_after_write)
    try:
        with pytest.raises(SimulatedCrash):
            store.put(key, _tensors(2))
    finally:
        sa.event.remove(store._engine, "after_cursor_execute", crash_after_write)

    record = store.find(key)
    assert record is not None and record.id == first
    _assert_same(store.load(key), _tensors(1))


def test_blob_is_safetensors_not_pickle(store: CheckpointStore, workload: str) -> None:
    checkpoint_id = store.put(_key(workload), {"w": torch.ones(3)})
    data = _blob_path(store, checkpoint_id).read_bytes()

    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_length])
    assert header["w"] == {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}
    assert len(data) == 8 + header_length + 12
    assert not data.startswith((b"\x80", b"PK"))  # neither pickle nor torch.save's zip


def test_unknown_key_and_id(store: CheckpointStore, workload: str) -> None:
    assert store.find(_key(workload, "never-stored")) is None
    with pytest.raises(SearchmergeError, match="no checkpoint"):
        store.load(_key(workload, "never-stored"))
    with pytest.raises(SearchmergeError, match="no checkpoint"):
        store.load("0" * 32)
    with pytest.raises(SearchmergeError, match="no checkpoint"):
        store.verify("0" * 32)


def test_bad_input_writes_nothing(store: CheckpointStore, workload: str) -> None:
    with pytest.raises(SearchmergeError, match="JSON"):
        store.put(_key(workload), _tensors(), {"bad": object()})
    with pytest.raises(SearchmergeError, match="str -> torch.Tensor"):
        store.put(_key(workload), {"w": [1.0, 2.0]})  # type: ignore[dict-item]
    assert store.list(workload) == []


def test_concurrent_writers(storage_url: str, store: CheckpointStore, workload: str) -> None:
    """Separate stores (separate connections, like separate workers) write at once."""
    others = [CheckpointStore(storage_url, store.blob_location) for _ in range(3)]
    barrier = threading.Barrier(len(others))
    errors: list[BaseException] = []

    def work(index: int, writer: CheckpointStore) -> None:
        try:
            barrier.wait()
            for round_ in range(5):
                writer.put(_key(workload, f"plan-{index}-{round_}"), _tensors(index))
                writer.put(_key(workload, "contended"), _tensors(100 + index), {"by": index})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, w)) for i, w in enumerate(others)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for writer in others:
        writer.close()

    assert errors == []
    records = store.list(workload)
    assert len(records) == 3 * 5 + 1
    contended = store.find(_key(workload, "contended"))
    assert contended is not None
    _assert_same(store.load(contended.id), _tensors(100 + contended.metadata["by"]))


def test_key_fields_must_be_non_empty_strings() -> None:
    with pytest.raises(SearchmergeError, match="plan_hash"):
        CheckpointKey("wl", "", "data", "merged")
    with pytest.raises(SearchmergeError, match="kind"):
        CheckpointKey("wl", "plan", "data", None)  # type: ignore[arg-type]


def test_for_storage_sqlite_defaults_blob_dir(tmp_path: Path) -> None:
    database = tmp_path / "study.db"
    checkpoint_store = CheckpointStore.for_storage(f"sqlite:///{database}")
    try:
        assert Path(checkpoint_store.blob_location) == Path(f"{database}.checkpoints")
        assert Path(checkpoint_store.blob_location).is_dir()
    finally:
        checkpoint_store.close()


def test_for_storage_requires_blob_dir_for_servers(tmp_path: Path) -> None:
    with pytest.raises(SearchmergeError, match="blob_dir") as excinfo:
        CheckpointStore.for_storage("postgresql+psycopg://user:secret@db.example/study")
    assert "secret" not in str(excinfo.value)
    with pytest.raises(SearchmergeError, match="blob_dir"):
        CheckpointStore.for_storage("sqlite://")
    checkpoint_store = CheckpointStore.for_storage("sqlite://", tmp_path / "blobs")
    checkpoint_store.close()


def test_unsupported_database_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SearchmergeError, match="only SQLite and PostgreSQL"):
        CheckpointStore("mysql+pymysql://user@db.example/study", tmp_path / "blobs")
    assert not (tmp_path / "blobs").exists()


def test_coexists_with_optuna_tables(tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)

    checkpoint_store = CheckpointStore.for_storage(url)
    try:
        checkpoint_store.put(CheckpointKey("wl", "plan", "data", "merged"), {"w": torch.ones(2)})
        assert len(optuna.load_study(study_name="s", storage=url).trials) == 2
        assert len(checkpoint_store.list("wl")) == 1
    finally:
        checkpoint_store.close()


def test_gc_removes_only_old_unused_blobs_and_unnamed_records(store: CheckpointStore, workload: str) -> None:
    kept = store.put(_key(workload, "plan-1"), _tensors(1))
    unnamed = store.put(_key(workload, "plan-2"), _tensors(2))
    original = store.put(_key(workload, "resnet18", "original"), _tensors(3))
    folder = Path(store.blob_location)
    old_orphan, young_orphan, old_part = folder / f"{'a' * 64}.safetensors", folder / f"{'b' * 64}.safetensors", folder / ".x.part"
    for path in (old_orphan, young_orphan, old_part):
        path.write_bytes(b"left by a killed worker")
    two_hours_ago = time.time() - 7200
    os.utime(old_orphan, (two_hours_ago, two_hours_ago))
    os.utime(old_part, (two_hours_ago, two_hours_ago))

    dry = store.collect_garbage(dry_run=True)
    assert set(dry.blobs) == {old_orphan.name, old_part.name} and old_orphan.exists()
    done = store.collect_garbage()  # blobs only, by default
    assert set(done.blobs) == {old_orphan.name, old_part.name} and done.records == ()
    assert not old_orphan.exists() and not old_part.exists() and young_orphan.exists()
    for checkpoint in (kept, unnamed, original):
        store.verify(checkpoint)


def test_gc_of_records_keeps_named_ones_and_originals(tmp_path: Path) -> None:
    """On a storage of its own: record gc looks at every record of the database."""
    store = CheckpointStore(f"sqlite:///{tmp_path / 'gc.db'}", tmp_path / "blobs")
    kept = store.put(_key("wl", "plan-1"), _tensors(1))
    unnamed = store.put(_key("wl", "plan-2"), _tensors(2))
    original = store.put(_key("wl", "resnet18", "original"), _tensors(3))
    unnamed_blob = tmp_path / "blobs" / store.record(unnamed).blob

    assert store.collect_garbage(keep={kept}).records == ()  # younger than the default hour
    done = store.collect_garbage(keep={kept}, min_age=timedelta(0))
    assert done.records == (unnamed,)
    assert store.find(_key("wl", "plan-2")) is None
    store.verify(kept)
    store.verify(original)
    assert done.blobs == (unnamed_blob.name,) and not unnamed_blob.exists()
    store.close()


def test_a_store_of_the_earlier_format_is_migrated_with_its_ids(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    legacy = sa.Table(
        "searchmerge_checkpoints", sa.MetaData(),
        *(sa.Column(c.name, c.type, primary_key=c.primary_key) for c in store_module._table.columns
          if c.name != "variant"),
    )
    legacy.metadata.create_all(engine)
    blobs = tmp_path / "blobs"
    old = CheckpointStore(f"sqlite:///{tmp_path / 'scratch.db'}", blobs)  # writes a real blob to point at
    made = old.record(old.put(CheckpointKey("wl", "plan", "data", "merged"), _tensors(1)))
    old.close()
    with engine.begin() as conn:
        conn.execute(legacy.insert().values(
            id=made.id, workload_fingerprint="wl", plan_hash="plan", data_fingerprint="data", kind="merged",
            blob=made.blob, sha256=made.sha256, size_bytes=made.size, metadata_json="{}",
            created_at=made.created_at,
        ))
    engine.dispose()

    migrated = CheckpointStore(url, blobs)
    try:
        _assert_same(migrated.load(made.id), _tensors(1))
        assert migrated.find(CheckpointKey("wl", "plan", "data", "merged")).id == made.id  # type: ignore[union-attr]
        assert not sa.inspect(migrated._engine).has_table("searchmerge_checkpoints")
    finally:
        migrated.close()


def test_equal_tensors_give_equal_bytes_every_time() -> None:
    """Blobs are named by their hash: safetensors' metadata order must not change it."""
    import hashlib

    shared = torch.randn(4, 3)
    tensors = {"a/conv.weight": shared, "b/conv.weight": shared, "a/fc.bias": torch.zeros(2)}
    digests = {hashlib.sha256(store_module._serialize(tensors)).hexdigest() for _ in range(100)}
    assert len(digests) == 1
