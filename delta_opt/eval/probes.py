"""Long-context retrieval probes: prompt builders and their scores.

Three probes, each built at the token level so that every position is known exactly:

- ``passkey`` (the Landmark Attention format): filler sentences, "The pass key is NNNNN. Remember
  it. NNNNN is the pass key." at a depth, more filler, and "What is the pass key? The pass key
  is" at the very end. Scored by greedy decoding, exact match of the first number generated.
  The question sits in the last rows — inside a dense tail, when the method has one.
- ``retrieval`` (mid-context): the same needle, then the question *and the key's repetition* a
  long gap later, followed by more filler, so that the answer lies in the middle of the prompt,
  far from any dense tail. The key's tokens are scored teacher-forced: all of them top-1
  (exact) and their mean log-probability.
- ``copy``: a span of random tokens, a long gap of filler, the same span again, more filler.
  Scored by the loss (mean NLL, and top-1 rate) on the second copy, from its second token on
  (the first has nothing to be copied from).

Depth is the fraction of the filler placed before the needle (or the first copy).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Sequence

import torch

from .metrics import nll

__all__ = [
    "ProbePrompt",
    "copy_prompt",
    "greedy_continuation",
    "passkey_correct",
    "passkey_prompt",
    "retrieval_prompt",
    "teacher_forced_scores",
]

TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there."
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"

Encode = Callable[[str], list[int]]


def _needle(key: str) -> str:
    return f"\nThe pass key is {key}. Remember it. {key} is the pass key.\n"


@dataclasses.dataclass(frozen=True)
class ProbePrompt:
    """One probe instance.

    Attributes:
        kind: ``"passkey"``, ``"retrieval"`` or ``"copy"``.
        ids: the prompt's token ids.
        depth: fraction of the filler before the needle / the first copy.
        answer: the pass key (passkey, retrieval), else None.
        targets: positions scored teacher-forced (retrieval: the key's tokens after the question;
            copy: the second copy from its second token); empty for passkey.
        positions: where the pieces start (needle, question, copies), for the record.
    """

    kind: str
    ids: list[int]
    depth: float
    answer: str | None
    targets: list[int]
    positions: dict[str, int]


def _check_fraction(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a fraction in [0, 1]; got {value!r}")


class _Builder:
    """Concatenates encoded pieces and remembers where each starts."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.positions: dict[str, int] = {}

    def add(self, ids: Sequence[int], name: str | None = None) -> list[int]:
        if name is not None:
            self.positions[name] = len(self.ids)
        start = len(self.ids)
        self.ids.extend(ids)
        return list(range(start, len(self.ids)))


def _filler_units(encode: Encode, n_tokens: int, fixed: int) -> tuple[list[int], int]:
    """The ids of one filler sentence and how many fit beside ``fixed`` other tokens in ``n_tokens``."""
    unit = encode(FILLER + " ")
    count = (n_tokens - fixed) // len(unit)
    if count < 3:
        raise ValueError(f"n_tokens={n_tokens} leaves room for {max(0, count)} filler sentences; use a longer prompt")
    return unit, count


def _split(count: int, *fractions: float) -> list[int]:
    """Split ``count`` units at the cumulative ``fractions``: returns the sizes of the parts."""
    cuts = [round(count * f) for f in fractions]
    bounds = [0, *cuts, count]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def passkey_prompt(encode: Encode, n_tokens: int, depth: float, key: str) -> ProbePrompt:
    """The Landmark Attention pass-key prompt of about ``n_tokens`` tokens with the needle at ``depth``."""
    _check_fraction("depth", depth)
    task, needle, question = encode(TASK + "\n"), encode(_needle(key)), encode("\n" + QUESTION)
    unit, count = _filler_units(encode, n_tokens, len(task) + len(needle) + len(question))
    before, after = _split(count, depth)
    b = _Builder()
    b.add(task)
    b.add(unit * before)
    b.add(needle, "needle")
    b.add(unit * after)
    b.add(question, "question")
    return ProbePrompt("passkey", b.ids, depth, key, [], b.positions)


