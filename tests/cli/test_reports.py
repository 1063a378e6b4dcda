"""When the converted attention is exactly dense at the traced length, the commands say so."""

from __future__ import annotations

import pytest

from delta_opt import DeltaConfig, LayerPlan
from delta_opt.cli.reports import dense_equivalence_notes
from delta_opt.passes import Report, SiteReport


def _report(n, *, causal=True, layer=1):
    site = SiteReport(index=0, module=f"model.layers.{layer}.attn", module_type="Attention", layer=layer,
                      form="sdpa", node="sdpa", converted=True, q_shape=[1, 4, n, 16], heads=4, kv_heads=2,
                      causal=causal)  # fmt: skip
    return Report(sites=[site])


@pytest.mark.parametrize(
    ("n", "config", "causal", "dense"),
    [
        (64, DeltaConfig(window=16, sinks=4, stride=8, tail=8), True, False),  # Np = 56 > W
        (64, DeltaConfig(window=56, sinks=4, stride=8, tail=8), True, True),  # Np = 56 <= W: every row sees all
        (64, DeltaConfig(window=56, sinks=4, stride=8, tail=8), False, False),  # bidirectional: needs N <= W
        (64, DeltaConfig(window=64, sinks=4, stride=8, tail=8), False, True),
        (64, DeltaConfig(window=4, sinks=0, stride=8), True, True),  # tail 128 >= N: no sparse row
        (64, DeltaConfig(window=4, sinks=0, stride=1, tail=0), True, True),  # every row an anchor
        (64, DeltaConfig(window=4, sinks=0, stride=1, tail=0, correction="none"), True, False),  # uncorrected
        (64, DeltaConfig(window=16, sinks=4, stride=8, tail=8, layer_plans={1: LayerPlan(window=64)}), True, True),
        (64, DeltaConfig(window=16, sinks=4, stride=8, tail=8, layer_plans={2: LayerPlan(window=64)}), True, False),
    ],
)
def test_dense_equivalence(n, config, causal, dense):
    notes = dense_equivalence_notes(_report(n, causal=causal), config)
    assert bool(notes) == dense
    if dense:
        assert "compute exactly dense attention" in notes[0] and f"N = {n}" in notes[0]


def test_dynamic_lengths_are_not_judged():
    assert dense_equivalence_notes(_report("s0"), DeltaConfig(window=4096)) == []
