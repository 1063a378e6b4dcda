"""Each spelling of attention the passes must recognise, one axis at a time, on export() and
decomposed programs: the site is found, K/V are un-repeated, the mask and scale are carried,
and the converted program equals the module with the reference op substituted."""

from __future__ import annotations

import copy

import pytest
import torch

from delta_opt import DeltaConfig, optimize

from .models import HandAttention, SdpaAttention, set_reference
from .zoo import max_abs

N, DIM = 19, 32  # N odd on purpose
PARAMS = dict(window=4, sinks=2, stride=4, tail=3)
SPARSE = DeltaConfig(**PARAMS, impl="reference")
COVERING = DeltaConfig(window=4096, sinks=0, stride=4, tail=0)


def _x(batch: int = 2, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(batch, N, DIM, generator=torch.Generator().manual_seed(1)).to(dtype)


def _program(model, x, graph: str):
    ep = torch.export.export(model, (x,), strict=False)
    return ep.run_decompositions() if graph == "decomposed" else ep


def _run(model, x):
    with torch.no_grad():
        return (model.module() if isinstance(model, torch.export.ExportedProgram) else model)(x)


HAND_VARIANTS = [
    dict(mask="none"),
    dict(mask="buffer"),
    dict(mask="masked_fill"),
    dict(mask="where"),
    dict(mask="alibi"),
    dict(mask="alibi", scale="after_mask"),
    dict(gqa="repeat_interleave"),
    dict(scale="div"),
    dict(scale="q"),
    dict(scale="split"),
    dict(product="einsum"),
    dict(product="bmm"),
    dict(product="bmm", gqa="repeat_interleave", kt="permute"),
    dict(kt="permute"),
    dict(softmax="upcast"),
    dict(softmax="safe", mask="where"),
]
EXPECTED_MASK = {"none": "none", "buffer": "causal", "masked_fill": "causal", "where": "causal", "alibi": "additive"}


@pytest.mark.parametrize("graph", ["export", "decomposed"])
@pytest.mark.parametrize("variant", HAND_VARIANTS, ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()))
def test_written_out_attention(variant, graph):
    torch.manual_seed(0)
    model = HandAttention(DIM, 4, 2, **variant).eval()
    x = _x()
    ep = _program(model, x, graph)
    program, report = optimize(ep, None, SPARSE)
    assert (report.num_sites, report.num_converted) == (1, 1), str(report)
    site = report.sites[0]
    assert (site.heads, site.kv_heads, site.kv_repeat) == (4, 2, 2), site  # K/V un-repeated
    assert site.mask == EXPECTED_MASK[variant.get("mask", "buffer")], site
    assert site.scale == pytest.approx((DIM // 4) ** -0.5, rel=1e-6)
    expected = _run(set_reference(copy.deepcopy(model), PARAMS), x)
    got = _run(program, x)
    assert max_abs(got, expected) <= 1e-5
    assert max_abs(got, _run(model, x)) > 1e-3


SDPA_VARIANTS = [
    dict(form="sdpa", mask="causal", gqa="enable_gqa"),
    dict(form="sdpa", mask="bool", gqa="expand"),
    dict(form="sdpa", mask="additive", gqa="repeat_interleave", scale=0.2),
    dict(form="sdpa", mask="none", gqa="expand"),
    dict(form="flash_cpu", mask="causal", gqa="expand"),
    dict(form="flash_cpu", mask="additive", gqa="expand", scale=0.3),
    dict(form="efficient", mask="additive", gqa="expand"),
    dict(form="efficient", mask="causal", gqa="expand", scale=0.3),
    dict(form="flash", mask="causal", gqa="expand"),
    dict(form="cudnn", mask="additive", gqa="expand"),
]
CUDA_ONLY = {"efficient", "flash", "cudnn"}


@pytest.mark.parametrize("graph", ["export", "decomposed"])
@pytest.mark.parametrize("variant", SDPA_VARIANTS, ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()))
def test_sdpa_forms(variant, graph):
    torch.manual_seed(0)
    model = SdpaAttention(DIM, 4, 2, **variant).eval()
    x = _x()
    ep = _program(model, x, graph)
    for config in (COVERING, SPARSE):
        program, report = optimize(ep, None, config)
        assert (report.num_sites, report.num_converted) == (1, 1), str(report)
        site = report.sites[0]
        assert (site.heads, site.kv_heads) == (4, 2), site
        assert site.mask == {"causal": "causal", "bool": "causal", "none": "none", "additive": "additive"}[variant["mask"]]
        assert site.scale == pytest.approx(variant.get("scale") or (DIM // 4) ** -0.5, rel=1e-6)
        if config is COVERING:
            # The CUDA-only forms cannot run here unconverted: compare with the same module through SDPA.
            dense_model = copy.deepcopy(model)
            if variant["form"] in CUDA_ONLY:
                dense_model.form = "sdpa"
            dense = _run(dense_model, x)
            assert max_abs(_run(program, x), dense) <= 1e-5
        else:
            got = _run(program, x)
            assert max_abs(got, _run(set_reference(copy.deepcopy(model), PARAMS), x)) <= 1e-5
            assert max_abs(got, dense) > 1e-3


def test_bfloat16_with_float32_softmax():
    torch.manual_seed(0)
    model = HandAttention(DIM, 4, 2, softmax="upcast").eval().to(torch.bfloat16)
    x = _x(dtype=torch.bfloat16)
    program, report = optimize(model, (x,), SPARSE)
    assert report.num_converted == 1
    expected = _run(set_reference(copy.deepcopy(model), PARAMS), x)
    assert max_abs(_run(program, x), expected) <= 2e-2  # bf16 resolution at |out| ~ 1
