"""The foundation's file helpers: atomic replacement, and sizing a folder that a writer is deleting files from."""

from __future__ import annotations

import os

import pytest

from modernretrieval import files
from modernretrieval.files import atomic_write, atomic_write_json, folder_bytes


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "config.json"
    atomic_write_json(target, {"a": 1})

    def fail(f):
        f.write(b"{\"partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left behind


def test_folder_bytes_counts_nested_files_and_single_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"0" * 10)
    (tmp_path / "y.bin").write_bytes(b"0" * 5)
    (tmp_path / "z.bin").write_bytes(b"0" * 7)
    assert folder_bytes(tmp_path) == 22
    assert folder_bytes(tmp_path / "a", tmp_path / "z.bin") == 17


def test_folder_bytes_skips_a_file_deleted_between_the_listing_and_its_stat(tmp_path, monkeypatch):
    """What a reader's `status` meets when a writer collects old index files at the same time (a CI failure:
    FileNotFoundError from a reader thread)."""
    for name, size in [("kept.npy", 100), ("collected.npy", 40)]:
        (tmp_path / name).write_bytes(b"0" * size)
    real_walk = os.walk

    def walk_then_collect(top):
        for entry in real_walk(top):
            (tmp_path / "collected.npy").unlink(missing_ok=True)  # the writer deletes after the listing
            yield entry

    monkeypatch.setattr(files.os, "walk", walk_then_collect)
    assert folder_bytes(tmp_path) == 100
