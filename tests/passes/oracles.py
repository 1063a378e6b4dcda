"""Oracles: models with their attention computed by ``delta_attention_reference``, built without the passes.

- transformers models: a custom attention function registered through ``AttentionInterface``
  (with ``sdpa_mask`` for its masks), which receives K/V un-repeated and calls the reference;
- ``nn.MultiheadAttention`` (alone or inside ``nn.TransformerEncoderLayer``): a module with the
  same weights that computes the projections itself and calls the reference;
- the hand-written modules of :mod:`tests.passes.models`: their ``reference`` switch.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

import torch
from torch import nn

from delta_opt.ops import delta_attention_reference

from .models import set_reference

REFERENCE_IMPL = "delta_reference"


def _hf_reference_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers attention signature: q [B, H, N, D], k/v [B, Hkv, N, D] (un-repeated)."""
    params = module._delta_reference
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    if attention_mask is not None:
        mask, causal = attention_mask[:, :, :, : key.shape[-2]], False
    else:
        mask, causal = None, bool(is_causal) and query.shape[2] > 1
    out = delta_attention_reference(query, key, value, mask, causal=causal, scale=scaling, **params)
    return out.transpose(1, 2).contiguous(), None


def hf_reference(model: nn.Module, params: dict[str, Any]) -> nn.Module:
    """A copy of a transformers model whose attention is the reference op with ``params``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(REFERENCE_IMPL, _hf_reference_attention)
    AttentionMaskInterface.register(REFERENCE_IMPL, sdpa_mask)
    oracle = copy.deepcopy(model)
    oracle.set_attn_implementation(REFERENCE_IMPL)
    for module in oracle.modules():
        module._delta_reference = params
    return oracle


class ReferenceMHA(nn.Module):
    """``nn.MultiheadAttention`` (batch_first, packed in-projection) through the reference op."""

    def __init__(self, mha: nn.MultiheadAttention, params: dict[str, Any]):
        super().__init__()
        assert mha.batch_first and mha._qkv_same_embed_dim
        self.mha, self.params = mha, params
        self.batch_first = True  # read by nn.TransformerEncoder before it looks at anything else

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None, average_attn_weights=True, is_causal=False):
        assert key_padding_mask is None
        mha = self.mha
        b, n, e = query.shape
        h = mha.num_heads
        w, bias = mha.in_proj_weight, mha.in_proj_bias
        q, k, v = (
            nn.functional.linear(x, w[i * e : (i + 1) * e], bias[i * e : (i + 1) * e]).view(b, -1, h, e // h).transpose(1, 2)
            for i, x in enumerate((query, key, value))
        )
        mask = attn_mask
        if mask is not None and mask.dtype == torch.bool:
            mask = ~mask  # MultiheadAttention's bool masks say where *not* to attend
        causal = is_causal and mask is None
        out = delta_attention_reference(q, k, v, mask, causal=causal, **self.params)
        return mha.out_proj(out.transpose(1, 2).reshape(b, n, e)), None


def mha_reference(model: nn.Module, params: dict[str, Any]) -> nn.Module:
    """A copy of ``model`` with every ``nn.MultiheadAttention`` replaced by :class:`ReferenceMHA`."""
    oracle = copy.deepcopy(model)
    for parent in list(oracle.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, name, ReferenceMHA(child, params))
    return oracle


def hand_reference(model: nn.Module, params: dict[str, Any]) -> nn.Module:
    return set_reference(copy.deepcopy(model), params)


def no_conversion(model: nn.Module, params: dict[str, Any]) -> nn.Module:
    """The oracle of a model none of whose attention may be converted: the model itself."""
    return model


@contextlib.contextmanager
def mha_fastpath_disabled() -> Iterator[None]:
    """The native fast path of nn.TransformerEncoderLayer would bypass the replaced self_attn."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)
