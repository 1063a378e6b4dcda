"""The plugins' launch logic, in plain Python: attributes from the node contract, the row split,
output shapes, the delta buffer, grids, the kernels' parameters in TensorRT's order.

Every quantity is checked against the eager launcher (``delta_opt.ops.triton.launch`` /
``arguments``) on the same sizes, with the sizes given as ints and as symbols evaluated later.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from delta_opt.backends.onnx import schema
from delta_opt.backends.tensorrt import attributes as attributes_module
from delta_opt.backends.tensorrt.aot import plan_stage
from delta_opt.backends.tensorrt.attributes import ATTRIBUTE_TYPES, STAGE_ATTRIBUTES, UnsupportedNodeError, unserved
from delta_opt.backends.tensorrt.signature import check_ranges
from delta_opt.backends.tensorrt.stages import DENSE, SPARSE, StageAttributes, StageDims, delta_rows, grid, output_shapes
from delta_opt.backends.tensorrt.symbolic import Sym, evaluate
from delta_opt.ops.checks import AttentionShape
from delta_opt.ops.triton import kernels
from delta_opt.ops.triton.arguments import (
    KernelBuffers,
    compile_signature,
    constexprs,
    dense_kernel_args,
    sparse_kernel_args,
)
from delta_opt.ops.triton.launch import plan_launch
from delta_opt.plan import Correction

ARG_NAMES = {DENSE: kernels.delta_dense_kernel.arg_names, SPARSE: kernels.delta_sparse_kernel.arg_names}
VALUES = dict(causal=1, window=64, sinks=16, stride=8, tail=24, scale=0.125, correction=[0])


def attrs(**overrides) -> StageAttributes:
    return StageAttributes.from_values({**VALUES, "has_bias": 1, **overrides})


def dims(n_q=1000, n_k=None, batch=2, q_heads=4, kv_heads=2, head_dim=64, value_dim=None, mask_batch=1, mask_heads=1):
    return StageDims(batch, q_heads, kv_heads, n_q, n_q if n_k is None else n_k, head_dim, value_dim or head_dim,
                     mask_batch, mask_heads)  # fmt: skip


SYMBOLIC = StageDims(Sym.var("B"), 4, 2, Sym.var("Nq"), Sym.var("Nk"), 64, 64, Sym.var("Bm"), 1)


def env(d: StageDims) -> dict[str, int]:
    return {"B": d.batch, "Nq": d.q_len, "Nk": d.kv_len, "Bm": d.mask_batch}


# ---- attributes --------------------------------------------------------------------------------


def test_attributes_follow_the_node_contract() -> None:
    assert list(ATTRIBUTE_TYPES) == list(schema.ATTRIBUTES)  # same names, same order
    kinds = {"INT": int, "FLOAT": float, "STRING": str}
    assert all(ATTRIBUTE_TYPES[n] is kinds[k] for n, (k, _) in schema.ATTRIBUTES.items() if k in kinds)
    assert list(STAGE_ATTRIBUTES) == list(schema.ATTRIBUTES) + ["has_bias"]


def test_an_attribute_added_to_the_schema_reaches_the_plugins(monkeypatch) -> None:
    import numpy as np
    import numpy.typing as npt

    extended = {**schema.ATTRIBUTES, "correction": ("INTS", "rule codes, one or one per query head")}
    monkeypatch.setattr(schema, "ATTRIBUTES", extended)
    types = attributes_module._attribute_types()
    assert list(types) == list(extended) and types["correction"] == npt.NDArray[np.int32]
    monkeypatch.setattr(schema, "ATTRIBUTES", {**extended, "mode": ("TENSOR", "?")})
    with pytest.raises(TypeError, match="mode"):
        attributes_module._attribute_types()


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (dict(correction="paper"), None),
        (dict(correction="paper,paper,paper"), None),
        (dict(correction="taylor"), None),
        (dict(correction="paper,none"), None),
        (dict(correction="sideways"), "correction"),
        (dict(correction=[0]), None),  # the node's rule codes: paper 0, none 1, taylor 2
        (dict(correction=[0, 0, 0, 0]), None),
        (dict(correction=[2]), None),
        (dict(correction=[0, 1, 2, 1]), None),
        (dict(correction=[7]), "correction"),
        (dict(correction=[]), "correction"),
        (dict(correction=[0.5]), "correction"),
        (dict(window=0), "window"),
        (dict(causal=2), "causal"),
        (dict(scale=float("inf")), "scale"),
        (dict(future_knob=3), "future_knob"),
    ],
)
def test_values_the_kernels_cannot_serve_are_named(extra, problem) -> None:
    reasons = unserved({**VALUES, **extra})
    if problem is None:
        assert reasons == {}
    else:
        assert set(reasons) == {problem}
    missing = unserved({k: v for k, v in VALUES.items() if k != "tail"})
    assert "missing" in missing["tail"]
    assert "must be one of [0, 1, 2]; got 7" in unserved({**VALUES, "correction": [0, 7]})["correction"]
    assert "not known to the TensorRT kernels" in unserved({**VALUES, "future_knob": 3})["future_knob"]


# ---- the row split -------------------------------------------------------------------------------

SPLIT = dict(
    n_q=st.integers(0, 700), extra_keys=st.sampled_from([0, 0, 0, 1, 37]), stride=st.integers(1, 40),
    tail=st.integers(0, 200), window=st.integers(1, 800), dtype=st.sampled_from([torch.float16, torch.float32]),
    head_dim=st.sampled_from([16, 40, 64, 80, 128, 256]),
    # The node's rule codes for its 4 query heads: one for all (paper, none, taylor) or per head.
    codes=st.sampled_from([[0], [1], [2], [2, 0, 1, 2], [1, 1, 0, 1], [0, 2, 2, 0]]),
)  # fmt: skip


@given(**SPLIT)
def test_the_symbolic_plan_is_the_eager_plan(n_q, extra_keys, stride, tail, window, dtype, head_dim, codes) -> None:
    a = attrs(stride=stride, tail=tail, window=window, correction=codes)
    d = dims(n_q=n_q, n_k=n_q + extra_keys, head_dim=head_dim)
    shape = AttentionShape(d.batch, d.q_heads, d.kv_heads, d.q_len, d.kv_len, d.head_dim, d.value_dim)
    rules = [Correction.from_code(c) for c in codes] * (4 // len(codes))
    eager = plan_launch(shape, dtype, causal=True, window=window, sinks=16, stride=stride, tail=tail, scale=0.125,
                        corrections=rules)  # fmt: skip
    on_ints = plan_stage(DENSE, d, a, dtype, ARG_NAMES[DENSE]).plan
    symbolic = plan_stage(DENSE, SYMBOLIC if head_dim == 64 else dataclasses.replace(SYMBOLIC, head_dim=head_dim, value_dim=head_dim),
                          a, dtype, ARG_NAMES[DENSE]).plan  # fmt: skip
    for field in dataclasses.fields(eager):
        expected = getattr(eager, field.name)
        assert getattr(on_ints, field.name) == expected, field.name
        got = getattr(symbolic, field.name)
        if field.name not in ("q_heads", "kv_heads", "head_dim", "value_dim"):
            got = evaluate(got, env(d)) if isinstance(got, Sym) else got
        assert got == expected, field.name


@given(**SPLIT)
def test_grids_and_delta_rows_cover_the_eager_launch(n_q, extra_keys, stride, tail, window, dtype, head_dim, codes) -> None:
    a = attrs(stride=stride, tail=tail, window=window, correction=codes)
    d = dims(n_q=n_q, n_k=n_q + extra_keys)
    plan = plan_stage(DENSE, SYMBOLIC, a, dtype, ARG_NAMES[DENSE]).plan
    shape = AttentionShape(d.batch, d.q_heads, d.kv_heads, d.q_len, d.kv_len, d.head_dim, d.value_dim)
    rules = [Correction.from_code(c) for c in codes] * (4 // len(codes))
    eager = plan_launch(shape, dtype, causal=True, window=window, sinks=16, stride=stride, tail=tail, scale=0.125,
                        corrections=rules)  # fmt: skip
    dense_grid = [evaluate(g, env(d)) for g in grid(DENSE, plan)]
    sparse_grid = [evaluate(g, env(d)) for g in grid(SPARSE, plan)]
    # Same grids, except that an empty launch keeps one (masked-off) program per (batch, head).
    assert dense_grid == [max(1, eager.dense_grid[0]), eager.dense_grid[1], 1]
    assert sparse_grid == [max(1, eager.sparse_grid[0]) if eager.sparse_grid else 1, d.batch * d.q_heads, 1]
    rows = evaluate(delta_rows(Sym.var("Nq"), a), env(d))
    assert rows >= max(1, eager.n_anchors)  # the buffer holds every anchor's correction
    assert rows == (eager.n_anchors or rows) or eager.all_dense


def test_output_shapes() -> None:
    a = attrs()
    out = output_shapes(DENSE, SYMBOLIC, a)
    assert out["out"][:2] == (SYMBOLIC.batch, 4) and out["out"][3] == 64
    assert [evaluate(x, {"B": 2, "Nq": 1000}) for x in out["delta"]] == [2, 4, (1000 - 24) // 8, 64]
    assert set(output_shapes(SPARSE, SYMBOLIC, a)) == {"out"}  # aliased to ``partial``
    assert delta_rows(Sym.var("Nq"), attrs(stride=1)) == 1  # G = 1 has no anchors
    assert evaluate(delta_rows(Sym.var("Nq"), a), {"Nq": 5}) == 1  # never an empty tensor


def test_type_combinations() -> None:
    node = ["FP32|FP16|BF16"] * 3
    assert DENSE.type_combination() == ", ".join(node + ["FP32", "FP32", "INT32", "FP32|FP16|BF16"] + ["FP32"] * 3)
    assert SPARSE.type_combination() == ", ".join(node + ["FP32", "FP32", "INT32"] + ["FP32"] * 3 + ["FP32|FP16|BF16"] * 2)


def test_shapes_the_kernels_cannot_take_are_refused() -> None:
    def shapes(q=(1, 4, Sym.var("N"), 64), v=(1, 2, Sym.var("N"), 64), bias=(1, 1, 1, Sym.var("N"))):
        return {"q": q, "k": (1, 2, Sym.var("N"), 64), "v": v, "bias": bias}

    assert StageDims.from_shapes(shapes()).head_dim == 64
    with pytest.raises(UnsupportedNodeError, match="head dim D .* is dynamic"):
        StageDims.from_shapes(shapes(q=(1, 4, Sym.var("N"), Sym.var("D"))))
    with pytest.raises(UnsupportedNodeError, match="value dim Dv .* is 512"):
        StageDims.from_shapes(shapes(v=(1, 2, Sym.var("N"), 512)))
    with pytest.raises(UnsupportedNodeError, match="varies along the query dim"):
        StageDims.from_shapes(shapes(bias=(1, 1, Sym.var("N"), Sym.var("N"))))
    with pytest.raises(UnsupportedNodeError, match="rank 4"):
        StageDims.from_shapes(shapes(bias=(1, Sym.var("N"))))


# ---- kernel parameters ---------------------------------------------------------------------------


def _eager_arguments(stage, d: StageDims, a: StageAttributes, dtype):
    """The eager launcher's arguments for the same call, on meta tensors."""
    shape = AttentionShape(d.batch, d.q_heads, d.kv_heads, d.q_len, d.kv_len, d.head_dim, d.value_dim)
    plan = plan_launch(shape, dtype, causal=a.causal, window=a.window, sinks=a.sinks, stride=a.stride, tail=a.tail,
                       scale=a.scale, corrections=a.head_rules(d.q_heads))  # fmt: skip
    meta = lambda *s, dt=dtype: torch.empty(s, dtype=dt, device="meta")  # noqa: E731
    bias = meta(d.mask_batch, d.mask_heads, d.kv_len, dt=torch.float32).expand(d.batch, d.q_heads, d.kv_len) if a.has_bias else None
    buffers = KernelBuffers(
        q=meta(d.batch, d.q_heads, d.q_len, d.head_dim), k=meta(d.batch, d.kv_heads, d.kv_len, d.head_dim),
        v=meta(d.batch, d.kv_heads, d.kv_len, d.value_dim), out=meta(d.batch, d.q_heads, d.q_len, d.value_dim),
        delta=meta(*plan.delta_shape, dt=torch.float32), scale=meta(1, dt=torch.float32), bias=bias,
        rules=meta(d.q_heads, dt=torch.int32),
        mean_key=meta(*plan.mean_key_shape, dt=torch.float32) if plan.has_taylor else None,
        offset=meta(*plan.offset_shape, dt=torch.float32) if plan.has_taylor else None,
    )  # fmt: skip
    args = (dense_kernel_args if stage is DENSE else sparse_kernel_args)(plan, buffers)
    return args, constexprs(plan, dtype, has_bias=a.has_bias, interpret=False), plan


