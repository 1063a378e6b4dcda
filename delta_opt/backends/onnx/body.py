"""The function body of ``delta_opt.DeltaAttention``: DESIGN §1 in standard ONNX ops.

The body is what ONNX Runtime executes (and what TensorRT builds when no plugin is loaded). It
follows the cost structure of the method rather than masking a dense attention:

- **sparse rows** ``[0, Np)``: queries are taken in blocks of ``bq`` rows (``Gather`` with a
  ``[nb, bq]`` index, so no padding copy); each block reads its own key list, ``S`` sink keys
  followed by the ``bq + W - 1`` window keys around it (``bq + 2W - 2`` when bidirectional), with
  one ``Gather`` of K and V by a ``[nb, S + L]`` index. Scores are ``[B, Hkv, nb, g * bq, S + L]``:
  time and memory grow as ``N * (W + S)``.
- **dense rows**: the anchors ``0, G, .., Np - G`` and the tail ``[Np, N)`` are gathered into one
  ``[.., nA + N - Np, D]`` query tensor and attend to all keys: ``(N / G) * N`` work.
- the output row i < Np is ``O_s(i) + O_d(a) - O_s(a)``, the rows from Np on are ``O_d(i)``;
  both are ``Gather``s of the two results by a per-row index, then one ``Where``.

Grouped-query heads are never repeated: q is viewed as ``[B, Hkv, g, N, D]`` and the rows of the
g query heads that share a kv head are stacked into one ``[g * rows, D]`` matrix against that kv
head's keys, so every matmul is a plain batched GEMM with g-fold more rows. All sizes are
read from the inputs' shapes at run time, so one export serves every batch size and sequence
length: lengths that are not multiples of G or of the block size, and lengths below W, T or bq
(the block size shrinks to ``max(Np, 1)``, so a decode step costs one row).

``Nq != Nk`` (decode steps, chunked prefill) needs no branch: then ``Np = 0``, every row is a
dense row and the causal limit ``j <= i + Nk - Nq`` is the spec's bottom-right alignment.

A row with no visible key outputs zeros. ``Softmax`` of an all ``-inf`` row is NaN, so each of
the two attentions finds its empty rows from the additive bias alone (structure + mask, far
smaller than the scores) and writes 0 there; a NaN that comes from the data still propagates, as
in the reference. Rows that the mask leaves without any key at all are zeroed at the end (a
corrected row would otherwise inherit its anchor's delta): that test reads the mask once
(``ArgMax`` of its visible entries: the first visible key must be within the causal limit) and
builds one float tensor the size of the mask, [1, 1, 1, 1] for the canonical "no mask".

Index arithmetic stays within int32 (TensorRT imports int64 as int32) except the flat index into
a full ``[.., N, N]`` mask, ``Mq * Mk``, which passes 2^31 from N = 46341: at such lengths with a
full mask, TensorRT needs the plugin rather than this body (ONNX Runtime computes in int64).

The body is generated for the element type of the model's sites: float16 / bfloat16 inputs are
cast to float32 on entry and back on exit (as the PyTorch blocked implementation does), because a
body cannot otherwise create constants in its inputs' type with the ops TensorRT imports.
"""

from __future__ import annotations

import functools
from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper

from ...plan import Correction
from .builder import FLOAT, NodeBuilder
from .schema import ATTRIBUTES, DOMAIN, INPUTS, OP_TYPE, OUTPUTS

__all__ = ["build_function", "SUPPORTED_ELEMENT_TYPES", "BLOCK_ROWS_MIN", "BLOCK_ROWS_MAX"]

SUPPORTED_ELEMENT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
# Query rows per sparse block: clamp(W, 16, 128), as the PyTorch blocked implementation. A block
# reads bq + W - 1 window keys where each row needs W, so small blocks waste less work but make
# more, smaller matmuls.
BLOCK_ROWS_MIN = 16
BLOCK_ROWS_MAX = 128
_NEG_INF = float("-inf")
# Beyond any |i - j| a model can have: the bound of "no limit" in the visibility test. It stays
# inside int32, because TensorRT imports int64 tensors as int32.
_FAR = 1 << 30


