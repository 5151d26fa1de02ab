"""The SpamAssassin check on a site's own rules: header, body, uri and meta rules fire on a
crafted message through the engine; the Hyperscan path and the re path agree; the
compiled databases are reused from the cache."""

from __future__ import annotations

import asyncio
import pickle
import threading

import pytest

from smtpproxy.common import config
from smtpproxy.scan.checks.all import all_checks
from smtpproxy.scan.checks.base import CheckContext
from smtpproxy.scan.engine import Engine
from smtpproxy.scan.message import parse
from smtpproxy.scan.spamassassin import matcher, re2filter
from smtpproxy.scan.spamassassin.check import SpamAssassinCheck
from smtpproxy.scan.spamassassin.regex import split_match_op, translate
from smtpproxy.transaction import ClientInfo

LOCAL_CF = r"""
# a site's migrated rules
header   LOCAL_SUBJ_WATCH   Subject =~ /cheap\s+watch/i
describe LOCAL_SUBJ_WATCH   Subject offers watches
score    LOCAL_SUBJ_WATCH   2.0
header   LOCAL_FROM_ADDR    From:addr =~ /\@bulk\.example$/
score    LOCAL_FROM_ADDR    1.0
header   LOCAL_NO_LIST      List-Id !~ /./
score    LOCAL_NO_LIST      0.5
header   LOCAL_HAS_MAILER   exists:X-Mailer
score    LOCAL_HAS_MAILER   0.1
header   LOCAL_UNSET        X-Absent =~ /^none$/ [if-unset: none]
score    LOCAL_UNSET        0.1
body     LOCAL_BODY_PRIZE   /\bclaim your prize\b/i
score    LOCAL_BODY_PRIZE   3.0
body     __LOCAL_CLICK      /click/i
tflags   __LOCAL_CLICK      multiple maxhits=5
uri      LOCAL_URI_BAD      m{^https?://[^/]*bad-example\.test/}i
score    LOCAL_URI_BAD      2.5
meta     LOCAL_META         LOCAL_SUBJ_WATCH && LOCAL_URI_BAD && __LOCAL_CLICK >= 2
score    LOCAL_META         4.0
meta     LOCAL_META_NOT     LOCAL_SUBJ_WATCH && !LOCAL_BODY_PRIZE
score    LOCAL_META_NOT     1.0
body     LOCAL_NICE         /unsubscribe/
tflags   LOCAL_NICE         nice
body     LOCAL_EVAL         eval:check_stock_info('3')
meta     LOCAL_META_EVAL    LOCAL_SUBJ_WATCH && !LOCAL_EVAL
score    LOCAL_META_EVAL    1.0
meta     LOCAL_META_EVAL2   LOCAL_SUBJ_WATCH || LOCAL_EVAL
score    LOCAL_META_EVAL2   1.0
rawbody  LOCAL_RAW_TAG      /<b>FREE<\/b>/
score    LOCAL_RAW_TAG      1.5
full     LOCAL_FULL         /^X-Mailer: BulkSender/m
score    LOCAL_FULL         0.5
"""

MESSAGE = (
    b"From: Sales <sales@bulk.example>\r\nTo: bob@example.net\r\nSubject: Cheap  watch sale\r\n"
    b"X-Mailer: BulkSender 3.1\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/alternative; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\n"
    b"Visit https://www.shop.bad-example.test/offer and claim your prize now.\r\n"
    b"Click here, click there, click everywhere.\r\n"
    b"--b\r\nContent-Type: text/html\r\n\r\n<p><b>FREE</b> watches</p>\r\n--b--\r\n"
)


def sa_config(tmp_path, local_cf: str = LOCAL_CF, **kw) -> config.Config:
    """SpamAssassin's check on a rules directory with nothing in it and ``local_cf``."""
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "10_empty.cf").write_text("# nothing here\n")
    (tmp_path / "local.cf").write_text(local_cf)
    return config.load(None, {"state_dir": str(tmp_path / "state"),
                              "scan.spamassassin.enabled": True,
                              "scan.spamassassin.rules_dirs": [str(rules)],
                              "scan.spamassassin.local_cf": str(tmp_path / "local.cf"), **kw})


