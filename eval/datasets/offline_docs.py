"""A long-document retrieval set built offline from the installed manual pages, for when MLDR cannot be downloaded.

MLDR asks an LLM for a question about a passage somewhere inside a long document. Without an LLM the query here
is a sentence taken from deep inside the page (it starts past the first 2000 characters, about 500 tokens, so an
encoder that truncates early cannot see it) and cut out of the document, so the match must come from the rest of
the page's text rather than from the sentence itself. Sentences that occur in any other page (shared boilerplate,
like gcloud's global flag texts) are never queries: each query has exactly one relevant document. Every long page
is in the corpus, the pages without a query too, as distractors."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .beir import DatasetError, write_beir

MIN_QUERY_OFFSET = 2000
QUERY_WORDS = (8, 40)
MIN_LETTER_SHARE = 0.8
RENDER_TIMEOUT_S = 60
ABBREVIATIONS = {"e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "resp.", "no.", "mr.", "dr."}
CODE_CHARACTERS = re.compile(r"[{}\[\]<>|=$\\`_@]|://|(?:^|\s)-")
SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
BLOCK = re.compile(r"(?:[^\n]*\S[^\n]*(?:\n|$))+")  # lines up to a blank line
CONSTRUCTION = (
    "Regular files man{section}/*.{section}*.gz (not symlinks, not .so aliases) rendered by "
    "'man --nh --nj -l -P cat' with MANWIDTH=80, LC_ALL=C.UTF-8 (man-db strips overstrikes itself when not writing "
    "to a terminal); man's header and footer lines dropped, runs of blank lines collapsed to one, repeated texts "
    "dropped. Pages of at least min_chars characters are the corpus. Candidate queries: the first sentence (8 to 40 "
    "words, mostly letters, no options, code or URLs, starting with a capital) of a paragraph that starts at "
    "character 2000 or later, whose lowercased whitespace-collapsed text occurs once in its own page and in no other "
    "page. sha256 of the page id picks one candidate per page; the max_queries pages first in sha256 order of the "
    "query id keep theirs. The query sentence is cut out of its document; info['query_offsets'] holds where it was.")


@dataclass
class Candidate:
    doc_id: str
    offset: int  # where the sentence starts in the document
    sentence: str  # whitespace collapsed
    occurrences: int = 0  # in all documents, counted as lowercased, whitespace-collapsed text


def build_manpage_dataset(output: Path, man_dirs: list[Path] | None = None, *, sections: tuple[str, ...] = ("1", "8"),
                          min_chars: int = 8000, max_documents: int | None = None, max_queries: int = 500,
                          show_progress: bool = False, workers: int = 2) -> dict:
    """Render the man pages of ``sections`` under ``man_dirs`` (default /usr/share/man), keep those of at least
    ``min_chars`` characters as documents (id: the file name without .gz, e.g. ``ls.1``; no title) and write the
    set to ``output`` in the BEIR layout (one split, test; query id ``q:`` + doc id). ``max_documents`` renders only
    the first pages in sorted order (for small test builds). Returns the info written to dataset.json."""
    missing = [tool for tool in ("man", "groff") if shutil.which(tool) is None]
    if missing:
        raise DatasetError(f"the man-page set needs man and groff, and {' and '.join(missing)} is missing "
                           "(Debian: apt install man-db groff-base)")
    man_dirs = [Path(d) for d in (man_dirs if man_dirs is not None else [Path("/usr/share/man")])]
    files = [page for folder in man_dirs for section in sections
             for page in sorted((folder / f"man{section}").glob(f"*.{section}*.gz"))
             if page.is_file() and not page.is_symlink()]
    pages, aliases = _without_aliases(files, max_documents)
    with ThreadPoolExecutor(workers) as pool:
        rendered = list(tqdm(pool.map(_render, pages), total=len(pages), desc="rendering", disable=not show_progress))
    documents, repeated = _long_documents(pages, rendered, min_chars)
    chosen = _choose_queries(documents, max_queries)

    queries: dict[str, str] = {}
    offsets: dict[str, int] = {}
    for candidate in chosen:
        text = documents[candidate.doc_id]
        end = _sentence_span(text, candidate)
        documents[candidate.doc_id] = text[:candidate.offset] + text[end:]
        queries[f"q:{candidate.doc_id}"] = candidate.sentence
        offsets[f"q:{candidate.doc_id}"] = candidate.offset
    lengths = np.array([len(text) for text in documents.values()] or [0])
    info = {
        "name": "manpages-long",
        "man_dirs": [str(d) for d in man_dirs],
        "sections": list(sections),
        "min_chars": min_chars,
        "max_documents": max_documents,
        "max_queries": max_queries,
        "tools": {"man": _version("man"), "groff": _version("groff")},
        "construction": CONSTRUCTION,
        "counts": {
            "page_files": len(files),
            "aliases": aliases,
            "rendered": sum(text is not None for text in rendered),
            "failed": sum(text is None for text in rendered),
            "long": len(documents),
            "repeated_texts": repeated,
            "queries": {"test": len(queries)},
        },
        "document_chars": {"median": float(np.median(lengths)), "p90": float(np.percentile(lengths, 90)),
                           "max": int(lengths.max())},
        "query_offsets": offsets,
    }
    corpus = {doc_id: {"title": "", "text": text} for doc_id, text in documents.items()}
    write_beir(output, corpus, queries, {"test": {q: {q[2:]: 1} for q in queries}}, info)
    return info


def _without_aliases(files: list[Path], max_documents: int | None) -> tuple[list[Path], int]:
    """The first ``max_documents`` files that are not ``.so`` aliases, and how many aliases were passed over."""
    pages: list[Path] = []
    aliases = 0
    for page in files:
        if max_documents is not None and len(pages) == max_documents:
            break
        if _is_alias(page):
            aliases += 1
        else:
            pages.append(page)
    return pages, aliases


def _long_documents(pages: list[Path], rendered: list[str | None], min_chars: int) -> tuple[dict[str, str], int]:
    """Doc id -> text for the pages of at least ``min_chars`` characters, a text seen before left out (hard links,
    or pages generated from one source under two names), and how many were."""
    documents: dict[str, str] = {}
    seen_texts: set[str] = set()
    repeated = 0
    for page, text in zip(pages, rendered):
        if text is None or len(text) < min_chars:
            continue
        if text in seen_texts:
            repeated += 1
        else:
            seen_texts.add(text)
            documents[page.name.removesuffix(".gz")] = text
    return documents, repeated


def _is_alias(page: Path) -> bool:
    """A ``.so other/page`` stub: it renders as the page it points to, a duplicate."""
    try:
        with gzip.open(page, "rb") as f:
            return f.read(64).lstrip().startswith(b".so ")
    except (OSError, EOFError):
        return False


def _render(page: Path) -> str | None:
    """The page as plain text: no hyphenation or justification (so sentences can be found again as words), man's
    header and footer lines dropped, trailing spaces stripped, runs of blank lines made one. None when man fails or
    runs past RENDER_TIMEOUT_S."""
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "MANWIDTH": "80"}
    try:
        result = subprocess.run(["man", "--nh", "--nj", "-l", "-P", "cat", str(page)], capture_output=True,
                                env=environment, timeout=RENDER_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0:
        return None
    lines = [line.rstrip() for line in result.stdout.decode("utf-8", "replace").split("\n")]
    content = [i for i, line in enumerate(lines) if line]
    if len(content) < 3:
        return ""
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines[content[1]:content[-2] + 1]))


def _choose_queries(documents: dict[str, str], max_queries: int) -> list[Candidate]:
    """One candidate per page among those unique in the whole corpus; the first ``max_queries`` by hash."""
    candidates = [c for doc_id, text in documents.items() for c in _candidates(doc_id, text)]
    _count_occurrences(documents, candidates)
    by_page: dict[str, list[Candidate]] = defaultdict(list)
    for candidate in candidates:
        if candidate.occurrences == 1:
            by_page[candidate.doc_id].append(candidate)
    chosen = [options[_hash(doc_id) % len(options)] for doc_id, options in by_page.items()]
    return sorted(chosen, key=lambda c: _hash(f"q:{c.doc_id}"))[:max_queries]


def _candidates(doc_id: str, text: str) -> list[Candidate]:
    """The query-like first sentences of the paragraphs starting at MIN_QUERY_OFFSET or later."""
    found = []
    for block in BLOCK.finditer(text):
        lines = block.group().rstrip("\n").split("\n")
        line, column = _paragraph_start(lines)
        start = block.start() + sum(len(skipped) + 1 for skipped in lines[:line]) + column
        sentence = _first_sentence(" ".join((lines[line][column:] + " " + " ".join(lines[line + 1:])).split()))
        if start >= MIN_QUERY_OFFSET and sentence is not None:
            found.append(Candidate(doc_id, start, sentence))
    return found


def _paragraph_start(lines: list[str]) -> tuple[int, int]:
    """(line, column) where a block's text begins. Leading lines indented less than the next are headings (at
    column 0) or option tags, not text; but a tag with its text beside it (``-p     Print the ...``) starts the
    text at the column the next lines continue at."""
    for line in range(len(lines) - 1):
        hanging = _indent(lines[line + 1])
        if _indent(lines[line]) >= hanging:
            return line, _indent(lines[line])
        tag, text = lines[line][:hanging], lines[line][hanging:]
        if tag.startswith(" ") and tag.endswith(" ") and text[:1].strip():
            return line, hanging
    return len(lines) - 1, _indent(lines[-1])


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _first_sentence(paragraph: str) -> str | None:
    """The paragraph's first sentence when it reads like prose: a capital first, 8 to 40 words, mostly letters,
    no option, code or URL characters; None otherwise."""
    sentence = None
    for end in SENTENCE_END.finditer(paragraph):
        last_word = paragraph[:end.end()].rsplit(None, 1)[-1]
        following = paragraph[end.end():].lstrip()
        if last_word.lower() not in ABBREVIATIONS and (not following or not following[0].islower()):
            sentence = paragraph[:end.end()]
            break
    if sentence is None or not sentence[0].isupper() or CODE_CHARACTERS.search(sentence):
        return None
    visible = sentence.replace(" ", "")
    if not QUERY_WORDS[0] <= len(sentence.split()) <= QUERY_WORDS[1]:
        return None
    return sentence if sum(c.isalpha() for c in visible) >= MIN_LETTER_SHARE * len(visible) else None


def _count_occurrences(documents: dict[str, str], candidates: list[Candidate]) -> None:
    """How often each candidate occurs in all documents, as a substring of the lowercased, whitespace-collapsed
    texts. Its second to fourth words are whole words wherever it occurs, so only the places where they do are
    compared: one pass over the corpus, not one per candidate."""
    by_key: dict[tuple[str, ...], list[tuple[Candidate, str, int]]] = defaultdict(list)
    for candidate in candidates:
        words = candidate.sentence.lower().split()
        by_key[tuple(words[1:4])].append((candidate, " ".join(words), len(words)))
    for text in documents.values():
        words = text.lower().split()
        for i, key in enumerate(zip(words[1:], words[2:], words[3:]), start=1):
            for candidate, normalized, length in by_key.get(key, ()):
                if normalized in " ".join(words[i - 1:i - 1 + length]):
                    candidate.occurrences += 1


def _sentence_span(text: str, candidate: Candidate) -> int:
    """Where to cut the sentence starting at its offset: its end plus the whitespace after it, so the rest of the
    paragraph moves up into its place."""
    pattern = r"\s+".join(re.escape(word) for word in candidate.sentence.split()) + r"\s*"
    match = re.compile(pattern).match(text, candidate.offset)
    if match is None:
        raise AssertionError(f"{candidate.doc_id}: the query sentence is not at offset {candidate.offset}")
    return match.end()


def _hash(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def _version(tool: str) -> str:
    result = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False)
    return (result.stdout or result.stderr).strip().split("\n")[0]
