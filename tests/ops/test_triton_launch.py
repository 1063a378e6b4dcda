"""The Triton launch plan: pure Python (no Triton needed), shared with ahead-of-time builds."""

from __future__ import annotations

import math

import pytest
import torch

from delta_opt.ops.checks import AttentionShape
from delta_opt.plan import Correction
from delta_opt.ops.triton.arguments import (
    KernelBuffers,
    accumulator_dtype,
    compile_signature,
    constexprs,
    dense_kernel_args,
    sparse_kernel_args,
    specialize,
)
from delta_opt.ops.triton.launch import (
    BlockConfig,
    block_config,
    key_mask_bias,
    padded_dim,
    plan_launch,
    strides,
    unsupported_reason,
)


def _shape(n_q=1000, n_k=None, batch=1, q_heads=4, kv_heads=2, head_dim=64, value_dim=None):
    return AttentionShape(batch, q_heads, kv_heads, n_q, n_q if n_k is None else n_k, head_dim, value_dim or head_dim)


def _plan(shape=None, dtype=torch.bfloat16, **params):
    params = {"causal": True, "window": 64, "sinks": 16, "stride": 8, "tail": 24, "scale": 0.125, **params}
    return plan_launch(shape or _shape(), dtype, **params)


@pytest.mark.parametrize(("dim", "padded"), [(1, 16), (16, 16), (40, 64), (64, 64), (80, 128), (96, 128), (128, 128), (200, 256)])
def test_head_dims_pad_to_a_power_of_two_of_at_least_16(dim, padded):
    assert padded_dim(dim) == padded


def test_block_config_by_dtype_and_head_dim():
    assert block_config(128, 128, torch.bfloat16) == BlockConfig(128, 64, 8, 3)
    assert block_config(80, 80, torch.float16) == BlockConfig(128, 64, 8, 3)  # padded to 128
    assert block_config(64, 64, torch.bfloat16) == BlockConfig(128, 64, 8, 3)
    assert block_config(256, 256, torch.bfloat16) == BlockConfig(64, 32, 8, 2)
    assert block_config(64, 64, torch.float32) == BlockConfig(64, 32, 8, 2)
    assert block_config(128, 128, torch.bfloat16, interpret=True) == BlockConfig(64, 32, 1, 1)


