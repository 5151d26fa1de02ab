"""Properties of the header splitter and header removal (smtpproxy/headers.py).

- split_fields gives the header block back byte for byte (plus the one CRLF
  a block without a final line end gets), each field ending in a line end,
  no field starting with a fold;
- remove_headers keeps the body and every other field byte for byte and in
  order, and leaves no field of a removed name for a reader that splits at
  CRLF; removing nothing changes nothing; a field we prepend and then remove
  leaves the message as it was; the fields we prepend are read back exactly
  as we wrote them (a new finding fails that: a first line starting with a
  space continues our last field);
- for a reader that also takes a bare LF for a line end (Postfix does), no
  removed field is left either, nor on the whole path read_data ->
  remove_headers with bare LF and bare CR: D6 failed both before its fix
  (b"X-Spam-Status:\nX-Spam:\r\n\r\n": the X-Spam behind the bare LF survived).
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from smtpproxy.headers import (
    field_name,
    header_block_end,
    prepend_headers,
    remove_headers,
    split_fields,
)
from smtpproxy.wire import read_data
from tests.support.fuzz import lax_header_names, wire_bytes

REMOVED = ["x-spam", "x-spam-status", "authentication-results"]
NAMES = ["X-Spam", "x-SPAM", "X-Spam-Status", "Subject", "From", "Received", "Authentication-Results",
         "X-Spamd-Result"]

value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=20).map(str.encode)
CRLF = st.just(b"\r\n")
line_end = st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r"])


@st.composite
def header_blocks(draw, ends=CRLF) -> bytes:
    """A header block of named fields (some folded), each line ended by ``ends``, then a body."""
    out = b""
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.sampled_from(NAMES)).encode()
        out += name + draw(st.sampled_from([b":", b": ", b" :"])) + draw(value) + draw(ends)
        for _ in range(draw(st.integers(0, 2))):
            out += draw(st.sampled_from([b" ", b"\t"])) + draw(value) + draw(ends)
    return out + draw(st.sampled_from([b"\r\n", b""])) + draw(wire_bytes(10))


messages = header_blocks() | wire_bytes()


def check_removed(content: bytes, names: list[str], names_in, remove=remove_headers) -> None:
    wanted = {n.encode() for n in names}
    found = [n for n in names_in(remove(content, names)) if n in wanted]
    assert not found, f"{found} survived removal"


def strict_names(content: bytes) -> list[bytes]:
    return [field_name(f) for f in split_fields(content)[0]]


def test_checkers_see_a_surviving_header():
    hidden = b"Subject: hi\nX-Spam: Yes\r\n\r\nbody"
    check_removed(b"X-Spam: Yes\r\nSubject: hi\r\n\r\n", ["x-spam"], lax_header_names)
    assert lax_header_names(hidden) == [b"subject", b"x-spam"]
    assert lax_header_names(b"A: 1\rB: 2\r\rC: 3") == [b"a", b"b"]
    # A remover that keeps a field is caught, by either reader.
    keeps_all = lambda content, names: content  # noqa: E731
    for names_in in (strict_names, lax_header_names):
        with pytest.raises(AssertionError):
            check_removed(b"A: 1\r\nX-Spam: 1\r\n\r\n", ["x-spam"], names_in, keeps_all)
    # The splitter of the day before the D6 fix, for the record: CRLF only.
    crlf_only = [f.partition(b":")[0].lower() for f in hidden.split(b"\r\n\r\n")[0].split(b"\r\n")]
    assert b"x-spam" not in crlf_only
    # The prepend finding of the first run, fixed: a folded first line of the client's
    # never joins our field.
    ours = split_fields(prepend_headers(b" dkim=pass\r\n\r\n", [("Authentication-Results", "mx; none")]))
    assert ours[0] == [b"Authentication-Results: mx; none\r\n"]


@given(content=messages)
def test_split_fields_gives_the_header_block_back(content):
    fields, end = split_fields(content)
    assert end == header_block_end(content) and 0 <= end <= len(content)
    block = content[:end]
    assert b"\r\n\r\n" not in block and not block.startswith(b"\r\n")
    joined = b"".join(fields)
    # Byte for byte; only a block without a final line end gets a CRLF.
    assert joined.startswith(block) and joined[len(block):] in (b"", b"\r\n")
    assert all(f.endswith((b"\r\n", b"\n", b"\r")) for f in fields)
    assert all(f[:1] not in (b" ", b"\t") for f in fields[1:]), "a continuation line became a field"


@given(content=messages, names=st.lists(st.sampled_from(REMOVED + ["subject"]), max_size=3))
def test_remove_headers_keeps_the_rest_byte_for_byte(content, names):
    fields, end = split_fields(content)
    out = remove_headers(content, names)
    wanted = {n.encode() for n in names}
    if not names:
        assert out == content
        return
    kept = [f for f in fields if field_name(f) not in wanted]
    assert out == b"".join(kept) + content[end:]


@given(content=messages, names=st.lists(st.sampled_from(REMOVED), min_size=1, max_size=3))
def test_remove_headers_leaves_no_field_for_a_crlf_reader(content, names):
    check_removed(content, names, strict_names)


@given(content=header_blocks(), name=st.sampled_from(["X-Spam", "X-Spam-Status"]), v=value)
def test_prepend_then_remove_is_the_message_without_that_field(content, name, v):
    assume(content[:1] not in (b" ", b"\t"))  # the property below
    added = prepend_headers(content, [(name, v.decode())])
    assert remove_headers(added, [name]) == remove_headers(content, [name])


@given(content=st.sampled_from([b" ", b"\t"]).flatmap(lambda ws: header_blocks().map(lambda c: ws + c)
                                                      ) | header_blocks(),
       fields=st.lists(st.tuples(st.sampled_from(["X-Spam", "Authentication-Results"]),
                                 value.map(bytes.decode)), min_size=1, max_size=3))
def test_prepended_fields_are_exactly_ours(content, fields):
    ours = [f"{n}: {v}\r\n".encode() for n, v in fields]
    assert split_fields(prepend_headers(content, fields))[0][:len(ours)] == ours


@given(content=header_blocks(ends=st.sampled_from([b"\r\n"] * 4 + [b"\n"])),
       names=st.lists(st.sampled_from(REMOVED), min_size=1, max_size=3))
def test_remove_headers_leaves_no_field_for_a_bare_lf_reader(content, names):
    check_removed(content, names, lax_header_names)


async def _read(wire: bytes):
    reader = asyncio.StreamReader()
    reader.feed_data(wire)
    reader.feed_eof()
    return await read_data(reader, 10_000_000)


@given(content=header_blocks(ends=line_end), names=st.lists(st.sampled_from(REMOVED), min_size=1,
                                                             max_size=3))
def test_what_read_data_accepts_has_no_removed_field_for_a_lenient_reader(content, names):
    try:
        got, _size = asyncio.run(_read(content + b"\r\n.\r\n"))
    except ValueError:
        return  # refused on input: nothing reaches the header edits
    if got is not None:
        check_removed(got, names, lax_header_names)
