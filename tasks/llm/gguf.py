"""GGUF header reader: version, counts and scalar metadata of a .gguf file, without loading tensors."""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class EmbeddedModelError(RuntimeError):
    """A model is missing, incomplete or not what the registry expects."""


_GGUF_MAGIC = b"GGUF"
# value type -> (struct format, size); 8 = string, 9 = array are handled separately
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFHeader:
    """What the GGUF header says: version, counts, scalar metadata, and array (type, length)."""

    version: int
    tensor_count: int
    kv_count: int
    metadata: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def name(self) -> str | None:
        return self.metadata.get("general.name") or self.metadata.get("general.basename")

    @property
    def has_chat_template(self) -> bool:
        return bool(self.metadata.get("tokenizer.chat_template"))


class _Cursor:
    """Bounds-checked little-endian reads over a buffer."""

    def __init__(self, buf: Any, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise EmbeddedModelError(
                f"{self.path}: GGUF header truncated at byte {self.pos} (wanted {n} more bytes, "
                f"file has {len(self.buf)})"
            )

    def unpack(self, fmt: str, size: int) -> Any:
        self.need(size)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.unpack("<Q", 8)
        self.need(n)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        for _ in range(count):
            n = self.unpack("<Q", 8)
            self.need(n)
            self.pos += n


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Parse a GGUF file's header and metadata key/values (arrays are skipped, not loaded)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < 8:
                raise EmbeddedModelError(f"{path}: not a GGUF file (only {path.stat().st_size} bytes)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(_Cursor(buf, path))
    except OSError as exc:
        raise EmbeddedModelError(f"{path}: cannot read GGUF file: {exc}") from exc


def _parse(cur: _Cursor) -> GGUFHeader:
    magic = bytes(cur.buf[0:4])
    if magic != _GGUF_MAGIC:
        raise EmbeddedModelError(f"{cur.path}: bad magic: expected b'GGUF', found {magic!r}")
    cur.pos = 4
    version = cur.unpack("<I", 4)
    if version not in (2, 3):
        raise EmbeddedModelError(f"{cur.path}: unsupported GGUF version {version} (expected 2 or 3)")
    tensor_count, kv_count = cur.unpack("<Q", 8), cur.unpack("<Q", 8)
    if kv_count > 1_000_000 or tensor_count > 10_000_000:
        raise EmbeddedModelError(f"{cur.path}: implausible GGUF counts ({tensor_count} tensors, {kv_count} kvs)")
    header = GGUFHeader(version, tensor_count, kv_count)
    for _ in range(kv_count):
        key = cur.string()
        vtype = cur.unpack("<I", 4)
        if vtype == _ARRAY:
            etype, count = cur.unpack("<I", 4), cur.unpack("<Q", 8)
            if etype == _STRING:
                cur.skip_strings(count)
            elif etype in _SCALARS:
                cur.need(count * _SCALARS[etype][1])
                cur.pos += count * _SCALARS[etype][1]
            else:
                raise EmbeddedModelError(f"{cur.path}: key {key!r}: unsupported array element type {etype}")
            header.arrays[key] = (etype, count)
        elif vtype == _STRING:
            header.metadata[key] = cur.string()
        elif vtype in _SCALARS:
            header.metadata[key] = cur.unpack(*_SCALARS[vtype])
        else:
            raise EmbeddedModelError(f"{cur.path}: key {key!r}: unknown GGUF value type {vtype}")
    return header