def _attend(
    b: NodeBuilder,
    scores: str,
    bias: str,
    values: str,
    rows_shape: str,
    out_shape: str,
    zero: str,
    neg_inf: str,
    name: str,
    lse_shape: str | None = None,
) -> tuple[str, str | None]:
    """softmax(scores + bias) @ values over the last axis; a row whose bias is all -inf gives 0.

    ``scores`` is added to ``bias`` in the shape ``rows_shape`` (where the bias broadcasts), and
    multiplied with ``values`` in its own shape; the result is returned in ``out_shape``, where
    rows of the bias line up with rows of the output. With ``lse_shape`` (``out_shape`` with a
    last dim of 1) the rows' log-normalisers come back too (``-inf`` for an empty row), else None.
    """
    shape = b.Shape(scores)
    logits = b.Reshape(b.Add(b.Reshape(scores, rows_shape), bias), shape)
    # The log-normaliser without a second pass of exponentials: at a row's largest logit m the
    # softmax is p_max = exp(m - lse) >= 1 / K, so lse = m - log(p_max) is exact to rounding.
    # Both maxima are taken right where their inputs are made (nodes run in this order), so
    # that neither the logits nor the weights outlive what the paper's rule already keeps.
    top = b.ReduceMax(logits, b.int64([-1]), keepdims=1) if lse_shape is not None else None
    weights = b.Softmax(logits, axis=-1)
    top_weight = b.ReduceMax(weights, b.int64([-1]), keepdims=1) if lse_shape is not None else None
    out = b.Reshape(b.MatMul(weights, values), out_shape)
    # Softmax of a row of -inf is NaN; such a row (no visible key) must give 0. It is found from
    # the bias alone, so that a NaN coming from the inputs still propagates.
    empty = b.Equal(b.ReduceMax(bias, b.int64([-1]), keepdims=1), neg_inf)
    out = b.op("Where", empty, zero, out, name=name)
    if lse_shape is None:
        return out, None
    lse = b.Reshape(b.Sub(top, b.Log(top_weight)), lse_shape)
    return out, b.op("Where", empty, neg_inf, lse, name=f"{name}_lse")


def _taylor_rows(
    b: NodeBuilder,
    rules: frozenset[Correction],
    is_rule: dict[Correction, str],
    dense: str,
    dense_lse: str,
    sparse: str,
    sparse_lse: str,
    sparse_at: str,
    q5: str,
    q_dense5: str,
    dense_slot: str,
    sparse_row: str,
    anchor_sparse_row: str,
    Dv: str,
    D: str,
    zero: str,
    neg_inf: str,
) -> tuple[str, str]:
    """Rows ``[0, Np)`` of a body with taylor, from the anchors' long-range statistics.

    ``dense`` [B, Hkv, g, nD, Dv + D] holds, for anchor slots, the long-range output O_r(a) and
    mean key mu(a), and for tail slots O_d(i) (and an unused mean key); ``dense_lse`` their
    log-normalisers, ``sparse_lse`` [B, Hkv, g, Np', 1] the sparse rows' (``q5`` is scaled q).

    - taylor: ``O_s(i) + w (O_r(a) - O_s(i))``, ``w = sigmoid(c(a) + s q_i . mu(a) - lse_s(i))``
      with ``c(a) = lse_r(a) - s q_a . mu(a)``;
    - paper:  ``O_s(i) + w (O_r(a) - O_s(a))``, ``w = sigmoid(lse_r(a) - lse_s(a))``, which is
      ``O_d(a) - O_s(a)`` (dense attention is the softmax-weighted mix of its sparse and
      long-range parts), so the anchors are computed once for both rules.

    ``w = 0`` where the anchor has no long-range key. Returns (the dense-row values per row:
    O_r(a) for i < Np and O_d(i) after; the corrected rows, "none" heads not yet applied).
    """
    axis = b.int64([4])
    out_part = b.Slice(dense, b.int64([0]), b.vector(Dv), axis)
    mean_key = b.Slice(dense, b.vector(Dv), b.vector(b.Add(Dv, D)), axis)
    # c(a) = lse_r(a) - s q_a . mu(a): one number per anchor.
    offset = b.Sub(dense_lse, b.ReduceSum(b.Mul(q_dense5, mean_key), b.int64([-1]), keepdims=1))
    dense_at = b.Gather(out_part, dense_slot, axis=3)
    offset_at = b.Gather(offset, dense_slot, axis=3)  # [B, Hkv, g, Nq, 1]
    no_far = b.Equal(offset_at, neg_inf)
    l_hat = b.Add(offset_at, b.ReduceSum(b.Mul(q5, b.Gather(mean_key, dense_slot, axis=3)), b.int64([-1]), keepdims=1))
    # Rows without long-range keys take l_hat = 0 first, so that no -inf - -inf is computed.
    lse_s = b.Gather(sparse_lse, sparse_row, axis=3)
    weight = b.Where(no_far, zero, b.Sigmoid(b.Sub(b.Where(no_far, zero, l_hat), lse_s)))
    base = sparse_at
    if Correction.PAPER in rules:
        lse_r = b.Gather(dense_lse, dense_slot, axis=3)
        lse_s_anchor = b.Gather(sparse_lse, anchor_sparse_row, axis=3)
        paper_weight = b.Where(no_far, zero, b.Sigmoid(b.Sub(b.Where(no_far, zero, lse_r), lse_s_anchor)))
        weight = b.Where(is_rule[Correction.PAPER], paper_weight, weight)
        base = b.Where(is_rule[Correction.PAPER], b.Gather(sparse, anchor_sparse_row, axis=3), sparse_at)
    return dense_at, b.Add(sparse_at, b.Mul(weight, b.Sub(dense_at, base)))


