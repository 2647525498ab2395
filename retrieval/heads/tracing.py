"""A transformers model's inference forward as a TorchScript trace, for servers.

Why: an eager forward returns to Python after each of its ~150 torch calls and takes the GIL back each time, so in a
server, where request threads run Python beside the query encoder, every call waits its turn (the convoy effect: a
query's encoding became ~100x slower beside one busy Python thread). A traced forward runs its whole graph in C++
without the GIL, and without transformers' per-module Python. Tracing costs ~0.5 s once, so only servers ask for it.

Trust: a trace records one path through the model's Python. It is made on a padded batch (so the attention mask is
always applied, never skipped as for an all-ones mask) and compared with the eager model on other batch sizes,
lengths up to the model's longest and masks; a model that does not trace, traces differently, or later fails on a
shape, runs eager. ``torch.jit.trace`` is deprecated in favour of ``torch.export``, whose programs run op by op from
Python (the GIL again); while it works the eager fallback covers its end.
"""

from __future__ import annotations

import logging
import threading
import warnings

import torch
from torch import nn


class _LastHiddenState(nn.Module):
    """A transformers model as a function of (input_ids, attention_mask) -> last_hidden_state, for tracing."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class TracedForward:
    """``model``'s traced forward, made on first use and again whenever its weights, dtype, device or mode change
    (``invalidate()`` after replacing layers in place, as int8 quantization does)."""

    def __init__(self, model: nn.Module, max_length: int):
        self.model, self.max_length = model, max_length
        self._generation = 0
        self._made: tuple[tuple, torch.jit.ScriptModule | None] | None = None  # (the weights' key, the trace)
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        self._generation += 1

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """last_hidden_state through the trace, or None when there is none to trust (the caller runs eager)."""
        traced = self.get()
        if traced is None:
            return None
        try:
            with torch.jit.optimized_execution(False):  # no re-specialisation per new shape
                return traced(input_ids, attention_mask)
        except RuntimeError:  # a shape the checks did not try: eager from now on
            self._made = (self._key(), None)
            return None

    def get(self) -> torch.jit.ScriptModule | None:
        key = self._key()
        made = self._made
        if made is not None and made[0] == key:
            return made[1]
        if self.model.training or key[0].type != "cpu" or not self._lock.acquire(blocking=False):
            return None  # (another thread is tracing: eager meanwhile)
        try:
            traced = None
            try:
                traced = _trace_checked(_LastHiddenState(self.model), key[0], self.max_length,
                                        getattr(self.model.config, "vocab_size", 1000))
            except Exception:  # noqa: BLE001 - any architecture transformers has: eager is always right
                pass
            self._made = (key, traced)
            return traced
        finally:
            self._lock.release()

    def _key(self) -> tuple:
        first = next(self.model.parameters())
        return first.device, first.dtype, first.data_ptr(), self.model.training, self._generation


def _example(shape: tuple[int, int], padded_from: int | None, device: torch.device,
             vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(shape[0] * 1000 + shape[1])
    ids = torch.randint(0, vocab_size, shape, generator=generator)
    mask = torch.ones_like(ids)
    if padded_from is not None:
        mask[-1, padded_from:] = 0
    return ids.to(device), mask.to(device)


def _trace_checked(module: nn.Module, device: torch.device, max_length: int,
                   vocab_size: int) -> torch.jit.ScriptModule | None:
    """``module`` traced on a padded batch, then compared with eager on other shapes: None when any output differs."""
    quiet = logging.getLogger("transformers")  # (tracing reads every attribute, some of which log a warning)
    level = quiet.level
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (tracer warnings about Python values: the checks below decide)
        quiet.setLevel(logging.ERROR)
        try:
            traced = torch.jit.trace(module, _example((2, 12), 7, device, vocab_size), check_trace=False)
        finally:
            quiet.setLevel(level)
        longest = min(max_length, 512)
        checks = (((1, 5), None), ((3, 19), 4), ((1, 1), None), ((2, longest), longest // 2))
        with torch.jit.optimized_execution(False):
            for shape, padded_from in checks:
                inputs = _example(shape, padded_from, device, vocab_size)
                if not torch.allclose(traced(*inputs), module(*inputs), rtol=1e-4, atol=1e-5):
                    return None
    return traced
