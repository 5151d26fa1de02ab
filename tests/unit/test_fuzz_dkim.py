"""Properties of DKIM and ARC header parsing.

- sign/dkim.py ``parse`` raises nothing but dkim.MessageFormatError, and
  splits every message exactly as dkimpy's rfc822_parse does (the signer
  hashes what verifiers hash), or both refuse it;
- tag=value lists: dkimpy's parse_tag_value raises only its documented
  InvalidTagValueList; the checks' best-effort readers (checks/dkim.py
  ``_tags``, checks/arc.py ``_seal_domains``) never raise;
- DKIM verification of hostile DKIM-Signature fields and key records
  (checks/dkim.py ``_verify_all``, "never raises") gives one result of the
  four kinds per signature; ARC verification of hostile ARC sets
  (mailauth/arc.py ``verify_in_thread``) gives one of its results, never an
  exception. DNS is a function of the example: no network.
"""

from __future__ import annotations

import dkim
import dkim.util
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpproxy.mailauth.arc import verify_in_thread
from smtpproxy.scan.checks.arc import _seal_domains
from smtpproxy.scan.checks.dkim import _tags, _verify_all
from smtpproxy.sign import dkim as sign_dkim
from tests.support.fuzz import wire_bytes

# ------------------------------------------------------------------ strategies

TAG_NAMES = [b"v", b"a", b"b", b"bh", b"c", b"d", b"h", b"i", b"l", b"q", b"s", b"t", b"x", b"z",
             b"cv", b"k", b"p", b"n", b"1x", b"", b"_"]
TAG_VALUES = [b"1", b"rsa-sha256", b"rsa-sha1", b"ed25519-sha256", b"RSA-SHA256", b"relaxed/relaxed",
              b"simple/bogus", b"example.org", b"sel", b"from:to:subject", b"from::", b"", b"-1",
              b"99999999999999999999", b"1e3", b"AAAA", b"!!!", b"dns/txt", b"pass", b"none",
              b"fail", b"@example.org", b"\xff", b"MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAK",
              b"rsa", b"ed25519", b"*", b"email"]
tag_value = st.sampled_from(TAG_VALUES) | st.binary(max_size=8)
tag_list = st.lists(st.tuples(st.sampled_from(TAG_NAMES), tag_value), max_size=10).map(
    lambda tags: b"; ".join(name + b"=" + value for name, value in tags))
tag_text = tag_list | wire_bytes(12) | st.binary(max_size=40)
header_name = st.sampled_from([b"From", b"To", b"Subject", b"DKIM-Signature", b"X", b"From ",
                               b"Fr om", b"\x7f", b""])


@st.composite
def heads(draw) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        out += draw(header_name) + draw(st.sampled_from([b":", b" :", b""])) + draw(tag_text)
        out += draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r\n ", b"\r\n\t"]))
    return out


messages = st.builds(lambda h, sep, body: h + sep + body, heads(),
                     st.sampled_from([b"\r\n", b"\n", b""]), wire_bytes(10)) | wire_bytes()


class _Dns:
    """dkimpy's dnsfunc: the same hostile record for every name."""

    def __init__(self, record: bytes | None):
        self.record = record

    def dnsfunc(self, name, timeout=None):
        return self.record


key_record = st.none() | st.builds(
    lambda tags: b"; ".join(tags), st.lists(st.sampled_from(
        [b"v=DKIM1", b"k=rsa", b"k=ed25519", b"k=bogus", b"p=", b"p=AAAA", b"p=!!!", b"s=email",
         b"s=other", b"t=y", b"h=sha256", b"v=DKIM2",
         b"p=MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAKJ8v3K5zq0kKp0W0xJ3b6vCq1JmPpQ3uUeYt2Lr8d0tq9lIkQqO"
         b"xC3cL0dW6d3tJ2gQ0b7J0Ao2kqNn2RrR7cCAwEAAQ=="]), max_size=5)) | st.binary(max_size=30)

# ------------------------------------------------------------------ checkers