def test_plan_for_the_benchmark_shape():
    """bf16, Hq=32, Hkv=8, D=128, N=128K, W=2048, S=1024, G=64, T=128 (the H200 benchmark)."""
    n = 128 * 1024
    shape = AttentionShape(1, 32, 8, n, n, 128, 128)
    plan = plan_launch(shape, torch.bfloat16, causal=True, window=2048, sinks=1024, stride=64, tail=128, scale=128**-0.5)
    assert not plan.all_dense
    assert plan.n_corrected == (n - 128) // 64 * 64 == 130944
    assert plan.n_anchors == 2046 and plan.n_dense_rows == 2046 + 128
    assert plan.group == 4
    assert plan.dense_grid == (math.ceil(2174 / 128), 32)
    assert plan.sparse_grid == (130944 // 128, 32)
    assert plan.delta_shape == (1, 32, 2046, 128)  # O(N / G * D): the only scratch
    assert plan.block_d == plan.block_dv == 128
    assert plan.qk_scale_log2 == pytest.approx(128**-0.5 * math.log2(math.e))


@pytest.mark.parametrize("rule", ["paper", "none", "taylor"])
@pytest.mark.parametrize(
    "params",
    [dict(), dict(stride=7, tail=0), dict(stride=1000, tail=0), dict(tail=999), dict(window=1000), dict(stride=1)],
    ids=["default", "stride7", "one-anchor", "all-tail", "window=N", "stride=1"],
)
def test_every_row_is_written_exactly_once(params, rule):
    plan = _plan(**params, corrections=[rule] * 4)
    rows = torch.cat([plan.dense_rows(rule), plan.sparse_rows(rule)])
    assert torch.equal(rows.sort().values, torch.arange(plan.n_q))
    # The dense kernel stores the anchors (paper heads only), then the tail.
    dense = plan.dense_rows(rule)
    anchors = torch.arange(0, plan.n_corrected, plan.stride) if rule == "paper" else torch.arange(0)
    assert torch.equal(dense[: anchors.numel()], anchors)
    assert torch.equal(dense[anchors.numel() :], torch.arange(plan.n_corrected, plan.n_q))


def test_anchor_and_tail_rows_never_share_a_dense_block():
    plan = _plan(_shape(n_q=1000), corrections=["taylor", "paper", "none", "taylor"], blocks=BlockConfig(16, 32, 1, 1))
    # Np = 976, 122 anchors: 8 blocks of anchor slots (the last one part empty), 24 tail rows.
    assert (plan.n_corrected, plan.n_anchors, plan.anchor_blocks) == (976, 122, 8)
    assert plan.tail_blocks == 2 and plan.dense_grid == (10, 4)
    assert plan.rule_codes == (2, 0, 1, 2) and plan.has_taylor
    assert plan.mean_key_shape == (1, 4, 122, 64) and plan.offset_shape == (1, 4, 122)


def test_rules_decide_anchor_blocks_and_taylor_buffers():
    none = _plan(corrections=["none"] * 4)
    assert none.anchor_blocks == 0 and not none.has_taylor  # nobody reads an anchor
    assert none.dense_grid == (none.tail_blocks, 4)
    paper = _plan()
    assert paper.corrections == (Correction.PAPER,) * 4 and not paper.has_taylor
    assert paper.mean_key_shape == (0,) and paper.offset_shape == (0,)
    # Stride 1 makes paper and taylor dense everywhere, but a "none" head keeps its sparse rows.
    assert _plan(stride=1, corrections=["taylor", "paper"] * 2).all_dense
    mixed = _plan(stride=1, corrections=["none", "paper"] * 2)
    assert not mixed.all_dense and mixed.n_anchors == mixed.n_corrected
    # When every row is dense no taylor statistics are needed.
    assert not _plan(window=1000, corrections=["taylor"] * 4).has_taylor
    with pytest.raises(ValueError, match=r"one rule per query head \(Hq=4\); got 2"):
        _plan(corrections=["taylor", "none"])


@pytest.mark.parametrize(
    ("shape", "params"),
    [(_shape(n_q=1000), dict(window=1000)), (_shape(), dict(stride=1)), (_shape(), dict(tail=1000)), (_shape(n_q=7, n_k=1000), dict())],
    ids=["window>=N", "stride=1", "tail>=N", "decode"],
)
def test_all_dense_plans_have_no_sparse_pass(shape, params):
    plan = _plan(shape, **params)
    assert plan.all_dense and plan.sparse_grid is None
    assert plan.n_dense_rows == shape.q_len and plan.n_anchors == 0
    assert plan.causal_offset == shape.kv_len - shape.q_len
    assert torch.equal(plan.dense_rows(), torch.arange(shape.q_len))


def test_explicit_blocks_override_the_defaults():
    plan = _plan(blocks=BlockConfig(16, 32, 2, 1))
    assert plan.blocks == BlockConfig(16, 32, 2, 1)
    assert plan.sparse_grid == (math.ceil(plan.n_corrected / 16), 4)


def test_strides_are_zero_on_broadcast_dims():
    t = torch.zeros(2, 1, 5, 8)
    assert strides(t) == (40, 0, 8, 1)
    assert strides(torch.zeros(3, 4).expand(2, 3, 4)) == (0, 4, 1)


def _qkv(dtype=torch.float16, head_dim=64, n=32):
    return torch.zeros(1, 2, n, head_dim, dtype=dtype), torch.zeros(1, 1, n, head_dim, dtype=dtype)


@pytest.mark.parametrize(
    ("mask", "interpret"),
    [(None, False), (torch.ones(1, 1, 1, 32, dtype=torch.bool), False), (torch.zeros(1, 2, 1, 32), False), (torch.ones(32, dtype=torch.bool), True)],
    ids=["none", "key-padding", "per-head-additive", "1-D"],
)
def test_key_masks_are_supported(mask, interpret):
    q, k = _qkv()
    assert unsupported_reason(q, k, k, mask, interpret=interpret) is None


def test_unsupported_inputs_say_why():
    q, k = _qkv()
    full = torch.ones(32, 32, dtype=torch.bool)
    assert "varies along the query dim" in unsupported_reason(q, k, k, full, interpret=True)
    q64, k64 = _qkv(torch.float64)
    assert "dtype torch.float64" in unsupported_reason(q64, k64, k64, None, interpret=False)
    assert unsupported_reason(q64, k64, k64, None, interpret=True) is None
    qd, kd = _qkv(head_dim=320)
    assert "head dim D=320 exceeds" in unsupported_reason(qd, kd, kd, None, interpret=False)
    # A [B, N, H, D] layout whose sequence stride overflows 32-bit row offsets.
    wide = torch.empty_strided((1, 1, 3, 64), (2**31, 2**31, 2**30, 1), dtype=torch.float16, device="meta")
    assert "32-bit offsets" in unsupported_reason(wide, wide, wide, None, interpret=False)


def test_key_mask_bias_in_log2_units_with_broadcast_heads():
    shape = _shape(n_q=6, batch=2, q_heads=4)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6]).view(2, 1, 1, 6)
    bias = key_mask_bias(mask, shape, torch.float32)
    assert bias.shape == (2, 4, 6) and bias.stride(1) == 0  # not copied per head
    assert torch.equal(bias[0, 3], torch.tensor([0.0] * 4 + [float("-inf")] * 2))
    additive = torch.tensor([0.5, -1.0, float("-inf"), 0.0, 2.0, 0.0], dtype=torch.float64)
    bias = key_mask_bias(additive, shape, torch.float64)
    torch.testing.assert_close(bias[1, 2], additive * math.log2(math.e))
    # One verdict for all keys still gives the kernels a row to index.
    bias = key_mask_bias(torch.ones(2, 1, 1, 1, dtype=torch.bool), shape, torch.float32)
    assert bias.shape == (2, 4, 6) and bias.stride(2) == 1


