"""The RE2 filter of the costly rules: a superset of ``re``, never narrower."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpproxy.scan.spamassassin import re2filter
from smtpproxy.scan.spamassassin.regex import compile_python, split_match_op, translate

pytestmark = pytest.mark.skipif(re2filter.re2 is None, reason="google-re2 not installed")


def _rule(perl: str) -> re.Pattern[bytes]:
    return compile_python(translate(*split_match_op(perl)))


# (Perl rule text, texts re matches, texts neither matches)
CASES = [
    # Python's $ outside /m also matches before a final newline; RE2's does not.
    ("/prize$/", [b"you won a prize\n", b"prize"], [b"prize money\n"]),
    ("/^claim/m", [b"x\nclaim\n"], [b"x claim\n"]),
    (r"/\Aclaim\z/", [b"claim"], [b"claim\n", b"a claim"]),
    # \s includes the vertical tab in re (bytes) but not in RE2.
    (r"/free\smoney/", [b"free\x0bmoney", b"free money"], [b"freemoney"]),
    (r"/free[\s-]money/", [b"free\x0bmoney", b"free-money"], [b"free_money"]),
    (r"/free\Smoney/", [b"free_money"], [b"free money", b"free\x0bmoney"]),
    # Look-around, atomic groups, possessive repeats and back-references are widened.
    (r"/(?<!no )claim(?! later)/", [b"claim now"], [b"clam"]),
    (r"/(?>\s{0,5})win+er/", [b"  winner"], [b"loser"]),
    (r"/(\w)\1\1/", [b"aaa"], [b""]),
    # /i folds more in RE2 (Latin-1 letters too): wider, never narrower.
    (r"/vi[a\xe4]gra/i", [b"VIAGRA", b"vi\xe4gra"], [b"vigra"]),
    # /x spaces and comments are gone in re's parse tree.
    ("/win \\s+ big  # comment\n/x", [b"win  big"], [b"winbig"]),
    # Nested counted repeats RE2 refuses are opened, not dropped.
    (r"/(?:(?:your|the)\s{1,5}(?:name|address)[:\s]{1,80}){5}/i",
     [b"your name: the address: your name: the address: your name: "], [b"hello"]),
]


@pytest.mark.parametrize("perl,matching,other", CASES)
def test_superset_matches_whatever_re_matches(perl, matching, other):
    pattern = _rule(perl)
    filt = re2filter.superset(pattern)
    assert filt is not None
    for text in matching:
        assert pattern.search(text), text
        assert filt.search(text), text
    for text in other:
        assert not pattern.search(text)
        assert not filt.search(text), text


def test_a_form_re2_cannot_take_is_none():
    # A negated class holding a negated category has no RE2 spelling here.
    assert re2filter.superset(_rule(r"/[^\S]x/")) is None


SAMPLE_RULES = [r"/\bprize\b/i", r"/(?:a|b)+c$/", r"/^\s*(\w+)\s+\1$/m", r"/[^\s@]{3,}@x/",
                r"/(?<=\d)USD(?!\w)/", r"/(?>a+)b/", r"/x{2,4}?y/s", r"/.\Z/"]
ALPHABET = st.sampled_from([b"a", b"b", b"c", b"x", b"y", b"@", b" ", b"\n", b"\x0b", b"1",
                            b"USD", b"prize", b"\xe4", b"P"])


@settings(max_examples=300, deadline=None)
@given(st.lists(ALPHABET, max_size=20).map(b"".join))
def test_superset_property_on_random_texts(text):
    for perl in SAMPLE_RULES:
        pattern = _rule(perl)
        filt = re2filter.superset(pattern)
        assert filt is not None, perl
        if pattern.search(text):
            assert filt.search(text), (perl, text)