def test_local_cf_rules_fire_through_the_engine(tmp_path):
    cfg = sa_config(tmp_path)
    engine = Engine(cfg.scan, all_checks(cfg))
    sa = next(c for c in engine.checks if c.name == "spamassassin")
    assert sa.matcher.wait(60)
    ctx = CheckContext(message=parse(MESSAGE), client=ClientInfo(addr="192.0.2.1", helo="x.example"),
                       mail_from="sales@bulk.example", rcpt_tos=["bob@example.net"], profile="inbound",
                       resolver=None)
    result = asyncio.run(engine.scan(ctx))
    fired = {name for name in result.symbols if name.startswith("LOCAL_")}
    assert fired == {"LOCAL_SUBJ_WATCH", "LOCAL_FROM_ADDR", "LOCAL_NO_LIST", "LOCAL_HAS_MAILER",
                     "LOCAL_UNSET", "LOCAL_BODY_PRIZE", "LOCAL_URI_BAD", "LOCAL_META",
                     "LOCAL_RAW_TAG", "LOCAL_FULL", "LOCAL_META_EVAL2"}
    # Scores: SpamAssassin's times the scale (6/5 by default).
    assert result.symbols["LOCAL_META"].score == pytest.approx(4.0 * 1.2)
    assert result.symbols["LOCAL_SUBJ_WATCH"].score == pytest.approx(2.0 * 1.2)
    assert engine.symbols["LOCAL_SUBJ_WATCH"].description == "Subject offers watches"
    # The eval rule is skipped, visibly; the meta reading it with "!" does not fire.
    assert sa.rules.skipped["LOCAL_EVAL"] == "eval:check_stock_info"
    assert "LOCAL_META_EVAL" not in result.symbols
    assert any("skipped LOCAL_EVAL: eval:check_stock_info" in line for line in sa.report())
    # Built, the check keeps no rule sources (the matcher has the patterns, the
    # metas are functions); kinds, header specs and descriptions stay for reports.
    rule = sa.rules.rules["LOCAL_SUBJ_WATCH"]
    assert (rule.kind, rule.header, rule.text, rule.pattern) == ("header", "Subject", "", None)
    assert sa.rules.rules["LOCAL_META"].meta is None
    assert any("rules loaded (header 5," in line for line in sa.report())


def test_nice_rules_score_negative_and_sub_rules_are_never_emitted(tmp_path):
    check = SpamAssassinCheck(sa_config(tmp_path, **{"scan.spamassassin.score_scale": 1.0}))
    assert check.symbol_defs()["LOCAL_NICE"].score == -1.0
    assert "__LOCAL_CLICK" not in check.symbol_defs()
    check.matcher.wait(60)
    hits = {h.symbol for h in check.scan(parse(MESSAGE + b"unsubscribe\r\n"), "")}
    assert "__LOCAL_CLICK" not in hits


def test_multiple_counts_up_to_maxhits(tmp_path):
    check = SpamAssassinCheck(sa_config(tmp_path))
    check.matcher.wait(60)
    assert check.match(parse(MESSAGE))["__LOCAL_CLICK"] == 3
    many = MESSAGE.replace(b"everywhere", b"click click click click")
    assert check.match(parse(many))["__LOCAL_CLICK"] == 5


def test_disabled_loads_nothing(tmp_path):
    check = SpamAssassinCheck(sa_config(tmp_path, **{"scan.spamassassin.enabled": False}))
    assert check.symbol_defs() == {} and check.rules.rules == {}


def test_score_scale_must_be_positive():
    with pytest.raises(config.ConfigError, match="scan.spamassassin.score_scale"):
        config.load(None, {"scan.spamassassin.score_scale": 0})


# ------------------------------------------------------------------ the matcher

RULES = {
    "body": [("B_WORD", "/\\bprize\\b/i"), ("B_BACKREF", "/(\\w)\\1\\1/"),
             ("B_LOOK", "/(?<!no )claim/"), ("B_ANCHOR", "/\\Aclaim/")],
    "uri": [("U_HOST", "m{//www\\.}")],
}