# ---- kernel arguments ----------------------------------------------------------------------


def _buffers(plan, mask: bool):
    def meta(*shape, dtype=torch.bfloat16):
        return torch.empty(shape, dtype=dtype, device="meta")

    return KernelBuffers(
        q=meta(plan.batch, plan.q_heads, plan.n_q, plan.head_dim),
        k=meta(plan.batch, plan.kv_heads, plan.n_k, plan.head_dim),
        v=meta(plan.batch, plan.kv_heads, plan.n_k, plan.value_dim),
        out=meta(plan.batch, plan.q_heads, plan.n_q, plan.value_dim),
        delta=meta(*plan.delta_shape, dtype=torch.float32),
        scale=meta(1, dtype=torch.float32),
        rules=meta(plan.q_heads, dtype=torch.int32),
        bias=meta(plan.batch, 1, plan.n_k, dtype=torch.float32).expand(plan.batch, plan.q_heads, plan.n_k) if mask else None,
        mean_key=meta(*plan.mean_key_shape, dtype=torch.float32) if plan.has_taylor else None,
        offset=meta(*plan.offset_shape, dtype=torch.float32) if plan.has_taylor else None,
    )


def test_kernel_arguments_follow_the_plan():
    plan = _plan(_shape(batch=2, q_heads=4, kv_heads=2))
    buffers = _buffers(plan, mask=True)
    dense, sparse = dense_kernel_args(plan, buffers), sparse_kernel_args(plan, buffers)
    assert dense["anchor_blocks"] == plan.anchor_blocks and dense["n_anchors"] == plan.n_anchors
    assert dense["anchor_stride"] == sparse["anchor_stride"] == 8 and sparse["n_corrected"] == plan.n_corrected
    assert dense["group"] == 2 and dense["Q"] is buffers.q
    assert (dense["stride_qb"], dense["stride_qh"], dense["stride_qn"], dense["stride_qd"]) == (4 * 1000 * 64, 1000 * 64, 64, 1)
    assert (dense["stride_biasb"], dense["stride_biash"]) == (1000, 0)  # one bias row per batch, shared by heads
    assert dense["Rules"] is buffers.rules and sparse["Rules"] is buffers.rules
    unmasked = dense_kernel_args(plan, _buffers(plan, mask=False))
    assert unmasked["Bias"] is unmasked["Scale"] and unmasked["stride_biasb"] == 0
    # Without a taylor head the taylor buffers are absent and never read.
    assert unmasked["MeanKey"] is unmasked["Scale"] and unmasked["Offset"] is unmasked["Scale"]
    assert unmasked["stride_mn"] == unmasked["stride_cn"] == 0
    compile_time = constexprs(plan, torch.bfloat16, has_bias=True, interpret=False)
    assert compile_time == dict(CAUSAL=True, HAS_BIAS=True, TAYLOR=False, UPCAST=False, PRECISION="tf32",
                                BLOCK_M=128, BLOCK_N=64, BLOCK_D=64, BLOCK_DV=64)  # fmt: skip
    taylor = _plan(_shape(batch=2, q_heads=4, kv_heads=2), corrections=["taylor", "none", "paper", "taylor"])
    args = sparse_kernel_args(taylor, _buffers(taylor, mask=False))
    n_anchors = taylor.n_anchors
    assert (args["stride_mb"], args["stride_mh"], args["stride_mn"], args["stride_md"]) == (4 * n_anchors * 64, n_anchors * 64, 64, 1)
    assert (args["stride_cb"], args["stride_ch"], args["stride_cn"]) == (4 * n_anchors, n_anchors, 1)
    assert constexprs(taylor, torch.bfloat16, has_bias=False, interpret=False)["TAYLOR"] is True
    assert constexprs(plan, torch.float32, has_bias=False, interpret=True)["PRECISION"] == "ieee"
    assert accumulator_dtype(torch.bfloat16) == torch.float32 and accumulator_dtype(torch.float64) == torch.float64


