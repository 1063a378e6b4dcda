"""Test-suite settings shared by every test module."""

import os

import torch
from hypothesis import settings

# CI has 2 cores; more threads only add contention between pytest-xdist workers.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

settings.register_profile("ci", deadline=None, print_blob=True)
settings.load_profile("ci")
