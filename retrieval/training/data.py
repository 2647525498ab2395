"""Training data: what each task reads, as one list of ``Example`` (contrastive and distillation) or of texts (MLM).

- jsonl, one object per line: ``{"query", "positive", "negatives": [...]}`` (also ``anchor``/``negative`` as
  sentence-transformers names them), or ``{"query", "documents": [...], "scores": [...]}`` (teacher scores, for
  distillation: documents[0] need not be a positive).
- a BEIR folder: corpus.jsonl + queries.jsonl + qrels/<split>.tsv; one example per judged-relevant pair.
- MLM: a .txt file (one text per line), a .jsonl of {"text"}, or a BEIR folder (its corpus).

Texts are read as the BEIR loader reads them: a lone surrogate (JSON may escape half a pair) becomes U+FFFD.

``batches`` lays the examples out in micro-batches in which no text appears twice (see there).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Collection, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eval.datasets.beir import DatasetError, valid_unicode, find_file, load_beir, read_jsonl

from ..heads import Head


@dataclass
class Example:
    query: str
    positive: str | None = None
    negatives: list[str] = field(default_factory=list)
    documents: list[str] = field(default_factory=list)  # distillation: the documents the teacher scored
    scores: list[float] = field(default_factory=list)


def load_examples(path: str | Path, split: str = "train") -> list[Example]:
    path = Path(path)
    if path.is_dir():
        return beir_examples(path, split)
    if path.suffix != ".jsonl":
        raise DatasetError(f"{path}: training data is a .jsonl file or a BEIR folder")
    examples = []
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    for number, item in read_jsonl(path):
        if not isinstance(item, dict):
            raise DatasetError(f"{path}:{number}: expected a JSON object")
        query = item.get("query", item.get("anchor"))
        if not isinstance(query, str):
            raise DatasetError(f'{path}:{number}: no "query" (or "anchor") string')
        if "documents" in item or "scores" in item:
            documents, scores = item.get("documents"), item.get("scores")
            if (not isinstance(documents, list) or not isinstance(scores, list) or len(documents) != len(scores)
                    or len(documents) < 2 or not all(isinstance(d, str) for d in documents)
                    or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores)):
                raise DatasetError(f'{path}:{number}: "documents" and "scores" must be lists of the same length '
                                   "(at least 2) of strings and numbers")
            if not all(math.isfinite(s) for s in scores):
                raise DatasetError(f'{path}:{number}: "scores" must be finite numbers (no NaN or infinity)')
            examples.append(Example(valid_unicode(query), documents=[valid_unicode(d) for d in documents],
                                    scores=[float(s) for s in scores]))
            continue
        positive = item.get("positive", item.get("pos"))
        negatives = item.get("negatives", item.get("negative", item.get("neg", [])))
        negatives = [negatives] if isinstance(negatives, str) else negatives
        if not isinstance(positive, str) or not isinstance(negatives, list) or not all(
                isinstance(n, str) for n in negatives):
            raise DatasetError(f'{path}:{number}: expected "positive" (a string) and optional "negatives" (strings), '
                               'or "documents" with "scores"')
        examples.append(Example(valid_unicode(query), valid_unicode(positive),
                                [valid_unicode(n) for n in negatives]))
    if not examples:
        raise DatasetError(f"{path} holds no examples")
    kinds = {bool(e.documents) for e in examples}
    if len(kinds) > 1:
        raise DatasetError(f"{path} mixes (query, positive) examples with teacher-scored ones; use one kind per file")
    return examples


def beir_examples(folder: Path, split: str = "train") -> list[Example]:
    """One (query, positive) example per judged-relevant pair of ``qrels/<split>.tsv``, in file order."""
    dataset = load_beir(folder, split)
    texts = dict(zip(dataset.corpus, dataset.document_texts(list(dataset.corpus))))
    examples = [Example(dataset.queries[qid], texts[doc_id])
                for qid, judged in dataset.qrels.items() for doc_id, grade in judged.items()
                if grade > 0 and doc_id in texts]
    if not examples:
        raise DatasetError(f"{folder}: qrels/{split}.tsv has no relevant pair with a known query and document")
    return examples


def load_texts(path: str | Path) -> list[str]:
    """Texts for MLM."""
    path = Path(path)
    if path.is_dir():
        corpus = find_file(path, "corpus.jsonl")
        if corpus is None:
            raise DatasetError(f"{path} has no corpus.jsonl")
        texts = [(str(item.get("title") or "") + " " + str(item.get("text") or "")).strip()
                 for _, item in read_jsonl(corpus)]
    elif path.suffix == ".txt":
        try:
            texts = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise DatasetError(f"{path} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:  # not UTF-8, a folder named .txt, no permission
            raise DatasetError(f"{path}: cannot be read as UTF-8 text ({error})") from None
    elif path.suffix == ".jsonl":
        texts = []
        for number, item in read_jsonl(path):
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise DatasetError(f'{path}:{number}: expected an object with a "text" string')
            texts.append(valid_unicode(item["text"]))
    else:
        raise DatasetError(f"{path}: MLM data is a .txt (one text per line), a .jsonl of {{\"text\"}} or a BEIR folder")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DatasetError(f"{path} holds no text")
    return texts


def mine_negatives(examples: list[Example], model: Head, count: int, corpus: list[str] | None = None,
                   skip: int = 0, show_progress: bool | None = None) -> list[Example]:
    """Hard negatives from our own index: the corpus (default: every document the examples name) is encoded with
    ``model`` (a dense head) into a FaissIndex (flat, exact), and each query gets the ``count`` best-ranked documents
    that are not its positive, after skipping the first ``skip`` of them (the very top is where unjudged positives
    hide). Existing negatives are replaced."""
    import tempfile

    from indexes import FaissIndex

    corpus = list(dict.fromkeys(corpus if corpus is not None else
                                [d for e in examples for d in ([e.positive] if e.positive else []) + e.negatives]))
    positives: dict[str, set[str]] = {}
    for e in examples:
        positives.setdefault(e.query, set()).add(e.positive or "")
    queries = list(positives)
    with tempfile.TemporaryDirectory() as scratch:
        index = FaissIndex.create(Path(scratch) / "mining", dim=model.dim, kind="flat")
        index.add([str(i) for i in range(len(corpus))], model.encode_documents(corpus, show_progress=show_progress))
        found = index.search(model.encode_queries(queries, show_progress=show_progress),
                             k=min(len(corpus), count + skip + max(len(p) for p in positives.values())))
        index.close()
    mined = {}
    for query, hits in zip(queries, found):
        ranked = [corpus[int(doc_id)] for doc_id, _ in hits if corpus[int(doc_id)] not in positives[query]]
        mined[query] = ranked[skip: skip + count]
    return [Example(e.query, e.positive, mined[e.query]) for e in examples]


def batches(count: int, size: int, seed: int, keys: Callable[[int], Collection[Hashable]]) -> Iterator[list[int]]:
    """Micro-batches of example indices (0 to ``count`` - 1), endlessly, in which no key appears twice: what
    sentence-transformers' NoDuplicatesBatchSampler does for MultipleNegativesRankingLoss, where a text twice in a
    batch (a query with two relevant documents, a document relevant to two queries, a hard negative that is another
    row's positive, an example repeated at an epoch's end) is a false in-batch negative.

    The examples come in a stream of epochs, each shuffled by (seed, epoch); a batch takes them in stream order,
    and an example with a key already in the batch is deferred, in order, to the next batches (past an epoch's end
    when need be: the last batch of an epoch is topped up from the next one). A batch that has scanned a whole fresh
    epoch without being filled (too few distinct texts) runs short, as the sampler's last batch does. Batch k is a
    function of (count, size, seed, keys) alone: resuming at batch k draws what the uninterrupted run drew."""
    pending: deque[int] = deque()
    epoch = 0
    while True:
        batch: list[int] = []
        seen: set[Hashable] = set()
        deferred: list[int] = []
        fresh = False  # a new epoch was put in the stream while building this batch
        while len(batch) < size:
            if not pending:
                if fresh:
                    break
                pending.extend(np.random.default_rng([seed, epoch]).permutation(count).tolist())
                epoch, fresh = epoch + 1, True
                continue
            index = pending.popleft()
            found = keys(index)
            if seen.isdisjoint(found):
                batch.append(index)
                seen.update(found)
            else:
                deferred.append(index)
        pending.extendleft(reversed(deferred))
        yield batch
