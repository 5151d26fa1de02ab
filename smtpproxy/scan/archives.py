"""The file names inside an archive attachment, read without extracting anything.

- zip (zipfile over the bytes in memory): the central directory only; the
  entry count is read from the end record first, so a directory of a million
  entries is refused before zipfile builds an object for each.
- rar (rarfile, pure Python: it parses RAR 3/5 headers itself; no unrar is
  run, none is needed to list): names, and whether entries or the headers are
  encrypted.
- tar, tar.gz / tgz (tarfile, streamed): member headers; the gzip stream is
  decompressed only as far as the headers need, and never past a cap on the
  bytes it yields (a gzip bomb ends the listing, not the process).
- gzip: the original file name from the gzip header (RFC 1952 FNAME), no
  decompression.
- 7z, cab, ace, arj: recognised by magic, not listed (no well-kept library
  reads their names cheaply); the attachment's own name is still checked.

Every function takes bytes and returns a Listing; none raises for content,
and none writes to disk. The caller bounds the input size.
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field

import rarfile

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
RAR_MAGIC = (b"Rar!\x1a\x07\x00", b"Rar!\x1a\x07\x01\x00")
GZIP_MAGIC = b"\x1f\x8b"
SEVENZIP_MAGIC = b"7z\xbc\xaf\x27\x1c"
CAB_MAGIC = b"MSCF\x00\x00\x00\x00"
# Decompressed bytes a tar.gz listing may read, per compressed byte given (at
# least 1 MB, at most 64 MB): tar headers are 512 bytes per member, the data
# between them is decompressed to be skipped.
TAR_GZ_RATIO = 20
TAR_GZ_MAX_BYTES = 64 << 20
_EOCD = b"PK\x05\x06"


@dataclass
class Entry:
    name: str
    encrypted: bool = False


@dataclass
class Listing:
    kind: str  # zip, rar, tar, gzip, 7z, cab, or "" (not an archive we know)
    entries: list[Entry] = field(default_factory=list)
    # Headers encrypted (rar -hp): no names can be read.
    encrypted: bool = False
    # More entries than the limit, or the listing stopped early (damaged, bomb).
    truncated: bool = False
    error: str = ""


def kind_of(data: bytes) -> str:
    """The archive type by magic number, "" when none."""
    if data.startswith(ZIP_MAGIC):
        return "zip"
    if data.startswith(RAR_MAGIC):
        return "rar"
    if data.startswith(GZIP_MAGIC):
        return "gzip"
    if data.startswith(SEVENZIP_MAGIC):
        return "7z"
    if data.startswith(CAB_MAGIC):
        return "cab"
    if len(data) >= 262 and data[257:262] == b"ustar":
        return "tar"
    return ""


def list_names(data: bytes, max_entries: int) -> Listing:
    """The names in ``data`` (any supported kind); an empty Listing for other content."""
    kind = kind_of(data)
    try:
        if kind == "zip":
            return _zip(data, max_entries)
        if kind == "rar":
            return _rar(data, max_entries)
        if kind == "tar":
            return _tar(io.BytesIO(data), "tar", max_entries)
        if kind == "gzip":
            return _gzip(data, max_entries)
    except Exception as exc:  # damaged or hostile archives: every library raises its own
        return Listing(kind, truncated=True, error=type(exc).__name__)
    return Listing(kind)


def _zip(data: bytes, max_entries: int) -> Listing:
    at = data.rfind(_EOCD, max(0, len(data) - 65_557))  # the end record and a comment of up to 64 KB
    if at >= 0 and len(data) >= at + 22:
        (total,) = struct.unpack_from("<H", data, at + 10)
        if total > max_entries:  # 0xFFFF (zip64) included: no listing past the limit
            return Listing("zip", truncated=True, error=f"{total} entries")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
    entries = [Entry(info.filename, bool(info.flag_bits & 0x1)) for info in infos[:max_entries]]
    return Listing("zip", entries, truncated=len(infos) > max_entries)


def _rar(data: bytes, max_entries: int) -> Listing:
    try:
        archive = rarfile.RarFile(io.BytesIO(data))
    except rarfile.PasswordRequired:
        return Listing("rar", encrypted=True)
    with archive:
        infos = archive.infolist()
        encrypted = archive.needs_password()
    entries = [Entry(info.filename, info.needs_password()) for info in infos[:max_entries]]
    return Listing("rar", entries, encrypted=encrypted and not entries,
                  truncated=len(infos) > max_entries)


class _Capped(io.RawIOBase):
    """A reader that ends (raises) after ``limit`` bytes: a cap on decompression."""

    def __init__(self, inner: io.BufferedIOBase, limit: int):
        self.inner, self.left = inner, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.left <= 0:
            raise EOFError("decompression cap reached")
        chunk = self.inner.read(min(len(buffer), self.left))
        self.left -= len(chunk)
        buffer[:len(chunk)] = chunk
        return len(chunk)


def _tar(stream, kind: str, max_entries: int) -> Listing:
    entries: list[Entry] = []
    truncated = False
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                if len(entries) >= max_entries:
                    truncated = True
                    break
                entries.append(Entry(member.name))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        return Listing(kind, entries, truncated=True, error=type(exc).__name__)
    return Listing(kind, entries, truncated=truncated)


def gzip_member_name(data: bytes) -> str | None:
    """The FNAME of a gzip header (RFC 1952 2.3.1), Latin-1; None when absent."""
    if len(data) < 10 or not data.startswith(GZIP_MAGIC):
        return None
    flags, pos = data[3], 10
    if flags & 0x04:  # FEXTRA
        if len(data) < pos + 2:
            return None
        (xlen,) = struct.unpack_from("<H", data, pos)
        pos += 2 + xlen
    if not flags & 0x08:  # no FNAME
        return None
    end = data.find(b"\x00", pos, pos + 1024)
    return data[pos:end].decode("latin-1") if end > pos else None


def _gzip(data: bytes, max_entries: int) -> Listing:
    name = gzip_member_name(data)
    inner = gzip.GzipFile(fileobj=io.BytesIO(data))
    head = inner.peek(512)[:512]
    if len(head) >= 262 and head[257:262] == b"ustar":
        limit = min(TAR_GZ_MAX_BYTES, max(1 << 20, TAR_GZ_RATIO * len(data)))
        return _tar(io.BufferedReader(_Capped(inner, limit)), "gzip", max_entries)
    return Listing("gzip", [Entry(name)] if name else [])
