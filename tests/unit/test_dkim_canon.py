"""The signer's own parsing and relaxed canonicalisation against dkimpy's.

smtpproxy/sign/dkim.py parses and canonicalises on bytes instead of through
dkimpy (for speed); it must give the same bytes dkimpy gives: the same
header fields and body, the same canonical fields picked bottom-up, the same
canonical body. Every message is also signed (RSA and Ed25519) and verified
with dkimpy. Inputs: samples of the spam/ham corpus (as stored, mostly LF, and
as Postfix hands them to us, CRLF), the MIME corpora, and edge cases.
"""

from __future__ import annotations

from pathlib import Path

import dkim
import pytest
from dkim.canonicalization import Relaxed

from smtpproxy.common.config import DEFAULT_OVERSIGN_HEADERS, DEFAULT_SIGN_HEADERS
from smtpproxy.sign import dkim as dkimsign
from smtpproxy.sign import keys
from smtpproxy.sign.tables import SigningKey

CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpora"
MAX_SIZE = 512 * 1024

_RSA = keys.parse_key(keys.generate_rsa(2048))
_ED = keys.parse_key(keys.generate_ed25519())
KEYS = [SigningKey("rsa", "example.org", "rsa", "-", _RSA),
        SigningKey("ed", "example.org", "ed", "-", _ED)]
RECORDS = {f"{k.selector}._domainkey.example.org.".encode(): keys.dns_record(k.key).encode()
           for k in KEYS}
OVERSIGN = DEFAULT_OVERSIGN_HEADERS + ("x-absent-one", "x-absent-two")

EDGE_CASES = {
    "empty body": b"From: a@example.org\r\nSubject: x\r\n\r\n",
    "no body separator": b"From: a@example.org\r\nSubject: x\r\n",
    "header only, no final CRLF": b"From: a@example.org\r\nSubject: x",
    "empty message": b"",
    "only a blank line": b"\r\n",
    "blank line then body": b"\r\nbody\r\n",
    "body of blank lines": b"From: a@example.org\r\n\r\n\r\n\r\n\r\n",
    "body of WSP lines": b"From: a@example.org\r\n\r\n \r\n\t\r\n  \t \r\n",
    "trailing WSP": b"From: a@example.org\r\n\r\nline one  \r\nline\ttwo\t\r\n \tthree\r\n\r\n",
    "last line without CRLF": b"From: a@example.org\r\n\r\nfirst\r\nlast  ",
    "last line WSP only": b"From: a@example.org\r\n\r\nfirst\r\n \t",
    "WSP runs": b"From: a@example.org\r\n\r\na  b\t\tc \t d\r\n  leading\r\n",
    "bare CR": b"From: a@example.org\r\nSubject: one\rtwo\r\n\r\nbody\rmore\r\nend\r\r\n",
    "CR before CRLF at the end": b"From: a@example.org\r\n\r\nbody\r\r\n\r\n",
    "lone LF": b"From: a@example.org\nSubject: x\n\nbody  \nline\r\nmixed\n\n",
    "LF then CRLF blank": b"From: a@example.org\n\r\nbody\n",
    "folded headers": (b"From: Alice\r\n <a@example.org>\r\nSubject: a long\r\n\tfolded\r\n  "
                       b"subject \r\nTo:\r\n b@example.net\r\n\r\nbody\r\n"),
    "tabs in headers": b"From:\ta@example.org\t\r\nSubject:\t x \t y\t\r\n\r\nbody\r\n",
    "8-bit header bytes": ("From: Jürgen <j@example.org>\r\nSubject: grüße \xa0 aus Köln\r\n"
                           ).encode() + b"X-Latin1: caf\xe9\r\n\r\nk\xf6rper\r\n",
    "missing From": b"To: b@example.net\r\nSubject: x\r\n\r\nbody\r\n",
    "repeated headers": (b"From: a@example.org\r\nReceived: one\r\nTo: b@example.net\r\n"
                         b"Received: two\r\nTo: c@example.net\r\nSubject: first\r\n"
                         b"subject: second\r\nSUBJECT: third\r\n\r\nbody\r\n"),
    "empty values": b"From: a@example.org\r\nSubject:\r\nTo: \r\nCc:\t\r\n\r\nbody\r\n",
    "no space after colon": b"From:a@example.org\r\nSubject:x:y\r\n\r\nbody\r\n",
    "mbox From line": b"From alice Sat Nov 21 03:00:00 2026\r\nFrom: a@example.org\r\n\r\nbody\r\n",
    "odd whitespace in a value": b"From: a@example.org\r\nSubject: x\x0b\x0c \r\n\r\nbody\r\n",
    "existing signature": (b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=old;\r\n"
                           b"\tb=abc; bh=def; h=from\r\nFrom: a@example.org\r\n\r\nbody\r\n"),
    # h= longer than a line: folded at its colons only (dkimpy's fold cut names apart).
    "reply with references": (b"From: a@example.org\r\nTo: b@example.net\r\nCc: c@example.net\r\n"
                              b"Subject: Re: x\r\nDate: Sat, 21 Nov 2026 03:00:00 +0000\r\n"
                              b"Message-ID: <2@example.org>\r\nIn-Reply-To: <1@example.net>\r\n"
                              b"References: <1@example.net>\r\nMIME-Version: 1.0\r\n"
                              b"Content-Type: text/plain\r\n\r\nbody\r\n"),
    # Not fields: dkimpy refuses them, so must we.
    "space before colon": b"From: a@example.org\r\nSubject : x\r\n\r\nbody\r\n",
    "folded first line": b" From: a@example.org\r\n\r\nbody\r\n",
    "no colon": b"From: a@example.org\r\nnot a header\r\n\r\nbody\r\n",
    "empty name": b"From: a@example.org\r\n: x\r\n\r\nbody\r\n",
}