@pytest.mark.parametrize("stage", [DENSE, SPARSE], ids=["dense", "sparse"])
@pytest.mark.parametrize(
    ("mask_batch", "correction"),
    [(1, [0]), (2, [0]), (1, [2]), (2, [1]), (1, [2, 0, 1, 2])],
    ids=["mask-broadcast", "mask-per-batch", "taylor", "none", "per-head"],
)
def test_static_shapes_compile_the_variant_the_eager_jit_compiles(stage, mask_batch, correction) -> None:
    """With every size known, the plugin specialises exactly as Triton's JIT does for the eager
    launcher (same constants, same divisibility hints), for every correction plan; only the anchor
    buffers' row count (and so their strides) may differ: the plugin sizes them for the largest
    anchor count."""
    d, a, dtype = dims(n_q=1000, batch=2, mask_batch=mask_batch), attrs(correction=correction), torch.bfloat16
    build = plan_stage(stage, d, a, dtype, ARG_NAMES[stage])
    args, compile_time, eager_plan = _eager_arguments(stage, d, a, dtype)
    assert evaluate(delta_rows(1000, a), {}) == eager_plan.n_anchors  # same buffer at this length
    assert build.layout.compile_signature() == compile_signature(list(ARG_NAMES[stage]), args, compile_time)
    values = {p.name: p.value for p in build.layout.params if not p.is_pointer}
    assert values == {k: v for k, v in args.items() if k in values}


