"""Reorder a compiled kernel's PTX parameters into TensorRT's calling convention.

PTX names each kernel parameter (``delta_dense_kernel_param_3``) and the body reads them by
name, so permuting the lines of the ``.entry`` declaration changes the launch ABI without
touching the compiled code. This is how the plugin keeps the very kernels the eager launcher
runs while TensorRT passes ``(inputs..., extras..., outputs...)``. Triton's hidden trailing
pointers (global and profile scratch) stay last, where TensorRT pads them with null.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

__all__ = ["EntryParam", "entry_params", "reorder_entry"]

_ENTRY = r"(\.entry\s+{name}\s*\()(.*?)(\))"


@dataclass(frozen=True)
class EntryParam:
    """One ``.param`` line of a PTX entry: its declaration and name."""

    declaration: str  # e.g. ".param .u64 .ptr .global .align 1 k_param_0"
    name: str

    @property
    def is_pointer(self) -> bool:
        return ".u64" in self.declaration.split() or ".b64" in self.declaration.split()

    @property
    def size(self) -> int:
        """Bytes of the parameter (from its PTX type)."""
        match = re.search(r"\.[usbf](8|16|32|64)\b", self.declaration)
        if match is None:
            raise ValueError(f"cannot read the type of PTX parameter {self.declaration!r}")
        return int(match.group(1)) // 8


def _entry(ptx: str, name: str) -> re.Match[str]:
    match = re.search(_ENTRY.format(name=re.escape(name)), ptx, re.S)
    if match is None:
        raise ValueError(f"the PTX has no entry {name!r}")
    return match


def entry_params(ptx: str, name: str) -> list[EntryParam]:
    """The parameters of entry ``name`` in declaration order."""
    body = _entry(ptx, name).group(2)
    params = []
    for line in body.split(","):
        declaration = " ".join(line.split())
        if declaration:
            params.append(EntryParam(declaration, declaration.split()[-1]))
    return params


def reorder_entry(ptx: str, name: str, order: Sequence[int | None], *, visible: int, new_name: str | None = None) -> str:
    """PTX whose entry ``name`` declares its parameters in ``order``.

    Args:
        ptx: the compiled kernel's PTX.
        name: the entry to rewrite.
        order: per new position, the index of the old parameter to put there, or None for a new
            unused 64-bit parameter (a pointer TensorRT passes that the kernel does not read).
            Every one of the first ``visible`` old parameters must appear exactly once.
        visible: the number of parameters the kernel's signature declares; parameters after them
            are Triton's hidden ones and keep their place at the end.
        new_name: rename the entry (and its ``.globl`` line), e.g. to make each compiled variant's
            symbol unique inside one engine.
    """
    match = _entry(ptx, name)
    params = entry_params(ptx, name)
    if visible > len(params):
        raise ValueError(f"{name} declares {len(params)} PTX parameters, fewer than the {visible} of its signature")
    placed = sorted(i for i in order if i is not None)
    if placed != list(range(visible)):
        raise ValueError(f"order must place each of the {visible} parameters exactly once; got {list(order)}")
    taken = {p.name for p in params}
    lines, unused = [], 0
    for index in order:
        if index is None:
            dummy = f"{name}_unused_{unused}"
            while dummy in taken:
                dummy += "_"
            unused += 1
            lines.append(f".param .u64 {dummy}")
        else:
            lines.append(params[index].declaration)
    lines += [p.declaration for p in params[visible:]]
    declaration = match.group(1) + "\n\t" + ",\n\t".join(lines) + "\n" + match.group(3)
    out = ptx[: match.start()] + declaration + ptx[match.end() :]
    if new_name is not None and new_name != name:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", new_name):
            raise ValueError(f"{new_name!r} is not a valid PTX identifier")
        out = re.sub(rf"(\.globl\s+){re.escape(name)}\b", rf"\g<1>{new_name}", out)
        out = re.sub(rf"(\.entry\s+){re.escape(name)}(\s*\()", rf"\g<1>{new_name}\g<2>", out)
    return out
