"""MLDR, CodeSearchNet and CoIR loaders, on small fixtures written at test time in each set's original format."""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

import pytest

from eval.datasets.beir import DatasetError, load_beir, write_beir
from eval.datasets.codesearchnet import download_coir, load_codesearchnet, load_coir, strip_python_docstring
from eval.datasets.mldr import download_mldr, load_mldr


def write_jsonl(path: Path, rows: list, raw_lines: dict[int, str] | None = None) -> Path:
    """rows as JSON lines (gzipped for a .gz name); ``raw_lines`` puts a verbatim line at a 1-based position."""
    lines = [json.dumps(row) for row in rows]
    for number, raw in sorted((raw_lines or {}).items()):
        lines.insert(number - 1, raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


# ------------------------------------------------------------------------------------------------ MLDR

LONG_TEXT = "The history of the printing press. " * 600  # ~21k characters: MLDR documents are long


def mldr_passage(docid: str) -> dict:
    return {"docid": docid, "text": f"text of {docid}"}


def make_mldr(root: Path, lang: str = "en") -> Path:
    folder = root / f"mldr-v1.0-{lang}"
    write_jsonl(folder / "corpus.jsonl.gz", [
        {"docid": "doc-en-0", "text": LONG_TEXT},
        {"docid": "doc-en-1", "text": "Gutenberg introduced movable type to Europe around 1440."},
        {"docid": "doc-en-2", "text": "The steam engine changed manufacturing."},
        {"docid": "doc-en-3", "text": "Paper was invented in China."},
        {"docid": "doc-en-4", "text": "Woodblock printing predates movable type."},
    ])
    write_jsonl(folder / "test.jsonl.gz", [
        {"query_id": "q-en-0", "query": "Who brought movable type to Europe?",
         "positive_passages": [mldr_passage("doc-en-1")],
         "negative_passages": [mldr_passage("doc-en-2"), mldr_passage("doc-en-3")]},
        {"query_id": "q-en-1", "query": "early printing techniques",
         "positive_passages": [mldr_passage("doc-en-0"), mldr_passage("doc-en-4")],
         "negative_passages": [mldr_passage("doc-en-2")]},
        {"query_id": "q-en-2", "query": "a query nobody judged", "positive_passages": [],
         "negative_passages": [mldr_passage("doc-en-3")]},
    ])
    write_jsonl(folder / "dev.jsonl", [  # uncompressed: read as well
        {"query_id": "q-en-dev-0", "query": "invention of paper", "positive_passages": [mldr_passage("doc-en-3")],
         "negative_passages": []},
    ])
    return folder


def test_mldr_from_the_repo_root_and_the_language_folder(tmp_path):
    folder = make_mldr(tmp_path)
    data = load_mldr(tmp_path)
    assert data.name == "mldr-en" and data.folder == folder
    assert list(data.corpus) == [f"doc-en-{i}" for i in range(5)]
    assert data.corpus["doc-en-0"] == {"title": "", "text": LONG_TEXT}  # whole, no title
    assert data.queries == {"q-en-0": "Who brought movable type to Europe?", "q-en-1": "early printing techniques"}
    assert data.qrels == {"q-en-0": {"doc-en-1": 1}, "q-en-1": {"doc-en-0": 1, "doc-en-4": 1}}  # negatives unjudged
    assert data.info["skipped"] == 1 and data.info["split"] == "test"
    same = load_mldr(folder)
    assert (same.corpus, same.queries, same.qrels, same.name) == (data.corpus, data.queries, data.qrels, data.name)


def test_mldr_dev_split_uncompressed(tmp_path):
    make_mldr(tmp_path)
    data = load_mldr(tmp_path, split="dev")
    assert data.queries == {"q-en-dev-0": "invention of paper"}
    assert data.qrels == {"q-en-dev-0": {"doc-en-3": 1}}
    assert len(data.corpus) == 5


def test_mldr_positive_missing_from_the_corpus(tmp_path):
    folder = make_mldr(tmp_path)
    write_jsonl(folder / "test.jsonl.gz", [
        {"query_id": "q0", "query": "fine", "positive_passages": [mldr_passage("doc-en-1")], "negative_passages": []},
        {"query_id": "q1", "query": "broken", "positive_passages": [mldr_passage("doc-en-1"),
                                                                    mldr_passage("doc-en-99")],
         "negative_passages": []},
    ])
    with pytest.raises(DatasetError, match=r"test\.jsonl\.gz:2: positive docid 'doc-en-99' of query 'q1' is not in "
                                           r"corpus\.jsonl\.gz"):
        load_mldr(tmp_path)


def test_mldr_malformed_lines_name_file_and_line(tmp_path):
    folder = make_mldr(tmp_path)
    write_jsonl(folder / "corpus.jsonl.gz", [{"docid": "doc-en-1", "text": "x"}], raw_lines={2: '{"docid": "d",'})
    with pytest.raises(DatasetError, match=rf"{re.escape(str(folder / 'corpus.jsonl.gz'))}:2: not valid JSON"):
        load_mldr(tmp_path)
    write_jsonl(folder / "test.jsonl.gz", [
        {"query_id": "q0", "query": "fine", "positive_passages": [mldr_passage("doc-en-1")]},
        {"query": "no id", "positive_passages": [mldr_passage("doc-en-1")]},
    ])
    with pytest.raises(DatasetError, match=rf"{re.escape(str(folder / 'test.jsonl.gz'))}:2: no 'query_id' field"):
        load_mldr(tmp_path)
    write_jsonl(folder / "test.jsonl.gz", [{"query_id": "q0", "query": "no positives list"}])
    with pytest.raises(DatasetError, match=r"test\.jsonl\.gz:1: no 'positive_passages' list"):
        load_mldr(tmp_path)


def test_mldr_missing_files_and_folders(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere is not a folder"):
        load_mldr(tmp_path / "nowhere")
    folder = make_mldr(tmp_path)
    with pytest.raises(DatasetError, match=r"train\.jsonl\.gz missing .*its splits: dev, test"):
        load_mldr(tmp_path, split="train")
    with pytest.raises(DatasetError, match=r"corpus\.jsonl\.gz and test\.jsonl\.gz missing.*its languages: en"):
        load_mldr(tmp_path, lang="de")
    (folder / "corpus.jsonl.gz").unlink()
    with pytest.raises(DatasetError, match=rf"{re.escape(str(folder))}.*corpus\.jsonl\.gz missing"):
        load_mldr(folder)


@pytest.fixture
def hub_offline(monkeypatch):
    """The hub in offline mode (read when a download is attempted): nothing goes to the network."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_mldr_download_offline_is_a_dataset_error(tmp_path, hub_offline):
    with pytest.raises(DatasetError, match=r"^cannot download Shitao/MLDR \(.+\); pass a local folder with --dataset$"):
        download_mldr(tmp_path / "cache")


# --------------------------------------------------------------------------------------------- CodeSearchNet

ADD_CODE = '''def add_numbers(a, b):
    """Add two numbers and
    return the sum.

    :param a: the first number
    :param b: the second number
    """
    total = a + b
    return total'''

METHOD_CODE = """def fetch(self, key, default=None):
        '''Return the cached value for key.'''
        if key in self._cache:
            return self._cache[key]
        return default"""

PY2_CODE = '''def greet(name):
    """Print a greeting for name."""
    print "Hello, %s" % name'''

NO_URL_CODE = '''def shout(text):
    """Upper-case the text."""
    return text.upper()'''


def csn_row(code: str, docstring: str, func_name: str, url: str | None, language: str = "python",
            partition: str = "test") -> dict:
    """A row with every key of the original CodeSearchNet jsonl files."""
    row = {"repo": "octo/project", "path": "project/module.py", "func_name": func_name, "original_string": code,
           "language": language, "code": code, "code_tokens": code.split(), "docstring": docstring,
           "docstring_tokens": docstring.split(), "sha": "0123456789abcdef0123456789abcdef01234567",
           "partition": partition, "url": url}
    if url is None:
        del row["url"]
    return row


def url(name: str, line: int) -> str:
    return f"https://github.com/octo/project/blob/0123456/project/module.py#L{line}-L{line + 5}"


def make_codesearchnet(root: Path) -> Path:
    """python/final/jsonl/{test,valid}/ (test in two files, 2 before 10) and java/final/jsonl/test/."""
    test = root / "python" / "final" / "jsonl" / "test"
    write_jsonl(test / "python_test_10.jsonl.gz", [
        csn_row(PY2_CODE, "Print a greeting for name.", "greet", url("greet", 40)),
        csn_row(NO_URL_CODE, "Upper-case the text.", "shout", None),
    ])
    write_jsonl(test / "python_test_2.jsonl.gz", [
        csn_row(ADD_CODE, "Add two numbers and\nreturn the sum.\n\n:param a: the first number\n"
                          ":param b: the second number", "add_numbers", url("add_numbers", 1)),
        csn_row(METHOD_CODE, "Return the cached value for key.", "Cache.fetch", url("fetch", 20)),
        csn_row("def empty():\n    return None", "", "empty", url("empty", 30)),  # no docstring: skipped
    ])
    write_jsonl(root / "python" / "final" / "jsonl" / "valid" / "python_valid_0.jsonl.gz", [
        csn_row(NO_URL_CODE, "Upper-case the text.", "shout", url("shout", 50), partition="valid"),
    ])
    java = ("public int size() {\n    return this.items.size();\n}")
    write_jsonl(root / "java" / "final" / "jsonl" / "test" / "java_test_0.jsonl.gz", [
        csn_row(java, "Returns the number of items.\n\n@return the count", "Bag.size",
                "https://github.com/octo/bag/blob/abc/Bag.java#L10-L12", language="java"),
    ])
    return root


def test_codesearchnet_python_test_split(tmp_path):
    make_codesearchnet(tmp_path)
    data = load_codesearchnet(tmp_path)
    no_url = "project/module.py:shout:2"  # path:func_name:line of the row without url
    ids = [url("add_numbers", 1), url("fetch", 20), url("greet", 40), no_url]  # python_test_2 before _10
    assert data.name == "codesearchnet-python"
    assert list(data.corpus) == ids
    assert list(data.queries) == [f"q:{i}" for i in ids]
    assert data.qrels == {f"q:{i}": {i: 1} for i in ids}
    assert data.info["skipped"] == 1 and data.info["rows"] == 5
    assert data.info["files"] == ["python_test_2.jsonl.gz", "python_test_10.jsonl.gz"]
    # the query is the docstring's first paragraph, whitespace collapsed
    assert data.queries[f"q:{ids[0]}"] == "Add two numbers and return the sum."
    assert data.queries[f"q:{ids[1]}"] == "Return the cached value for key."


def test_codesearchnet_python_docstring_cut_from_the_code(tmp_path):
    make_codesearchnet(tmp_path)
    data = load_codesearchnet(tmp_path)
    texts = {doc_id: doc["text"] for doc_id, doc in data.corpus.items()}
    assert texts[url("add_numbers", 1)] == "def add_numbers(a, b):\n    total = a + b\n    return total"
    assert texts[url("fetch", 20)] == ("def fetch(self, key, default=None):\n        if key in self._cache:\n"
                                       "            return self._cache[key]\n        return default")
    # Python 2 does not parse: the triple-quoted literal is cut all the same
    assert texts[url("greet", 40)] == 'def greet(name):\n    print "Hello, %s" % name'
    for text in texts.values():
        assert '"""' not in text and "'''" not in text
    assert all(doc["title"] == "" for doc in data.corpus.values())


def test_strip_python_docstring_cases():
    # all lines indented (dedented to parse), the indentation of the rest kept
    assert strip_python_docstring('    def f():\n        "Doc."\n        return 1') == "    def f():\n        return 1"
    # docstring on the def line
    assert strip_python_docstring('def f(): """Doc."""; return 1') == "def f(): return 1"
    # no docstring in the code: unchanged; a later string literal is not a docstring
    code = 'def f():\n    x = 1\n    """not the doc"""\n    return x'
    assert strip_python_docstring(code, "Something else.") == code
    # unparsable, and the first triple-quoted literal is not the docstring: unchanged
    py2 = 'def g():\n    print "x"\n    sql = """SELECT 1"""'
    assert strip_python_docstring(py2, "Run the query.") == py2


def test_codesearchnet_valid_and_validation(tmp_path):
    make_codesearchnet(tmp_path)
    valid = load_codesearchnet(tmp_path, split="valid")
    validation = load_codesearchnet(tmp_path, split="validation")
    assert list(valid.corpus) == [url("shout", 50)]
    assert valid.corpus[url("shout", 50)]["text"] == "def shout(text):\n    return text.upper()"
    assert (validation.corpus, validation.queries, validation.qrels) == (valid.corpus, valid.queries, valid.qrels)
    assert valid.info["split"] == validation.info["split"] == "valid"
    with pytest.raises(DatasetError, match=r"unknown CodeSearchNet split 'evaluation'"):
        load_codesearchnet(tmp_path, split="evaluation")


def test_codesearchnet_layouts(tmp_path):
    make_codesearchnet(tmp_path)
    expected = load_codesearchnet(tmp_path)
    language_folder = tmp_path / "python"
    split_folder = language_folder / "final" / "jsonl" / "test"
    for folder in (language_folder, language_folder / "final" / "jsonl", split_folder):
        data = load_codesearchnet(folder)
        assert (data.corpus, data.queries, data.qrels) == (expected.corpus, expected.queries, expected.qrels)
    # a flat folder of several splits' files: the split's own files only
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in [*split_folder.iterdir(), *(language_folder / "final" / "jsonl" / "valid").iterdir()]:
        (flat / path.name).write_bytes(path.read_bytes())
    assert list(load_codesearchnet(flat).corpus) == list(expected.corpus)
    assert list(load_codesearchnet(flat, split="validation").corpus) == [url("shout", 50)]
    with pytest.raises(DatasetError, match=r"holds no CodeSearchNet train file \(its splits: test, valid\)"):
        load_codesearchnet(flat, split="train")


def test_codesearchnet_java_code_kept(tmp_path):
    make_codesearchnet(tmp_path)
    data = load_codesearchnet(tmp_path, language="java")
    doc_id = "https://github.com/octo/bag/blob/abc/Bag.java#L10-L12"
    assert data.name == "codesearchnet-java"
    assert data.corpus == {doc_id: {"title": "", "text": "public int size() {\n    return this.items.size();\n}"}}
    assert data.queries == {f"q:{doc_id}": "Returns the number of items."}


def test_codesearchnet_malformed_input(tmp_path):
    with pytest.raises(DatasetError, match=r"missing is not a folder"):
        load_codesearchnet(tmp_path / "missing")
    make_codesearchnet(tmp_path)
    with pytest.raises(DatasetError, match=r"no CodeSearchNet go test files.*it holds: java, python"):
        load_codesearchnet(tmp_path, language="go")
    path = tmp_path / "python" / "final" / "jsonl" / "test" / "python_test_2.jsonl.gz"
    write_jsonl(path, [csn_row(ADD_CODE, "Add.", "add_numbers", url("add", 60))], raw_lines={2: "{not json"})
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))}:2: not valid JSON"):
        load_codesearchnet(tmp_path)
    row = csn_row(ADD_CODE, "Add.", "add_numbers", url("add", 60))
    del row["code"]
    write_jsonl(path, [csn_row(METHOD_CODE, "Fetch.", "fetch", url("fetch", 70)), row])
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))}:2: no 'code' field"):
        load_codesearchnet(tmp_path)


