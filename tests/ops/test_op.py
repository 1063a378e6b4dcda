"""The torch.library op: schema, fake implementation, export as one node, dispatch, bad input."""

from __future__ import annotations

import pytest
import torch

import delta_opt
from delta_opt.ops.op import resolve_impl
from delta_opt.ops.reference import delta_attention_reference
from delta_opt.testing import make_inputs

PARAMS = dict(causal=True, window=8, sinks=2, stride=4, tail=6)


@pytest.mark.parametrize("mask", ["none", "bool", "additive"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(mask, dtype):
    x = make_inputs(batch=2, q_heads=4, kv_heads=2, n=33, head_dim=16, mask=mask, dtype=dtype)
    torch.library.opcheck(torch.ops.delta_opt.delta_attention.default, (x.q, x.k, x.v, x.attn_mask), PARAMS)


class _Attention(torch.nn.Module):
    def forward(self, q, k, v):
        return delta_opt.delta_attention(q, k, v, **PARAMS) * 2


def test_export_keeps_one_node_and_runs():
    x = make_inputs(n=40, head_dim=16, dtype=torch.float32)
    program = torch.export.export(_Attention(), (x.q, x.k, x.v))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.delta_opt.delta_attention.default) == 1
    # Decompositions must leave the custom op alone.
    decomposed = program.run_decompositions()
    targets = [n.target for n in decomposed.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.delta_opt.delta_attention.default) == 1
    torch.testing.assert_close(
        program.module()(x.q, x.k, x.v), 2 * delta_attention_reference(x.q, x.k, x.v, **PARAMS)
    )


def test_export_with_dynamic_sequence_length():
    x = make_inputs(n=40, head_dim=16, dtype=torch.float32)
    seq = torch.export.Dim("seq", min=2, max=4096)
    program = torch.export.export(
        _Attention(), (x.q, x.k, x.v), dynamic_shapes=({2: seq}, {2: seq}, {2: seq})
    )
    y = make_inputs(n=77, head_dim=16, dtype=torch.float32, seed=1)
    torch.testing.assert_close(
        program.module()(y.q, y.k, y.v), 2 * delta_attention_reference(y.q, y.k, y.v, **PARAMS)
    )


@pytest.mark.parametrize("impl", ["reference", "blocked", "auto", delta_opt.Impl.BLOCKED])
def test_every_impl_agrees(impl):
    x = make_inputs(n=50, head_dim=16, mask="bool")
    got = delta_opt.delta_attention(x.q, x.k, x.v, x.attn_mask, **PARAMS, impl=impl)
    torch.testing.assert_close(got, delta_attention_reference(x.q, x.k, x.v, x.attn_mask, **PARAMS))


def test_auto_picks_blocked_on_cpu():
    assert resolve_impl("auto", torch.device("cpu")) is delta_opt.Impl.BLOCKED


def test_unknown_impl_lists_the_valid_ones():
    x = make_inputs(n=8, head_dim=8)
    with pytest.raises(ValueError, match="impl must be one of 'auto', 'reference', 'blocked', 'triton'"):
        delta_opt.delta_attention(x.q, x.k, x.v, **PARAMS, impl="flash")


def _bad(**changes):
    x = make_inputs(batch=2, q_heads=4, kv_heads=2, n=16, head_dim=8, dtype=torch.float32)
    args = dict(q=x.q, k=x.k, v=x.v, attn_mask=None, **PARAMS)
    args.update(changes)
    return args


BAD_INPUTS = {
    "q rank": (dict(q=torch.zeros(4, 16, 8)), r"q must be a 4-D tensor \[B, Hq, N, D\]; got shape \(4, 16, 8\)"),
    "k rank": (dict(k=torch.zeros(2, 2, 16)), r"k must be a 4-D tensor"),
    "heads": (dict(q=torch.zeros(2, 3, 16, 8)), r"Hq % Hkv == 0\); got Hq=3, Hkv=2"),
    "head dim": (dict(k=torch.zeros(2, 2, 16, 6)), r"k must have the head dim of q \(D=8\)"),
    "kv length": (dict(v=torch.zeros(2, 2, 15, 8)), r"v must have the sequence length of k \(16\)"),
    "batch": (dict(k=torch.zeros(1, 2, 16, 8), v=torch.zeros(1, 2, 16, 8)), r"batch size of q \(2\)"),
    "dtype": (dict(k=torch.zeros(2, 2, 16, 8, dtype=torch.float64)), r"k must have the dtype of q \(torch.float32\)"),
    "int q": (dict(q=torch.zeros(2, 4, 16, 8, dtype=torch.int64)), r"q must have a floating dtype"),
    "window": (dict(window=0), r"window must be an integer >= 1; got 0"),
    "stride": (dict(stride=0), r"stride must be an integer >= 1; got 0"),
    "sinks": (dict(sinks=-1), r"sinks must be an integer >= 0; got -1"),
    "tail": (dict(tail=-2), r"tail must be an integer >= 0; got -2"),
    "scale": (dict(scale=float("nan")), r"scale must be a finite float"),
    "causal": (dict(causal=1), r"causal must be a bool"),
    "mask shape": (dict(attn_mask=torch.ones(16, 15, dtype=torch.bool)), r"attn_mask must be broadcastable to \[B, Hq, Nq, Nk\] = \[2, 4, 16, 16\]; got shape \(16, 15\)"),
    "mask heads": (dict(attn_mask=torch.ones(2, 3, 16, 16, dtype=torch.bool)), r"attn_mask must be broadcastable"),
    "mask rank": (dict(attn_mask=torch.ones(1, 2, 4, 16, 16, dtype=torch.bool)), r"attn_mask must be broadcastable"),
    "mask dtype": (dict(attn_mask=torch.ones(16, 16, dtype=torch.int32)), r"attn_mask must be bool .* or floating"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
@pytest.mark.parametrize("impl", ["reference", "blocked"])
def test_bad_input_raises_value_error_naming_the_argument(case, impl):
    changes, message = BAD_INPUTS[case]
    args = _bad(**changes)
    with pytest.raises(ValueError, match=message):
        delta_opt.delta_attention(**args, impl=impl)
    if case == "causal":
        return  # the op's schema types causal as bool, so the dispatcher converts 1 to True
    # The op itself (as a traced graph calls it) validates too, before any work.
    with pytest.raises(ValueError, match=message):
        torch.ops.delta_opt.delta_attention(
            args.pop("q"), args.pop("k"), args.pop("v"), args.pop("attn_mask"), **args, impl=impl
        )


def test_triton_impl_says_what_it_needs_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the test-suite turns the interpreter on
    x = make_inputs(n=8, head_dim=8)
    with pytest.raises(ValueError, match="impl='triton' cannot run on device cpu: .*CUDA device.*TRITON_INTERPRET=1"):
        delta_opt.delta_attention(x.q, x.k, x.v, **PARAMS, impl="triton")