def _rules():
    return {kind: [(name, translate(*split_match_op(text))) for name, text in items]
            for kind, items in RULES.items()}


TEXTS = [b"you won a prize\n", b"claim it aaa\n", b"no claim\n", b"claim first\n"]


@pytest.mark.skipif(matcher.hyperscan is None, reason="hyperscan not installed")
def test_hyperscan_and_re_agree(tmp_path):
    hs = matcher.Matcher(_rules(), str(tmp_path), background=False)
    plain = matcher.Matcher(_rules(), use_hyperscan=False)
    assert hs.ready and not plain.ready
    for texts in ([t] for t in TEXTS):
        for kind in ("body", "uri"):
            confirmed = {n for n in hs.candidates(kind, texts)
                         if matcher.count(hs.regex[n], texts, 1)}
            expected = {n for n in plain.candidates(kind, texts)
                        if matcher.count(plain.regex[n], texts, 1)}
            assert confirmed == expected, texts


@pytest.mark.skipif(matcher.hyperscan is None, reason="hyperscan not installed")
def test_compiled_databases_are_reused_from_the_cache(tmp_path):
    before = matcher.compile_count
    first = matcher.Matcher(_rules(), str(tmp_path), background=False)
    assert first.ready and matcher.compile_count == before + 1
    assert list(tmp_path.glob("hs-*.db"))
    second = matcher.Matcher(_rules(), str(tmp_path), background=False)
    assert second.ready and matcher.compile_count == before + 1  # loaded, not compiled
    assert "B_WORD" in second.candidates("body", [b"a prize"])
    assert "U_HOST" not in second.candidates("uri", [b"http://example.org/"])
    # Other rules: another key, another compile; the stale file is removed.
    changed = _rules()
    changed["uri"] = [("U_OTHER", translate("x", ""))]
    matcher.Matcher(changed, str(tmp_path), background=False)
    assert matcher.compile_count == before + 2
    assert len(list(tmp_path.glob("hs-*.db"))) == 1


@pytest.mark.skipif(matcher.hyperscan is None, reason="hyperscan not installed")
def test_cache_of_the_older_single_pickle_layout_still_loads(tmp_path):
    first = matcher.Matcher(_rules(), str(tmp_path), background=False)
    with open(first.cache_path, "rb") as f:
        header = pickle.load(f)
        blobs = {kind: pickle.load(f) for kind in header.pop("kinds")}
    assert set(blobs) == set(first.dbs)  # one pickle per database after the header
    with open(first.cache_path, "wb") as f:
        pickle.dump({**header, "dbs": blobs}, f)
    before = matcher.compile_count
    again = matcher.Matcher(_rules(), str(tmp_path), background=False)
    assert again.ready and matcher.compile_count == before
    assert "B_WORD" in again.candidates("body", [b"a prize"])


@pytest.mark.skipif(matcher.hyperscan is None or re2filter.re2 is None,
                    reason="hyperscan or google-re2 not installed")
def test_costly_rules_get_a_filter_that_only_the_matcher_holds(tmp_path):
    words = "|".join(f"word{i:04d}x" for i in range(900))  # over Hyperscan's 8,000 bytes
    rules = {"body": [("B_LIST", translate(f"\\b(?:{words})\\b", "i")),
                      ("B_WORD", translate("\\bprize\\b", "i"))]}
    m = matcher.Matcher(rules, str(tmp_path), background=False)
    assert m.ready and "B_LIST" in m.filters and "B_LIST" in m.substituted
    # google-re2's own cache keeps none: a reload's old filters go with their matcher.
    assert re2filter.re2._Regexp._make.cache_info().currsize == 0
    texts = [b"say WORD0042X now\n"]
    assert "B_LIST" in m.candidates("body", texts)
    assert matcher.count(m.regex["B_LIST"], matcher.sift(m.filters["B_LIST"], texts), 1) == 1


