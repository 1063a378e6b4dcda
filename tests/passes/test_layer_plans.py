"""A calibrated config's per-layer plans reach the converted program, site by site."""

from __future__ import annotations

import torch

import delta_opt
from delta_opt import DeltaConfig

from . import oracles
from .zoo import _hf, max_abs, run

OP = torch.ops.delta_opt.delta_attention.default


def test_layer_plans_set_each_sites_rule_window_and_stride():
    model, inputs = _hf("llama", "sdpa")()  # 2 layers, 4 query heads, 2 kv heads, N = 24
    config = DeltaConfig(
        window=4,
        sinks=1,
        stride=4,
        tail=4,
        correction="none",
        layer_plans={1: {"corrections": ["taylor", "none", "paper", "taylor"], "window": 6, "stride": 2}},
    )
    program, report = delta_opt.optimize(model, inputs, config)
    assert report.num_converted == 2
    by_layer = dict(enumerate(node.kwargs for node in program.graph.nodes if node.target == OP))  # program order
    assert by_layer[0]["correction"] == "none" and (by_layer[0]["window"], by_layer[0]["stride"]) == (4, 4)
    assert by_layer[1]["correction"] == "taylor,none,paper,taylor"
    assert (by_layer[1]["window"], by_layer[1]["stride"], by_layer[1]["tail"]) == (6, 2, 4)

    # The same plan applied by hand to an oracle built without the pass.
    oracle = oracles.hf_reference(model, dict(window=4, sinks=1, stride=4, tail=4, correction="none"))
    oracle.model.layers[1].self_attn._delta_reference = dict(
        window=6, sinks=1, stride=2, tail=4, correction="taylor,none,paper,taylor"
    )
    assert max_abs(run(program, inputs), run(oracle, inputs)) <= 1e-5