def dkimpy_split(content: bytes):
    """dkimpy's own split, or the exception it raised."""
    try:
        headers, body = dkim.rfc822_parse(content)
    except Exception as exc:
        return exc
    return [(n, v) for n, v in headers], body


def check_same_split(content: bytes, parse=sign_dkim.parse) -> None:
    theirs = dkimpy_split(content)
    try:
        ours = parse(content)
    except dkim.MessageFormatError:
        assert isinstance(theirs, Exception), f"dkimpy splits what we refuse: {theirs!r}"
        return
    assert not isinstance(theirs, Exception), f"dkimpy refuses what we split: {theirs!r}"
    assert (ours.headers, ours.body) == theirs


def signatures_in(raw: bytes) -> int:
    """DKIM-Signature fields as dkimpy splits the message (a bare LF may end the header)."""
    try:
        return sum(1 for name, _ in dkim.rfc822_parse(raw)[0] if name.lower() == b"dkim-signature")
    except Exception:
        return 0


def check_results(results: list[dict], signatures: int) -> None:
    assert len(results) == min(signatures, 5) or (
        len(results) == 1 and results[0]["reason"].startswith("unparseable message"))
    for r in results:
        assert r["result"] in ("pass", "fail", "temperror", "permerror"), r
        assert all(isinstance(r[k], str) for k in ("domain", "selector", "algorithm", "reason"))


def test_checkers_see_a_difference():
    check_same_split(b"From: a\r\nSubject: b\r\n\r\nbody\r\n")
    wrong = lambda content: sign_dkim.Message([], content)  # noqa: E731
    with pytest.raises(AssertionError):
        check_same_split(b"From: a\r\n\r\nbody", parse=wrong)
    with pytest.raises(AssertionError):
        check_results([{"result": "ok", "domain": "", "selector": "", "algorithm": "", "reason": ""}], 1)
    sig = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel; h=from; bh=AAAA; b=AAAA\r\n"
    results = _verify_all(_Dns(None), sig + b"From: a@example.org\r\n\r\nbody\r\n", 5, 1024)
    assert [r["result"] for r in results] == ["permerror"]


# ------------------------------------------------------------------ properties


@given(content=messages)
def test_sign_parse_splits_like_dkimpy_or_refuses_like_it(content):
    check_same_split(content)


@given(value=tag_text)
def test_parse_tag_value_raises_only_its_documented_error(value):
    try:
        tags = dkim.util.parse_tag_value(value)
    except dkim.util.InvalidTagValueList:
        return
    assert all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in tags.items())


@given(value=tag_text)
def test_the_checks_tag_readers_never_raise(value):
    assert isinstance(_tags(value), dict)
    text = value.decode("utf-8", "replace")
    seals = _seal_domains([("ARC-Seal", text), ("arc-seal", "i=" + text), ("Subject", text)])
    assert all(isinstance(i, int) for i, _d, _s in seals)


@given(sigs=st.lists(tag_list, min_size=1, max_size=3), head=heads(), record=key_record,
       body=wire_bytes(6))
def test_dkim_verification_of_hostile_signatures_never_raises(sigs, head, record, body):
    raw = b"".join(b"DKIM-Signature: " + s + b"\r\n" for s in sigs) + head + b"\r\n" + body
    check_results(_verify_all(_Dns(record), raw, 5, 1024), signatures_in(raw))


arc_field = st.sampled_from([b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results"])


@given(sets=st.lists(st.tuples(arc_field, st.sampled_from([b"1", b"2", b"0", b"50", b"x", b""]),
                               tag_list), min_size=1, max_size=6),
       head=heads(), record=key_record)
def test_arc_verification_of_hostile_sets_never_raises(sets, head, record):
    raw = b"".join(name + b": i=" + i + b"; " + tags + b"\r\n" for name, i, tags in sets)
    out = verify_in_thread(_Dns(record), raw + head + b"\r\nbody\r\n", 1024)
    assert out["result"] in ("pass", "fail", "none", "temperror")
    assert isinstance(out["reason"], str) and isinstance(out["results"], list)