def test_specialisation_matches_the_jit():
    assert specialize(1) == ("constexpr", 1)
    assert specialize(64) == ("i32", "D") and specialize(65) == ("i32", "")
    assert specialize(2**33) == ("i64", "D")
    assert specialize(torch.empty(4, dtype=torch.bfloat16, device="meta")) == ("*bf16", "D")
    assert specialize(0.5) == ("fp32", None)
    with pytest.raises(TypeError, match="cannot specialise"):
        specialize("x")
    # Where Triton is installed, its own (native) specialisation agrees.
    native = pytest.importorskip("triton._C.libtriton").native_specialize_impl
    from triton.backends.compiler import BaseBackend

    for value in (1, 0, 16, 17, 2**31, 2**33 + 16, 0.25, torch.zeros(3, dtype=torch.float16), torch.zeros(5)[1:]):
        assert specialize(value) == tuple(native(BaseBackend, value, False, True, True)), value
    for value in (1, 16, 17, 2**33):  # do_not_specialize
        assert specialize(value, by_value=False) == tuple(native(BaseBackend, value, False, False, True)), value


def test_compile_signature_marks_constexprs_and_divisibility():
    signature, consts, attrs = compile_signature(
        ["X", "n", "one", "n_k", "BLOCK"], {"X": torch.empty(8, device="meta"), "n": 48, "one": 1, "n_k": 1}, {"BLOCK": 64}
    )
    # n_k changes with the sequence length: never specialised (see UNSPECIALIZED), even at 1.
    assert signature == {"X": "*fp32", "n": "i32", "one": "constexpr", "n_k": "i32", "BLOCK": "constexpr"}
    assert consts == {"one": 1, "BLOCK": 64}
    assert attrs == {(0,): [["tt.divisibility", 16]], (1,): [["tt.divisibility", 16]]}
