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