# ------------------------------------------------------------------------------------------------------ CoIR

CORPUS_ROWS = [
    {"_id": "c1", "partition": "train", "text": "def add(a, b): return a + b", "title": "", "language": "python",
     "meta_information": {"resource": "x"}},
    {"_id": "c2", "partition": "test", "text": "def sub(a, b): return a - b", "title": "math", "language": "python",
     "meta_information": {"resource": "y"}},
    {"_id": "c3", "partition": "test", "text": "def mul(a, b): return a * b", "title": None, "language": "python",
     "meta_information": {"resource": "z"}},
]
QUERY_ROWS = [
    {"_id": "q1", "partition": "train", "text": "add two numbers", "title": "", "language": "en",
     "meta_information": {"resource": "x"}},
    {"_id": "q2", "partition": "test", "text": "subtract two numbers", "title": "", "language": "en",
     "meta_information": {"resource": "y"}},
    {"_id": "q3", "partition": "test", "text": "multiply two numbers", "title": "", "language": "en",
     "meta_information": {"resource": "z"}},
]


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def make_coir(folder: Path, queries_corpus: str = "cosqa-queries-corpus", qrels: str = "cosqa-qrels") -> Path:
    """Snapshots of the two hub repos: parquet corpus and queries, test qrels as parquet, valid qrels as jsonl."""
    write_parquet(folder / queries_corpus / "data" / "corpus-00000-of-00001.parquet", CORPUS_ROWS)
    write_parquet(folder / queries_corpus / "data" / "queries-00000-of-00001.parquet", QUERY_ROWS)
    write_parquet(folder / qrels / "data" / "test-00000-of-00001.parquet", [
        {"query_id": "q2", "corpus_id": "c2", "score": 1}, {"query_id": "q3", "corpus_id": "c3", "score": 1},
        {"query_id": "q3", "corpus_id": "c1", "score": 0}])
    write_jsonl(folder / qrels / "valid.jsonl", [{"query-id": "q1", "corpus-id": "c1", "score": 1}])
    return folder


