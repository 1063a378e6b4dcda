"""The implementations every spec property is checked on (the reference is one of them)."""

from __future__ import annotations

import functools
from typing import Callable

import torch

import delta_opt

from delta_opt.ops.triton import triton_available

# The tests run on CPU tensors: Triton joins where its interpreter is on (tests/conftest.py turns
# it on when there is no GPU) and Triton is installed.
IMPLS = ["reference", "blocked"] + (["triton"] if triton_available(torch.device("cpu")) else [])


def impl_fn(impl: str) -> Callable[..., torch.Tensor]:
    """``delta_opt.delta_attention`` bound to one implementation, called through the torch op."""
    return functools.partial(delta_opt.delta_attention, impl=impl)
