"""Reordering a PTX entry's parameters (the compiled kernels are checked in test_trt_aot.py)."""

from __future__ import annotations

import pytest

from delta_opt.backends.tensorrt.ptx import entry_params, reorder_entry

PTX = """//
.version 8.4
.target sm_90a
.address_size 64

	// .globl	k
.visible .entry k(
	.param .u64 .ptr .global .align 1 k_param_0,
	.param .u32 k_param_1,
	.param .u64 .ptr .global .align 1 k_param_2,
	.param .u64 .ptr .global .align 1 k_param_3,
	.param .u64 .ptr .global .align 1 k_param_4
)
.reqntid 128
{
	ld.param.u64 	%rd1, [k_param_0];
	ld.param.u32 	%r1, [k_param_1];
	ld.param.u64 	%rd2, [k_param_2];
	ret;
}
"""


def test_entry_params_read_names_and_sizes() -> None:
    params = entry_params(PTX, "k")
    assert [p.name for p in params] == [f"k_param_{i}" for i in range(5)]
    assert [p.size for p in params] == [8, 4, 8, 8, 8] and [p.is_pointer for p in params] == [True, False, True, True, True]
    with pytest.raises(ValueError, match="no entry"):
        entry_params(PTX, "other")


def test_reorder_moves_declarations_keeps_the_body_and_hidden_params() -> None:
    # Visible: param 0 (input), 1 (int), 2 (output); 3 and 4 are hidden scratch pointers.
    out = reorder_entry(PTX, "k", [0, None, 1, 2], visible=3, new_name="k_v1")
    params = entry_params(out, "k_v1")
    assert [p.name for p in params] == ["k_param_0", "k_unused_0", "k_param_1", "k_param_2", "k_param_3", "k_param_4"]
    assert [p.size for p in params] == [8, 8, 4, 8, 8, 8]
    assert "// .globl\tk_v1" in out and ".entry k(" not in out
    assert out.split("{", 1)[1] == PTX.split("{", 1)[1]  # the compiled code is untouched


def test_reorder_refuses_incomplete_or_duplicate_orders() -> None:
    with pytest.raises(ValueError, match="exactly once"):
        reorder_entry(PTX, "k", [0, 0, 2], visible=3)
    with pytest.raises(ValueError, match="exactly once"):
        reorder_entry(PTX, "k", [0, 2], visible=3)
    with pytest.raises(ValueError, match="fewer than"):
        reorder_entry(PTX, "k", list(range(6)), visible=6)
    with pytest.raises(ValueError, match="identifier"):
        reorder_entry(PTX, "k", [0, 1, 2], visible=3, new_name="bad name")
