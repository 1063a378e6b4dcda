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

import numpy as np
import onnx
from onnx import TensorProto, helper

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
) -> str:
    """softmax(scores + bias) @ values over the last axis; a row whose bias is all -inf gives 0.

    ``scores`` is added to ``bias`` in the shape ``rows_shape`` (where the bias broadcasts), and
    multiplied with ``values`` in its own shape; the result is returned in ``out_shape``, where
    rows of the bias line up with rows of the output.
    """
    shape = b.Shape(scores)
    weights = b.Softmax(b.Reshape(b.Add(b.Reshape(scores, rows_shape), bias), shape), axis=-1)
    out = b.Reshape(b.MatMul(weights, values), out_shape)
    # Softmax of a row of -inf is NaN; such a row (no visible key) must give 0. It is found from
    # the bias alone, so that a NaN coming from the inputs still propagates.
    empty = b.Equal(b.ReduceMax(bias, b.int64([-1]), keepdims=1), neg_inf)
    return b.op("Where", empty, zero, out, name=name)


def build_function(element_type: int = TensorProto.FLOAT, opset: int = 18) -> onnx.FunctionProto:
    """The ``delta_opt.DeltaAttention`` FunctionProto for inputs of ``element_type``.

    Args:
        element_type: onnx ``TensorProto`` element type of q, k, v, attn_mask and the output.
        opset: version of the default ONNX domain the body is written against (the model's).

    Inputs/outputs/attributes: see :mod:`.schema`.
    """
    if element_type not in SUPPORTED_ELEMENT_TYPES:
        names = ", ".join(TensorProto.DataType.Name(t) for t in SUPPORTED_ELEMENT_TYPES)
        raise ValueError(f"DeltaAttention supports element types {names}; got {TensorProto.DataType.Name(element_type)}")
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
    sparse = _attend(
        b,
        scores,
        b.Add(bias, user),  # [Bm|1, h1|1, nb, h2|1, bq, K]
        v_blocks,
        b.vector(B, Hkv, n_blocks, group, block, n_keys),
        b.vector(B, Hkv, n_blocks, group, block, Dv),
        zero,
        neg_inf,
        name="sparse_out",
    )  # [B, Hkv, nb, g, bq, Dv]
    sparse = b.Transpose(sparse, perm=[0, 1, 3, 2, 4, 5])  # [B, Hkv, g, nb, bq, Dv]
    sparse = b.Reshape(sparse, b.vector(B, Hkv, group, b.Mul(n_blocks, block), Dv))

    # ---- dense rows: anchors 0, G, .., Np - G, then the tail [Np, Nq) -------------------------
    n_dense = b.Add(n_anchors, b.Sub(Nq, n_corrected))
    t = b.Range(zero_i, n_dense, one_i)
    dense_rows = b.Where(b.Less(t, n_anchors), b.Mul(t, G), b.Add(n_corrected, b.Sub(t, n_anchors)), name="dense_rows")
    q_dense = b.Reshape(b.Gather(q5, dense_rows, axis=3), b.vector(B, Hkv, b.Mul(group, n_dense), D))
    dense_scores = b.MatMul(q_dense, b.Transpose(k, perm=[0, 1, 3, 2]), name="dense_scores")  # [B, Hkv, g * nD, Nk]
    causal_ok = b.Or(
        bidirectional,
        b.LessOrEqual(b.Unsqueeze(b.Range(zero_i, Nk, one_i), i64([0])), b.Unsqueeze(b.Add(dense_rows, offset), i64([1]))),
    )
    dense_bias = b.Where(causal_ok, zero, neg_inf)  # [nD, Nk]
    dense_user = b.Gather(m5, b.Min(dense_rows, last_mask_row), axis=3)  # [Bm, h1, h2, nD, Mk]
    dense = _attend(
        b,
        dense_scores,
        b.Add(dense_bias, dense_user),  # [Bm|1, h1|1, h2|1, nD, Nk]
        v,
        b.vector(B, Hkv, group, n_dense, Nk),
        b.vector(B, Hkv, group, n_dense, Dv),
        zero,
        neg_inf,
        name="dense_out",
    )  # [B, Hkv, g, nD, Dv]

    # ---- O(i) = O_s(i) + O_d(a) - O_s(a) for i < Np, O_d(i) after ------------------------------
    row = b.Range(zero_i, Nq, one_i)
    corrected = b.Less(row, n_corrected)
    anchor_slot = b.Div(row, G)  # index of row i's anchor among the dense rows
    dense_slot = b.Where(corrected, anchor_slot, b.Add(n_anchors, b.Sub(row, n_corrected)))
    dense_at = b.Gather(dense, dense_slot, axis=3)  # [B, Hkv, g, Nq, Dv]
    last_sparse = b.Sub(b.Mul(n_blocks, block), one_i)  # rows past it are dense rows: clamp only
    sparse_at = b.Gather(sparse, b.Min(row, last_sparse), axis=3)
    sparse_anchor = b.Gather(sparse, b.Min(b.Mul(anchor_slot, G), last_sparse), axis=3)
    out = b.Where(b.Unsqueeze(corrected, i64([1])), b.Add(sparse_at, b.Sub(dense_at, sparse_anchor)), dense_at)

    # ---- rows that the mask leaves without any key are zero, correction included -------------
    visible_f = b.Cast(b.Greater(m5, neg_inf), to=FLOAT)  # [Bm, h1, h2, Mq, Mk]
    any_key = b.Greater(b.ReduceMax(visible_f, i64([-1]), keepdims=1), zero)  # [.., Mq, 1]
    first_key = b.ArgMax(visible_f, axis=-1, keepdims=1)  # first visible key of each mask row
    mask_row = b.Min(row, last_mask_row)
    has_key = b.And(
        b.Gather(any_key, mask_row, axis=3),
        b.Or(bidirectional, b.LessOrEqual(b.Gather(first_key, mask_row, axis=3), b.Unsqueeze(b.Add(row, offset), i64([1])))),
    )  # [Bm, h1, h2, Nq, 1]
    out = b.Reshape(b.Where(has_key, out, zero), b.vector(B, Hq, Nq, Dv))
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
