"""Attachments: dangerous names, archives holding executables, Office macros.

rspamd's mime_types module (src/plugins/lua/mime_types.lua) for the names,
its oletools scanner's verdict for macros, with rspamd's symbol names:

- MIME_BAD_EXTENSION: an attachment, or a file inside an archive, whose
  extension Windows runs or opens dangerously (exe, scr, js, ...). The hit's
  weight is the extension's badness (rspamd's table: scr and lnk weigh most).
- MIME_DOUBLE_BAD_EXTENSION: the same behind a short second extension
  (invoice.pdf.exe), or an archive whose one file's extension differs from
  the one its own name announces (invoice.pdf.zip holding invoice.exe).
- MIME_ARCHIVE_IN_ARCHIVE: an archive inside an archive, or an archive
  name cloaked by another extension (report.zip.gz).
- MIME_ENCRYPTED_ARCHIVE: an archive with password-protected entries
  (antivirus cannot look inside).
- MIME_EXE_IN_GEN_SPLIT_RAR: a RAR archive named as a generic split part
  (.001, .002) holding an executable.
- MIME_BAD_UNICODE: a file name with characters that hide what it is
  (right-to-left override: "invoice\u202efdp.exe" reads invoice exe.pdf).
- MIME_BAD_ATTACHMENT: the extension says one type and the declared
  Content-Type another, for the types where that matters (html, txt, pdf).
- OLETOOLS: a VBA macro that runs by itself and does something suspicious;
  OLETOOLS_FAIL: a document that could not be analysed (too large, damaged).

Names are read from every part with a file name (attachments, inline
images, parts of attached messages); archives are listed by archives.py
(names only, nothing extracted, size-bounded). Office documents go to
olevba (macros.py) in a worker thread, at most one at a time per process
so a flood of documents cannot take every core.
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

from smtpproxy.common.config import AttachmentsConfig, Config
from smtpproxy.scan import archives, macros
from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.message import Part

# rspamd's bad_extensions (its own list, Gmail's and Outlook's), with its
# badness: the hit's weight is badness / MAX_BADNESS of the symbol's score.
# Added: disk images and HTML applications, today's usual droppers.
BAD_EXTENSIONS: dict[str, float] = {
    "scr": 4, "lnk": 4, "exe": 1, "jar": 2, "com": 2, "bat": 2, "ace": 4, "arj": 2, "cab": 3,
    "iso": 4, "img": 4, "vhd": 4, "vhdx": 4, "hta": 2, "wsf": 2,
    **dict.fromkeys("""
        ade adp chm cmd cpl ins isp js jse lib mde msc msi msp mst nsh pif sct shb sys vb vbe
        vbs vxd wsc wsh app asp bas cnt csh diagcab fxp gadget grp hlp hpj inf its jnlp ksh
        mad maf mag mam maq mar mas mat mau mav maw mcf mda mdb mdt mdw mdz msh msh1 msh2
        mshxml msh1xml msh2xml msu ops osd pcd pl plg prf prg printerexport ps1 ps1xml ps2
        ps2xml psc1 psc2 psd1 psdm1 pst reg scf shs theme url vbp vsmacros vsw webpnp website
        ws xbap xll xnk
    """.split(), 2),
}
# Inside an archive these weigh (more) too: a script or a document zipped up.
BAD_ARCHIVE_EXTENSIONS: dict[str, float] = {
    "pptx": 0.1, "docx": 0.1, "xlsx": 0.1, "pdf": 0.1, "jar": 3, "js": 0.5, "vbs": 4, "wsf": 4,
    "hta": 4,
}
MAX_BADNESS = 4.0
ARCHIVE_EXTENSIONS = frozenset("zip arj rar ace 7z cab".split())
# Zip files that are documents, not archives: their names are not checked.
ARCHIVE_EXCEPTIONS = frozenset("odt ods odp docx xlsx pptx vsdx docm xlsm pptm dotm xltm potm "
                               "ppsm xlam ppam jar apk epub".split())
# Extension -> the Content-Types it may be declared with (rspamd's extension_map).
EXTENSION_TYPES: dict[str, tuple[str, ...]] = {
    "html": ("text/html",), "htm": ("text/html",), "shtm": ("text/html",),
    "shtml": ("text/html",), "txt": ("text/plain",),
    "pdf": ("application/pdf", "application/x-pdf", "application/octet-stream"),
}
# Declared types that say nothing (any extension may come with them).
# (and the Macintosh wrappers, which declare the encoding, not the file).
GENERIC_TYPES = frozenset(("application/octet-stream", "application/x-download", "binary/octet-stream",
                           "application/mac-binhex40", "application/applefile"))
SPLIT_PART_RE = re.compile(r"^\d{3}$")
# Characters that make a name read otherwise than it is (bidi controls,
# zero-width characters): rspamd's "obscured unicode".
OBSCURING_RE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
MAX_OPTIONS = 5
# Office documents analysed per message at most (about 50 ms each); the rest
# are reported in OLETOOLS_FAIL.
MAX_DOCUMENTS = 10

# Archives larger than this are listed in the worker thread (a 1 MB RAR of
# 20,000 entries takes rarfile 0.13 s), smaller ones at once.
INLINE_LISTING_BYTES = 256 * 1024
# One worker for olevba and large listings: CPU-bound Python holding the GIL,
# more threads would only queue; one keeps a flood of documents to one core.
_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attachments")


def extensions(name: str) -> tuple[str | None, str | None, int]:
    """(last extension, the one before it, number of dot-separated pieces), lower-cased.

    Trailing dots and spaces are dropped first: Windows drops them too, so
    "setup.exe." runs as setup.exe. A path inside an archive keeps its last element."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1].rstrip(". \t")
    pieces = name.split(".")
    ext = pieces[-1].lower() if len(pieces) > 1 else None
    ext2 = pieces[-2].lower() if len(pieces) > 2 else None
    return ext, ext2, len(pieces)