def corpus_messages() -> dict[str, bytes]:
    if not CORPORA.exists():
        pytest.skip("no corpora next to the project")
    out = {}
    spam_ham = sorted((CORPORA / "spam-ham").rglob("*"))
    for path in [p for p in spam_ham if p.is_file() and p.name != "LABELS.tsv"][::40]:
        raw = path.read_bytes()
        name = str(path.relative_to(CORPORA))
        out[name] = raw
        lines = raw.split(b"\n", 1) if raw.startswith(b"From ") else [b"", raw]
        # As Postfix hands it on: CRLF, no mbox line.
        out[name + " (CRLF)"] = lines[1].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    for path in sorted((CORPORA / "mime").rglob("*")):
        if path.is_file() and path.stat().st_size <= MAX_SIZE:
            out[str(path.relative_to(CORPORA))] = path.read_bytes()
    return out


def include_for(headers) -> list[bytes]:
    return dkimsign.header_list(dkimsign.Message(headers, b""), DEFAULT_SIGN_HEADERS
                                + ("received", "x-latin1", "dkim-signature"), OVERSIGN)


def check(content: bytes) -> None:
    try:
        theirs = dkim.rfc822_parse(content)
    except Exception:
        with pytest.raises(dkim.MessageFormatError):
            dkimsign.parse(content)
        return
    ours = dkimsign.parse(content)
    assert [tuple(h) for h in theirs[0]] == [tuple(h) for h in ours.headers]
    assert theirs[1] == ours.body

    assert dkimsign.canonical_body(ours.body) == Relaxed.canonicalize_body(theirs[1])
    include = include_for(ours.headers)
    theirs_signed = dkim.select_headers(Relaxed.canonicalize_headers(theirs[0]), include)
    ours_signed = [dkimsign.canonical_header(n, v)
                   for n, v in dkimsign.pick_headers(ours.headers, include)]
    assert [n + b":" + v for n, v in theirs_signed] == ours_signed

    fields = dkimsign.sign_message(ours, KEYS, include, expire_s=3600)
    assert all(len(line) <= dkimsign.LINE_MAX for f in fields for line in f.split(b"\r\n"))
    signed = b"".join(fields) + content
    d = dkim.DKIM(signed)
    dnsfunc = lambda name, timeout=5: RECORDS.get(name)  # noqa: E731
    assert [d.verify(i, dnsfunc=dnsfunc) for i in range(len(fields))] == [True, True]


@pytest.mark.parametrize("name", EDGE_CASES)
def test_edge_case_canonicalises_and_verifies_as_dkimpy(name):
    check(EDGE_CASES[name])


def test_corpus_canonicalises_and_verifies_as_dkimpy():
    messages = corpus_messages()
    assert len(messages) > 400
    failed = []
    for name, content in messages.items():
        try:
            check(content)
        except AssertionError as exc:
            failed.append(f"{name}: {str(exc)[:200]}")
    assert not failed, "\n".join(failed[:10])


def test_oversigned_absent_names_pick_nothing_and_instances_go_bottom_up():
    headers = [(b"Received", b" 1\r\n"), (b"From", b" a\r\n"), (b"received", b" 2\r\n")]
    picked = dkimsign.pick_headers(headers, [b"received", b"from", b"received", b"received",
                                             b"to", b"from"])
    assert picked == [headers[2], headers[1], headers[0]]
