"""Test-suite settings and fixtures shared by every test module."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# CI has 2 cores; more threads only add contention between pytest-xdist workers.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

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
