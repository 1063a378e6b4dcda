"""Polygraphy-based comparison of exported models: ONNX Runtime (and TensorRT) against PyTorch.

``compare(onnx_path, reference, inputs)`` -> :class:`ComparisonResult`. Importing this package
imports polygraphy; TensorRT is imported only when it is installed and a comparison runs.
"""

from .compare import BackendComparison, ComparisonResult, OutputStats, compare, compare_runners, tensorrt_available

__all__ = ["BackendComparison", "ComparisonResult", "OutputStats", "compare", "compare_runners", "tensorrt_available"]
