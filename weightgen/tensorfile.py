"""Write a safetensors file piece by piece, so a network larger than memory can be written.

The safetensors format is an 8-byte header length, a JSON header naming every tensor's
dtype, shape and byte range, then the raw bytes. All shapes are known before generation
starts, so the header is written first and each generated piece goes straight to its
byte range; nothing but the current piece is ever in memory. The result is an ordinary
safetensors file (``safetensors.torch.load_file`` reads it).

The file is written under a temporary name (``.<name>.partial``) and renamed into place
only when every byte of every tensor has been written and synced: a generation that is
interrupted, or that fails, never leaves a file that looks complete.
"""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import torch

# safetensors' dtype names
DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}


class StreamingSafetensorsWriter:
    """``entries``: name -> (shape, torch dtype), in file order. Use as a context manager."""

    def __init__(self, path: str | Path, entries: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.partial")
        self.entries, self.offsets, self.written = {}, {}, {}
        header: dict = {"__metadata__": {k: str(v) for k, v in (metadata or {}).items()}} if metadata else {}
        offset = 0
        for name, (shape, dtype) in entries.items():
            if dtype not in DTYPES:
                raise ValueError(f"tensor '{name}': dtype {dtype} cannot be stored in safetensors")
            nbytes = math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self.entries[name] = (tuple(shape), dtype)
            self.offsets[name] = offset
            self.written[name] = 0
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        self.data_start = 8 + len(raw)
        self.size = self.data_start + offset
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.pwrite(self.fd, struct.pack("<Q", len(raw)) + raw, 0)
            os.ftruncate(self.fd, self.size)  # sparse until written
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, start: int, values: torch.Tensor) -> None:
        """Put the 1D ``values`` at flat index ``start`` of tensor ``name``."""
        shape, dtype = self.entries[name]
        numel = math.prod(shape)
        values = values.detach().reshape(-1).to("cpu", dtype).contiguous()
        if start < 0 or start + values.numel() > numel:
            raise ValueError(f"tensor '{name}': values [{start}, {start + values.numel()}) outside its {numel} elements")
        data = values.view(torch.uint8).numpy().tobytes() if values.numel() else b""
        os.pwrite(self.fd, data, self.data_start + self.offsets[name] + start * dtype.itemsize)
        self.written[name] += values.numel()

    def write_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Write all of tensor ``name`` at once; its shape must be the declared one."""
        shape = self.entries[name][0]
        if tuple(tensor.shape) != shape:
            raise ValueError(f"tensor '{name}': shape {tuple(tensor.shape)}, the file declares {shape}")
        self.write(name, 0, tensor)

    def close(self) -> Path:
        """Check that every element was written, sync, and move the file into place."""
        missing = [n for n, (shape, _) in self.entries.items() if self.written[n] != math.prod(shape)]
        if missing:
            self.abort()
            raise ValueError(f"{self.path}: not written: tensor '{missing[0]}' has {self.written[missing[0]]} of "
                             f"{math.prod(self.entries[missing[0]][0])} elements ({len(missing)} tensor(s) incomplete)")
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None
        os.replace(self.tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return self.path

    def abort(self) -> None:
        """Drop the partial file."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "StreamingSafetensorsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
