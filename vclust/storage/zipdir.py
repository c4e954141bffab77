"""A zip file's central directory, read without ``zipfile`` (vclust.storage.images indexes it),
and a deflated entry inflated within the size its header gives."""

from __future__ import annotations

import os
import struct
import zlib

CDIR = struct.Struct("<IHHHHHHIIIHHHHHII")  # a central directory file header (46 bytes)
CDIR_LENS = struct.Struct("<HHH")  # its name, extra and comment lengths, at byte 28


def central_directory(fp) -> tuple[bytes, int]:
    """The central directory's bytes and the offset to add to its entries' header offsets
    (non-zero when data was prepended to the zip, as in self-extracting archives).

    Raises ValueError when the file is not a zip (no end of central directory record).
    """
    fp.seek(0, os.SEEK_END)
    size = fp.tell()
    tail_len = min(size, 22 + 65535 + 20)
    fp.seek(size - tail_len)
    tail = fp.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        raise ValueError("no zip end record")
    _, disk, _, _, _, cd_size, cd_offset, _ = struct.unpack_from("<IHHHHIIH", tail, at)
    end_at = size - tail_len + at  # where the end record starts in the file
    if at >= 20 and tail[at - 20:at - 16] == b"PK\x06\x07":  # zip64: locator, then its record
        # the zip64 record sits just before its locator (its stored offset is off by any
        # prepended data, so it is not used)
        z64_at = end_at - 20 - 56
        fp.seek(z64_at)
        rec = fp.read(56)
        if len(rec) < 56 or rec[:4] != b"PK\x06\x06":
            raise ValueError("bad zip64 end record")
        _, _, _, _, disk, _, _, _, cd_size, cd_offset = struct.unpack_from(
            "<IQHHIIQQQQ", rec)
        end_at = z64_at
    if disk != 0:
        raise ValueError("multi-part zip archives are not supported")
    cd_start = end_at - cd_size
    if cd_start < 0:
        raise ValueError("bad central directory size")
    fp.seek(cd_start)
    cd = fp.read(cd_size)
    if len(cd) != cd_size:
        raise ValueError("central directory cut short")
    return cd, cd_start - cd_offset


def zip64_extra(extra: bytes, csize: int, usize: int, offset: int) -> tuple[int, int, int]:
    """Sizes and header offset from a zip64 extra field (only the fields saturated at
    0xFFFFFFFF are in it, in the order uncompressed size, compressed size, offset)."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, ln = struct.unpack_from("<HH", extra, pos)
        if tag == 1:
            vals = list(struct.unpack_from(f"<{ln // 8}Q", extra, pos + 4))
            if usize == 0xFFFFFFFF and vals:
                usize = vals.pop(0)
            if csize == 0xFFFFFFFF and vals:
                csize = vals.pop(0)
            if offset == 0xFFFFFFFF and vals:
                offset = vals.pop(0)
            break
        pos += 4 + ln
    return csize, usize, offset


def inflate(data: bytes, usize: int) -> bytes:
    """A raw deflate stream inflated to at most ``usize + 1`` bytes: a stream that holds more
    than its header's ``usize`` is refused having produced one byte past it, never inflated
    whole (a 510 KB entry claiming 1,000 bytes holds about 1,000 MB)."""
    d = zlib.decompressobj(-15)
    out = d.decompress(data, usize + 1)
    if len(out) > usize or d.unconsumed_tail:
        raise ValueError(f"inflates past the {usize:,} bytes its header gives")
    return out
