"""token_spans: the 4-D masks of padded batches are read back into one token span per row."""

from __future__ import annotations

import pytest
import torch

from delta_opt.integrations.padding import token_spans


def _padding_mask(spans: list[tuple[int, int]], n: int, causal: bool) -> torch.Tensor:
    j = torch.arange(n)
    keys = torch.stack([(j >= s) & (j < e) for s, e in spans])  # [B, N]
    structural = torch.ones(n, n, dtype=torch.bool)
    if causal:
        structural = structural.tril()
    return (structural & keys[:, None, :])[:, None]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("spans", [[(0, 9)], [(3, 9), (0, 9), (5, 9)], [(0, 4), (0, 9), (0, 1)], [(0, 0), (2, 9)]])
def test_padding_masks_give_their_spans(spans, causal):
    assert token_spans(_padding_mask(spans, 9, causal), causal=causal) == spans


def test_hf_sdpa_masks_give_their_spans():
    transformers = pytest.importorskip("transformers", reason="needs transformers (the hf extra)")
    from transformers.masking_utils import causal_mask_function, padding_mask_function, and_masks, sdpa_mask

    padding = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    mask = sdpa_mask(
        batch_size=3, q_length=5, kv_length=5,
        mask_function=and_masks(causal_mask_function, padding_mask_function(padding)),
        allow_is_causal_skip=False,
    )  # fmt: skip
    assert transformers is not None and mask.shape == (3, 1, 5, 5)
    assert token_spans(mask, causal=True) == [(2, 5), (0, 5), (0, 3)]


@pytest.mark.parametrize(
    "change",
    [
        "hole",  # a padding token in the middle: not one span
        "extra_key",  # a query sees a key outside the structure
        "missing_key",  # a query misses one of its keys
    ],
)
def test_other_masks_are_not_padding(change):
    mask = _padding_mask([(0, 9), (2, 9)], 9, causal=True).clone()
    if change == "hole":
        mask[0, 0, :, 4] = False
    elif change == "extra_key":
        mask[1, 0, 3, 7] = True
    else:
        mask[1, 0, 6, 3] = False
    assert token_spans(mask, causal=True) is None


def test_non_bool_or_per_head_masks_are_not_read():
    mask = _padding_mask([(0, 6)], 6, causal=True)
    assert token_spans(mask.float(), causal=True) is None
    assert token_spans(mask.expand(1, 2, 6, 6), causal=True) is None
    assert token_spans(mask, causal=False) is None  # causal structure where full was claimed
