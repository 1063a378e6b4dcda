"""The TensorRT glue: lazy imports, ``build_engine``'s checks and profile, ``compare_engine``, the
CUDA-driver argument packing. The engine build itself needs TensorRT and a GPU (skipped without)."""

from __future__ import annotations

import ctypes
import importlib.util
import struct
import subprocess
import sys

import onnx
import pytest
import torch
from onnx import helper
from torch.export import Dim

import delta_opt
from delta_opt.backends.onnx import export_onnx
from delta_opt.backends.tensorrt import UnsupportedNodeError, build_engine, compare_engine, profile_shapes
from delta_opt.backends.tensorrt.driver import argument_bytes, pack_arguments

from .onnx_cases import DeltaModule

PARAMS = dict(window=8, sinks=3, stride=4, tail=6)
HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 40, 16, generator=g) for h in (4, 2, 2))
    mask = torch.rand(2, 1, 1, 40, generator=g) > 0.2
    batch, seq = Dim("batch"), Dim("seq")
    dims = ({0: batch, 2: seq},) * 3 + ({0: batch, 3: seq},)
    path = tmp_path_factory.mktemp("engine") / "delta.onnx"
    export_onnx(DeltaModule(causal=True, **PARAMS), (q, k, v, mask), path, dynamic_shapes=dims)
    return path


def test_importing_the_tensorrt_backend_imports_neither_tensorrt_nor_triton() -> None:
    code = (
        "import sys, delta_opt, delta_opt.backends.tensorrt as t\n"
        "from delta_opt.backends.tensorrt import plugin, engine, graph, stages, signature, driver, compare\n"
        "assert callable(delta_opt.build_engine) and t.build_engine is delta_opt.build_engine\n"
        "print('tensorrt' in sys.modules, 'triton' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False False"


@pytest.mark.skipif(HAVE_TENSORRT, reason="tensorrt is installed: nothing is missing")
def test_without_tensorrt_the_glue_says_what_it_needs(model_path, tmp_path) -> None:
    from delta_opt.backends.tensorrt import register_plugins

    with pytest.raises(ImportError, match="pip install tensorrt"):
        register_plugins()
    with pytest.raises(ImportError, match="build_engine needs tensorrt"):
        build_engine(model_path, tmp_path / "m.engine", min_seq_len=1, opt_seq_len=32, max_seq_len=64)
    assert not (tmp_path / "m.engine").exists()


def test_build_engine_checks_everything_it_can_before_tensorrt(model_path, tmp_path) -> None:
    lengths = dict(min_seq_len=1, opt_seq_len=32, max_seq_len=64)
    with pytest.raises(ValueError, match="does not exist"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "e", **lengths)
    (tmp_path / "taken.engine").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="force=True"):
        build_engine(model_path, tmp_path / "taken.engine", **lengths)
    with pytest.raises(ValueError, match="precision must be one of model, fp32, fp16, bf16"):
        build_engine(model_path, tmp_path / "e", precision="int8", **lengths)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        build_engine(model_path, tmp_path / "e", min_seq_len=64, opt_seq_len=32, max_seq_len=64)
    # A node the kernels cannot serve is refused before TensorRT is needed.
    model = onnx.load(model_path)
    node = next(n for n in model.graph.node if n.op_type == "DeltaAttention")
    (correction,) = [a for a in node.attribute if a.name == "correction"]
    node.attribute.remove(correction)
    node.attribute.append(helper.make_attribute("correction", [7]))  # no such rule code
    refused = tmp_path / "unknown_rule.onnx"
    onnx.save(model, refused)
    with pytest.raises(UnsupportedNodeError, match=r"correction=\[7\]"):
        build_engine(refused, tmp_path / "e", **lengths)


def test_the_optimization_profile(model_path) -> None:
    model = onnx.load(model_path)
    profile = profile_shapes(model, min_seq_len=1, opt_seq_len=512, max_seq_len=4096, batch_size=2)
    assert profile["q"] == ((2, 4, 1, 16), (2, 4, 512, 16), (2, 4, 4096, 16))
    assert profile["attn_mask"] == ((2, 1, 1, 1), (2, 1, 1, 512), (2, 1, 1, 4096))
    custom = profile_shapes(model, min_seq_len=1, opt_seq_len=8, max_seq_len=16, dims={"batch": (1, 2, 4)})
    assert custom["k"] == ((1, 2, 1, 16), (2, 2, 8, 16), (4, 2, 16, 16))
    with pytest.raises(ValueError, match=r"dims\['batch'\]"):
        profile_shapes(model, min_seq_len=1, opt_seq_len=8, max_seq_len=16, dims={"batch": (4, 2, 1)})
    unnamed = onnx.load(model_path)
    unnamed.graph.input[0].type.tensor_type.shape.dim[2].dim_param = ""
    with pytest.raises(ValueError, match="dynamic and unnamed"):
        profile_shapes(unnamed, min_seq_len=1, opt_seq_len=8, max_seq_len=16)


def test_compare_engine_checks_its_arguments(model_path, tmp_path) -> None:
    with pytest.raises(ValueError, match="engine_path"):
        compare_engine(model_path, tmp_path / "none.engine", {})
    (tmp_path / "x.engine").write_bytes(b"")
    with pytest.raises(ValueError, match="atol"):
        compare_engine(model_path, tmp_path / "x.engine", {}, atol=-1)


