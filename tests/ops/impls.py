"""The implementations every spec property is checked on (the reference is one of them)."""

from __future__ import annotations

import functools
from typing import Callable

import torch

import delta_opt

from delta_opt.ops.triton import triton_available
from delta_opt.ops.triton.launch import unsupported_reason

# The tests run on CPU tensors: Triton joins where its interpreter is on (tests/conftest.py turns
# it on when there is no GPU) and Triton is installed.
IMPLS = ["reference", "blocked"] + (["triton"] if triton_available(torch.device("cpu")) else [])


def impl_fn(impl: str) -> Callable[..., torch.Tensor]:
    """``delta_opt.delta_attention`` bound to one implementation, called through the torch op."""
    return functools.partial(delta_opt.delta_attention, impl=impl)


def kernel_fn(impl: str) -> Callable[..., torch.Tensor]:
    """:func:`impl_fn`, except that for ``"triton"`` it first asserts that the kernels, not the
    ``blocked`` fallback, take the inputs (so a test of the kernels cannot pass on the fallback)."""
    call = impl_fn(impl)
    if impl != "triton":
        return call

    def checked(q, k, v, attn_mask=None, **params):
        reason = unsupported_reason(q, k, v, attn_mask, interpret=q.device.type == "cpu")
        assert reason is None, f"these inputs would fall back to blocked: {reason}"
        return call(q, k, v, attn_mask, **params)

    return checked
