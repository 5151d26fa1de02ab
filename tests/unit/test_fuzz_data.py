"""Properties of the DATA reader (wire.read_data) and of dot-stuffing (wire.dot_stuff).

- the same bytes in any split, with any reader buffer limit, give the same
  message, the same size and leave the same bytes for the next command;
- on CRLF text the reader is exactly RFC 5321 4.5.2: up to the first
  CRLF "." CRLF, one leading dot off each line; over the limit it still
  reads to the end and returns None;
- dot_stuff then a strict reader gives the message back (CRLF text), and
  any content ends exactly once, at the final dot, for a strict reader;
- for a lenient reader (bare LF or CR ends a line) too, and on the whole
  path read -> stuff: the SMTP smuggling defect D4 failed both before its
  fix (minimal example: content b"\n.\n", which dot_stuff sent as is).
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpproxy.wire import dot_stuff, read_data
from tests.support.fuzz import (
    crlf_text_bytes,
    cut,
    feed_in_chunks,
    lax_data_end,
    splits,
    strict_data_end,
    strict_unstuff,
    wire_bytes,
)

TRAILER = b"QUIT\r\n"
END = b"\r\n.\r\n"
BIG = 10_000_000
# StreamReader limits: tiny ones drive read_data through its LimitOverrunError path.
LIMITS = st.sampled_from([4, 5, 8, 64, 65536])



def _outcome(value):
    """Results compare by value, exceptions by type and text."""
    return (type(value).__name__, str(value)) if isinstance(value, BaseException) else value


def read(chunks: list[bytes], limit: int = BIG, reader_limit: int = 65536):
    outcome, rest = asyncio.run(feed_in_chunks(chunks, lambda r: read_data(r, limit), reader_limit))
    return _outcome(outcome), rest


def expected_round_trip(content: bytes) -> bytes:
    return content if not content or content.endswith(b"\r\n") else content + b"\r\n"


# ------------------------------------------------------------------ checkers


def check_ends_once(payload: bytes, data_end) -> None:
    """A DATA payload as dot_stuff makes it ends at its last line and nowhere before."""
    assert payload.endswith(b".\r\n")
    assert data_end(payload) == len(payload) - 3, (
        f"the payload ends at offset {data_end(payload)}, not at its final dot")


def test_checkers_catch_known_bad_payloads():
    check_ends_once(b"a\r\n..\r\n.\r\n", strict_data_end)
    check_ends_once(b"a\r\n..\r\n.\r\n", lax_data_end)
    smuggled = b"a\n.\nMAIL FROM:<e@x>\r\n.\r\n"
    check_ends_once(smuggled, strict_data_end)
    for bad, reader in [(smuggled, lax_data_end), (b"a\r.\rb\r\n.\r\n", lax_data_end),
                        (b"a\r\n.\r\nb\r\n.\r\n", strict_data_end)]:
        with pytest.raises(AssertionError):
            check_ends_once(bad, reader)
    assert strict_unstuff(b"..a\r\nb\r\n.\r\nrest") == (b".a\r\nb\r\n", b"rest")
    # The split comparison sees a difference where there is one.
    assert read([b"a\r\n.\r\n"]) != read([b"b\r\n.\r\n"])


# ------------------------------------------------------------------ read_data


@given(body=wire_bytes(), data=st.data(), reader_limit=LIMITS)
def test_read_data_gives_the_same_message_in_any_split(body, data, reader_limit):
    wire = body + END + TRAILER
    points = data.draw(splits(len(wire)), label="cuts")
    whole = read([wire])
    assert read(cut(wire, points), reader_limit=reader_limit) == whole
    assert read([wire[i:i + 1] for i in range(len(wire))]) == whole


@given(body=crlf_text_bytes(), data=st.data(), reader_limit=LIMITS)
def test_read_data_is_the_rfc_5321_reader_on_crlf_text(body, data, reader_limit):
    wire = body + END + TRAILER
    content, rest = strict_unstuff(wire)
    got, left = read(cut(wire, data.draw(splits(len(wire)), label="cuts")), reader_limit=reader_limit)
    assert got == (content, len(content))
    assert left == rest


@given(body=crlf_text_bytes(), limit=st.integers(0, 200), reader_limit=LIMITS)
def test_read_data_over_the_limit_reads_to_the_end_and_drops_the_message(body, limit, reader_limit):
    wire = body + END + TRAILER
    content, rest = strict_unstuff(wire)
    wire_size = strict_data_end(wire)
    (got, size), left = read([wire], limit=limit, reader_limit=reader_limit)
    assert left == rest
    if wire_size > limit:
        assert got is None and size > limit
    else:
        assert (got, size) == (content, len(content))


# ------------------------------------------------------------------ dot_stuff


@given(content=crlf_text_bytes(), data=st.data())
def test_dot_stuff_then_a_strict_reader_gives_the_message_back(content, data):
    payload = dot_stuff(content)
    expected = expected_round_trip(content)
    assert strict_unstuff(payload) == (expected, b"")
    points = data.draw(splits(len(payload)), label="cuts")
    assert read(cut(payload + TRAILER, points)) == ((expected, len(expected)), TRAILER)


@given(content=wire_bytes())
def test_dot_stuff_ends_once_for_a_strict_reader(content):
    check_ends_once(dot_stuff(content), strict_data_end)


@given(content=wire_bytes())
def test_dot_stuff_ends_once_for_a_lenient_reader(content):
    check_ends_once(dot_stuff(content), lax_data_end)


@given(body=wire_bytes())
def test_what_read_data_accepts_leaves_as_one_message_for_a_lenient_reader(body):
    (got, _size), _rest = read([body + END + TRAILER])
    if isinstance(got, bytes):
        check_ends_once(dot_stuff(got), lax_data_end)
