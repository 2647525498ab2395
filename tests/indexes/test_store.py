"""DocumentStore used on its own: put/get/delete, filters, metadata, transactions."""

from __future__ import annotations

import pytest

from indexes import Document, DocumentStore, IndexCorruptError, IndexInputError


def test_put_get_filter_delete(tmp_path):
    store = DocumentStore(tmp_path / "docs.sqlite")
    store.put([Document("a", "src/x.py", 1, 20, "h1", {"lang": "python", "stars": 3}, "def f(): ..."),
               Document("b", "README.md", 1, 5, "h2", {"lang": "markdown"}),
               Document("c", "src/y.py", 3, 9, "h3", {"lang": "python", "stars": 9})])
    assert len(store) == 3 and "b" in store and "z" not in store
    a, missing = store.get(["a", "z"])
    assert missing is None and a.source == "src/x.py" and a.metadata["stars"] == 3 and a.text == "def f(): ..."
    assert sorted(store.ids("source LIKE 'src/%'")) == ["a", "c"]
    assert store.ids(("json_extract(metadata, '$.stars') > ?", [5])) == ["c"]
    assert store.ids(["a", "q"]) == ["a", "q"]  # an id subset passes through (the index intersects it)
    store.put([Document("a", "src/x.py", 1, 25, "h4")])  # replace by id
    assert store.get(["a"])[0].content_hash == "h4" and len(store) == 3
    store.delete(["a", "b"])
    assert store.ids() == ["c"]
    with pytest.raises(IndexInputError, match="not a valid SQL predicate"):
        store.ids("lang = 'python'")


def test_transaction_rolls_back_on_error(tmp_path):
    store = DocumentStore(tmp_path / "docs.sqlite")
    with pytest.raises(RuntimeError), store.transaction():
        store.put([Document("a")])
        raise RuntimeError("boom")
    assert len(DocumentStore(tmp_path / "docs.sqlite")) == 0


