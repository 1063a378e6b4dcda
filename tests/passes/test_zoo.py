"""The zoo: every model converts exactly its attention sites, on export() and decomposed programs.

For each model:
- the report has the exact site counts and the expected heads, kv heads, mask kinds and reasons;
- with a window covering the sequence the program equals the model (fp32, max abs <= 1e-5);
- with a sparse config it equals the model with the reference op substituted (the oracle is
  built without the passes) and differs from the dense model, so the check can fail.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch

from delta_opt import DeltaConfig, optimize

from .zoo import ZOO, ZooEntry, max_abs, run

SPARSE_PARAMS = dict(window=4, sinks=2, stride=4, tail=3)
SPARSE = DeltaConfig(**SPARSE_PARAMS, impl="reference")
COVERING = DeltaConfig(window=4096, sinks=0, stride=4, tail=0)  # default impl: blocked on the CPU
TOLERANCE = 1e-5


@functools.lru_cache(maxsize=None)
def _exported(name: str, decomposed: bool):
    entry = next(e for e in ZOO if e.name == name)
    model, inputs = entry.build()
    if decomposed:
        return model, inputs, _exported(name, False)[2].run_decompositions()
    return model, inputs, torch.export.export(model, (), inputs, strict=False)


def check_report(report, entry: ZooEntry, *, decomposed: bool) -> None:
    assert report.num_sites == entry.sites, str(report)
    assert report.num_converted == entry.converted, str(report)
    assert len(report.unmatched) == entry.unmatched, str(report)
    mask = (entry.mask_decomposed or entry.mask) if decomposed else entry.mask
    for site in report.converted:
        assert (site.heads, site.kv_heads) == (entry.heads, entry.kv_heads), site
        assert site.mask == mask, site
        assert site.causal == (mask == "causal"), site
        assert site.reason is None and site.scale is not None
        assert site.q_shape is not None and len(site.q_shape) == 4
        assert site.k_shape[1] == entry.kv_heads and site.v_shape[1] == entry.kv_heads
    for site in report.sites:
        assert site.module.startswith(entry.modules), site
        assert site.module in str(report)
    for site in report.skipped:
        assert entry.reason is not None and entry.reason in site.reason, site
    json.dumps(report.to_dict())  # JSON-serialisable as promised


@pytest.mark.parametrize("entry", ZOO, ids=str)
def test_traced_model_converts_and_matches_with_a_covering_window(entry: ZooEntry):
    model, inputs = entry.build()
    program, report = optimize(model, inputs, COVERING)
    check_report(report, entry, decomposed=False)
    assert max_abs(run(program, inputs), run(model, inputs)) <= TOLERANCE


@pytest.mark.parametrize("graph", ["export", "decomposed"])
@pytest.mark.parametrize("entry", ZOO, ids=str)
def test_program_sparse_equals_reference_substituted(entry: ZooEntry, graph: str):
    model, inputs, ep = _exported(entry.name, graph == "decomposed")
    before = str(ep.graph)

    dense_program, dense_report = optimize(ep, None, COVERING)
    check_report(dense_report, entry, decomposed=graph == "decomposed")
    dense = run(model, inputs)
    assert max_abs(run(dense_program, inputs), dense) <= TOLERANCE

    program, report = optimize(ep, None, SPARSE)
    check_report(report, entry, decomposed=graph == "decomposed")
    assert str(ep.graph) == before, "optimize modified the ExportedProgram it was given"
    with entry.context():
        expected = run(entry.oracle(model, SPARSE_PARAMS), inputs)
        if graph == "export":  # the oracle itself: with a covering window it is the model
            covering = dict(window=4096, sinks=0, stride=4, tail=0)
            assert max_abs(run(entry.oracle(model, covering), inputs), dense) <= TOLERANCE
    got = run(program, inputs)
    assert max_abs(got, expected) <= TOLERANCE
    if entry.converted:
        assert max_abs(got, dense) > 1e-3, "the sparse config changed nothing: the test could not fail"
