"""Property fuzz: blocked == reference in float64 over the whole parameter space."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from delta_opt.ops.blocked import delta_attention_blocked
from delta_opt.ops.reference import delta_attention_reference
from delta_opt.testing import make_inputs


@st.composite
def cases(draw):
    n = draw(st.integers(1, 96))
    kv_heads = draw(st.sampled_from([1, 2, 3]))
    group = draw(st.sampled_from([1, 2, 4]))
    rules = st.sampled_from(["paper", "none", "taylor"])
    correction = draw(st.one_of(rules, st.lists(rules, min_size=kv_heads * group, max_size=kv_heads * group)))
    # Sizes chosen to cross N: windows, sinks and tails both inside and beyond the sequence.
    return dict(
        n=n,
        kv_heads=kv_heads,
        q_heads=kv_heads * group,
        head_dim=draw(st.sampled_from([8, 40, 64, 80, 128])),
        batch=draw(st.integers(1, 2)),
        mask=draw(st.sampled_from(["none", "bool", "additive", "key_padding"])),
        causal=draw(st.booleans()),
        window=draw(st.integers(1, 2 * n + 4)),
        sinks=draw(st.integers(0, n + 8)),
        stride=draw(st.integers(1, n + 4)),
        tail=draw(st.one_of(st.none(), st.integers(0, n + 8))),
        block_size=draw(st.one_of(st.none(), st.integers(1, 40))),
        seed=draw(st.integers(0, 2**16)),
        correction=correction if isinstance(correction, str) else ",".join(correction),
        retrieve=draw(st.sampled_from([0, 0, 1, 3, 200])),
    )


@settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_blocked_matches_reference_float64(case):
    x = make_inputs(
        batch=case["batch"],
        q_heads=case["q_heads"],
        kv_heads=case["kv_heads"],
        n=case["n"],
        head_dim=case["head_dim"],
        mask=case["mask"],
        seed=case["seed"],
    )
    params = {key: case[key] for key in ("causal", "window", "sinks", "stride", "tail", "correction", "retrieve")}
    expected = delta_attention_reference(x.q, x.k, x.v, x.attn_mask, **params)
    got = delta_attention_blocked(x.q, x.k, x.v, x.attn_mask, **params, block_size=case["block_size"])
    assert not got.isnan().any()
    assert (got - expected).abs().max().item() <= 1e-10
