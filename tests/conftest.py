"""Test-suite settings and fixtures shared by every test module."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# No GPU in CI: run the Triton kernels in Triton's CPU interpreter. Triton reads this when the
# kernels are decorated (first import of delta_opt.ops.triton.kernels), so it is set before any
# test runs; a GPU machine keeps compiling them (unless the caller set it already).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# CI has 2 cores. Under pytest-xdist each worker gets one thread: two workers with two OpenMP
# threads each make the threads spin against each other, and small ops take milliseconds.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))

settings.register_profile("ci", deadline=None, print_blob=True)
settings.load_profile("ci")


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the real SmolLM2-135M-Instruct, float32, SDPA attention.

    Skips, saying why, only when the weights cannot be obtained (.ci/run installs them).
    """
    from delta_opt.models import ModelUnavailable, load_smollm2

    try:
        return load_smollm2()
    except ModelUnavailable as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"needs SmolLM2-135M weights: {e}")
