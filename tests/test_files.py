"""Atomic writes: the target holds the old content or the whole new content, never part of it."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omnimouse_jax.files import AtomicFile, atomic_open, write_bytes_atomic, write_json_atomic, write_text_atomic


def test_writes_create_the_folder_and_leave_no_temporary_file(tmp_path):
    write_text_atomic(tmp_path / "a" / "b.txt", "hello")
    write_bytes_atomic(tmp_path / "a" / "c.bin", b"\x00\x01")
    write_json_atomic(tmp_path / "d" / "e.json", {"b": 1, "a": [1.5]})
    assert (tmp_path / "a" / "b.txt").read_text() == "hello"
    assert (tmp_path / "a" / "c.bin").read_bytes() == b"\x00\x01"
    assert json.loads((tmp_path / "d" / "e.json").read_text()) == {"a": [1.5], "b": 1}
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["b.txt", "c.bin", "e.json"]


def test_an_error_while_writing_keeps_the_old_file(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(ZeroDivisionError):
        with atomic_open(target) as f:
            f.write("half of the new")
            1 / 0
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_writer_that_closes_its_file_is_committed(tmp_path):
    """pyarrow's ParquetWriter closes the file object it is given; commit() must still sync and rename it."""
    out = AtomicFile(tmp_path / "p.parquet", "wb")
    writer = pq.ParquetWriter(out.file, pa.schema([("x", pa.int64())]))
    writer.write_table(pa.table({"x": np.arange(5)}))
    writer.close()
    assert not (tmp_path / "p.parquet").exists()  # nothing at the target before the commit
    out.commit()
    assert pq.read_table(tmp_path / "p.parquet")["x"].to_pylist() == [0, 1, 2, 3, 4]
    discarded = AtomicFile(tmp_path / "q.parquet", "wb")
    discarded.file.write(b"partial")
    discarded.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.parquet"]