def test_driver_arguments_are_packed_in_slot_order() -> None:
    kinds, values = ["ptr", "i32", "i32", "ptr"], [0x7F0000001000, -5, 2**31 - 1, 0x7F0000002000]
    raw = argument_bytes(kinds, values, hidden=2)
    assert [len(b) for b in raw] == [8, 4, 4, 8, 8, 8]
    assert struct.unpack("<Q", raw[0])[0] == values[0] and struct.unpack("<i", raw[1])[0] == -5
    assert raw[4] == raw[5] == bytes(8)  # Triton's hidden scratch pointers: null, as TensorRT pads them
    params, storage = pack_arguments(kinds, values, hidden=0)
    assert params[3] == ctypes.addressof(storage[3])
    with pytest.raises(ValueError, match="int32"):
        pack_arguments(["i32"], [2**31], hidden=0)
    with pytest.raises(ValueError, match="64-bit address"):
        pack_arguments(["ptr"], [-1], hidden=0)
    with pytest.raises(ValueError, match="kinds for"):
        pack_arguments(["ptr"], [], hidden=0)


ENGINE_SKIP = (
    "needs tensorrt (not installable on this project's machines)" if not HAVE_TENSORRT
    else None if torch.cuda.is_available() else "needs CUDA"
)  # fmt: skip


@pytest.mark.skipif(ENGINE_SKIP is not None, reason=ENGINE_SKIP or "")
def test_engine_against_onnx_runtime(model_path, tmp_path) -> None:  # pragma: no cover - no TensorRT here
    import numpy as np

    built = build_engine(model_path, tmp_path / "m.engine", min_seq_len=8, opt_seq_len=64, max_seq_len=128, batch_size=2)
    assert len(built.nodes) == 1 and built.path.is_file()
    g = torch.Generator().manual_seed(1)
    feeds = []
    for n in (29, 64, 128):
        q, k, v = (torch.randn(2, h, n, 16, generator=g).numpy() for h in (4, 2, 2))
        feeds.append({"q": q, "k": k, "v": v, "attn_mask": (torch.rand(2, 1, 1, n, generator=g) > 0.2).numpy()})
    result = compare_engine(model_path, built.path, feeds, atol=1e-4, rtol=0)
    assert result.passed, result
    assert np.isfinite(result.backend("tensorrt").max_abs)
    assert delta_opt.build_engine is build_engine


class _RightOnlyInt:
    """An integer with the operators ``tensorrt.plugin``'s ShapeExpr/SymInt32 define (``+ - * //``
    with a plain int on the right only, no reflected operators). Not TensorRT: it checks that the
    plugin's lowering of its symbolic sizes only ever forms expressions TensorRT's API accepts."""

    def __init__(self, value: int) -> None:
        self.value = value

    def _other(self, other):
        if isinstance(other, _RightOnlyInt):
            return other.value
        if isinstance(other, int) and not isinstance(other, bool):
            return other
        raise TypeError(f"unsupported operand {type(other).__name__}")

    def __add__(self, o):
        return _RightOnlyInt(self.value + self._other(o))

    def __sub__(self, o):
        return _RightOnlyInt(self.value - self._other(o))

    def __mul__(self, o):
        return _RightOnlyInt(self.value * self._other(o))

    def __floordiv__(self, o):
        return _RightOnlyInt(self.value // self._other(o))


class _Algebra:
    """The module-level functions of ``tensorrt.plugin`` the lowering uses (an int is accepted
    first, as there, but not two ints)."""

    ShapeExpr = _RightOnlyInt

    @staticmethod
    def _pair(a, b):
        if isinstance(a, int) and isinstance(b, int):
            raise ValueError("Both arguments cannot be 'int's")
        a = _RightOnlyInt(a) if isinstance(a, int) else a
        return a, a._other(b)

    @classmethod
    def cdiv(cls, a, b):
        a, b = cls._pair(a, b)
        return _RightOnlyInt(-(-a.value // b))

    @classmethod
    def max(cls, a, b):
        a, b = cls._pair(a, b)
        return _RightOnlyInt(max(a.value, b))

    @classmethod
    def min(cls, a, b):
        a, b = cls._pair(a, b)
        return _RightOnlyInt(min(a.value, b))


@pytest.mark.parametrize(
    ("stride", "correction"),
    [(1, "paper"), (8, "paper"), (8, "taylor,none,paper,taylor"), (1, "none,paper,none,none"), (8, "none")],
)
def test_the_lowering_forms_only_expressions_tensorrt_accepts(stride, correction) -> None:
    from delta_opt.backends.tensorrt.aot import plan_stage
    from delta_opt.backends.tensorrt.plugin import _lower
    from delta_opt.backends.tensorrt.stages import STAGES, StageAttributes, StageDims
    from delta_opt.backends.tensorrt.symbolic import Sym, evaluate
    from delta_opt.ops.triton import kernels

    dims = StageDims(Sym.var("q0"), 4, 2, Sym.var("q2"), Sym.var("k2"), 64, 64, Sym.var("bias0"), 1)
    attrs = StageAttributes(True, 16, 4, stride, 24, 0.125, True, corrections=tuple(correction.split(",")))
    env = {"q0": 3, "q2": 300, "k2": 300, "bias0": 3}
    leaves = {name: _RightOnlyInt(value) for name, value in env.items()}
    for stage in STAGES:
        build = plan_stage(stage, dims, attrs, torch.float16, getattr(kernels, stage.kernel).arg_names)
        exprs = [*build.grid, *build.layout.extra_values(), *(d for shape in build.outputs.values() for d in shape)]
        for expr in exprs:
            lowered = _lower(expr, leaves, _Algebra)
            value = lowered.value if isinstance(lowered, _RightOnlyInt) else lowered
            assert value == evaluate(expr, env), expr
