"""The kinds of model a retriever holds, in a module that imports nothing heavy (the command line reads it to build
its options before any model or torch is loaded)."""

from __future__ import annotations

from typing import Literal, get_args

Kind = Literal["dense", "colbert"]
KINDS: tuple[Kind, ...] = get_args(Kind)  # dense: one vector per text; colbert: one vector per token
