"""Both plugins chained through the emulated TensorRT launch (``trt_emulation``), against the
float64 reference: dtypes, head dims, GQA ratios, key masks, causal and bidirectional, odd and
degenerate lengths. Tolerance from data: ``|plugins - ref64| <= 2 |ref_dtype - ref64| + floor``."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from delta_opt.backends.tensorrt.graph import graph_bias
from delta_opt.backends.tensorrt.stages import StageAttributes
from delta_opt.ops.reference import delta_attention_reference
from delta_opt.ops.triton import triton_available
from delta_opt.plan import Correction
from delta_opt.testing import error_floor

from .trt_emulation import run_node

if not triton_available(torch.device("cpu")):
    pytest.skip("needs triton with TRITON_INTERPRET=1 (tests/conftest.py sets it on CPU machines)", allow_module_level=True)


@dataclass(frozen=True)
class Case:
    dtype: torch.dtype = torch.float32
    batch: int = 1
    q_heads: int = 4
    kv_heads: int = 2
    n: int = 131  # a multiple of no block size, stride or window
    kv_len: int | None = None
    head_dim: int = 64
    causal: bool = True
    window: int = 20
    sinks: int = 5
    stride: int = 8
    tail: int = 21
    mask: str = "none"  # none | padding | key_bias | per_head
    correction: str = "paper"  # the op's rule string: one rule, or one per query head


def _mask(case: Case, keys: int, g: torch.Generator):
    if case.mask == "none":
        return None
    if case.mask == "per_head":
        return torch.rand(1, case.q_heads, 1, keys, generator=g) > 0.3
    lengths = torch.randint(max(1, keys // 2), keys + 1, (case.batch,), generator=g)
    padding = torch.arange(keys).view(1, 1, 1, keys) < lengths.view(-1, 1, 1, 1)
    if case.mask == "padding":
        return padding
    return torch.randn(case.batch, 1, 1, keys, generator=g, dtype=torch.float64).masked_fill(~padding, float("-inf"))


def _check(case: Case, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    keys = case.kv_len or case.n
    q = torch.randn(case.batch, case.q_heads, case.n, case.head_dim, generator=g, dtype=torch.float64)
    k, v = (torch.randn(case.batch, case.kv_heads, keys, case.head_dim, generator=g, dtype=torch.float64) for _ in "kv")
    mask = _mask(case, keys, g)
    params = dict(causal=case.causal, window=case.window, sinks=case.sinks, stride=case.stride, tail=case.tail)
    attrs = StageAttributes(**params, scale=case.head_dim**-0.5, has_bias=mask is not None)
    # The node stores the rules as codes (paper 0, none 1, taylor 2).
    codes = [Correction.parse(name).code for name in case.correction.split(",")]
    values = dict(params, causal=int(case.causal), scale=attrs.scale, has_bias=int(attrs.has_bias), correction=codes)
    # What the prepared graph feeds the plugins: the node's additive mask in the element type,
    # as fp32 log2-units bias; the scale as scale * log2(e).
    if mask is None:
        bias = torch.zeros(1, 1, 1, 1)
    else:
        node_mask = torch.where(mask, 0.0, float("-inf")) if mask.dtype == torch.bool else mask
        bias = graph_bias(node_mask.to(case.dtype), keys)
    scale = torch.tensor([attrs.qk_scale_log2], dtype=torch.float32)
    x = [t.to(case.dtype) for t in (q, k, v)]
    got = run_node(*x, bias, scale, values)
    assert got.dtype == case.dtype and got.shape == (case.batch, case.q_heads, case.n, case.head_dim)
    assert not torch.isnan(got).any(), "a row no kernel wrote"
    params["correction"] = case.correction
    oracle = delta_attention_reference(q, k, v, mask, **params)
    same = delta_attention_reference(*x, None if mask is None else (mask if mask.dtype == torch.bool else mask.to(case.dtype)), **params)
    err, floor = (got.double() - oracle).abs().max().item(), (same.double() - oracle).abs().max().item()
    assert err <= 2 * floor + error_floor(case.dtype), (err, floor)


@pytest.mark.parametrize(
    ("dtype", "head_dim"),
    [(torch.float32, 40), (torch.float16, 64), (torch.bfloat16, 80), (torch.bfloat16, 128), (torch.float32, 128), (torch.float16, 96)],
    ids=lambda x: str(x).removeprefix("torch."),
)
def test_dtypes_and_head_dims(dtype, head_dim) -> None:
    """Each dtype with padded (40, 80, 96) and power-of-two head dims; the compiled variants
    differ by dtype (tiles, precision) and padded width."""
    _check(Case(dtype=dtype, head_dim=head_dim, mask="padding", batch=2, q_heads=2, kv_heads=1, n=97))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("mask", ["none", "padding", "key_bias", "per_head"])
def test_masks_and_causality(causal, mask) -> None:
    _check(Case(causal=causal, mask=mask, batch=2, q_heads=2, kv_heads=1, n=97, head_dim=32))


@pytest.mark.parametrize(
    "case",
    [
        Case(q_heads=6, kv_heads=6),  # MHA
        Case(q_heads=8, kv_heads=2, dtype=torch.bfloat16),  # GQA 4
        Case(n=5, kv_len=131, mask="padding"),  # decode / chunk: Nq != Nk is dense, bottom-right
        Case(window=200),  # the window covers every pair: all dense
        Case(stride=1),  # every row its own anchor
        Case(tail=500),  # everything is tail
        Case(n=257, stride=64, tail=64, window=70, sinks=33),  # G = BLOCK_N; several sparse tiles
        Case(n=1),
    ],
    ids=["mha", "gqa4-bf16", "decode", "window>=N", "stride1", "all-tail", "g64", "n1"],
)
def test_shapes_and_degenerate_splits(case) -> None:
    _check(case)


@pytest.mark.parametrize(
    "case",
    [
        Case(correction="none", mask="padding", batch=2),
        Case(correction="taylor", dtype=torch.float16, mask="key_bias", batch=2),
        Case(correction="taylor,none,paper,taylor", q_heads=4, kv_heads=2),  # per-head plan, GQA 2
        Case(correction="paper,taylor", q_heads=2, kv_heads=1, causal=False, mask="per_head", dtype=torch.bfloat16),
        Case(correction="none,paper,none,none", stride=1),  # G = 1: paper heads dense, none heads sparse
        Case(correction="taylor", n=257, stride=64, tail=64, window=70, sinks=33),  # several tiles, G = BLOCK_N
        Case(correction="taylor", n=5, kv_len=131),  # decode: dense, the taylor variant launches nothing else
    ],
    ids=["none", "taylor-fp16", "per-head", "per-head-bf16-bidirectional", "stride1-per-head", "taylor-g64", "taylor-decode"],
)
def test_correction_rules(case) -> None:
    """The node's rules reach both plugins: the rules input, the taylor scratch between them."""
    _check(case)