def test_re_patterns_are_compiled_on_first_use(tmp_path):
    plain = matcher.Matcher(_rules(), use_hyperscan=False)  # every rule runs: all compiled now
    assert set(dict.keys(plain.regex)) == set(plain.regex.sources)
    m = matcher.Matcher(_rules(), str(tmp_path), background=False)
    if not m.ready:
        pytest.skip("hyperscan not installed")
    assert dict.keys(m.regex) == set() and set(m.regex.sources) >= {"B_WORD", "U_HOST"}
    assert m.regex["B_WORD"].search(b"a prize") and set(dict.keys(m.regex)) == {"B_WORD"}
    assert m.regex["B_WORD"] is m.regex["B_WORD"]  # compiled once
    with pytest.raises(KeyError):
        m.regex["NO_SUCH_RULE"]


@pytest.mark.skipif(matcher.hyperscan is None, reason="hyperscan not installed")
def test_damaged_cache_is_recompiled(tmp_path):
    first = matcher.Matcher(_rules(), str(tmp_path), background=False)
    open(first.cache_path, "wb").write(b"garbage")
    before = matcher.compile_count
    again = matcher.Matcher(_rules(), str(tmp_path), background=False)
    assert again.ready and matcher.compile_count == before + 1


def test_measured_scores_come_after_the_stock_rules_and_before_local_cf(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "20_stock.cf").write_text("header KHOP_UNSUB_EMAIL Subject =~ /unsub/\nscore KHOP_UNSUB_EMAIL 1.0\n"
                                       "header RDNS_NONE Subject =~ /rdns/\nscore RDNS_NONE 2.4\n"
                                       "header MONEY_NOHTML Subject =~ /money/\nscore MONEY_NOHTML 1.0\n")
    (tmp_path / "local.cf").write_text("score MONEY_NOHTML 3.0\n")
    cfg = config.load(None, {"state_dir": str(tmp_path / "state"), "scan.spamassassin.enabled": True,
                             "scan.spamassassin.rules_dirs": [str(rules)],
                             "scan.spamassassin.local_cf": str(tmp_path / "local.cf"),
                             "scan.spamassassin.score_scale": 1.0})
    sa = SpamAssassinCheck(cfg, background_compile=False, use_hyperscan=False)
    assert not sa.rules.errors
    # Measured on the corpus: dropped (runs for metas, never emitted), halved...
    assert "KHOP_UNSUB_EMAIL" not in sa.defs
    assert sa.defs["RDNS_NONE"].score == pytest.approx(1.2)
    # ... and the site's local.cf still has the last word.
    assert sa.defs["MONEY_NOHTML"].score == pytest.approx(3.0)


def _ctx():
    return CheckContext(message=parse(MESSAGE), client=ClientInfo(addr="192.0.2.1", helo="x"),
                        mail_from="sales@bulk.example", rcpt_tos=["bob@example.net"], profile="inbound",
                        resolver=None)


@pytest.mark.skipif(matcher.hyperscan is None, reason="hyperscan not installed")
def test_while_compiling_one_message_at_a_time_runs_with_re_off_the_loop(tmp_path, monkeypatch):
    sa = SpamAssassinCheck(sa_config(tmp_path), background_compile=False)
    reference = {h.symbol for h in sa.scan(parse(MESSAGE), "sales@bulk.example")}
    assert "LOCAL_META" in reference
    seen = []
    scan = sa.scan

    release = threading.Event()

    def spy(*args, **kw):
        seen.append((threading.get_ident(), kw.get("hyperscan", True)))
        if kw.get("hyperscan") is False:
            release.wait(30)  # a slow scan with re: the second message arrives meanwhile
        return scan(*args, **kw)

    monkeypatch.setattr(sa, "scan", spy)
    sa.matcher._done.clear()  # as while the databases compile
    try:
        async def two_at_once():
            first = asyncio.ensure_future(sa.run(_ctx()))
            await asyncio.sleep(0)  # the first is on its thread
            second = await sa.run(_ctx())
            release.set()
            return await first, second, await sa.run(_ctx())  # the thread is free again

        first, second, third = asyncio.run(two_at_once())
    finally:
        sa.matcher._done.set()
    # The first ran with re alone on another thread, with the same hits; the
    # second, meanwhile, went without the rules, and says so.
    assert {h.symbol for h in first} == reference | {"SPAMASSASSIN_COMPILING"}
    assert [h.options for h in first if h.symbol == "SPAMASSASSIN_COMPILING"] == [("re",)]
    assert [(h.symbol, h.options) for h in second] == [("SPAMASSASSIN_COMPILING", ("skipped",))]
    assert {h.symbol for h in third} == reference | {"SPAMASSASSIN_COMPILING"}
    assert len(seen) == 2 and all(t != threading.get_ident() and hs is False for t, hs in seen)
    # Compiled: on the loop, with the databases, and no such symbol.
    assert {h.symbol for h in asyncio.run(sa.run(_ctx()))} == reference
    assert seen[-1] == (threading.get_ident(), True)