def test_dynamic_sizes_are_never_specialised_and_divisibility_is_proven() -> None:
    for head_dim, divisible in ((64, True), (40, False)):
        d = dataclasses.replace(SYMBOLIC, head_dim=head_dim, value_dim=head_dim)
        layout = plan_stage(DENSE, d, attrs(), torch.float16, ARG_NAMES[DENSE]).layout
        params = {p.name: p for p in layout.params}
        assert params["stride_qh"].kind == "i32" and params["stride_qh"].divisible_by_16 is divisible  # Nq * D
        assert params["n_q"].divisible_by_16 is False  # do_not_specialize, as in the JIT
        assert params["stride_qn"].divisible_by_16 is divisible  # the constant D
        assert "stride_qd" in layout.constants and layout.constants["stride_qd"] == 1  # contiguous
        assert all(p.divisible_by_16 for p in layout.params if p.is_pointer)  # TensorRT's 256-byte alignment


@pytest.mark.parametrize("stage", [DENSE, SPARSE], ids=["dense", "sparse"])
def test_tensorrt_slots_bind_back_to_the_kernel_parameters(stage) -> None:
    layout = plan_stage(stage, SYMBOLIC, attrs(), torch.float16, ARG_NAMES[stage]).layout
    names = [p.name for p in layout.params]
    # Slots: the plugin's inputs, the extra int32s (in the kernel's order), the outputs.
    n_in = len(stage.inputs)
    inputs, extras, outputs = layout.order[:n_in], layout.order[n_in : len(layout.order) - len(stage.outputs)], layout.order[-len(stage.outputs):]
    pointers = {"q": "Q", "k": "K", "v": "V", "bias": "Bias", "scale": "Scale", "rules": "Rules", "delta": "Delta",
                "mean_key": "MeanKey", "offset": "Offset"}  # fmt: skip
    assert [names[i] if i is not None else None for i in inputs] == [pointers.get(t) for t in stage.inputs]
    assert [names[i] for i in outputs] == (["Out", "Delta", "MeanKey", "Offset"] if stage is DENSE else ["Out"])
    assert [names[i] for i in extras] == list(layout.extras) == [n for n in names if not n[0].isupper()]
    assert layout.slot_kinds() == ("ptr",) * n_in + ("i32",) * len(layout.extras) + ("ptr",) * len(stage.outputs)
    slots = list(stage.inputs) + [f"#{i}" for i in range(len(layout.extras))] + list(stage.outputs)
    bound = layout.bind(slots)
    assert set(bound) == set(names)  # every kernel parameter receives exactly one slot
    assert bound["Out"] == "out" and bound[layout.extras[0]] == "#0"
    if stage is SPARSE:
        assert None in layout.order and "partial" not in bound.values()  # TensorRT passes it; unread
    with pytest.raises(ValueError, match="slots expected"):
        layout.bind(slots[:-1])


