"""Attachments: names, archive listings (built here, never extracted) and Office macros."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import struct
import subprocess
import sys
import tarfile
import threading
import zipfile
import zlib

import pytest

from smtpproxy.common import config
from smtpproxy.scan import archives, macros
from smtpproxy.scan.checks import attachments
from smtpproxy.scan.checks.attachments import AttachmentsCheck, extensions
from smtpproxy.scan.checks.base import CheckContext
from smtpproxy.scan.engine import Engine
from smtpproxy.scan.message import parse
from smtpproxy.transaction import ClientInfo

# ---------------------------------------------------------------- fixtures


def zip_of(*names: str, encrypted: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name in names:
            archive.writestr(zipfile.ZipInfo(name), b"MZ payload of " + name.encode())
    data = bytearray(buf.getvalue())
    # zipfile writes no encrypted entries: set the flag a listing reads (bit 0 of
    # the central directory entry's general purpose flags).
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        (name_len,) = struct.unpack_from("<H", data, at + 28)
        if data[at + 46:at + 46 + name_len].decode() in encrypted:
            data[at + 8] |= 0x1
        at = data.find(b"PK\x01\x02", at + 46)
    return bytes(data)


def tar_gz_of(*names: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        for name in names:
            data = b"content " * 100
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _rar4_block(head_type: int, flags: int, body: bytes) -> bytes:
    size = 7 + len(body)
    head = struct.pack("<BHH", head_type, flags, size) + body
    return struct.pack("<H", zlib.crc32(head) & 0xFFFF) + head


def rar4_of(*names: str, encrypted: bool = False) -> bytes:
    """A RAR 1.5-4.x archive of stored files (the format's headers, written by hand)."""
    out = b"Rar!\x1a\x07\x00" + _rar4_block(0x73, 0, b"\x00" * 6)
    for name in names:
        data = b"MZ" + name.encode()
        raw_name = name.encode()
        body = struct.pack("<IIBIIBBHI", len(data), len(data), 2, zlib.crc32(data), 0, 29, 0x30,
                           len(raw_name), 0x20) + raw_name
        out += _rar4_block(0x74, 0x8000 | (0x04 if encrypted else 0), body) + data
    return out + _rar4_block(0x7B, 0x4000, b"")


def message(*attachments_: tuple[str, str, bytes], filename_header: str | None = None) -> bytes:
    """A multipart/mixed message with a text part and base64 attachments (name, type, data)."""
    parts = ["Content-Type: text/plain\r\n\r\nsee attached\r\n"]
    for name, ctype, data in attachments_:
        disposition = filename_header or f'attachment; filename="{name}"'
        parts.append(f"Content-Type: {ctype}\r\nContent-Disposition: {disposition}\r\n"
                     f"Content-Transfer-Encoding: base64\r\n\r\n"
                     + base64.encodebytes(data).decode().replace("\n", "\r\n"))
    body = "".join(f"--B\r\n{p}" for p in parts) + "--B--\r\n"
    return ("From: a@example.org\r\nTo: b@example.org\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n" + body).encode()


def run(raw: bytes, **attachments_cfg) -> dict[str, tuple[tuple[str, ...], float]]:
    cfg = config.load(None, {f"scan.attachments.{k}": v for k, v in attachments_cfg.items()})
    ctx = CheckContext(message=parse(raw), client=ClientInfo(), mail_from="", rcpt_tos=[],
                       profile="inbound", resolver=None)
    hits = asyncio.run(AttachmentsCheck(cfg).run(ctx))
    return {h.symbol: (h.options, h.weight) for h in hits}


OCTET = "application/octet-stream"

# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name, expected", [
    ("setup.exe", ("exe", None, 2)),
    ("Invoice.PDF.exe", ("exe", "pdf", 3)),
    ("setup.exe. ", ("exe", None, 2)),  # Windows drops trailing dots and spaces
    ("dir/sub\\x.scr", ("scr", None, 2)),
    ("README", (None, None, 1)),
])
def test_extensions(name, expected):
    assert extensions(name) == expected


