"""A .pkpass (a zip) written from entries built once per file.

zipfile took ~360 µs to write a 60 KB pass of nine files, about as long as its RSA
signature, checksumming and copying every image again for every device. Here each file's
entry (its local header, CRC-32 and data, deflated unless a PNG) is built once and kept by
the caller; a package is those entries, the pass's own pass.json, manifest and signature,
and a central directory: concatenated bytes. No clock is in it: a version's bytes are the
same every time. Sizes stay far below zip64's (a pass is at most a few MiB).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_STORED, _DEFLATED = 0, 8
_VERSION = 20  # 2.0: deflate
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, the earliest a zip can hold
_DOS_TIME = 0
_LOCAL = struct.Struct("<4s2B4HL2L2H")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_END = struct.Struct("<4s4H2LH")


@dataclass(frozen=True)
class ZipEntry:
    """One file of the archive as written: its local header and its (compressed) data."""

    name: bytes
    header: bytes
    data: bytes
    crc: int
    size: int  # uncompressed
    method: int

    @property
    def weight(self) -> int:
        return len(self.header) + len(self.data)


def zip_entry(name: str, data: bytes, *, deflate: bool = True) -> ZipEntry:
    """The entry of a file: deflated, unless it is a PNG (compressed already: deflating
    it costs time and saves nothing) or `deflate` is False."""
    if deflate and not data.startswith(PNG_MAGIC):
        method, written = _DEFLATED, _deflated(data)
    else:
        method, written = _STORED, data
    encoded = name.encode()
    crc = zlib.crc32(data)
    header = _LOCAL.pack(
        b"PK\x03\x04", _VERSION, 0, 0, method, _DOS_TIME, _DOS_DATE,
        crc, len(written), len(data), len(encoded), 0,
    )  # fmt: skip
    return ZipEntry(encoded, header + encoded, written, crc, len(data), method)


def _deflated(data: bytes) -> bytes:
    """Raw deflate with a window no larger than the data (as small as with the full 32 KB
    window, which could match nothing farther back): zlib sets up and clears its full-size
    state in ~70 µs, longer than deflating a file of a few KB, as most of a pass's text
    files are."""
    bits = min(15, max(9, (len(data) - 1).bit_length()))
    deflater = zlib.compressobj(
        zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -bits, max(1, min(8, bits - 7))
    )
    return deflater.compress(data) + deflater.flush()


def zip_archive(entries: Sequence[ZipEntry]) -> bytes:
    """The archive of the entries, in their order."""
    parts: list[bytes] = []
    directory: list[bytes] = []
    offset = 0
    for entry in entries:
        record = _CENTRAL.pack(
            b"PK\x01\x02", _VERSION, 0, _VERSION, 0, 0, entry.method, _DOS_TIME, _DOS_DATE,
            entry.crc, len(entry.data), entry.size, len(entry.name), 0, 0, 0, 0, 0, offset,
        )  # fmt: skip
        directory.append(record + entry.name)
        parts += (entry.header, entry.data)
        offset += entry.weight
    size = sum(len(record) for record in directory)
    end = _END.pack(b"PK\x05\x06", 0, 0, len(entries), len(entries), size, offset, 0)
    return b"".join([*parts, *directory, end])