def test_int32_limits_over_the_optimization_profile() -> None:
    a = attrs(window=2048, sinks=1024, stride=64, tail=128)
    dyn_batch = StageDims(Sym.var("B"), 32, 8, Sym.var("Nq"), Sym.var("Nk"), 128, 128)
    build = plan_stage(DENSE, dyn_batch, a, torch.bfloat16, ARG_NAMES[DENSE])
    ok = {"B": (1, 4), "Nq": (1, 131072), "Nk": (1, 131072), "Bm": (1, 1)}
    assert check_ranges(build.layout, build.grid, ok) == []
    too_long = {**ok, "Nq": (1, 1 << 20), "Nk": (1, 1 << 20)}  # Hq * N * D > 2^31 - 1
    problems = check_ranges(build.layout, build.grid, too_long)
    assert any("stride_qb" in p and "int32" in p for p in problems), problems
    # A static batch of 1 has no batch stride to overflow (stride 0, as the eager launcher passes).
    single = plan_stage(DENSE, dataclasses.replace(dyn_batch, batch=1), a, torch.bfloat16, ARG_NAMES[DENSE])
    assert check_ranges(single.layout, single.grid, too_long) == []
    many_heads = plan_stage(DENSE, dataclasses.replace(dyn_batch, q_heads=64, kv_heads=8), a, torch.bfloat16, ARG_NAMES[DENSE])
    assert any("grid dimension y" in p for p in check_ranges(many_heads.layout, many_heads.grid, {**ok, "B": (1, 2048)}))


