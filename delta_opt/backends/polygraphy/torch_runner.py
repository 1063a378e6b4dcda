"""A Polygraphy runner that calls a PyTorch module or function on the CPU (or any device).

Polygraphy ships ``PytRunner``, but it moves every input to CUDA and iterates a single output
tensor as if it were a tuple of outputs; this runner keeps the device of the caller's choosing
and maps outputs to the ONNX model's output names.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType

__all__ = ["TorchRunner"]


def _as_tuple(outputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(outputs, torch.Tensor):
        return (outputs,)
    if isinstance(outputs, Mapping):  # e.g. transformers' ModelOutput
        return tuple(v for v in outputs.values() if isinstance(v, torch.Tensor))
    return tuple(outputs)


class TorchRunner(BaseRunner):
    """Runs ``model(*inputs)`` with the feed's arrays in ``input_metadata`` order.

    Args:
        model: an ``nn.Module`` (put in eval mode) or any callable of tensors.
        input_metadata: names (the ONNX model's input order), dtypes and shapes of the inputs.
        output_names: names given to the outputs, in order (the ONNX model's output names).
        device: where the inputs are moved before the call.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        input_metadata: TensorMetadata,
        output_names: Sequence[str],
        *,
        device: str | torch.device = "cpu",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name, prefix="pytorch-runner")
        self._model = model
        self._input_metadata = input_metadata
        self._output_names = list(output_names)
        self._device = torch.device(device)

    def activate_impl(self) -> None:
        if isinstance(self._model, torch.nn.Module):
            self._model.eval()

    def get_input_metadata_impl(self) -> TensorMetadata:
        return self._input_metadata

    def infer_impl(self, feed_dict: Mapping[str, Any]):
        inputs = [torch.as_tensor(np.asarray(feed_dict[name])).to(self._device) for name in self._input_metadata]
        start = time.time()
        with torch.no_grad():
            outputs = _as_tuple(self._model(*inputs))
        self.inference_time = time.time() - start
        if len(outputs) != len(self._output_names):
            raise ValueError(
                f"the PyTorch reference returned {len(outputs)} tensor(s) but the ONNX model has "
                f"{len(self._output_names)} output(s) {self._output_names}"
            )
        return OrderedDict((n, t.detach().cpu().numpy()) for n, t in zip(self._output_names, outputs))

    def deactivate_impl(self) -> None:
        pass


def metadata_from_session(session: Any) -> TensorMetadata:
    """Input metadata of an ONNX Runtime session (dynamic dims stay symbolic), in its input order."""
    meta = TensorMetadata()
    for node in session.get_inputs():
        meta.add(node.name, dtype=DataType.from_dtype(node.type, "onnxruntime"), shape=node.shape)
    return meta