NAME_CASES = [
    ("plain executable", [("setup.exe", OCTET, b"MZ")], {"MIME_BAD_EXTENSION": (("exe",), 0.25)}),
    ("screensaver weighs most", [("photo.scr", OCTET, b"MZ")], {"MIME_BAD_EXTENSION": (("scr",), 1.0)}),
    ("disguised double extension", [("invoice.pdf.exe", OCTET, b"MZ")],
     {"MIME_DOUBLE_BAD_EXTENSION": ((".pdf.exe",), 0.25)}),
    ("a version number is no disguise", [("tool.2024.exe", OCTET, b"MZ")],
     {"MIME_BAD_EXTENSION": (("exe",), 0.25)}),
    ("harmless document", [("report.pdf", "application/pdf", b"%PDF-1.4")], {}),
    ("pdf sent as octet-stream is normal", [("report.pdf", OCTET, b"%PDF-1.4")], {}),
    ("html declared as an image", [("page.html", "image/png", b"<html>")],
     {"MIME_BAD_ATTACHMENT": (("html:image/png",), 1.0)}),
    ("cloaked archive name", [("report.zip.gz", "application/gzip", b"not really")],
     {"MIME_ARCHIVE_IN_ARCHIVE": ((".zip.gz",), 1.0)}),
    ("split zip parts are not cloaking", [("big.zip.001", OCTET, b"part")], {}),
]


@pytest.mark.parametrize("label, parts, expected", NAME_CASES, ids=[c[0] for c in NAME_CASES])
def test_attachment_names(label, parts, expected):
    assert run(message(*parts)) == expected


def test_rfc2231_encoded_name_with_right_to_left_override():
    # "invoice\u202efdp.exe" shows as "invoiceexe.pdf" in a right-to-left-aware client.
    raw = message(("x", OCTET, b"MZ"),
                  filename_header="attachment; filename*=UTF-8''invoice%E2%80%AEfdp.exe")
    found = run(raw)
    assert found["MIME_BAD_UNICODE"] == (("invoice?fdp.exe",), 1.0)
    assert found["MIME_BAD_EXTENSION"] == (("exe",), 0.25)


def test_rfc2047_encoded_name_is_decoded_before_checking():
    raw = message(("x", OCTET, b"MZ"),
                  filename_header='attachment; filename="=?UTF-8?B?UmVjaG51bmcucGRmLmV4ZQ==?="')
    assert run(raw) == {"MIME_DOUBLE_BAD_EXTENSION": ((".pdf.exe",), 0.25)}


