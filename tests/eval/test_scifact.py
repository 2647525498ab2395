"""Real retrieval quality: all-MiniLM-L6-v2 through our bi-encoder on a fixed SciFact subset, against
sentence-transformers with the same exact search and pytrec_eval. (Full run: bench/scifact_dense.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from eval.metrics import evaluate, exact_search
from retrieval import BiEncoder


@pytest.fixture(scope="module")
def subset(scifact):
    data = scifact
    query_ids = list(data.queries)[:60]
    relevant = {d for q in query_ids for d in data.qrels[q]}
    doc_ids = [d for i, d in enumerate(data.corpus) if i < 300 or d in relevant]  # about 370 documents
    return data, query_ids, doc_ids


def test_minilm_on_scifact_subset_matches_sentence_transformers(subset, minilm_folder):
    from sentence_transformers import SentenceTransformer

    data, query_ids, doc_ids = subset
    docs, queries = data.document_texts(doc_ids), [data.queries[q] for q in query_ids]
    qrels = {q: data.qrels[q] for q in query_ids}
    folder = minilm_folder

    ours = BiEncoder.from_pretrained(folder)
    d, q = ours.encode_documents(docs), ours.encode_queries(queries)
    reference = SentenceTransformer(str(folder), device="cpu")
    d_ref = reference.encode(docs, normalize_embeddings=True)
    q_ref = reference.encode(queries, normalize_embeddings=True)

    assert ((d * d_ref).sum(1)).min() >= 0.99999
    ours_metrics = evaluate(exact_search(q, d, doc_ids, query_ids), qrels)
    reference_metrics = evaluate(exact_search(q_ref, d_ref, doc_ids, query_ids), qrels)
    assert ours_metrics["num_queries"] == 60
    assert ours_metrics["ndcg@10"] == pytest.approx(reference_metrics["ndcg@10"], abs=1e-4)
    assert ours_metrics["ndcg@10"] > 0.6  # a real model on a small corpus: far above chance
    assert np.isclose(ours_metrics["recall@100"], reference_metrics["recall@100"], atol=1e-4)