class _Findings:
    """Hits gathered over all the parts, each symbol once with its heaviest weight."""

    def __init__(self) -> None:
        self.found: dict[str, tuple[float, list[str]]] = {}

    def add(self, symbol: str, option: str, weight: float = 1.0) -> None:
        old_weight, options = self.found.get(symbol, (0.0, []))
        if option not in options and len(options) < MAX_OPTIONS:
            options.append(option)
        self.found[symbol] = (max(old_weight, weight), options)

    def hits(self) -> list[Hit]:
        return [Hit(symbol, tuple(options), weight) for symbol, (weight, options) in self.found.items()]


class AttachmentsCheck:
    name: ClassVar[str] = "attachments"
    symbols: ClassVar[tuple[str, ...]] = (
        "MIME_BAD_EXTENSION", "MIME_DOUBLE_BAD_EXTENSION", "MIME_ARCHIVE_IN_ARCHIVE",
        "MIME_ENCRYPTED_ARCHIVE", "MIME_EXE_IN_GEN_SPLIT_RAR", "MIME_BAD_UNICODE",
        "MIME_BAD_ATTACHMENT", "OLETOOLS", "OLETOOLS_FAIL",
    )
    after: ClassVar[tuple[str, ...]] = ()
    # Without an Office document it never waits (checks/base.py).
    inline: ClassVar[bool] = True

    def __init__(self, cfg: Config | None = None):
        self.cfg: AttachmentsConfig = (cfg or Config()).scan.attachments

    async def run(self, ctx: CheckContext) -> list[Hit]:
        findings = _Findings()
        documents: list[tuple[str, bytes]] = []
        for part in ctx.message.parts:
            if not part.filename and not part.payload:
                continue
            name = part.filename or ""
            if name:
                _check_name(name, findings, in_archive=False)
                _check_declared_type(name, extensions(name)[0], part.content_type, findings)
            names_inside = await self._archive(part, findings)
            if self.cfg.macros and part.payload and self._is_document(part, names_inside):
                documents.append((name, part.payload))
        for filename, data in documents[:MAX_DOCUMENTS]:
            await self._macros(filename, data, findings)
        if len(documents) > MAX_DOCUMENTS:
            findings.add("OLETOOLS_FAIL", f"{len(documents) - MAX_DOCUMENTS} more documents not analysed", 0.0)
        return findings.hits()

    def _is_document(self, part: Part, names_inside: list[str] | None) -> bool:
        ext = extensions(part.filename or "")[0]
        return macros.looks_like_office(part.payload, names_inside) or (
            ext in macros.OFFICE_EXTENSIONS and part.payload.startswith(archives.ZIP_MAGIC))

    async def _archive(self, part: Part, findings: _Findings) -> list[str] | None:
        """Check the names inside the part if it is an archive; those names
        (lower-cased) when listed, for the macro check."""
        kind = archives.kind_of(part.payload) if part.payload else ""
        if not kind or not self.cfg.archives or len(part.payload) > self.cfg.max_archive_bytes:
            return None
        if len(part.payload) <= INLINE_LISTING_BYTES:
            listing = archives.list_names(part.payload, self.cfg.max_archive_entries)
        else:  # thousands of headers in pure Python: not on the event loop
            loop = asyncio.get_running_loop()
            listing = await loop.run_in_executor(_worker, archives.list_names, part.payload,
                                                 self.cfg.max_archive_entries)
        name = part.filename or ""
        ext, ext2, _ = extensions(name)
        names = [entry.name.lower() for entry in listing.entries]
        if ext in ARCHIVE_EXCEPTIONS:  # a document that is a zip: only the macro check reads it
            return names
        if listing.encrypted or any(entry.encrypted for entry in listing.entries):
            findings.add("MIME_ENCRYPTED_ARCHIVE", name or kind)
        for entry in listing.entries:
            _check_name(entry.name, findings, in_archive=True)
        if kind == "rar" and ext and SPLIT_PART_RE.match(ext):
            executables = [e.name for e in listing.entries if extensions(e.name)[0] in BAD_EXTENSIONS]
            if executables:
                findings.add("MIME_EXE_IN_GEN_SPLIT_RAR", f"{name}:{executables[0]}")
        if len(listing.entries) == 1 and ext2 and not ext2.isdigit():
            # invoice.pdf.zip holding invoice.exe: the name promised a pdf.
            inner = extensions(listing.entries[0].name)[0]
            if inner in BAD_EXTENSIONS and inner != ext2:
                findings.add("MIME_DOUBLE_BAD_EXTENSION", f"{ext2}!={inner}", 0.5)
        return names

    async def _macros(self, filename: str, data: bytes, findings: _Findings) -> None:
        if len(data) > self.cfg.max_office_bytes:
            findings.add("OLETOOLS_FAIL", f"{filename or 'document'}: too large", 0.0)
            return
        loop = asyncio.get_running_loop()
        verdict = await loop.run_in_executor(_worker, macros.analyse, filename, data)
        if verdict.error:
            findings.add("OLETOOLS_FAIL", f"{filename or 'document'}: {verdict.error}", 0.0)
        elif verdict.threat:
            keywords = ",".join(dict.fromkeys(verdict.autoexec + verdict.suspicious))
            findings.add("OLETOOLS", f"AutoExec + Suspicious ({keywords[:80]})")


