"""The offline benchmark builders: a CodeSearchNet-style set from Python sources and an MLDR-like set of long man
pages, both written in the BEIR layout and read back with load_beir."""

from __future__ import annotations

import ast
import re
import shutil
import sysconfig
import textwrap
from pathlib import Path

import pytest

from eval.datasets.beir import DatasetError, load_beir
from eval.datasets.offline_code import build_code_dataset
from eval.datasets.offline_docs import _choose_queries, _render, build_manpage_dataset

STDLIB = Path(sysconfig.get_paths()["stdlib"])
MAN_DIR = Path("/usr/share/man")
MAN_PAGES = 150
needs_man = pytest.mark.skipif(not (shutil.which("man") and shutil.which("groff") and (MAN_DIR / "man1").is_dir()),
                               reason="needs man and groff and /usr/share/man/man1 (apt install man-db groff-base)")


def normalized(text: str) -> str:
    return " ".join(text.lower().split())


def dataset_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# ------------------------------------------------------------------------------------------------ code


HANDMADE = {
    "loose/shapes.py": '''
        import functools
        import sys


        def area_of_circle(radius):
            """Compute the area of a circle
            from its radius.

            The second paragraph is not part of the query.
            """
            pi = 3.14159
            squared = radius * radius
            return pi * squared


        class Shape:
            def describe(self, verbose=False):
                """Return a readable description of this shape."""
                name = type(self).__name__
                if verbose:
                    return f"{name} with {self.sides} sides"
                return name

            class Corner:
                def angle_in_degrees(self):
                    """Measure the inner angle of the corner in degrees."""
                    radians = self.radians
                    return radians * 180 / 3.14159

            def __repr__(self):
                """Represent the shape for debugging output in a console."""
                name = type(self).__name__
                return f"<{name}>"


        @functools.lru_cache(maxsize=None)
        def cached_perimeter(sides, length):
            """Multiply the number of sides by the side length."""
            total = sides * length
            return max(total, 0)


        async def fetch_shape_remotely(url):
            """Download a shape description from a remote server."""
            data = await load(url)
            return parse(data)


        def sum_of_squares(values):
            """Sum the squares of all the given values together."""
            def square(value):
                """Square a single value for the outer sum here."""
                return value * value
            return sum(square(v) for v in values)


        if sys.platform == "win32":
            def path_separator():
                """Give the character that separates path components on Windows."""
                separator = "\\\\"
                return separator
        else:
            def path_separator():
                """Give the character that separates path components elsewhere."""
                separator = "/"
                return separator


        def test_area_is_positive():
            """Check that the area of a circle is always positive."""
            assert area_of_circle(1) > 0
            assert area_of_circle(2) > 0


        def does_nothing_at_all():
            """This function does nothing at all, on purpose."""
            pass


        def add_one(x):
            """Return the value plus one, for convenience."""
            return x + 1


        def combine_later(a, b, c):
            """Combine three values in a way still to be decided."""
            raise NotImplementedError(
                "later"
            )


        def normalize_first(values):
            """Normalize the list of numbers in place."""
            total = sum(values)
            values[:] = [v / total for v in values]


        def normalize_second(numbers):
            """Normalize the  list of Numbers
            in place."""
            largest = max(numbers)
            numbers[:] = [n / largest for n in numbers]


        def too_short_doc(a):
            """Too short."""
            b = a * 2
            return b


        def restated(a, b):
            """restated(a, b) -> the combination of a and b."""
            c = a + b
            return c


        def undocumented(a):
            b = a * 2
            return b
        ''',
    "loose/broken.py": '''
        def oops(:
            """This file does not parse at all."""
        ''',
    "loose/test_helpers.py": '''
        def make_fixture_shape(sides):
            """Build a shape with the given number of sides for tests."""
            shape = object()
            return shape
        ''',
    "geometry/__init__.py": "",
    "geometry/solids.py": '''
        def volume_of_box(width, height, depth):
            """Compute the volume of a rectangular box."""
            area = width * height
            return area * depth
        ''',
    "geometry/tests/check_solids.py": '''
        def check_volume_of_box(width, height, depth):
            """Check the volume of a rectangular box somehow."""
            area = width * height
            return area * depth
        ''',
}
HANDMADE_KEPT = {
    "shapes.area_of_circle", "shapes.Shape.describe", "shapes.Shape.Corner.angle_in_degrees",
    "shapes.cached_perimeter", "shapes.fetch_shape_remotely", "shapes.sum_of_squares", "shapes.path_separator",
    "shapes.path_separator#2", "geometry.solids.volume_of_box",
}


