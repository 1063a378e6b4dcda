"""The ``delta-opt`` command line: inspect, optimize, export (onnx, trt), check, bench.

A thin layer over the Python API (``delta_opt.optimize``, ``delta_opt.export_onnx``, the
benchmarks in ``delta_opt.bench``); see ``delta-opt --help`` and the README.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