def test_names_in_attached_messages_are_checked():
    inner = ("From: c@example.net\r\nSubject: inner\r\nMIME-Version: 1.0\r\n"
             "Content-Type: multipart/mixed; boundary=\"I\"\r\n\r\n--I\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
             "--I\r\nContent-Type: application/octet-stream\r\n"
             "Content-Disposition: attachment; filename=\"payload.js\"\r\n\r\nalert(1)\r\n--I--\r\n")
    raw = ("From: a@example.org\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/mixed; boundary=\"O\"\r\n\r\n--O\r\nContent-Type: text/plain\r\n\r\nfwd\r\n"
           "--O\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(inner.encode()).decode().replace("\n", "\r\n") + "--O--\r\n").encode()
    assert run(raw) == {"MIME_BAD_EXTENSION": (("js",), 0.5)}


# ---------------------------------------------------------------- archives


ARCHIVE_CASES = [
    ("zip holding an executable", [("docs.zip", "application/zip", zip_of("readme.txt", "setup.exe"))],
     {"MIME_BAD_EXTENSION": (("exe",), 0.25)}),
    ("zip holding a zip", [("docs.zip", "application/zip", zip_of("inner.zip"))],
     {"MIME_ARCHIVE_IN_ARCHIVE": (("zip",), 1.0)}),
    ("zip holding a script weighs the archive table", [("a.zip", "application/zip", zip_of("run.vbs"))],
     {"MIME_BAD_EXTENSION": (("vbs",), 1.0)}),
    ("zip of documents only", [("docs.zip", "application/zip", zip_of("a.txt", "b.csv"))], {}),
    ("encrypted zip", [("secret.zip", "application/zip", zip_of("a.txt", encrypted=("a.txt",)))],
     {"MIME_ENCRYPTED_ARCHIVE": (("secret.zip",), 1.0)}),
    ("name promises a pdf, archive holds an exe",
     [("invoice.pdf.zip", "application/zip", zip_of("invoice.exe"))],
     {"MIME_BAD_EXTENSION": (("exe",), 0.25), "MIME_DOUBLE_BAD_EXTENSION": (("pdf!=exe",), 0.5)}),
    ("archive found by content under another name", [("photo.jpg", "image/jpeg", zip_of("a.lnk"))],
     {"MIME_BAD_EXTENSION": (("lnk",), 1.0)}),
    ("a docx is a zip but not an archive",
     [("report.docx", OCTET, zip_of("[Content_Types].xml", "word/document.xml", "word/embed.exe"))], {}),
    ("tar.gz holding an executable", [("logs.tar.gz", "application/gzip", tar_gz_of("a.log", "x/run.exe"))],
     {"MIME_BAD_EXTENSION": (("exe",), 0.25)}),
    ("rar holding an executable", [("files.rar", "application/x-rar", rar4_of("a.txt", "run.bat"))],
     {"MIME_BAD_EXTENSION": (("bat",), 0.5)}),
    ("rar named as a split part holding an executable",
     [("invoice.001", OCTET, rar4_of("invoice.exe"))],
     {"MIME_BAD_EXTENSION": (("exe",), 0.25), "MIME_EXE_IN_GEN_SPLIT_RAR": (("invoice.001:invoice.exe",), 1.0)}),
    ("encrypted rar", [("files.rar", "application/x-rar", rar4_of("a.txt", encrypted=True))],
     {"MIME_ENCRYPTED_ARCHIVE": (("files.rar",), 1.0)}),
]


@pytest.mark.parametrize("label, parts, expected", ARCHIVE_CASES, ids=[c[0] for c in ARCHIVE_CASES])
def test_archives(label, parts, expected):
    assert run(message(*parts)) == expected


def test_gzip_member_name_is_read_from_the_header():
    buf = io.BytesIO()
    with gzip.GzipFile(filename="invoice.exe", mode="wb", fileobj=buf) as f:
        f.write(b"MZ" * 10)
    data = buf.getvalue()
    assert archives.gzip_member_name(data) == "invoice.exe"
    assert run(message(("invoice.gz", "application/gzip", data))) == {
        "MIME_BAD_EXTENSION": (("exe",), 0.25)}


def test_archives_off_or_too_large_are_not_listed():
    raw = message(("docs.zip", "application/zip", zip_of("setup.exe")))
    assert run(raw, archives=False) == {}
    assert run(raw, max_archive_bytes=10) == {}


def test_zip_with_more_entries_than_allowed_is_not_listed():
    data = zip_of(*(f"f{i}.exe" for i in range(20)))
    listing = archives.list_names(data, max_entries=10)
    assert listing.truncated and listing.entries == [] and listing.error == "20 entries"
    assert len(archives.list_names(data, max_entries=20).entries) == 20


def test_tar_gz_bomb_stops_at_the_decompression_cap():
    # 64 MB of zeros after one member: listing reads no further than the cap allows.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 64 << 20
        archive.addfile(info, io.BytesIO(bytes(info.size)))
        info2 = tarfile.TarInfo("after.exe")
        archive.addfile(info2, io.BytesIO(b""))
    data = buf.getvalue()
    assert len(data) < 200_000
    listing = archives.list_names(data, max_entries=100)
    assert [e.name for e in listing.entries] == ["zeros.bin"]
    assert listing.truncated


@pytest.mark.parametrize("data", [
    b"PK\x03\x04" + b"\x00" * 40, b"Rar!\x1a\x07\x00garbage", b"\x1f\x8b\x08\x00garbage",
    b"PK\x05\x06" + b"\xff" * 18, b"7z\xbc\xaf\x27\x1c" + b"\x00" * 30,
])
def test_damaged_archives_never_raise(data):
    listing = archives.list_names(data, max_entries=10)
    assert listing.entries == []
    assert run(message(("x.zip", "application/zip", data))) == {}


# ---------------------------------------------------------------- macros

VBA_AUTOEXEC_SHELL = b'Sub AutoOpen()\r\n  Shell "cmd /c calc.exe", vbHide\r\nEnd Sub\r\n'
VBA_HARMLESS = b'Sub FormatTable()\r\n  Selection.Font.Bold = True\r\nEnd Sub\r\n'


def test_olevba_verdict_autoexec_and_suspicious_is_a_threat():
    verdict = macros.analyse("macro.bas", VBA_AUTOEXEC_SHELL)
    assert verdict.has_macros and verdict.threat
    assert "AutoOpen" in verdict.autoexec and "Shell" in verdict.suspicious


def test_olevba_verdict_harmless_macro_is_no_threat():
    verdict = macros.analyse("macro.bas", VBA_HARMLESS)
    assert verdict.has_macros and not verdict.threat


# Run in a fresh interpreter: this one may have imported oletools already.
LAZY_IMPORT_PROBE = """
import asyncio, sys
from smtpproxy.common import config
from smtpproxy.scan.checks import attachments
from smtpproxy.scan.hook import build_engine
build_engine(config.load(None))
assert "oletools.olevba" not in sys.modules, "imported at start-up"
check = attachments.AttachmentsCheck(config.load(None))
findings = attachments._Findings()
asyncio.run(check._macros("macro.bas", %r, findings))
assert "oletools.olevba" in sys.modules
print(sorted(findings.found))
"""


def test_olevba_is_imported_on_the_first_document_and_still_finds_macros():
    result = subprocess.run([sys.executable, "-c", LAZY_IMPORT_PROBE % VBA_AUTOEXEC_SHELL],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "['OLETOOLS']"


def test_documents_are_routed_to_olevba(monkeypatch):
    seen = []

    def fake_analyse(filename, data):
        seen.append(filename)
        return macros.MacroVerdict(has_macros=True, autoexec=["AutoOpen"], suspicious=["Shell"])

    monkeypatch.setattr(macros, "analyse", fake_analyse)
    ole = macros.OLE_MAGIC + b"\x00" * 504
    docm = zip_of("[Content_Types].xml", "word/vbaProject.bin")
    docx = zip_of("[Content_Types].xml", "word/document.xml")
    raw = message(("a.doc", "application/msword", ole), ("b.docm", OCTET, docm),
                  ("c.docx", OCTET, docx), ("d.txt", "text/plain", b"hello"))
    found = run(raw)
    assert seen == ["a.doc", "b.docm"]
    assert found == {"OLETOOLS": (("AutoExec + Suspicious (AutoOpen,Shell)",), 1.0)}
    seen.clear()
    assert run(raw, macros=False) == {} and seen == []
    seen.clear()
    many = message(*((f"d{i}.doc", "application/msword", ole) for i in range(attachments.MAX_DOCUMENTS + 3)))
    found = run(many)
    assert len(seen) == attachments.MAX_DOCUMENTS
    assert found["OLETOOLS_FAIL"] == (("3 more documents not analysed",), 0.0)


def test_damaged_or_oversized_documents_give_oletools_fail():
    ole = macros.OLE_MAGIC + b"\x00" * 504
    found = run(message(("a.doc", "application/msword", ole)))
    assert set(found) == {"OLETOOLS_FAIL"} and found["OLETOOLS_FAIL"][0][0].startswith("a.doc: ")
    assert run(message(("a.doc", "application/msword", ole)), max_office_bytes=100) == {
        "OLETOOLS_FAIL": (("a.doc: too large",), 0.0)}


def test_every_symbol_has_a_score():
    Engine(config.load(None).scan, [AttachmentsCheck()])  # raises if one is missing
    assert set(AttachmentsCheck.symbols) >= {"MIME_BAD_EXTENSION", "OLETOOLS"}
    assert attachments.MAX_BADNESS == max(attachments.BAD_EXTENSIONS.values())


def test_large_archive_is_listed_off_the_event_loop(monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("padding.bin", bytes(attachments.INLINE_LISTING_BYTES))
        archive.writestr("setup.exe", b"MZ")
    big = buf.getvalue()
    assert len(big) > attachments.INLINE_LISTING_BYTES
    threads = []
    real = archives.list_names

    def spy(data, max_entries):
        threads.append(threading.current_thread().name)
        return real(data, max_entries)

    monkeypatch.setattr(archives, "list_names", spy)
    assert run(message(("big.zip", "application/zip", big))) == {"MIME_BAD_EXTENSION": (("exe",), 0.25)}
    assert threads and threads[0].startswith("attachments")