MIME_CF = r"""
mimeheader LOCAL_GIF_PART      Content-Type =~ /^image\/gif\b/i
score      LOCAL_GIF_PART      1.0
mimeheader LOCAL_RAW_FOLD      Content-Type:raw =~ /^image\/gif;\n {8}name="[^"]+"$/s
score      LOCAL_RAW_FOLD      1.0
mimeheader LOCAL_NO_PDF        Content-Type !~ /application\/pdf/
score      LOCAL_NO_PDF        0.5
mimeheader LOCAL_ROOT_MIXED    Content-Type =~ /multipart\/mixed/
score      LOCAL_ROOT_MIXED    0.5
mimeheader LOCAL_NESTED_CID    Content-ID =~ /^<inner\@example>$/
score      LOCAL_NESTED_CID    0.5
mimeheader LOCAL_DECODED_NAME  Content-Disposition =~ /Rechnung für März/
score      LOCAL_DECODED_NAME  0.5
meta       LOCAL_GIF_META      LOCAL_GIF_PART && LOCAL_NO_PDF
score      LOCAL_GIF_META      2.0
mimeheader LOCAL_BAD_MOD       Content-Type:addr =~ /x/
"""

MIME_MESSAGE = (
    b"From: a@example.org\r\nTo: b@example.net\r\nSubject: pictures\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=out\r\n\r\n"
    b"--out\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
    b"--out\r\nContent-Type: image/gif;\r\n        name=\"pic.gif\"\r\nContent-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=\"=?utf-8?q?Rechnung_f=C3=BCr_M=C3=A4rz?=.gif\"\r\n\r\n"
    b"R0lGODlhAQABAAAAACw=\r\n"
    b"--out\r\nContent-Type: message/rfc822\r\n\r\n"
    b"From: c@example.org\r\nSubject: inner\r\nContent-Type: text/plain\r\nContent-ID: <inner@example>\r\n\r\n"
    b"inner body\r\n"
    b"--out--\r\n"
)


def test_mimeheader_rules_read_every_mime_entity(tmp_path):
    sa = SpamAssassinCheck(sa_config(tmp_path, MIME_CF), background_compile=False)
    assert "mimeheader modifier" in sa.rules.skipped["LOCAL_BAD_MOD"]
    fired = {h.symbol for h in sa.scan(parse(MIME_MESSAGE), "a@example.org")}
    assert {"LOCAL_GIF_PART", "LOCAL_RAW_FOLD", "LOCAL_NO_PDF", "LOCAL_ROOT_MIXED", "LOCAL_NESTED_CID",
            "LOCAL_DECODED_NAME", "LOCAL_GIF_META"} <= fired
    plain = (b"From: a@example.org\r\nTo: b@example.net\r\nSubject: x\r\n"
             b"Content-Type: application/pdf; name=\"x.pdf\"\r\n\r\nJVBERi0=\r\n")
    fired = {h.symbol for h in sa.scan(parse(plain), "a@example.org")}
    assert not fired & {"LOCAL_GIF_PART", "LOCAL_RAW_FOLD", "LOCAL_NO_PDF", "LOCAL_ROOT_MIXED",
                        "LOCAL_GIF_META"}
