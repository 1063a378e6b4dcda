"""The DeltaAttention node contract (delta_opt/backends/onnx/schema.py)."""

from __future__ import annotations

import math

import pytest

import delta_opt
from delta_opt.backends.onnx import schema
from delta_opt.backends.onnx.schema import NodeAttributes


def test_contract_names() -> None:
    assert (schema.OP_TYPE, schema.DOMAIN, schema.VERSION) == ("DeltaAttention", "delta_opt", 1)
    assert schema.OP_TYPE != "Attention"  # TensorRT reserves that name
    assert schema.INPUTS == ("q", "k", "v", "attn_mask") and schema.OUTPUTS == ("out",)
    assert list(schema.ATTRIBUTES) == ["causal", "window", "sinks", "stride", "tail", "scale", "correction"]
    assert {name: kind for name, (kind, _) in schema.ATTRIBUTES.items()}["correction"] == "INTS"


def test_op_schema_matches_the_contract() -> None:
    s = schema.op_schema()
    assert (s.name, s.domain, s.since_version) == (schema.OP_TYPE, schema.DOMAIN, schema.VERSION)
    assert [p.name for p in s.inputs] == list(schema.INPUTS)
    assert set(s.attributes) == set(schema.ATTRIBUTES)
    assert all(a.required for a in s.attributes.values())


def test_op_defaults_are_resolved() -> None:
    attrs = NodeAttributes.from_op_kwargs({"causal": True}, head_dim=64)
    assert attrs == NodeAttributes(causal=True, window=2048, sinks=1024, stride=64, tail=128, scale=0.125)
    assert NodeAttributes.from_op_kwargs({"causal": False, "stride": 256}, 80).tail == 256
    assert NodeAttributes.from_op_kwargs({"causal": False, "scale": 0.5, "tail": 0}, 80).to_onnx() == {
        "causal": 0,
        "window": 2048,
        "sinks": 1024,
        "stride": 64,
        "tail": 0,
        "scale": 0.5,
        "correction": [0],
    }
    assert NodeAttributes.from_op_kwargs({"causal": True}, 40).scale == pytest.approx(1 / math.sqrt(40))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(causal=1), "causal must be a bool"),
        (dict(window=0), "window must be an integer >= 1"),
        (dict(sinks=-1), "sinks must be an integer >= 0"),
        (dict(stride=True), "stride must be an integer >= 1"),
        (dict(tail=-2), "tail must be an integer >= 0"),
        (dict(scale=float("nan")), "scale must be a finite float"),
        (dict(correction="taylor"), "correction must be a non-empty sequence of rules"),
        (dict(correction=()), "correction must be a non-empty sequence of rules"),
        (dict(correction=("taylor", "delta")), "correction must be one of 'paper', 'none', 'taylor'; got 'delta'"),
    ],
)
def test_bad_attributes_are_rejected(changes: dict, message: str) -> None:
    good = dict(causal=True, window=8, sinks=2, stride=4, tail=4, scale=0.25)
    with pytest.raises(ValueError, match=message):
        NodeAttributes(**{**good, **changes})


@pytest.mark.parametrize(
    ("correction", "codes", "string"),
    [
        ("paper", [0], "paper"),
        ("none", [1], "none"),
        ("taylor", [2], "taylor"),
        ("taylor,none,paper", [2, 1, 0], "taylor,none,paper"),
        ("taylor,taylor", [2], "taylor"),  # a plan whose heads agree is one code
        (" Taylor ,none", [2, 1], "taylor,none"),
    ],
)
def test_correction_is_written_as_rule_codes(correction: str, codes: list[int], string: str) -> None:
    attrs = NodeAttributes.from_op_kwargs({"causal": True, "correction": correction}, head_dim=64)
    assert attrs.to_onnx()["correction"] == codes
    assert attrs.correction_string == string
    # The codes are part of the contract: a TensorRT plugin decodes them the same way.
    assert [c.code for c in delta_opt.Correction] == [0, 1, 2]
    assert [c.value for c in delta_opt.Correction] == ["paper", "none", "taylor"]
    assert [delta_opt.Correction.from_code(c).value for c in codes] == string.split(",")


def test_bad_correction_strings_are_rejected() -> None:
    for bad in ("", "delta", "paper,,none", 3):
        with pytest.raises(ValueError, match="correction"):
            NodeAttributes.from_op_kwargs({"causal": True, "correction": bad}, head_dim=64)
    with pytest.raises(ValueError, match="a correction code must be one of"):
        delta_opt.Correction.from_code(3)


def test_importing_delta_opt_does_not_import_onnx() -> None:
    import subprocess
    import sys

    code = "import sys, delta_opt; assert 'onnx' not in sys.modules and 'onnxscript' not in sys.modules; delta_opt.export_onnx"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
