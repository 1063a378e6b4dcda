"""Dynamic sequence lengths: conversion keeps them dynamic, and the causal proof holds at every length."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.export import Dim

from delta_opt import DeltaConfig, optimize

from . import oracles
from .models import HandAttention, set_reference
from .zoo import _hf, max_abs, run

PARAMS = dict(window=4, sinks=2, stride=4, tail=3)
SPARSE = DeltaConfig(**PARAMS, impl="reference")


def _hf_dynamic(name: str, impl: str):
    model, inputs = _hf(name, impl)()
    shapes = {"input_ids": {1: Dim("n", max=64)}, "use_cache": None}
    return model, inputs, shapes


@pytest.mark.parametrize(("name", "impl", "mask"), [("llama", "sdpa", "causal"), ("mistral", "eager", "additive")])
def test_transformers_model_with_dynamic_length(name, impl, mask):
    model, inputs, shapes = _hf_dynamic(name, impl)
    program, report = optimize(model, inputs, SPARSE, dynamic_shapes=shapes)
    assert (report.num_sites, report.num_converted) == (2, 2), str(report)
    for site in report.sites:
        assert isinstance(site.q_shape[2], str)  # the length stayed symbolic
        assert site.mask == mask, site
    if mask == "causal":
        assert report.sites[0].mask_note.startswith("proved causal at lengths"), report.sites[0].mask_note
    oracle = oracles.hf_reference(model, PARAMS)
    for n in (7, 24, 41):
        ids = {"input_ids": torch.randint(0, 64, (1, n), generator=torch.Generator().manual_seed(n)), "use_cache": False}
        assert max_abs(run(program, ids), run(oracle, ids)) <= 1e-5


@pytest.mark.parametrize(
    ("window", "max_len", "mask", "note"),
    [
        (100, 256, "bool", "passed through: not plainly causal"),  # 101 and 102 are tried
        (100, 64, "causal", "proved causal"),  # the range ends before the window bites
        (100_000, None, "bool", "beyond the proof limit"),
    ],
)
def test_a_window_that_looks_causal_at_the_example_length_is_not_taken_for_causal(window, max_len, mask, note):
    torch.manual_seed(0)
    model = HandAttention(32, 4, 2, mask="window", window=window).eval()
    x = torch.randn(1, 24, 32)
    program, report = optimize(model, (x,), SPARSE, dynamic_shapes=({1: Dim("n", max=max_len)},))
    site = report.sites[0]
    assert report.num_converted == 1 and site.mask == mask and note in site.mask_note, site
    expected = set_reference(copy.deepcopy(model), PARAMS)
    for n in (9, 24) + ((max_len,) if max_len else ()):
        x = torch.randn(1, n, 32, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            assert max_abs(program.module()(x), expected(x)) <= 1e-5


def test_static_length_needs_one_evaluation_only():
    torch.manual_seed(0)
    model = HandAttention(32, 4, 2, mask="window", window=100).eval()
    _, report = optimize(model, (torch.randn(1, 24, 32),), SPARSE)
    # The program only accepts N = 24, where a 100-key window is the causal mask.
    assert report.sites[0].mask == "causal" and report.sites[0].mask_note == "proved causal at the traced length 24"


@pytest.mark.parametrize(
    ("dynamic", "max_len", "converted", "phrase"),
    [
        (False, None, 0, "sequence length 24 < min_seq_len 32"),
        (True, 16, 0, "<= 16 < min_seq_len 32"),
        (True, 48, 1, "includes lengths below min_seq_len 32"),
    ],
)
def test_min_seq_len(dynamic, max_len, converted, phrase):
    torch.manual_seed(0)
    model = HandAttention(32, 4, 2).eval()
    n = 12 if max_len == 16 else 24
    x = torch.randn(1, n, 32)
    shapes = ({1: Dim("n", max=max_len)},) if dynamic else None
    _, report = optimize(model, (x,), SPARSE.replace(min_seq_len=32), dynamic_shapes=shapes)
    site = report.sites[0]
    assert report.num_converted == converted
    text = site.reason if not converted else " ".join(site.notes)
    if not dynamic:
        phrase = phrase.replace("24", str(n))
    assert phrase in text, site
