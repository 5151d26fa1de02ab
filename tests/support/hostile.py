"""Messages whose structure costs more to parse than they are worth.

Each generator takes a count and returns a whole message (CRLF line ends):
``header_flood`` puts ``fields`` header fields on top (``field``: which), ``mime_flood`` a
multipart with ``parts`` empty text parts, ``nested_mime`` multiparts nested
``depth`` deep. Tests use small counts; bench/hostile_bench.py the sizes the
audit saw (about 10 MB: 1.3 million fields, 300,000 parts).
"""

from __future__ import annotations

HEAD = (b"From: Mallory <mallory@example.org>\r\nTo: bob@example.net\r\nSubject: structure\r\n"
        b"Message-ID: <hostile@example.org>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n")


def header_flood(fields: int, field: bytes = b"X-A: b") -> bytes:
    return HEAD + (field + b"\r\n") * fields + b"\r\nbody\r\n"


def mime_flood(parts: int) -> bytes:
    return (HEAD + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
            + b"--b\r\n\r\nx\r\n" * parts + b"--b--\r\n")


def nested_mime(depth: int) -> bytes:
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="%d"\r\n\r\n--%d\r\n' % (i, i)
                       for i in range(depth))
    closing = b"".join(b"\r\n--%d--\r\n" % i for i in reversed(range(depth)))
    return HEAD + b"MIME-Version: 1.0\r\n" + opening + b"\r\nleaf\r\n" + closing
