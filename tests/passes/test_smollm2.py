"""The real SmolLM2-135M (Llama, 30 layers, 9 query / 3 kv heads): every layer converts."""

from __future__ import annotations

import pytest
import torch

from delta_opt import DeltaConfig, optimize

from . import oracles
from .zoo import max_abs, run

pytestmark = pytest.mark.real_model

PARAMS = dict(window=8, sinks=4, stride=8, tail=8)


@pytest.fixture(scope="module")
def exported(smollm2):
    model, tokenizer = smollm2
    text = "The pass key is 40317. Remember it. 40317 is the pass key. What is the pass key? The pass key is"
    prompt = {"input_ids": tokenizer(text, return_tensors="pt").input_ids[:, :32], "use_cache": False}
    return model, prompt, torch.export.export(model, (), prompt, strict=False)


def check_sites(report) -> None:
    assert (report.num_sites, report.num_converted) == (30, 30), str(report)
    assert [s.layer for s in report.sites] == list(range(30))
    for site in report.sites:
        assert (site.heads, site.kv_heads, site.kv_repeat) == (9, 3, 3)  # K/V handed over un-repeated
        assert site.mask == "causal" and site.causal and site.scale == pytest.approx(64**-0.5)


def test_all_30_layers_convert(exported):
    model, prompt, ep = exported
    dense = run(model, prompt)

    program, report = optimize(ep, None, DeltaConfig(window=4096, sinks=0, stride=64))
    check_sites(report)
    assert max_abs(run(program, prompt), dense) <= 1e-4  # logits up to ~35 after 30 float32 layers

    program, report = optimize(ep, None, DeltaConfig(**PARAMS, impl="reference"))
    check_sites(report)
    got = run(program, prompt)
    assert max_abs(got, run(oracles.hf_reference(model, PARAMS), prompt)) <= 1e-4
    assert max_abs(got, dense) > 1e-2  # a window of 8 really is sparse at N = 32


@pytest.mark.slow  # run_decompositions() of 30 layers takes ~10 s
def test_all_30_layers_convert_after_decompositions(exported):
    _, _, ep = exported
    _, report = optimize(ep.run_decompositions(), None, DeltaConfig(**PARAMS))
    check_sites(report)
    assert report.forms == {"bmm": 30}