def test_coir_hub_snapshots(tmp_path):
    folder = make_coir(tmp_path / "cosqa")
    data = load_coir(folder)
    assert data.name == "coir-cosqa" and data.folder == folder
    assert list(data.corpus) == ["c1", "c2", "c3"]  # every partition
    assert data.corpus["c2"] == {"title": "math", "text": "def sub(a, b): return a - b"}
    assert data.corpus["c3"]["title"] == ""
    assert data.document_texts(["c2"]) == ["math def sub(a, b): return a - b"]
    assert data.queries == {"q2": "subtract two numbers", "q3": "multiply two numbers"}  # judged in test only
    assert data.qrels == {"q2": {"c2": 1}, "q3": {"c3": 1, "c1": 0}}
    valid = load_coir(folder, split="validation")  # valid.jsonl, query-id/corpus-id columns
    assert valid.queries == {"q1": "add two numbers"} and valid.qrels == {"q1": {"c1": 1}}


def test_coir_download_layout_and_default_qrels_folder(tmp_path):
    folder = make_coir(tmp_path / "apps", "queries-corpus", "qrels")
    (folder / "qrels" / "data" / "test-00000-of-00001.parquet").unlink()
    write_parquet(folder / "qrels" / "default" / "test" / "0000.parquet",
                  [{"query-id": "q3", "corpus-id": "c3", "score": 2.0}])
    data = load_coir(folder)
    assert data.name == "coir-apps"
    assert data.queries == {"q3": "multiply two numbers"} and data.qrels == {"q3": {"c3": 2}}
    assert len(data.corpus) == 3


