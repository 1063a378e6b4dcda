"""``delta-opt export onnx``: the file has one DeltaAttention node per site and runs in ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import delta_opt
from delta_opt.cli.main import main

from .helpers import TEST_CONFIG, assert_one_line_error, run_cli

ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime (the onnx extra)")


def _converted_logits(ids: torch.Tensor) -> torch.Tensor:
    """The embedded default model converted with the test config, in PyTorch (the reference for ORT)."""
    from delta_opt.zoo import tiny_llama

    model, _ = tiny_llama(seq_len=ids.shape[1])
    config = delta_opt.DeltaConfig(window=16, sinks=4, stride=8, tail=8)
    program, _ = delta_opt.optimize(model, {"input_ids": ids, "use_cache": False}, config)
    with torch.no_grad():
        return program.module()(input_ids=ids, use_cache=False).logits, model(input_ids=ids, use_cache=False).logits


def _ort_logits(path, ids: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    return session.run(None, {name: ids.numpy()})[0]


def test_export_onnx_end_to_end(tmp_path):
    (tmp_path / "delta-opt.toml").write_text(TEST_CONFIG)
    result = run_cli("export", "onnx", "-o", "model.onnx", "--report", "export.json", cwd=tmp_path)
    assert result.returncode == 0, result
    assert "wrote model.onnx: 2 DeltaAttention node(s) for 2 site(s), opset 18" in result.stderr
    report = json.loads((tmp_path / "export.json").read_text())
    assert report["delta_attention_nodes"] == 2 and report["summary"]["num_converted"] == 2
    assert report["config"]["window"] == 16

    # The file computes what the converted PyTorch program computes, which is not dense attention.
    from delta_opt.zoo import tiny_llama

    ids = tiny_llama(seq_len=64)[1]["input_ids"]  # the inputs the CLI generated (same seed)
    converted, dense = _converted_logits(ids)
    got = torch.from_numpy(_ort_logits(tmp_path / "model.onnx", ids))
    assert (got - converted).abs().max() < 1e-4
    assert (got - dense).abs().max() > 1e-3

    # inspect reads the ONNX file.
    inspected = run_cli("inspect", "model.onnx", "--json", cwd=tmp_path)
    assert inspected.returncode == 0, inspected
    info = json.loads(inspected.stdout)
    assert len(info["delta_attention_nodes"]) == 2 and info["delta_attention_function_body"] is True
    attributes = info["delta_attention_nodes"][0]["attributes"]
    assert (attributes["window"], attributes["sinks"], attributes["stride"], attributes["tail"]) == (16, 4, 8, 8)

    again = run_cli("export", "onnx", "-o", "model.onnx", cwd=tmp_path)
    assert_one_line_error(again, "'model.onnx' exists; pass --force")


def test_export_onnx_dynamic_length(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "delta-opt.toml").write_text(TEST_CONFIG)
    assert main(["export", "onnx", "-o", "dyn.onnx", "--dynamic", "--max-seq-len", "256", "-q"]) == 0
    for n in (40, 100):  # neither is the traced length (64)
        ids = torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(n))
        converted, _ = _converted_logits(ids)
        got = torch.from_numpy(_ort_logits(tmp_path / "dyn.onnx", ids))
        assert got.shape == converted.shape and (got - converted).abs().max() < 1e-4


def test_export_refusals(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "onnx", "-o", "model.txt"]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert main(["export", "onnx", "-o", "m.onnx", "--max-seq-len", "9"]) == 2
    assert "--max-seq-len applies with --dynamic" in capsys.readouterr().err
