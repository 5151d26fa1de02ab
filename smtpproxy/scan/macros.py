"""VBA macros in Office documents, with olevba (oletools), in memory.

``analyse(filename, data)`` is synchronous and CPU-bound on hostile input:
the check runs it in a worker thread under its timeout and gives it at
most ``scan.attachments.max_office_bytes``. olevba reads OLE files (doc,
xls, ppt), OOXML (docm, xlsm, ...: a zip holding vbaProject.bin), Word
2003 XML and MHTML. It never writes to disk here: decryption (which
would write a temporary file) is not asked for.

The verdict is rspamd's oletools scanner's default (non-extended) one: a
macro that runs by itself (AutoExec) *and* does something olevba calls
suspicious (shell, download, file writes, obfuscation) is a threat; other
macros are clean.

olevba (with its pyparsing grammar and oletools' tables: about 9 MB of a
worker's memory, 0.3 s) is imported on the first document, in the worker
thread that analyses it, not at start-up: most hosts see few Office
documents, and a process that never gets one never pays for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# Names inside an OOXML zip that hold macros.
OOXML_MACRO_PARTS = ("vbaproject.bin",)
# Extensions of documents that may carry macros (checked by content as well).
OFFICE_EXTENSIONS = frozenset("""
    doc dot docm dotm xls xlt xla xlsm xltm xlam xlsb ppt pot pps pptm potm ppsm ppam
""".split())

logging.getLogger("olevba").setLevel(logging.CRITICAL)  # its own warnings would flood our log


@dataclass
class MacroVerdict:
    has_macros: bool = False
    autoexec: list[str] = field(default_factory=list)
    suspicious: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def threat(self) -> bool:
        return bool(self.autoexec and self.suspicious)


def looks_like_office(data: bytes, names_inside: list[str] | None) -> bool:
    """Whether ``data`` is worth olevba's time: an OLE file, or an OOXML zip
    holding a VBA project (``names_inside``: the zip's names, lower-cased)."""
    if data.startswith(OLE_MAGIC):
        return True
    return bool(names_inside) and any(name.rsplit("/", 1)[-1] in OOXML_MACRO_PARTS
                                      for name in names_inside)


def analyse(filename: str, data: bytes) -> MacroVerdict:
    """olevba's findings for one document; never raises."""
    from oletools.olevba import VBA_Parser  # imported on the first document (module docstring)

    try:
        parser = VBA_Parser(filename or "attachment", data=data)
    except Exception as exc:  # not a file olevba reads, or a damaged one
        return MacroVerdict(error=f"open: {type(exc).__name__}")
    try:
        if not parser.detect_vba_macros():
            return MacroVerdict()
        verdict = MacroVerdict(has_macros=True)
        for kind, keyword, _description in parser.analyze_macros():
            if kind == "AutoExec":
                verdict.autoexec.append(keyword)
            elif kind == "Suspicious" and keyword not in ("Base64 Strings", "Hex Strings"):
                verdict.suspicious.append(keyword)
        return verdict
    except Exception as exc:
        return MacroVerdict(error=f"analyse: {type(exc).__name__}")
    finally:
        parser.close()