# ---- the node's correction rules in the plan -----------------------------------------------------


@pytest.mark.parametrize(
    ("codes", "rules", "anchor_blocks", "taylor"),
    [
        ([0], ("paper",) * 4, 1, False),
        ([1], ("none",) * 4, 0, False),  # no head reads its anchors: no anchor block is launched
        ([2], ("taylor",) * 4, 1, True),
        ([2, 0, 1, 1], ("taylor", "paper", "none", "none"), 1, True),
        ([1, 0, 1, 1], ("none", "paper", "none", "none"), 1, False),
        ("none,paper,none,none", ("none", "paper", "none", "none"), 1, False),  # the op's string form
    ],
    ids=["paper", "none", "taylor", "per-head", "per-head-no-taylor", "string"],
)
def test_the_correction_attribute_reaches_the_symbolic_plan(codes, rules, anchor_blocks, taylor) -> None:
    a = StageAttributes.from_values({**VALUES, "correction": codes, "has_bias": 0})
    build = plan_stage(DENSE, SYMBOLIC, a, torch.float16, ARG_NAMES[DENSE])
    plan, at = build.plan, {"B": 2, "Nq": 1000, "Nk": 1000, "Bm": 1}
    assert [r.value for r in plan.corrections] == list(rules) and a.rule_codes(4) == tuple(Correction(r).code for r in rules)
    assert evaluate(plan.anchor_blocks, at) == anchor_blocks  # 122 anchors fit one 128-row block
    assert plan.has_taylor is taylor and build.layout.constants["TAYLOR"] is taylor
    outputs = {name: [evaluate(x, at) for x in shape] for name, shape in build.outputs.items()}
    assert outputs["delta"] == [2, 4, 122, 64]
    assert outputs["mean_key"] == ([2, 4, 122, 64] if taylor else [1]) and outputs["offset"] == ([2, 4, 122] if taylor else [1])
    pointers = {p.name: p for p in build.layout.params if p.is_pointer}
    assert pointers["Rules"].kind == "*i32" and pointers["MeanKey"].kind == pointers["Offset"].kind == "*fp32"
    # The dense grid: anchor blocks, then cdiv(Nq - Np, 128) tail blocks (Np = 976).
    assert evaluate(grid(DENSE, plan)[0], at) == anchor_blocks + 1