def build_function(
    element_type: int = TensorProto.FLOAT, opset: int = 18, rules: Iterable[Correction | str] | None = None
) -> onnx.FunctionProto:
    """The ``delta_opt.DeltaAttention`` FunctionProto for inputs of ``element_type``.

    Args:
        element_type: onnx ``TensorProto`` element type of q, k, v, attn_mask and the output.
        opset: version of the default ONNX domain the body is written against (the model's).
        rules: the correction rules the body implements (default: all). ``export_onnx`` passes
            the rules its nodes use, so that a model pays only for those; a head whose
            ``correction`` code is not among them outputs NaN.

    Inputs/outputs/attributes: see :mod:`.schema`.
    """
    if element_type not in SUPPORTED_ELEMENT_TYPES:
        names = ", ".join(TensorProto.DataType.Name(t) for t in SUPPORTED_ELEMENT_TYPES)
        raise ValueError(f"DeltaAttention supports element types {names}; got {TensorProto.DataType.Name(element_type)}")
    if isinstance(rules, (str, Correction)):
        raise ValueError(f"rules must be a collection of correction rules; got {rules!r}")
    rules = frozenset(Correction) if rules is None else frozenset(Correction.parse(r, name="rules") for r in rules)
    if not rules:
        raise ValueError("rules must name at least one correction rule")
    # paper without taylor: the anchors are dense rows and O(i) = O_s(i) + O_d(a) - O_s(a). With
    # taylor the anchors attend over their long-range keys only and every rule is computed from
    # those statistics; with "none" alone no anchor is computed at all.
    taylor = Correction.TAYLOR in rules
    uses_anchors = rules != {Correction.NONE}
    b = NodeBuilder()
    q, k, v, mask = INPUTS
    if element_type != FLOAT:
        q, k, v, mask = (b.cast(x, FLOAT, name=f"{x}_f32") for x in (q, k, v, mask))

    i64 = b.int64
    zero_i, one_i, zero_i1 = i64(0), i64(1), i64([0])
    zero, neg_inf = b.const(0.0, np.float32), b.const(_NEG_INF, np.float32)

    # ---- sizes (read at run time) and attributes ---------------------------------------------
    q_shape, k_shape, v_shape, m_shape = (b.Shape(x) for x in (q, k, v, mask))
    B, Hq, Nq, D = (b.dim(q_shape, i, name=n) for i, n in enumerate(("B", "Hq", "Nq", "D")))
    Hkv, Nk = b.dim(k_shape, 1, name="Hkv"), b.dim(k_shape, 2, name="Nk")
    Dv = b.dim(v_shape, 3, name="Dv")
    Bm, Hm, Mq, Mk = (b.dim(m_shape, i, name=n) for i, n in enumerate(("Bm", "Hm", "Mq", "Mk")))
    group = b.Div(Hq, Hkv)
    causal = b.attr_ref("causal", "int")
    W, S, G, T = (b.attr_ref(name, "int") for name in ("window", "sinks", "stride", "tail"))
    scale = b.attr_ref("scale", "float")
    bidirectional = b.Equal(causal, zero_i)
    offset = b.Sub(Nk, Nq)  # causal limit j <= i + offset (bottom-right alignment)
    # The rule code of every query head, viewed as [1, Hkv, g, 1, 1] like the outputs' heads.
    # Expand broadcasts one code to every head and fails loudly on a list of another length.
    head_rule = b.Reshape(
        b.Expand(b.attr_ref("correction", "ints"), b.vector(Hq)), b.vector(one_i, Hkv, b.Div(Hq, Hkv), one_i, one_i)
    )

    # ---- grouped-query layout --------------------------------------------------------------
    # q is viewed as [B, Hkv, g, N, D]; the rows that the g query heads of one kv head read
    # against the same keys are stacked into one [g * rows, D] matrix, so K/V are never repeated
    # and every matmul is a plain batched GEMM with g-fold more rows.
    q5 = b.Mul(b.Reshape(q, b.vector(B, Hkv, group, Nq, D)), scale)  # scale q once, not the scores
    # The mask's head dim is 1 or Hq: view it as [Bm, 1, 1] or [Bm, Hkv, g] to match the scores.
    mask_h1 = b.Min(Hm, Hkv)
    mask_h2 = b.Div(Hm, mask_h1)
    m5 = b.Reshape(mask, b.vector(Bm, mask_h1, mask_h2, Mq, Mk))
    last_mask_row, last_mask_col = b.Sub(Mq, one_i), b.Sub(Mk, one_i)

    # ---- which rows are corrected: Np = floor((N - T) / G) * G, 0 when Nq != Nk ---------------
    n_corrected = b.Mul(b.Div(b.Max(b.Sub(Nq, T), zero_i), G), G)
    n_corrected = b.Where(b.Equal(Nq, Nk), n_corrected, zero_i, name="Np")
    n_anchors = b.Div(n_corrected, G, name="nA")

    # ---- sparse rows [0, Np): blocks of bq queries against sinks + window ---------------------
    W_eff, S_eff = b.Min(W, Nk), b.Min(S, Nk)  # |i - j| < W == |i - j| < min(W, N) for i, j < N
    rows_sparse = b.Max(n_corrected, one_i)  # at least one block, so no tensor is ever empty
    block = b.Min(b.Max(i64(BLOCK_ROWS_MIN), b.Min(i64(BLOCK_ROWS_MAX), W)), rows_sparse, name="bq")
    n_blocks = b.Div(b.Add(rows_sparse, b.Sub(block, one_i)), block, name="nb")
    block_start = b.Mul(b.Range(zero_i, n_blocks, one_i), block)  # [nb]
    rows = b.Add(b.Unsqueeze(block_start, i64([1])), b.Unsqueeze(b.Range(zero_i, block, one_i), i64([0])))  # [nb, bq]
    q_blocks = b.Gather(q5, b.Min(rows, b.Sub(Nq, one_i)), axis=3)  # [B, Hkv, g, nb, bq, D]
    q_blocks = b.Transpose(q_blocks, perm=[0, 1, 3, 2, 4, 5])  # [B, Hkv, nb, g, bq, D]
    q_blocks = b.Reshape(q_blocks, b.vector(B, Hkv, n_blocks, b.Mul(group, block), D))

    # Keys of block b: sinks [0, S) then the window [b*bq - W + 1, b*bq + bq - 1] (+ W - 1 more
    # when bidirectional). Window columns skip keys j < S so that no key counts twice.
    reach = b.Sub(W_eff, one_i)
    n_window = b.Add(b.Add(block, reach), b.Mul(b.Cast(bidirectional, to=TensorProto.INT64), reach))
    window_pos = b.Add(b.Unsqueeze(b.Sub(block_start, reach), i64([1])), b.Unsqueeze(b.Range(zero_i, n_window, one_i), i64([0])))
    sink_pos = b.Unsqueeze(b.Range(zero_i, S_eff, one_i), i64([0]))
    key_pos = b.Concat(b.Expand(sink_pos, b.vector(n_blocks, S_eff)), window_pos, axis=1, name="key_pos")  # [nb, K]
    key_idx = b.Max(b.Min(key_pos, b.Sub(Nk, one_i)), zero_i)
    k_blocks = b.Transpose(b.Gather(k, key_idx, axis=2), perm=[0, 1, 2, 4, 3])  # [B, Hkv, nb, D, K]
    v_blocks = b.Gather(v, key_idx, axis=2)  # [B, Hkv, nb, K, Dv]
    n_keys = b.Add(S_eff, n_window)
    scores = b.MatMul(q_blocks, k_blocks, name="sparse_scores")  # [B, Hkv, nb, g * bq, K]

    # Visibility of key j to row i as bounds on d = i - j: lo <= d <= hi. Window keys: |d| < W,
    # and d >= 0 when causal; sinks: no upper bound, d >= 0 when causal; out-of-range or
    # duplicated-sink window slots: hi = -FAR (never visible).
    # With d = r + e, r the row within the block and e = block start - j, this is a range of r
    # per (block, key): first_row <= r <= last_row, computed on [nb, K] and compared once.
    far = i64(_FAR)
    is_sink = b.Less(b.Range(zero_i, n_keys, one_i), S_eff)  # [K]
    window_ok = b.And(b.GreaterOrEqual(key_pos, S_eff), b.Less(key_pos, Nk))  # [nb, K]
    hi = b.Where(is_sink, far, b.Where(window_ok, reach, b.Neg(far)))  # [nb, K]
    lo = b.Where(bidirectional, b.Where(is_sink, b.Neg(far), b.Neg(reach)), zero_i)  # [K]
    e = b.Sub(b.Unsqueeze(block_start, i64([1])), key_pos)  # [nb, K]
    first_row, last_row = b.Unsqueeze(b.Sub(lo, e), i64([1])), b.Unsqueeze(b.Sub(hi, e), i64([1]))  # [nb, 1, K]
    r = b.Unsqueeze(b.Range(zero_i, block, one_i), i64([0, 2]))  # [1, bq, 1]
    visible = b.And(b.GreaterOrEqual(r, first_row), b.LessOrEqual(r, last_row))  # [nb, bq, K]
    bias = b.Unsqueeze(b.Where(visible, zero, neg_inf), i64([1]))  # [nb, 1, bq, K]
    # The user's mask at (row, key) of every block entry, from its flattened [Mq * Mk] view. A
    # broadcast row (Mq = 1) or key (Mk = 1) dim stays size 1 in the index, so a key-padding mask
    # costs [nb, 1, K] and the canonical "no mask" [nb, 1, 1].
    # The index also walks the mask's h2 heads, so the gather lands directly in the scores' layout.
    mask_rows = b.Slice(b.Unsqueeze(rows, i64([1, 3])), zero_i1, b.vector(b.Where(b.Equal(Mq, one_i), one_i, block)), i64([2]))
    mask_cols = b.Slice(b.Unsqueeze(key_idx, i64([1, 2])), zero_i1, b.vector(b.Where(b.Equal(Mk, one_i), one_i, n_keys)), i64([3]))
    mask_heads = b.Unsqueeze(b.Mul(b.Range(zero_i, mask_h2, one_i), b.Mul(Mq, Mk)), i64([0, 2, 3]))  # [1, h2, 1, 1]
    mask_idx = b.Add(mask_heads, b.Add(b.Mul(b.Min(mask_rows, last_mask_row), Mk), b.Min(mask_cols, last_mask_col)))
    mask_flat = b.Reshape(m5, b.vector(Bm, mask_h1, b.Mul(mask_h2, b.Mul(Mq, Mk))))
    user = b.Gather(mask_flat, mask_idx, axis=2)  # [Bm, h1, nb, h2, bq|1, K|1]
    sparse, sparse_lse = _attend(
        b,
        scores,
        b.Add(bias, user),  # [Bm|1, h1|1, nb, h2|1, bq, K]
        v_blocks,
        b.vector(B, Hkv, n_blocks, group, block, n_keys),
        b.vector(B, Hkv, n_blocks, group, block, Dv),
        zero,
        neg_inf,
        name="sparse_out",
        lse_shape=b.vector(B, Hkv, n_blocks, group, block, one_i) if taylor else None,
    )  # [B, Hkv, nb, g, bq, Dv]
    sparse = b.Transpose(sparse, perm=[0, 1, 3, 2, 4, 5])  # [B, Hkv, g, nb, bq, Dv]
    sparse = b.Reshape(sparse, b.vector(B, Hkv, group, b.Mul(n_blocks, block), Dv))
    if sparse_lse is not None:
        sparse_lse = b.Transpose(sparse_lse, perm=[0, 1, 3, 2, 4, 5])
        sparse_lse = b.Reshape(sparse_lse, b.vector(B, Hkv, group, b.Mul(n_blocks, block), one_i))  # [B, Hkv, g, Np', 1]

    # ---- dense rows: anchors 0, G, .., Np - G, then the tail [Np, Nq) -------------------------
    # With taylor the anchor rows see their long-range keys only (|a - j| >= W and j >= S): the
    # tail rows stay dense. Without anchors ("none" alone) only the tail is computed; at least
    # one row, so that no tensor is ever empty.
    n_anchor_rows = n_anchors if uses_anchors else zero_i
    n_dense = b.Max(b.Add(n_anchor_rows, b.Sub(Nq, n_corrected)), one_i)
    t = b.Range(zero_i, n_dense, one_i)
    is_anchor_row = b.Less(t, n_anchor_rows)
    tail_row = b.Min(b.Add(n_corrected, b.Sub(t, n_anchor_rows)), b.Sub(Nq, one_i))
    dense_rows = b.Where(is_anchor_row, b.Mul(t, G), tail_row, name="dense_rows")
    q_dense5 = b.Gather(q5, dense_rows, axis=3)  # [B, Hkv, g, nD, D]
    q_dense = b.Reshape(q_dense5, b.vector(B, Hkv, b.Mul(group, n_dense), D))
    dense_scores = b.MatMul(q_dense, b.Transpose(k, perm=[0, 1, 3, 2]), name="dense_scores")  # [B, Hkv, g * nD, Nk]
    key = b.Unsqueeze(b.Range(zero_i, Nk, one_i), i64([0]))  # [1, Nk]
    visible = b.Or(bidirectional, b.LessOrEqual(key, b.Unsqueeze(b.Add(dense_rows, offset), i64([1]))))
    if taylor:
        # Long-range keys of anchor a: S <= j <= a - W, or j >= max(a + W, S). Written as per-row
        # bounds against the key index, so each [nD, Nk] step is one comparison; tail rows get
        # the bound 0 on the right, which every key passes.
        rows_col = b.Unsqueeze(dense_rows, i64([1]))  # [nD, 1]
        left = b.And(b.GreaterOrEqual(key, S), b.LessOrEqual(key, b.Sub(rows_col, W)))
        right_start = b.Where(b.Unsqueeze(is_anchor_row, i64([1])), b.Max(b.Add(rows_col, W), S), zero_i)
        visible = b.And(visible, b.Or(left, b.GreaterOrEqual(key, right_start)))
    dense_bias = b.Where(visible, zero, neg_inf)  # [nD, Nk]
    dense_user = b.Gather(m5, b.Min(dense_rows, last_mask_row), axis=3)  # [Bm, h1, h2, nD, Mk]
    # With taylor one product gives both the output and the mean key of every dense row.
    dense_values, dense_width = (b.Concat(v, k, axis=3), b.Add(Dv, D)) if taylor else (v, Dv)
    dense, dense_lse = _attend(
        b,
        dense_scores,
        b.Add(dense_bias, dense_user),  # [Bm|1, h1|1, h2|1, nD, Nk]
        dense_values,
        b.vector(B, Hkv, group, n_dense, Nk),
        b.vector(B, Hkv, group, n_dense, dense_width),
        zero,
        neg_inf,
        name="dense_out",
        lse_shape=b.vector(B, Hkv, group, n_dense, one_i) if taylor else None,
    )  # [B, Hkv, g, nD, Dv (+ D)]

    # ---- per row: its anchor's (or its own, in the tail) dense-row slot ------------------------
    row = b.Range(zero_i, Nq, one_i)
    corrected = b.Less(row, n_corrected)
    anchor_slot = b.Div(row, G) if uses_anchors else zero_i  # index of row i's anchor among the dense rows
    dense_slot = b.Where(corrected, anchor_slot, b.Min(b.Add(n_anchor_rows, b.Sub(row, n_corrected)), b.Sub(n_dense, one_i)))
    last_sparse = b.Sub(b.Mul(n_blocks, block), one_i)  # rows past it are dense rows: clamp only
    sparse_at = b.Gather(sparse, b.Min(row, last_sparse), axis=3)  # O_s(i)  [B, Hkv, g, Nq, Dv]
    anchor_sparse_row = b.Min(b.Mul(anchor_slot, G), last_sparse)
    is_rule = {rule: b.Equal(head_rule, i64(rule.code)) for rule in rules}  # [1, Hkv, g, 1, 1]

    # ---- rows [0, Np) by their head's rule; O_d(i) from Np on ---------------------------------
    if not uses_anchors:
        dense_at = b.Gather(dense, dense_slot, axis=3)
        out_corrected = sparse_at
    elif not taylor:
        # O(i) = O_s(i) + O_d(a) - O_s(a)
        dense_at = b.Gather(dense, dense_slot, axis=3)  # O_d(a) for i < Np, O_d(i) after
        sparse_anchor = b.Gather(sparse, anchor_sparse_row, axis=3)
        out_corrected = b.Add(sparse_at, b.Sub(dense_at, sparse_anchor))
    else:
        dense_at, out_corrected = _taylor_rows(
            b, rules, is_rule, dense, dense_lse, sparse, sparse_lse, sparse_at, q5, q_dense5, dense_slot,
            b.Min(row, last_sparse), anchor_sparse_row, Dv, D, zero, neg_inf,
        )  # fmt: skip
    if Correction.NONE in rules and uses_anchors:
        out_corrected = b.Where(is_rule[Correction.NONE], sparse_at, out_corrected)
    out = b.Where(b.Unsqueeze(corrected, i64([1])), out_corrected, dense_at)

    # ---- rows that the mask leaves without any key are zero, correction included -------------
    visible_f = b.Cast(b.Greater(m5, neg_inf), to=FLOAT)  # [Bm, h1, h2, Mq, Mk]
    any_key = b.Greater(b.ReduceMax(visible_f, i64([-1]), keepdims=1), zero)  # [.., Mq, 1]
    first_key = b.ArgMax(visible_f, axis=-1, keepdims=1)  # first visible key of each mask row
    mask_row = b.Min(row, last_mask_row)
    has_key = b.And(
        b.Gather(any_key, mask_row, axis=3),
        b.Or(bidirectional, b.LessOrEqual(b.Gather(first_key, mask_row, axis=3), b.Unsqueeze(b.Add(row, offset), i64([1])))),
    )  # [Bm, h1, h2, Nq, 1]
    out = b.Where(has_key, out, zero)
    # A head whose code this body does not implement outputs NaN, never another rule's result.
    supported = functools.reduce(b.Or, is_rule.values())
    out = b.Add(out, b.Where(supported, zero, b.const(float("nan"), np.float32)))
    out = b.Reshape(out, b.vector(B, Hq, Nq, Dv))
    if element_type != FLOAT:
        out = b.cast(out, element_type, name="out_cast")
    b.nodes.append(helper.make_node("Identity", [out], [OUTPUTS[0]], name="output"))

    return helper.make_function(
        DOMAIN,
        OP_TYPE,
        inputs=list(INPUTS),
        outputs=list(OUTPUTS),
        nodes=b.nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=list(ATTRIBUTES),
        doc_string=__doc__,
    )