def test_not_a_database(tmp_path):
    (tmp_path / "junk.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(IndexCorruptError, match="not a readable document store"):
        DocumentStore(tmp_path / "junk.sqlite")


# ----- files: the documents of one source, together
def chunked_store(tmp_path) -> DocumentStore:
    """Two files of several chunks (put out of order) and one document without a source."""
    store = DocumentStore(tmp_path / "docs.sqlite")
    store.put([Document("b#1", "src/b.py", 9, 20, "hb", {"chunk": 1, "tokens": 7, "mtime_ns": 5, "size": 90}),
               Document("a#10", "src/a.py", 30, 40, "ha", {"chunk": 10, "tokens": 4, "mtime_ns": 1, "size": 50}),
               Document("a#2", "src/a.py", 10, 30, "ha", {"chunk": 2, "tokens": 6, "mtime_ns": 1, "size": 50}),
               Document("b#0", "src/b.py", 1, 8, "hb", {"chunk": 0, "tokens": 2.5, "mtime_ns": 5, "size": 90}),
               Document("loose", None, metadata={"tokens": 1})])
    return store


def test_files_lists_each_source_with_its_chunks_in_order(tmp_path):
    store = chunked_store(tmp_path)
    files = store.files()
    assert list(files) == ["src/a.py", "src/b.py"]  # documents without a source are no file
    a = files["src/a.py"]
    assert a.source == "src/a.py" and a.doc_ids == ("a#2", "a#10")  # by "chunk" as a number, not as text
    assert a.content_hash == "ha" and a.metadata == {"mtime_ns": 1, "size": 50}  # "chunk", "tokens" differ
    assert files["src/b.py"].doc_ids == ("b#0", "b#1") and files["src/b.py"].metadata == {"mtime_ns": 5, "size": 90}
    store.put([Document("a#3", "src/a.py", 1, 2, "other", {"chunk": 3, "mtime_ns": 2, "size": 50})])
    a = store.files()["src/a.py"]
    # a chunk that disagrees: no hash and no mtime to trust (a caller sees a changed file), what agrees stays
    assert a.doc_ids == ("a#2", "a#3", "a#10") and a.content_hash is None and a.metadata == {"size": 50}


def test_counts_sums_and_sources(tmp_path):
    store = chunked_store(tmp_path)
    assert store.sources() == ["src/a.py", "src/b.py"] and store.count_sources() == 2 and len(store) == 5
    assert store.metadata_sum("tokens") == 20.5 and store.metadata_sum("size") == 280
    assert store.metadata_sum("absent") == 0
    store.put([Document("dotted", "x", metadata={"a.b": 2, "a": {"b": 100}})])
    assert store.metadata_sum("a.b") == 2  # a key with a dot is one key, not a path
    with pytest.raises(IndexInputError, match="metadata key"):
        store.metadata_sum('say "hi"')
    assert DocumentStore(tmp_path / "empty.sqlite").metadata_sum("tokens") == 0


def test_ids_of_sources_by_set_or_predicate(tmp_path):
    store = chunked_store(tmp_path)
    assert store.ids_of_sources({"src/b.py", "missing.py"}) == ["b#0", "b#1"]
    asked = []

    def python_a(source: str) -> bool:
        asked.append(source)
        return source.endswith("a.py")
    assert store.ids_of_sources(python_a) == ["a#2", "a#10"]
    assert asked == ["src/a.py", "src/b.py"]  # once per source, not per document
    assert store.ids_of_sources([]) == [] and store.ids_of_sources(lambda source: True) == ["a#2", "a#10", "b#0", "b#1"]
    with pytest.raises(IndexInputError, match="not one string"):
        store.ids_of_sources("src/a.py")


def test_set_file_metadata_updates_every_chunk_of_the_sources_given(tmp_path):
    store = chunked_store(tmp_path)
    store.set_file_metadata({"src/a.py": {"mtime_ns": 7, "size": 51}, "gone.py": {"size": 1}})
    a, b = store.files()["src/a.py"], store.files()["src/b.py"]
    assert a.metadata == {"mtime_ns": 7, "size": 51} and b.metadata == {"mtime_ns": 5, "size": 90}
    assert [d.metadata for d in store.get(["a#2", "a#10"])] == [  # the other keys are kept
        {"chunk": 2, "tokens": 6, "mtime_ns": 7, "size": 51}, {"chunk": 10, "tokens": 4, "mtime_ns": 7, "size": 51}]
    with pytest.raises(RuntimeError), store.transaction():  # joins an enclosing transaction, and its rollback
        store.set_file_metadata({"src/b.py": {"size": 0}})
        raise RuntimeError("boom")
    assert store.files()["src/b.py"].metadata["size"] == 90


# ----- threads
def test_each_thread_has_its_own_connection_and_close_closes_them_all(tmp_path):
    import sqlite3
    import threading

    store = chunked_store(tmp_path)
    seen: dict[str, sqlite3.Connection] = {}

    def use(name: str) -> None:
        seen[name] = store.db
        assert len(store) == 5

    first = threading.Thread(target=use, args=("first",))
    first.start()
    first.join()
    assert seen["first"] is not store.db
    second = threading.Thread(target=use, args=("second",))
    second.start()
    second.join()
    with pytest.raises(sqlite3.ProgrammingError):  # the ended thread's connection was closed by the next one
        seen["first"].execute("SELECT 1")
    store.close()
    for db in (seen["second"], ):
        with pytest.raises(sqlite3.ProgrammingError):
            db.execute("SELECT 1")
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        len(store)


def test_get_reads_one_committed_state(tmp_path):
    """Many ids are read in chunks of 500: all from one snapshot, even when a commit lands between two chunks."""
    import threading

    store = DocumentStore(tmp_path / "docs.sqlite")
    store.put([Document(f"d{i:04d}", metadata={"version": 0}) for i in range(1200)])
    writer = DocumentStore(tmp_path / "docs.sqlite")
    stop = threading.Event()

    def write() -> None:
        version = 0
        while not stop.is_set():
            version += 1
            writer.put([Document(f"d{i:04d}", metadata={"version": version}) for i in range(1200)])

    thread = threading.Thread(target=write)
    thread.start()
    versions: list[set[int]] = []
    try:  # read until the writer has committed a few times in between
        while thread.is_alive() and (len(versions) < 30 or len(set().union(*versions)) < 4):
            versions.append({d.metadata["version"] for d in store.get([f"d{i:04d}" for i in range(1200)])})
    finally:
        stop.set()
        thread.join()
    assert len(set().union(*versions)) >= 4
    assert all(len(v) == 1 for v in versions), [sorted(v) for v in versions if len(v) > 1][:3]


def test_store_writes_inside_an_index_transaction_join_its_commit(tmp_path):
    """set_file_metadata (and every store write) made inside ``index.transaction()`` is part of that commit: one
    generation, invisible to other readers until then, and dropped with it when the transaction fails."""
    import numpy as np

    from indexes import FaissIndex

    index = FaissIndex.create(tmp_path / "ix", dim=4, kind="flat")
    index.add(["a#0"], np.eye(4)[:1], [Document("a#0", "a.py", metadata={"chunk": 0, "mtime_ns": 1})])
    reader = FaissIndex.open(tmp_path / "ix")
    with index.transaction():
        index.add(["b#0"], np.eye(4)[1:2], [Document("b#0", "b.py", metadata={"chunk": 0, "mtime_ns": 1})])
        index.store.set_file_metadata({"a.py": {"mtime_ns": 2}, "b.py": {"mtime_ns": 3}})  # b.py: added just above
        assert reader.store.files()["a.py"].metadata["mtime_ns"] == 1 and "b.py" not in reader.store.files()
    assert index.generation == 2
    files = reader.store.files()
    assert files["a.py"].metadata["mtime_ns"] == 2 and files["b.py"].metadata["mtime_ns"] == 3
    with pytest.raises(RuntimeError), index.transaction():
        index.store.set_file_metadata({"a.py": {"mtime_ns": 9}})
        raise RuntimeError("boom")
    assert reader.store.files()["a.py"].metadata["mtime_ns"] == 2 and index.generation == 2
    with index.transaction():  # alone, it is a commit of its own
        index.store.set_file_metadata({"a.py": {"mtime_ns": 4}})
    assert index.generation == 3 and reader.store.files()["a.py"].metadata["mtime_ns"] == 4
    index.store.set_file_metadata({"a.py": {"mtime_ns": 5}})  # outside: a store transaction, no generation
    assert index.generation == 3 and reader.store.files()["a.py"].metadata["mtime_ns"] == 5


def test_a_commit_that_fails_leaves_the_connection_usable(tmp_path):
    """A COMMIT can fail (a full disk, an I/O error; here a deferred foreign key): the transaction is rolled back
    rather than left open, so the next transaction on this thread starts cleanly."""
    import sqlite3

    store = DocumentStore(tmp_path / "s.sqlite")
    db = store.db
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    db.execute("CREATE TABLE child (parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(sqlite3.IntegrityError):
        with store.transaction() as tx:
            tx.execute("INSERT INTO child VALUES (7)")  # checked only at COMMIT
    assert not db.in_transaction
    store.put([Document("a", text="after")])
    assert store.get(["a"])[0].text == "after"
    store.close()