def retrieval_prompt(encode: Encode, n_tokens: int, depth: float, gap: float, key: str) -> ProbePrompt:
    """Needle at ``depth``, question + key repetition at ``depth + gap``, then filler to the end."""
    _check_fraction("depth", depth)
    _check_fraction("depth + gap", depth + gap)
    task = encode(TASK + "\n")
    needle = encode(_needle(key))
    question, answer, close = encode("\n" + QUESTION + " "), encode(key), encode(".\n")
    fixed = len(task) + len(needle) + len(question) + len(answer) + len(close)
    unit, count = _filler_units(encode, n_tokens, fixed)
    before, between, after = _split(count, depth, depth + gap)
    b = _Builder()
    b.add(task)
    b.add(unit * before)
    b.add(needle, "needle")
    b.add(unit * between)
    b.add(question, "question")
    targets = b.add(answer, "answer")
    b.add(close)
    b.add(unit * after)
    return ProbePrompt("retrieval", b.ids, depth, key, targets, b.positions)


def copy_prompt(encode: Encode, n_tokens: int, depth: float, gap: float, span: Sequence[int]) -> ProbePrompt:
    """Random ``span`` at ``depth``, the same span again at ``depth + gap``, filler around both."""
    _check_fraction("depth", depth)
    _check_fraction("depth + gap", depth + gap)
    if len(span) < 2:
        raise ValueError(f"span must hold at least 2 tokens; got {len(span)}")
    newline = encode("\n")
    unit, count = _filler_units(encode, n_tokens, 2 * (len(span) + 2 * len(newline)))
    before, between, after = _split(count, depth, depth + gap)
    b = _Builder()
    b.add(unit * before)
    b.add(newline)
    b.add(span, "first_copy")
    b.add(newline)
    b.add(unit * between)
    b.add(newline)
    second = b.add(span, "second_copy")
    b.add(newline)
    b.add(unit * after)
    return ProbePrompt("copy", b.ids, depth, None, second[1:], b.positions)


_NUMBER = re.compile(r"\d+")


def passkey_correct(generated: str, key: str) -> bool:
    """Exact match: the first number in the generated text is the key."""
    match = _NUMBER.search(generated)
    return match is not None and match.group(0) == key


@torch.no_grad()
def greedy_continuation(model: Any, ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Greedy ``model.generate`` continuation of one prompt (KV cache on): the new token ids."""
    input_ids = torch.tensor([list(ids)], dtype=torch.long)
    out = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=model.config.eos_token_id,
    )
    return out[0, input_ids.shape[1] :].tolist()


@torch.no_grad()
def teacher_forced_scores(model: Any, ids: Sequence[int], targets: Sequence[int]) -> dict[str, Any]:
    """Scores of the tokens at ``targets`` given everything before them, in one forward pass.

    Returns ``{"logprob": [...], "top1": [...], "mean_logprob", "mean_nll", "top1_rate", "all_top1"}``.
    """
    if not targets or min(targets) < 1 or max(targets) >= len(ids):
        raise ValueError(f"targets must be positions in [1, {len(ids)}); got {list(targets)[:5]}...")
    input_ids = torch.tensor([list(ids)], dtype=torch.long)
    predicting = torch.tensor([t - 1 for t in targets])  # logits at t - 1 predict token t
    logits = model(input_ids, logits_to_keep=predicting, use_cache=False).logits[0]  # [len(targets), V]
    wanted = input_ids[0, list(targets)]
    logprob = (-nll(logits, wanted)).tolist()
    top1 = (logits.argmax(-1) == wanted).tolist()
    return {
        "logprob": logprob,
        "top1": top1,
        "mean_logprob": sum(logprob) / len(logprob),
        "mean_nll": -sum(logprob) / len(logprob),
        "top1_rate": sum(top1) / len(top1),
        "all_top1": all(top1),
    }
