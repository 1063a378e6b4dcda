"""Probe prompts: lengths, depths and scored positions are what they claim (real SmolLM2 tokenizer)."""

from __future__ import annotations

import pytest

from delta_opt.eval.probes import copy_prompt, passkey_correct, passkey_prompt, retrieval_prompt

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def encode(smollm2):
    _, tokenizer = smollm2
    return lambda text: tokenizer(text, add_special_tokens=False).input_ids


@pytest.fixture(scope="module")
def decode(smollm2):
    _, tokenizer = smollm2
    return tokenizer.decode


@pytest.mark.parametrize("depth", [0.1, 0.5, 0.8])
def test_passkey_prompt(encode, decode, depth):
    p = passkey_prompt(encode, 1000, depth, "40317")
    assert 900 < len(p.ids) <= 1000
    text = decode(p.ids)
    assert text.count("40317") == 2 and text.endswith("What is the pass key? The pass key is")
    assert abs(p.positions["needle"] / len(p.ids) - depth) < 0.05
    assert p.targets == []


def test_retrieval_prompt_scores_the_key_after_the_question(encode, decode):
    p = retrieval_prompt(encode, 2000, 0.2, 0.3, "58213")
    assert 1900 < len(p.ids) <= 2000
    assert decode([p.ids[t] for t in p.targets]) == "58213"
    assert p.positions["needle"] < p.positions["question"] < p.targets[0]
    assert abs(p.positions["question"] / len(p.ids) - 0.5) < 0.05  # mid-prompt, far from the end
    question = decode(p.ids[p.positions["question"] : p.targets[-1] + 1])
    assert question.strip() == "What is the pass key? The pass key is 58213"
    assert len(p.ids) - p.targets[-1] > 800


def test_copy_prompt_repeats_the_span(encode):
    span = list(range(1000, 1032))
    p = copy_prompt(encode, 1500, 0.3, 0.2, span)
    first, second = p.positions["first_copy"], p.positions["second_copy"]
    assert p.ids[first : first + 32] == span and p.ids[second : second + 32] == span
    assert p.targets == list(range(second + 1, second + 32))
    assert second - first > 250  # a long gap of filler


def test_bad_probe_arguments(encode):
    with pytest.raises(ValueError, match="depth"):
        passkey_prompt(encode, 1000, 1.5, "1")
    with pytest.raises(ValueError, match="depth \\+ gap"):
        retrieval_prompt(encode, 1000, 0.9, 0.2, "1")
    with pytest.raises(ValueError, match="longer prompt"):
        passkey_prompt(encode, 60, 0.5, "1")
    with pytest.raises(ValueError, match="span"):
        copy_prompt(encode, 1000, 0.1, 0.2, [5])


def test_passkey_correct():
    assert passkey_correct(" 40317. Remember", "40317")
    assert not passkey_correct(" 4031 7", "40317")
    assert not passkey_correct(" a number", "40317")
    assert not passkey_correct(" 403170", "40317")
