"""The packed representation and batching helpers."""

from __future__ import annotations

import pytest
import torch

from encoder.packing import batches_by_token_budget, pack, position_ids, repad, split, unpad


def test_pack_and_positions():
    input_ids, cu_seqlens = pack([[1, 2, 3], [4], [5, 6]])
    assert input_ids.tolist() == [1, 2, 3, 4, 5, 6]
    assert cu_seqlens.tolist() == [0, 3, 4, 6] and cu_seqlens.dtype == torch.int32
    assert position_ids(cu_seqlens).tolist() == [0, 1, 2, 0, 0, 1]
    assert [t.tolist() for t in split(input_ids, cu_seqlens)] == [[1, 2, 3], [4], [5, 6]]


def test_pack_rejects_empty():
    with pytest.raises(ValueError):
        pack([[1], []])
    with pytest.raises(ValueError):
        pack([])


def test_unpad_then_repad_round_trip():
    ids = torch.tensor([[7, 8, 9], [4, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    packed, cu_seqlens, kept = unpad(ids, mask)
    assert packed.tolist() == [7, 8, 9, 4] and cu_seqlens.tolist() == [0, 3, 4]
    hidden = packed.float()[:, None].repeat(1, 2)
    assert repad(hidden, kept, 2, 3)[..., 0].tolist() == [[7, 8, 9], [4, 0, 0]]


def test_batches_respect_budget_and_cover_everything():
    lengths = [5, 300, 40, 40, 8000, 9000, 1, 77]
    batches = batches_by_token_budget(lengths, max_tokens=400)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or sum(lengths[i] for i in batch) <= 400
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)  # longest first: equal lengths end up side by side
