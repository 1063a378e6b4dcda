"""Polygraphy: ``delta_opt.backends.polygraphy.compare`` and the ``polygraphy run`` CLI on an
exported model."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.export import Dim

from delta_opt.backends.onnx import MissingFunctionError, export_onnx
from delta_opt.backends.polygraphy import compare, tensorrt_available

from .onnx_cases import DeltaModule

PARAMS = dict(window=8, sinks=3, stride=4, tail=6)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 40, 16, generator=g) for h in (4, 2, 2))
    mask = torch.rand(2, 1, 40, 40, generator=g) > 0.2
    batch, seq = Dim("batch"), Dim("seq")
    dims = ({0: batch, 2: seq},) * 3 + ({0: batch, 2: seq, 3: seq},)
    path = tmp_path_factory.mktemp("poly") / "delta.onnx"
    export_onnx(DeltaModule(causal=True, **PARAMS), (q, k, v, mask), path, dynamic_shapes=dims)
    return path


def _feeds(lengths=(29, 64)) -> list[dict[str, np.ndarray]]:
    g = torch.Generator().manual_seed(1)
    feeds = []
    for n in lengths:
        q, k, v = (torch.randn(1, h, n, 16, generator=g).numpy() for h in (4, 2, 2))
        feeds.append({"q": q, "k": k, "v": v, "attn_mask": (torch.rand(1, 1, n, n, generator=g) > 0.2).numpy()})
    return feeds


def test_onnx_runtime_agrees_with_pytorch(model_path: Path) -> None:
    result = compare(model_path, DeltaModule(causal=True, **PARAMS), _feeds(), tensorrt=False)
    assert result.passed and bool(result)
    ort_result = result.backend("onnxruntime")
    assert len(ort_result.outputs) == 2  # one per feed
    assert all(o.passed for o in ort_result.outputs)
    assert 0.0 <= ort_result.max_abs <= 1e-4
    assert result.skipped == {"tensorrt": "not requested (tensorrt=False)"}


def test_a_wrong_reference_fails_with_its_error(model_path: Path) -> None:
    wrong = DeltaModule(causal=True, **{**PARAMS, "window": 4})  # not what was exported
    result = compare(model_path, wrong, _feeds((64,)), tensorrt=False)
    assert not result.passed
    stats = result.backend("onnxruntime").outputs[0]
    assert not stats.passed and stats.max_abs > 1e-4 and stats.mean_abs > 0


@pytest.mark.skipif(tensorrt_available(), reason="tensorrt is importable here")
def test_tensorrt_is_skipped_with_a_reason_when_missing(model_path: Path) -> None:
    result = compare(model_path, DeltaModule(causal=True, **PARAMS), _feeds((29,)))
    assert result.passed
    assert result.skipped["tensorrt"].startswith("needs tensorrt")
    with pytest.raises(ValueError, match="needs the tensorrt Python package"):
        compare(model_path, DeltaModule(causal=True, **PARAMS), _feeds((29,)), tensorrt=True)


@pytest.mark.skipif(not tensorrt_available(), reason="needs tensorrt")
def test_tensorrt_agrees_with_pytorch(model_path: Path) -> None:
    result = compare(model_path, DeltaModule(causal=True, **PARAMS), _feeds(), tensorrt=True, atol=1e-3)
    assert result.backend("tensorrt").passed, result


def test_missing_body_is_reported_before_running(model_path: Path, tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(model_path))
    del model.functions[:]
    stripped = tmp_path / "stripped.onnx"
    onnx.save(model, str(stripped))
    with pytest.raises(MissingFunctionError, match="no function body"):
        compare(stripped, DeltaModule(causal=True, **PARAMS), _feeds((29,)), tensorrt=False)


def _polygraphy_cli() -> list[str]:
    script = Path(sys.executable).with_name("polygraphy")
    if script.exists():
        return [str(script)]
    found = shutil.which("polygraphy")
    if found is None:
        pytest.fail("the polygraphy CLI is not installed next to this Python (pip install polygraphy)")
    return [found]


def test_polygraphy_run_onnxrt_cli(model_path: Path) -> None:
    shapes = ["q:[1,4,50,16]", "k:[1,2,50,16]", "v:[1,2,50,16]", "attn_mask:[1,1,50,50]"]
    command = _polygraphy_cli() + ["run", str(model_path), "--onnxrt", "--validate", "--input-shapes", *shapes]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "PASSED" in output and "delta_attention" in output
