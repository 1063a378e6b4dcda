"""The implementations every spec property is checked on (the reference is one of them)."""

from __future__ import annotations

import functools
from typing import Callable

import torch

import delta_opt

IMPLS = ["reference", "blocked"]


def impl_fn(impl: str) -> Callable[..., torch.Tensor]:
    """``delta_opt.delta_attention`` bound to one implementation, called through the torch op."""
    return functools.partial(delta_opt.delta_attention, impl=impl)