def test_coir_beir_layout_is_read_by_load_beir(tmp_path):
    folder = write_beir(tmp_path / "coir-cosqa", {"c1": {"title": "", "text": "def f(): pass"}},
                        {"q1": "a function that does nothing", "q2": "unjudged"}, {"test": {"q1": {"c1": 1}}})
    data = load_coir(folder)
    assert data.name == "coir-cosqa"
    assert data.queries == {"q1": "a function that does nothing"} and data.qrels == {"q1": {"c1": 1}}
    other = write_beir(tmp_path / "stackoverflow-qa", {"c1": {"title": "", "text": "x"}}, {"q1": "y"},
                       {"test": {"q1": {"c1": 1}}})
    assert load_coir(other).name == "coir-stackoverflow-qa"


def test_coir_needs_pyarrow_for_parquet(tmp_path, monkeypatch):
    folder = make_coir(tmp_path / "cosqa")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DatasetError, match=r"needs pyarrow: pip install 'modernretrieval\[eval\]'"):
        load_coir(folder)


def test_coir_malformed_input(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere is not a folder"):
        load_coir(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty is not a CoIR task folder: expected the subfolders "
                                           r"queries-corpus/ and qrels/"):
        load_coir(tmp_path / "empty")
    folder = make_coir(tmp_path / "cosqa")
    with pytest.raises(DatasetError, match=r"cosqa-qrels: no qrels for split 'train'.*its splits: test, valid"):
        load_coir(folder, split="train")
    qrels = folder / "cosqa-qrels" / "valid.jsonl"
    write_jsonl(qrels, [{"query-id": "q1", "corpus-id": "c1", "score": 1}], raw_lines={2: "query-id\tcorpus-id"})
    with pytest.raises(DatasetError, match=rf"{re.escape(str(qrels))}:2: not valid JSON"):
        load_coir(folder, split="valid")
    write_jsonl(qrels, [{"query-id": "q1", "corpus-id": "c1", "score": 1}, {"query-id": "q1", "score": 1}])
    with pytest.raises(DatasetError, match=rf"{re.escape(str(qrels))}:2: no 'corpus-id' or 'corpus_id' field"):
        load_coir(folder, split="valid")
    corpus = folder / "cosqa-queries-corpus" / "data" / "corpus-00000-of-00001.parquet"
    write_parquet(corpus, [CORPUS_ROWS[0], {**CORPUS_ROWS[1], "_id": None}])
    with pytest.raises(DatasetError, match=rf"{re.escape(str(corpus))}: row 2: no '_id' field"):
        load_coir(folder)
    corpus.write_bytes(b"not a parquet file")
    with pytest.raises(DatasetError, match=rf"{re.escape(str(corpus))}: cannot be read as parquet"):
        load_coir(folder)


def test_coir_download_offline_is_a_dataset_error(tmp_path, hub_offline):
    with pytest.raises(DatasetError, match=r"^cannot download CoIR-Retrieval/cosqa-queries-corpus \(.+\); "
                                           r"pass a local folder with --dataset$"):
        download_coir("cosqa", tmp_path / "cache")


def test_half_a_surrogate_pair_in_a_beir_file_becomes_replacement_characters(tmp_path):
    """JSON can escape half of a surrogate pair ("\\ud83d"); Python reads it as a lone surrogate that neither the
    tokenizer nor the cache's digest (UTF-8) can take: it is read as U+FFFD, every other character as it is."""
    from eval.datasets.beir import load_beir

    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "title": "t\\ud83d", "text": "ok \\ud83d\\ude42 half \\ud83d"}\n')
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "half \\udc00 pair"}\n')
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    data = load_beir(folder)
    text, title, query = data.corpus["d1"]["text"], data.corpus["d1"]["title"], data.queries["q1"]
    assert text.startswith("ok \U0001F642 half ") and "\ufffd" in text and "\ufffd" in title
    assert "\ufffd" in query
    for value in (text, title, query):
        value.encode("utf-8")  # no lone surrogate left


