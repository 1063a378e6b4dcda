"""``optimize``'s contract: inputs it accepts and refuses, the layer filter, what it must not
touch, the passes on their own, and the report."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from delta_opt import DeltaConfig, optimize
from delta_opt.passes import convert_sdpa, convert_softmax_attention

from . import oracles
from .models import DecoderWithCrossAttention, HandAttention, SdpaAttention, Stack, set_reference
from .zoo import _hf, max_abs, run

PARAMS = dict(window=4, sinks=2, stride=4, tail=3)
SPARSE = DeltaConfig(**PARAMS, impl="reference")


def _x(n: int = 24, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, n, 32, generator=torch.Generator().manual_seed(1))


def _stack(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return Stack(lambda: HandAttention(32, 4, 2, **kwargs)).eval()


# ---- accepted and refused inputs -------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, x: optimize(m, (x,), {"window": 4}), "config must be a DeltaConfig or None; got dict"),
        (lambda m, x: optimize("model", (x,)), "model must be a torch.nn.Module or a torch.export.ExportedProgram; got str"),
        (lambda m, x: optimize(m), "example_inputs is required to trace an nn.Module"),
        (lambda m, x: optimize(m, 3), "example_inputs must be a tuple of arguments, a dict of keyword arguments or a tensor; got int"),
        (
            lambda m, x: optimize(torch.export.export(m, (x,)), None, dynamic_shapes={}),
            "dynamic_shapes applies when tracing; model is already an ExportedProgram",
        ),
    ],
)
def test_bad_arguments_raise_before_any_work(call, message):
    with pytest.raises(ValueError, match=message):
        call(_stack(), _x())


def test_symbolic_trace_graph_module():
    model = _stack(mask="none")
    gm = torch.fx.symbolic_trace(model)
    program, report = optimize(gm, (_x(),), SPARSE)
    assert (report.num_sites, report.num_converted) == (2, 2)
    assert [s.module for s in report.sites] == ["layers.0.attn", "layers.1.attn"]  # from the traced modules
    expected = set_reference(copy.deepcopy(model), PARAMS)
    with torch.no_grad():
        assert max_abs(program.module()(_x()), expected(_x())) <= 1e-5


def test_a_single_tensor_is_taken_as_the_only_argument():
    _, report = optimize(_stack(), _x(), SPARSE)
    assert report.num_converted == 2


def test_passes_run_on_a_graph_module_alone():
    """``(graph_module, config) -> report``: without a context every placeholder counts as data,
    so the causal buffer cannot be evaluated and the mask is passed through."""
    model = Stack(lambda: SdpaAttention(32, 4, 2, mask="causal")).eval()
    gm = copy.deepcopy(torch.export.export(model, (_x(),)).graph_module)
    sdpa = convert_sdpa(gm, SPARSE)
    chain = convert_softmax_attention(gm, SPARSE)
    assert (sdpa.num_converted, chain.num_sites) == (2, 0)
    assert sum(n.target is torch.ops.delta_opt.delta_attention.default for n in gm.graph.nodes) == 2

    gm = copy.deepcopy(torch.export.export(_stack(), (_x(),)).graph_module)
    report = convert_softmax_attention(gm, SPARSE)
    assert report.num_converted == 2 and {s.mask for s in report.sites} == {"additive"}
    assert "reads input(s)" in report.sites[0].mask_note or "depends on" in report.sites[0].mask_note


# ---- the layer filter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filter", "dense"),
    [
        (dict(dense_layers=(1,)), {1: "dense_layers contains 1"}),
        (dict(dense_modules=("model.layers.0.*",)), {0: "dense_modules pattern 'model.layers.0.*'"}),
        (dict(dense_layers=(0,), dense_modules=("*.1.self_attn",)), {0: "dense_layers", 1: "'*.1.self_attn'"}),
    ],
)
def test_layer_filter_keeps_chosen_layers_dense(filter, dense):
    model, inputs = _hf("llama", "sdpa")()
    program, report = optimize(model, inputs, SPARSE.replace(**filter))
    assert report.num_sites == 2 and report.num_converted == 2 - len(dense)
    for site in report.sites:
        if site.layer in dense:
            assert not site.converted and "kept dense by config" in site.reason and dense[site.layer] in site.reason
        else:
            assert site.converted
    # The oracle: the reference op on the converted layers, dense attention on the others.
    oracle = oracles.hf_reference(model, PARAMS)
    for layer in dense:
        oracle.model.layers[layer].self_attn._delta_reference = dict(window=4096, sinks=0, stride=4, tail=0)
    assert max_abs(run(program, inputs), run(oracle, inputs)) <= 1e-5


# ---- what must not be touched ----------------------------------------------------------------


def test_training_mode_dropout_is_reported_not_converted():
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True), 2, enable_nested_tensor=False)
    _, report = optimize(model.train(), {"src": _x()}, SPARSE)
    assert report.num_sites == 2 and report.num_converted == 0
    assert all("dropout_p=0.1 is active" in s.reason for s in report.sites)
    _, report = optimize(_stack().train(), (_x(),), SPARSE)
    assert report.num_converted == 0 and all("dropout p=0.1 is active" in s.reason for s in report.sites)


def test_cross_attention_of_equal_length_is_recognised_by_its_inputs():
    torch.manual_seed(0)
    model = DecoderWithCrossAttention(32).eval()
    program, report = optimize(model, {"x": _x(), "memory": _x() * 2}, SPARSE)
    assert report.num_converted == 1
    (cross,) = report.skipped
    assert cross.module == "cross_attn" and "keys come from input(s) memory, queries from x" in cross.reason


def test_bare_attention_on_inputs_is_converted():
    class Bare(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    q, k, v = (torch.randn(1, 2, 24, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    program, report = optimize(Bare(), (q, k, v), SPARSE)
    assert report.num_converted == 1 and report.sites[0].module == ""
    expected = torch.ops.delta_opt.delta_attention(q, k, v, causal=True, impl="reference", **PARAMS)
    assert max_abs(program.module()(q, k, v), expected) == 0


def test_softmax_over_another_axis_is_not_attention():
    class Columns(nn.Module):
        def forward(self, q, k, v):
            return torch.softmax(q @ k.transpose(-1, -2), dim=-2) @ v

    q = torch.randn(1, 2, 12, 8)
    program, report = optimize(Columns(), (q, q, q), SPARSE)
    assert report.num_sites == 0
    assert report.unmatched[0].reason == "softmax over dim -2, not the last (key) axis"


def test_a_padding_mask_from_the_inputs_is_passed_through():
    model, inputs = _hf("llama", "eager")()
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["attention_mask"][:, :5] = 0  # left padding
    program, report = optimize(model, inputs, SPARSE)
    assert report.num_converted == 2
    assert {s.mask for s in report.sites} == {"additive"}
    assert "attention_mask" in report.sites[0].mask_note, report.sites[0].mask_note
    # Padded query rows see no key at all: the model averages them uniformly, the spec gives 0.
    # Only the real tokens are compared (padded keys are masked for them either way).
    got, expected = run(program, inputs), run(oracles.hf_reference(model, PARAMS), inputs)
    assert max_abs(got[:, 5:], expected[:, 5:]) <= 1e-5
    dense, _ = optimize(model, inputs, DeltaConfig(window=4096, sinks=0, stride=4, tail=0))
    assert max_abs(run(dense, inputs)[:, 5:], run(model, inputs)[:, 5:]) <= 1e-5


# ---- the report ------------------------------------------------------------------------------


def test_report_table_and_json():
    model, inputs = _hf("llama", "eager", output_attentions=True)()
    _, report = optimize(model, inputs, SPARSE)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["num_sites"] == 2 and data["num_converted"] == 0 and data["num_skipped"] == 2
    assert data["config"] == SPARSE.to_dict()
    (reason,) = data["skip_reasons"]
    assert "attention weights are also used" in reason and data["skip_reasons"][reason] == 2
    site = data["sites"][1]
    assert site["module"] == "model.layers.1.self_attn" and site["module_type"] == "LlamaAttention"
    assert site["layer"] == 1 and site["heads"] == 4 and site["kv_heads"] == 2 and site["kv_repeat"] == 2
    assert site["q_shape"] == [1, 4, 24, 8] and site["k_shape"] == [1, 2, 24, 8]
    text = str(report)
    assert text.startswith("delta_opt: 2 attention site(s), 0 converted, 2 skipped")
    assert "model.layers.1.self_attn" in text and "skipped: the attention weights are also used" in text

    _, report = optimize(_stack(), (_x(),), SPARSE)
    assert report.forms == {"matmul": 2} and report.skip_reasons == {}


def test_operands_of_different_dtypes_are_reported():
    class Upcast(nn.Module):
        """Scores in float32 from bfloat16 q/k, values left in bfloat16: no single-dtype op call fits."""

        def forward(self, q, k, v):
            weights = torch.softmax(q.float() @ k.float().transpose(-1, -2), dim=-1)
            return weights.to(v.dtype) @ v

    q = torch.randn(1, 2, 12, 8, dtype=torch.bfloat16)
    _, report = optimize(Upcast(), (q, q, q), SPARSE)
    assert report.num_sites == 1 and report.num_converted == 0
    assert "different dtypes (torch.float32, torch.float32, torch.bfloat16)" in report.sites[0].reason


def test_converted_program_decomposes_saves_and_loads(tmp_path):
    program, report = optimize(_stack(), (_x(),), SPARSE)
    op = torch.ops.delta_opt.delta_attention.default
    decomposed = program.run_decompositions()
    assert sum(n.target is op for n in decomposed.graph.nodes) == report.num_converted == 2
    torch.export.save(program, tmp_path / "program.pt2")
    loaded = torch.export.load(tmp_path / "program.pt2")
    with torch.no_grad():
        expected = program.module()(_x())
        assert max_abs(loaded.module()(_x()), expected) == 0
        assert max_abs(decomposed.module()(_x()), expected) <= 1e-6