@pytest.fixture(scope="module")
def handmade(tmp_path_factory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("handmade")
    for name, text in HANDMADE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text).lstrip())
    output = root / "out"
    return build_code_dataset(output, [root / "loose", root / "geometry"], test_fraction=0.0), output


def test_code_rules_keep_and_skip_the_right_functions(handmade):
    info, output = handmade
    dataset = load_beir(output, "train")
    assert set(dataset.corpus) == HANDMADE_KEPT
    assert set(dataset.queries) == {f"q:{doc_id}" for doc_id in HANDMADE_KEPT}
    counts = info["counts"]
    assert counts["files"] == 5  # geometry/tests/ is left out
    assert counts["files_failed"] == 1
    assert counts["kept"] == len(HANDMADE_KEPT)
    assert counts["queries"] == {"train": len(HANDMADE_KEPT), "test": 0}
    assert counts["skipped"] == {"dunder": 1, "duplicate_query": 2, "short_query": 1, "signature_query": 1,
                                 "test_function": 2, "trivial_body": 3}


def test_code_documents_are_functions_without_docstrings(handmade):
    _, output = handmade
    dataset = load_beir(output, "train")
    assert dataset.queries["q:shapes.area_of_circle"] == "Compute the area of a circle from its radius."
    for query_id, judged in dataset.qrels.items():
        (doc_id,) = judged
        text = dataset.corpus[doc_id]["text"]
        assert normalized(dataset.queries[query_id]) not in normalized(text)
        ast.parse(text)  # dedented to column 0, docstring lines cut cleanly
    corner = dataset.corpus["shapes.Shape.Corner.angle_in_degrees"]["text"]
    assert corner.startswith("def angle_in_degrees(self):\n    radians = self.radians\n")
    assert dataset.corpus["shapes.cached_perimeter"]["text"].startswith(
        "@functools.lru_cache(maxsize=None)\ndef cached_perimeter(sides, length):\n    total")
    assert dataset.corpus["shapes.fetch_shape_remotely"]["text"].startswith("async def fetch_shape_remotely(url):")
    assert '"/"' in dataset.corpus["shapes.path_separator#2"]["text"]
    assert "def square(value):" in dataset.corpus["shapes.sum_of_squares"]["text"]  # nested: part of its parent
    assert all(doc["title"] == "" for doc in dataset.corpus.values())


STDLIB_SOURCES = ["json", "email", "http", "logging", "argparse.py", "textwrap.py", "configparser.py"]


@pytest.fixture(scope="module")
def stdlib_builds(tmp_path_factory) -> tuple[dict, Path, Path]:
    root = tmp_path_factory.mktemp("pycode")
    sources = [STDLIB / name for name in STDLIB_SOURCES]
    info = build_code_dataset(root / "first", sources)
    build_code_dataset(root / "second", sources)
    return info, root / "first", root / "second"


def test_code_build_is_deterministic(stdlib_builds):
    _, first, second = stdlib_builds
    assert dataset_bytes(first) == dataset_bytes(second)


def test_code_splits_load_and_point_into_the_corpus(stdlib_builds):
    info, first, _ = stdlib_builds
    assert info["name"] == "pycode-" + sysconfig.get_python_version()
    seen_queries = set()
    for split in ("train", "test"):
        dataset = load_beir(first, split)
        assert len(dataset.qrels) == info["counts"]["queries"][split] > 0
        assert len(dataset.corpus) == info["counts"]["kept"]  # the corpus holds both splits
        for query_id, judged in dataset.qrels.items():
            (doc_id,) = judged
            assert query_id == f"q:{doc_id}" and doc_id in dataset.corpus
            name = doc_id.split("#")[0].rsplit(".", 1)[1]
            text = dataset.corpus[doc_id]["text"]
            assert re.search(rf"^(async )?def {re.escape(name)}\(", text, re.M), doc_id
            assert normalized(dataset.queries[query_id]) not in normalized(text), doc_id
        seen_queries |= set(dataset.qrels)
        modules = {query_id[2:].split(".")[0] for query_id in dataset.qrels}
        assert len(modules) == info["counts"]["top_level_modules"][split]
    assert len(seen_queries) == info["counts"]["kept"]
    module_names = {doc_id.split(".")[0] for doc_id in load_beir(first, "train").corpus}
    assert module_names == {"json", "email", "http", "logging", "argparse", "textwrap", "configparser"}


# ------------------------------------------------------------------------------------------------ man pages