def _badness(ext: str | None, in_archive: bool) -> float | None:
    if ext is None:
        return None
    if in_archive and ext in BAD_ARCHIVE_EXTENSIONS:
        return BAD_ARCHIVE_EXTENSIONS[ext]
    return BAD_EXTENSIONS.get(ext)


def _check_name(name: str, findings: _Findings, in_archive: bool) -> None:
    """rspamd's check_filename: bad and double extensions, archives in archives, hidden characters."""
    if OBSCURING_RE.search(name):
        findings.add("MIME_BAD_UNICODE", OBSCURING_RE.sub("?", name)[:60])
    ext, ext2, pieces = extensions(name)
    if ext is None:
        return
    badness, badness2 = _badness(ext, in_archive), _badness(ext2, in_archive)
    # A next-to-last extension counts when it looks like one: short and not a
    # number or date ("report.2024.exe" is not disguised, "invoice.pdf.exe" is).
    if (badness or badness2) and pieces > 2 and ext2 and len(ext2) <= 4 and not ext2.isdigit():
        weight = max(badness or 0, badness2 or 0)
        findings.add("MIME_DOUBLE_BAD_EXTENSION", f".{ext2}.{ext}", weight / MAX_BADNESS)
    elif badness:
        findings.add("MIME_BAD_EXTENSION", ext, badness / MAX_BADNESS)
    if in_archive:
        if ext in ARCHIVE_EXTENSIONS:
            findings.add("MIME_ARCHIVE_IN_ARCHIVE", ext)
    elif ext2 in ARCHIVE_EXTENSIONS and not ext.isdigit():
        # report.zip.gz: an archive name cloaked by another extension
        # (.zip.001 is a split archive).
        findings.add("MIME_ARCHIVE_IN_ARCHIVE", f".{ext2}.{ext}")


def _check_declared_type(name: str, ext: str | None, content_type: str, findings: _Findings) -> None:
    """The extension says one type, the declared Content-Type another."""
    expected = EXTENSION_TYPES.get(ext or "")
    if expected and content_type not in expected and content_type not in GENERIC_TYPES:
        findings.add("MIME_BAD_ATTACHMENT", f"{ext}:{content_type}")
