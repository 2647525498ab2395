"""The BEIR folder layout: corpus.jsonl (_id, title, text), queries.jsonl (_id, text), qrels/{split}.tsv."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class BeirDataset:
    corpus: dict[str, dict[str, str]]  # doc id -> {"title", "text"}
    queries: dict[str, str]  # query id -> text (only queries judged in the split)
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}
    folder: Path | None = None  # where it was loaded from: part of encode_beir's cache key

    def document_texts(self, ids: list[str]) -> list[str]:
        """Title and text joined as BEIR does: "title text" (just the text when there is no title)."""
        return [(self.corpus[i].get("title", "") + " " + self.corpus[i]["text"]).strip() for i in ids]


def load_beir(folder: str | Path, split: str = "test") -> BeirDataset:
    folder = Path(folder)
    for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder} is not a BEIR dataset folder: {name} is missing")
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / f"{split}.tsv", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader)  # header: query-id corpus-id score
        for query_id, doc_id, score in reader:
            qrels.setdefault(query_id, {})[doc_id] = int(score)
    corpus = {}
    with open(folder / "corpus.jsonl") as f:
        for line in f:
            doc = json.loads(line)
            corpus[str(doc["_id"])] = {"title": doc.get("title") or "", "text": doc.get("text") or ""}
    queries = {}
    with open(folder / "queries.jsonl") as f:
        for line in f:
            query = json.loads(line)
            if str(query["_id"]) in qrels:
                queries[str(query["_id"])] = query["text"]
    return BeirDataset(corpus, queries, qrels, folder)