def test_stride_one_with_a_none_head_keeps_its_sparse_rows() -> None:
    """G = 1 makes paper/taylor heads dense, but a ``none`` head stays sparse (as eagerly)."""
    plain, mixed = attrs(stride=1, correction=[0]), attrs(stride=1, correction=[1, 0, 0, 0])
    at = {"B": 1, "Nq": 300, "Nk": 300, "Bm": 1}
    assert evaluate(plan_stage(DENSE, SYMBOLIC, plain, torch.float16, ARG_NAMES[DENSE]).plan.n_corrected, at) == 0
    plan = plan_stage(DENSE, SYMBOLIC, mixed, torch.float16, ARG_NAMES[DENSE]).plan
    assert evaluate(plan.n_corrected, at) == evaluate(plan.n_anchors, at) == 300 - 24
    assert evaluate(delta_rows(Sym.var("Nq"), mixed), at) == 300 - 24 and delta_rows(Sym.var("Nq"), plain) == 1


def test_per_head_rules_that_do_not_fit_the_heads_are_refused() -> None:
    with pytest.raises(UnsupportedNodeError, match="3 rules but q has 4 query heads"):
        plan_stage(DENSE, SYMBOLIC, attrs(correction=[0, 1, 2]), torch.float16, ARG_NAMES[DENSE])
    dynamic_heads = dataclasses.replace(SYMBOLIC, q_heads=Sym.var("H"))
    with pytest.raises(UnsupportedNodeError, match="query head count .* is dynamic"):
        plan_stage(DENSE, dynamic_heads, attrs(correction=[0, 1, 2, 0]), torch.float16, ARG_NAMES[DENSE])
    # One rule for every head needs no head count.
    assert plan_stage(SPARSE, dynamic_heads, attrs(correction=[2]), torch.float16, ARG_NAMES[SPARSE]).plan.has_taylor
    with pytest.raises(ValueError, match="non-empty"):
        StageAttributes(True, 8, 1, 4, 4, 0.1, False, corrections=())
