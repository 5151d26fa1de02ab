"""What the property-based tests (tests/unit/test_fuzz_*.py) and bench/fuzz.py share.

- ``register_profiles``: the Hypothesis settings profiles. "ci" (the suite:
  bounded, derandomised so a landing never depends on luck, no example
  database) and "long" (bench/fuzz.py: many random examples). The profile
  must be loaded before the test modules are imported: ``@given`` takes the
  settings in force when it decorates.
- strategies for wire bytes that mix the tokens the codecs care about (CR,
  LF, dots, colons, NUL, 8-bit bytes) with arbitrary bytes;
- the reference readers the properties judge by: a strict and a lax reader
  of a DATA payload, a lax reader of a header block (what a downstream that
  takes a bare LF or CR for a line end sees);
- ``known_failure``: the xfail mark of a property that fails today, naming
  the defect; in the "ci" profile such a property does not shrink its
  counterexample (the time goes to the passing ones; bench/fuzz.py shrinks);
- ``feed_in_chunks``: a StreamReader fed one chunk at a time, the consumer
  running between chunks, as a socket delivers them.
"""

from __future__ import annotations

import asyncio
import os
import re

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

CI_EXAMPLES = 150


def register_profiles(long_examples: int = 20_000) -> None:
    common = dict(deadline=None, database=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile(
        "ci", max_examples=int(os.environ.get("SMTPPROXY_FUZZ_EXAMPLES", CI_EXAMPLES)),
        derandomize=True, **common)
    settings.register_profile("long", max_examples=long_examples, **common)


def known_failure(reason: str):
    """``pytest.mark.xfail(strict=False, reason=reason)``, and no shrinking in the "ci" profile."""
    mark = pytest.mark.xfail(strict=False, reason=reason)

    def decorate(test):
        if settings.get_current_profile_name() == "ci":
            test = settings(phases=(Phase.explicit, Phase.reuse, Phase.generate))(test)
        return mark(test)

    return decorate


# ------------------------------------------------------------------ strategies

# Tokens that matter to line-based codecs, mixed with arbitrary bytes.
WIRE_TOKENS = [b"\r\n", b"\n", b"\r", b".", b"..", b"\r\n.\r\n", b"\n.\n", b"\r.\r", b".\r\n",
               b"a", b"x", b" ", b"\t", b":", b"=", b"\x00", b"\xff", b"\xc3\xa9",
               b"MAIL FROM:<e@x>\r\n", b"X-Spam: Yes", b"From: a@b"]


def wire_bytes(max_pieces: int = 40) -> st.SearchStrategy[bytes]:
    piece = st.sampled_from(WIRE_TOKENS) | st.binary(max_size=6)
    return st.lists(piece, max_size=max_pieces).map(b"".join)


def crlf_text_bytes(max_pieces: int = 40) -> st.SearchStrategy[bytes]:
    """Bytes whose only line ends are CRLF (no bare CR, no bare LF)."""
    tokens = [t for t in WIRE_TOKENS if not bare_line_end(t)]
    piece = st.sampled_from(tokens) | st.binary(max_size=6).map(
        lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
    return st.lists(piece, max_size=max_pieces).map(b"".join)


def splits(data_len: int) -> st.SearchStrategy[list[int]]:
    """Sorted cut points inside ``data_len`` bytes."""
    return st.lists(st.integers(0, max(data_len, 0)), max_size=12).map(sorted)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


# ------------------------------------------------------------------ reference readers

_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
# A lone-dot line for a lax reader: any of CRLF, LF or CR ends a line.
_LAX_DOT_LINE = re.compile(rb"(?:\r\n|\n|\r)\.(?:\r\n|\n|\r)")


def bare_line_end(data: bytes) -> bool:
    """True when ``data`` holds a CR not followed by LF or an LF not after a CR."""
    return _BARE.search(data) is not None


def strict_data_end(payload: bytes) -> int | None:
    """Offset of the dot of the first CRLF "." CRLF line of a DATA payload (it starts a line)."""
    i = (b"\r\n" + payload).find(b"\r\n.\r\n")
    return None if i < 0 else i


def lax_data_end(payload: bytes) -> int | None:
    """The same for a lenient server that also takes a bare LF or a bare CR for a line end."""
    m = _LAX_DOT_LINE.search(b"\r\n" + payload)
    return None if m is None else m.start() + m.group().index(b".") - 2


def strict_unstuff(payload: bytes) -> tuple[bytes, bytes]:
    """(message, rest) as RFC 5321 4.5.2 reads a payload: up to the lone dot, one leading
    dot off every line. The payload must hold a CRLF "." CRLF."""
    end = strict_data_end(payload)
    assert end is not None
    body, rest = payload[:end], payload[end + 3:]
    lines = body.split(b"\r\n")
    # The last element is what follows the final CRLF: empty (the body ends in CRLF).
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines), rest


def lax_header_names(content: bytes) -> list[bytes]:
    """The field names a lenient reader finds in the header block: lines end at CRLF, LF
    or CR; the block ends at the first empty line; continuation lines name nothing."""
    names = []
    for line in re.split(rb"\r\n|\n|\r", content):
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            continue
        name, colon, _ = line.partition(b":")
        if colon:
            names.append(name.strip().lower())
    return names


# ------------------------------------------------------------------ stream feeding


async def feed_in_chunks(chunks: list[bytes], consume, limit: int = 65536):
    """Run ``consume(reader)`` while ``chunks`` arrive one by one, then EOF.

    Returns (what consume returned or the exception it raised, the bytes left unread).
    """
    reader = asyncio.StreamReader(limit=limit)

    async def feed():
        for chunk in chunks:
            if chunk:
                reader.feed_data(chunk)
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    try:
        outcome = await consume(reader)
    except Exception as exc:
        outcome = exc
    await feeder
    return outcome, await reader.read()