def page(sentences: list[str], padding: int = 2100) -> str:
    """A rendered-looking page: a heading, unquotable padding past the query offset, then paragraphs."""
    filler = "       lowercase padding that no query may come from, and it goes on\n"
    body = "\n\n".join(f"       {sentence}" for sentence in sentences)
    return "NAME\n" + filler * (padding // len(filler) + 1) + "\nDESCRIPTION\n" + body + "\n"


def test_query_choice_skips_shared_early_and_code_like_sentences():
    shared = "This sentence is shared boilerplate found in both of the test pages."
    documents = {
        "alpha.1": page([shared, "Use the -f flag to force the operation on all files at once.",
                         "Rotating the frobnicator clockwise makes the alpha tool run much faster."]),
        "beta.1": page([shared, "The beta tool reads its settings from a file in the home folder."]),
        "delta.1": page(["-x, --explain\n              Lowercase text of the option which is not a query.",
                         "-y     Ye olde tagged text that starts beside its option tag.\n"
                         "              It goes on here."]),
        "gamma.1": "       Only an early sentence exists in this page and it must not count.\n" + "x\n" * 1500,
    }
    chosen = {c.doc_id: c for c in _choose_queries(documents, max_queries=10)}
    assert set(chosen) == {"alpha.1", "beta.1", "delta.1"}
    assert chosen["alpha.1"].sentence.startswith("Rotating the frobnicator")
    assert chosen["beta.1"].sentence.startswith("The beta tool")
    assert chosen["delta.1"].sentence == "Ye olde tagged text that starts beside its option tag."
    for candidate in chosen.values():
        assert candidate.offset >= 2000
        assert documents[candidate.doc_id][candidate.offset:].startswith(candidate.sentence)
    assert len(_choose_queries(documents, max_queries=1)) == 1


def test_manpage_build_needs_man(monkeypatch, tmp_path):
    monkeypatch.setattr("eval.datasets.offline_docs.shutil.which", lambda tool: None)
    with pytest.raises(DatasetError, match="apt install man-db groff-base"):
        build_manpage_dataset(tmp_path / "out")


@pytest.fixture(scope="module")
def manpage_builds(tmp_path_factory) -> tuple[dict, Path, Path]:
    root = tmp_path_factory.mktemp("manpages")
    info = build_manpage_dataset(root / "first", max_documents=MAN_PAGES)
    build_manpage_dataset(root / "second", max_documents=MAN_PAGES)
    return info, root / "first", root / "second"


@needs_man
def test_manpage_build_is_deterministic(manpage_builds):
    _, first, second = manpage_builds
    assert dataset_bytes(first) == dataset_bytes(second)


@needs_man
def test_manpage_queries_are_cut_from_long_documents(manpage_builds):
    info, first, _ = manpage_builds
    dataset = load_beir(first, "test")
    counts = info["counts"]
    assert counts["rendered"] + counts["failed"] == MAN_PAGES
    assert len(dataset.corpus) == counts["long"] and len(dataset.queries) == counts["queries"]["test"] > 5
    texts = {doc_id: normalized(doc["text"]) for doc_id, doc in dataset.corpus.items()}
    for query_id, judged in dataset.qrels.items():
        (doc_id,) = judged
        query = dataset.queries[query_id]
        assert query_id == f"q:{doc_id}" and doc_id in dataset.corpus
        assert 8 <= len(query.split()) <= 40 and query[0].isupper() and query[-1] in ".!?"
        assert len(dataset.corpus[doc_id]["text"]) >= info["min_chars"] - 2 * len(query)
        assert info["query_offsets"][query_id] >= 2000
        assert all(normalized(query) not in text for text in texts.values()), query_id
    unqueried = set(dataset.corpus) - {query_id[2:] for query_id in dataset.qrels}
    assert all(len(dataset.corpus[doc_id]["text"]) >= info["min_chars"] for doc_id in unqueried)


@needs_man
def test_manpage_query_is_the_sentence_at_its_offset(manpage_builds):
    info, first, _ = manpage_builds
    dataset = load_beir(first, "test")
    for query_id in sorted(dataset.queries)[:3]:
        doc_id, offset = query_id[2:], info["query_offsets"][query_id]
        section = doc_id.rsplit(".", 1)[1][0]
        original = _render(MAN_DIR / f"man{section}" / f"{doc_id}.gz")
        words = dataset.queries[query_id].split()
        cut = re.compile(r"\s+".join(map(re.escape, words)) + r"\s*").match(original, offset)
        assert cut is not None, query_id
        assert dataset.corpus[doc_id]["text"] == original[:offset] + original[cut.end():]