def test_qrels_with_a_byte_order_mark_trec_spaces_or_bad_bytes(tmp_path):
    from eval.datasets.beir import read_qrels

    path = tmp_path / "test.tsv"
    path.write_bytes("\ufeffquery-id\tcorpus-id\tscore\nq1\td1\t1\n".encode())  # a BOM before the header
    assert read_qrels(path) == {"q1": {"d1": 1}}
    path.write_text("q1 0 d1 2\nq1 0 d2 0\n\nq2 Q0 d3 1\n")  # TREC's qrels, space-separated
    assert read_qrels(path) == {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}
    path.write_bytes(b"q1\td\xe9\t1\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_qrels(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_a_jsonl_with_a_byte_order_mark_is_read(tmp_path, suffix):
    from eval.datasets.beir import read_jsonl

    data = "\ufeff" + json.dumps({"_id": "d1", "text": "a"}) + "\n" + json.dumps({"_id": "d2", "text": "b"}) + "\n"
    path = tmp_path / f"corpus{suffix}"
    path.write_bytes(gzip.compress(data.encode()) if suffix.endswith(".gz") else data.encode())
    assert [item["_id"] for _, item in read_jsonl(path)] == ["d1", "d2"]


# ------------------------------------------------------------------------------- names from the data, bad files


def test_mldr_language_comes_from_its_folder(tmp_path):
    """`mret eval mldr --dataset .../mldr-v1.0-de` reads German: named mldr-de, and --language en is refused."""
    from retrieval.cli.eval import Target, load_target

    folder = make_mldr(tmp_path, "de")
    assert load_mldr(folder).name == "mldr-de" and load_mldr(folder).info["lang"] == "de"
    assert load_target(Target.mldr, str(folder), "test", None, tmp_path / "cache").name == "mldr-de"
    assert load_mldr(tmp_path, "de").name == "mldr-de"  # the repo root: the language picks the folder
    with pytest.raises(DatasetError, match=r"mldr-v1\.0-de holds MLDR 'de', not 'en': drop --language, or pass "
                                           r"--language de"):
        load_target(Target.mldr, str(folder), "test", "en", tmp_path / "cache")


def test_codesearchnet_language_comes_from_the_file_names(tmp_path):
    """A python/ folder read with --language java is refused; without --language the files' prefix names it."""
    from retrieval.cli.eval import Target, load_target

    make_codesearchnet(tmp_path)
    with pytest.raises(DatasetError, match=r"holds CodeSearchNet python files \(python_test_2\.jsonl\.gz\), not "
                                           r"java: pass --language python"):
        load_target(Target.codesearchnet, str(tmp_path / "python"), "test", "java", tmp_path / "cache")
    java = load_target(Target.codesearchnet, str(tmp_path / "java"), "test", None, tmp_path / "cache")
    assert java.name == "codesearchnet-java" and java.info["language"] == "java"
    assert load_codesearchnet(tmp_path / "python", "python").name == "codesearchnet-python"


def test_a_damaged_gzip_stream_is_one_dataset_error(tmp_path):
    raw = "".join(json.dumps({"_id": str(i), "text": f"word {i} " * 20}) + "\n" for i in range(2000)).encode()
    data = bytearray(gzip.compress(raw))
    for k in range(100, 110):
        data[k] ^= 0x55
    folder = write_beir(tmp_path / "set", {"d1": {"text": "x"}}, {"q1": "y"}, {"test": {"q1": {"d1": 1}}})
    (folder / "corpus.jsonl").unlink()
    (folder / "corpus.jsonl.gz").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"corpus\.jsonl\.gz: cannot be read \(.+\)$"):
        load_beir(folder)


