"""Load a stage's PTX and launch it through the CUDA driver, the way a TensorRT plugin launch does.

TensorRT loads an ahead-of-time plugin's PTX into a module, and launches its kernel with one
``cuLaunchKernel`` whose parameters are the plugin's input pointers, the extra int32 arguments
and the output pointers, in that order, with Triton's hidden trailing pointers set to null.
:class:`DriverKernel` does the same with ``cuda-python`` so the binary TensorRT would run can be
checked on a GPU without TensorRT; :func:`pack_arguments` (plain Python) builds the parameter
array.
"""

from __future__ import annotations

import ctypes
from typing import Any, Sequence

__all__ = ["DriverKernel", "argument_bytes", "pack_arguments"]

_STATIC_SHARED_LIMIT = 48 * 1024  # above this, dynamic shared memory must be opted into per kernel


def pack_arguments(kinds: Sequence[str], values: Sequence[int], *, hidden: int) -> tuple[Any, list]:
    """``(kernelParams, storage)`` for ``cuLaunchKernel``.

    Args:
        kinds: per slot, ``"ptr"`` (a 64-bit device address) or ``"i32"``.
        values: per slot, the address or the integer.
        hidden: trailing pointer parameters the caller does not provide (passed as null).

    ``kernelParams`` is a ``void*[]`` whose entry i points at the value of parameter i; keep
    ``storage`` alive until the launch is enqueued.
    """
    if len(kinds) != len(values):
        raise ValueError(f"{len(kinds)} parameter kinds for {len(values)} values")
    storage: list[Any] = []
    for i, (kind, value) in enumerate(zip(kinds, values)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"parameter {i} must be an int; got {type(value).__name__}")
        if kind == "ptr":
            if not 0 <= value < 2**64:
                raise ValueError(f"parameter {i}: {value} is not a 64-bit address")
            storage.append(ctypes.c_uint64(value))
        elif kind == "i32":
            if not -(2**31) <= value < 2**31:
                raise ValueError(f"parameter {i}: {value} does not fit int32")
            storage.append(ctypes.c_int32(value))
        else:
            raise ValueError(f"parameter {i} has unknown kind {kind!r}")
    storage += [ctypes.c_uint64(0) for _ in range(hidden)]
    params = (ctypes.c_void_p * max(1, len(storage)))(*[ctypes.addressof(s) for s in storage])
    return params, storage


def argument_bytes(kinds: Sequence[str], values: Sequence[int], *, hidden: int) -> list[bytes]:
    """The bytes each parameter pointer of :func:`pack_arguments` points at (for inspection)."""
    params, storage = pack_arguments(kinds, values, hidden=hidden)
    return [ctypes.string_at(params[i], ctypes.sizeof(s)) for i, s in enumerate(storage)]


def _driver() -> Any:
    try:
        from cuda.bindings import driver  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cuda as driver  # older cuda-python
        except ImportError as e:
            raise ImportError("launching through the CUDA driver needs cuda-python (`pip install cuda-python`)") from e
    return driver


def _check(result: Any, what: str) -> Any:
    driver = _driver()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != driver.CUresult.CUDA_SUCCESS:
        _, message = driver.cuGetErrorString(err)
        raise RuntimeError(f"{what} failed: {err} {message.decode() if isinstance(message, bytes) else message}")
    return values[0] if len(values) == 1 else values


class DriverKernel:
    """One kernel of a PTX (or cubin) image, loaded into the current CUDA context."""

    def __init__(self, image: bytes | str, name: str) -> None:
        driver = _driver()
        data = image.encode() if isinstance(image, str) else image
        # PTX is JIT-compiled by the driver here, as when TensorRT loads the plugin's PTX.
        self._image = ctypes.create_string_buffer(data)  # NUL-terminated, alive while loading
        _check(driver.cuInit(0), "cuInit")
        self.module = _check(driver.cuModuleLoadData(ctypes.addressof(self._image)), "cuModuleLoadData")
        self.function = _check(driver.cuModuleGetFunction(self.module, name.encode()), f"cuModuleGetFunction({name})")
        self.name = name

    def attribute(self, attribute: str) -> int:
        """A function attribute, e.g. ``"NUM_REGS"``, ``"LOCAL_SIZE_BYTES"``, ``"SHARED_SIZE_BYTES"``."""
        driver = _driver()
        key = getattr(driver.CUfunction_attribute, f"CU_FUNC_ATTRIBUTE_{attribute}")
        return int(_check(driver.cuFuncGetAttribute(key, self.function), f"cuFuncGetAttribute({attribute})"))

    def launch(
        self,
        grid: Sequence[int],
        block: Sequence[int],
        shared_mem: int,
        stream: int,
        kinds: Sequence[str],
        values: Sequence[int],
        *,
        hidden: int,
    ) -> None:
        """Enqueue one launch on ``stream`` (a ``CUstream`` handle as an int)."""
        driver = _driver()
        if shared_mem > _STATIC_SHARED_LIMIT:
            key = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            _check(driver.cuFuncSetAttribute(self.function, key, shared_mem), "cuFuncSetAttribute")
        params, storage = pack_arguments(kinds, values, hidden=hidden)
        _check(
            driver.cuLaunchKernel(
                self.function, *grid, *block, shared_mem, driver.CUstream(stream), ctypes.addressof(params), 0
            ),
            f"cuLaunchKernel({self.name})",
        )
        del storage  # the driver copied the parameter values at enqueue

    def close(self) -> None:
        if getattr(self, "module", None) is not None:
            _check(_driver().cuModuleUnload(self.module), "cuModuleUnload")
            self.module = None