def test_a_dataset_json_that_is_not_an_object_is_ignored(tmp_path):
    folder = write_beir(tmp_path / "set", {"d1": {"text": "x"}}, {"q1": "y"}, {"test": {"q1": {"d1": 1}}})
    for text in ("[1]", '"name"', "3"):
        (folder / "dataset.json").write_text(text)
        data = load_beir(folder)
        assert data.name == "set" and data.info == {}


def test_repeated_corpus_ids_keep_the_last_row_with_one_warning(tmp_path):
    """As BEIR's loader: the last row of an id wins; a warning counts the repeats and names the first (BEIR layout,
    MLDR and CoIR's parquet)."""
    folder = write_beir(tmp_path / "set", {"d1": {"text": "x"}}, {"q1": "y"}, {"test": {"q1": {"d1": 1}}})
    write_jsonl(folder / "corpus.jsonl", [{"_id": "d1", "text": "first"}, {"_id": "d2", "text": "two"},
                                          {"_id": "d1", "text": "last"}, {"_id": "d2", "text": "again"},
                                          {"_id": "d1", "text": "third"}])
    with pytest.warns(UserWarning) as caught:
        data = load_beir(folder)
    messages = [str(w.message) for w in caught if "repeated" in str(w.message)]
    assert messages == [f"{folder / 'corpus.jsonl'}: 3 repeated document ids, the last row of each kept as BEIR "
                        "does (first: 'd1')"]
    assert data.corpus == {"d1": {"title": "", "text": "third"}, "d2": {"title": "", "text": "again"}}

    mldr = make_mldr(tmp_path / "mldr")
    write_jsonl(mldr / "corpus.jsonl.gz", [{"docid": d, "text": d} for d in
                                           ("doc-en-0", "doc-en-1", "doc-en-4", "doc-en-4")])
    with pytest.warns(UserWarning, match=r"1 repeated document ids.*first: 'doc-en-4'"):
        load_mldr(mldr)

    coir = make_coir(tmp_path / "cosqa")
    write_parquet(coir / "cosqa-queries-corpus" / "data" / "corpus-00000-of-00001.parquet",
                  CORPUS_ROWS + [CORPUS_ROWS[1] | {"text": "newer"}])
    with pytest.warns(UserWarning, match=r"1 repeated document ids.*first: 'c2'"):
        assert load_coir(coir).corpus["c2"]["text"] == "newer"
