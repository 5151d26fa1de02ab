"""Bayes: tokenizer tables, the classifier's math on hand-made sets, storage on SQLite
(learn twice, relearn as the other class, expiry), the symbols through the engine,
and the learn / bayes commands as subprocesses."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import subprocess
import sys
import time

import pytest

from smtpproxy.common import config as config_mod
from smtpproxy.common.config import ConfigError, StoreConfig
from smtpproxy.common.store.sqlite import SQLiteStore
from smtpproxy.scan.bayes.classifier import (
    Classification,
    chi2q,
    classify,
    combine,
    familiarity,
    token_probability,
)
from smtpproxy.scan.bayes.storage import (
    ALREADY,
    LEARNED,
    MOVED,
    BayesStore,
    message_id,
    owner_of,
    recipients_owner,
)
from smtpproxy.scan.bayes.tokenizer import is_form, tokenize
from smtpproxy.scan.checks.base import CheckContext
from smtpproxy.scan.checks.bayes import BayesCheck
from smtpproxy.scan.engine import Engine
from smtpproxy.scan.message import parse
from smtpproxy.transaction import ClientInfo

CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "corpora")


def msg(subject: str, body: str, sender: str = "a@example.com", extra: str = "",
        ctype: str = "text/plain; charset=utf-8") -> bytes:
    return (f"From: {sender}\r\nTo: b@example.org\r\nSubject: {subject}\r\n{extra}"
            f"Content-Type: {ctype}\r\n\r\n{body}\r\n").encode()


# ---------------------------------------------------------------- tokenizer

@pytest.mark.parametrize("label, raw, present, absent", [
    ("body words lower-cased, with pairs",
     msg("Hi", "Click HERE now"), ["click", "here", "click here", "here now"], ["Click"]),
    ("short words dropped", msg("x", "an ox is big"), ["big"], ["an", "ox", "is"]),
    ("long runs become skip tokens", msg("x", "a" * 45), ["skip:a 40"], ["a" * 45]),
    ("Chinese, Japanese, Korean as character pairs",
     msg("x", "課程教學 mba課程 한국"),
     ["課程", "程教", "教學", "mba", "한국"],
     ["課程教學", "mba課程"]),
    ("subject words prefixed", msg("Cheap Pills", "x"), ["subject:cheap", "subject:pills"], []),
    ("from address and domain", msg("x", "y", sender="Bob <Bob@Mail.Example.com>"),
     ["from:bob@mail.example.com", "from_domain:mail.example.com", "from_name:bob"], []),
    ("url hosts and parents",
     msg("x", "see http://www.shop.example.net/buy?x=1"),
     ["url:www.shop.example.net", "url:shop.example.net", "url:example.net", "url_tld:net",
      "url_path:buy"], []),
    ("html rendered to text", msg("x", "<p>Buy <b>now</b></p><style>p{}</style>",
                                  ctype="text/html"), ["buy", "now", "shape:html-only"], ["style"]),
    ("received hosts", msg("x", "y", extra="Received: from mx.example.org ([192.0.2.1]) by "
                                          "smtp.example.com\r\n"),
     ["received:mx.example.org", "received:example.org", "received:ip 192.0", "received:hops 1"],
     []),
    ("presence headers", msg("x", "y", extra="List-Id: <l.example>\r\n"),
     ["header:list-id:yes", "header:in-reply-to:no"], []),
    ("latin-1 body decoded", ("Subject: x\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\n"
                              "caf\xe9 cr\xe8me\r\n").encode("latin-1"), ["café", "crème"], []),
])
def test_tokenizer(label, raw, present, absent):
    tokens = tokenize(parse(raw))
    for token in present:
        assert token in tokens, label
    for token in absent:
        assert token not in tokens, label


def test_tokenizer_bounded_and_distinct():
    raw = msg("x", " ".join(f"word{i}" for i in range(5000)))
    tokens = tokenize(parse(raw), max_tokens=300)
    assert len(tokens) == 300 == len(set(tokens))


def test_tokenizer_survives_every_corpus_charset():
    spam_ham = os.path.join(CORPUS, "spam-ham", "spamassassin-public-corpus")
    tdata = os.path.join(CORPUS, "spamassassin-t-data")
    seen = 0
    for top in (spam_ham, tdata):
        for root, _, names in os.walk(top):
            for name in sorted(names)[:400]:
                with open(os.path.join(root, name), "rb") as f:
                    tokenize(parse(f.read()))
                seen += 1
    assert seen > 100


@pytest.mark.parametrize("token, form", [
    ("html:font.color", True), ("content-type:text/html", True), ("charset:gb2312", True),
    ("header:list-id:yes", True), ("shape:html-only", True), ("attachments:2", True),
    ("attachment:.pdf", True), ("received:hops 3", True), ("reply_to:<none>", True),
    ("subject:<none>", True),
    # content: what the message says and who sent it
    ("viagra", False), ("click here", False), ("subject:cheap", False), ("from_domain:example.com", False),
    ("received:mail.example.com", False), ("received:ip 192.0", False), ("url:example.com", False),
    ("x-mailer:outlook express 6.00", False), ("skip:a 40", False),
])
def test_is_form(token, form):
    assert is_form(token) is form


def test_every_token_kind_is_told_form_or_content():
    # The form tokens of a real message are exactly the structure ones.
    raw = msg("Offer", "<html><body><font color=red>Buy</font></body></html>",
              extra="Received: from a.example.net by b.example.org\r\n", ctype="text/html")
    tokens = tokenize(parse(raw))
    assert {t for t in tokens if is_form(t)} >= {"html:font.color", "content-type:text/html",
                                                   "received:hops 1", "shape:html-only"}
    assert not any(is_form(t) for t in ("buy", "subject:offer", "received:a.example.net") if t in tokens)


# ---------------------------------------------------------------- classifier

def test_token_probability():
    assert token_probability(0, 0, 10, 10) == 0.5
    # Seen in every spam and no ham: towards 1, held back by little evidence.
    one = token_probability(1, 0, 10, 10)
    many = token_probability(10, 0, 10, 10)
    assert 0.5 < one < many < 1.0
    # Robinson's s = 1: one sighting is a weak clue, ten a strong one.
    assert one == pytest.approx((1.0 * 0.5 + 1 * 1.0) / 2.0)
    assert many == pytest.approx((1.0 * 0.5 + 10 * 1.0) / 11.0)
    # Equal rates: 0.5 whatever the counts; class sizes are normalised.
    assert token_probability(5, 50, 10, 100) == pytest.approx(0.5)
    assert token_probability(0, 3, 10, 10) < 0.5


def test_chi2q_known_values():
    # chi-square survival with 2 d.o.f. is exp(-x/2).
    assert chi2q(2.0, 2) == pytest.approx(math.exp(-1.0))
    assert chi2q(0.0, 10) == 1.0
    # The mean of chi-square(v) is v: the survival there is near one half.
    assert 0.4 < chi2q(20.0, 20) < 0.5


@pytest.mark.parametrize("x2, v, expected", [
    # Reference values: the same Poisson sum in 60-digit decimal arithmetic.
    (1840.0, 2000, 0.9952),     # e^-920 alone underflows: a sum of zeros would say 0
    (2000.0, 2000, 0.4958),
    (2400.0, 2000, 1.288e-9),
    (5000.0, 2000, 2.646e-256),
])
def test_chi2q_many_tokens(x2, v, expected):
    # A message gives up to max_tokens telling tokens: 2000 degrees of freedom.
    assert chi2q(x2, v) == pytest.approx(expected, rel=1e-3)


def test_combine_many_weak_clues_stays_unsure():
    # A thousand tokens leaning 6 to 4 are weak evidence, not a certainty
    # (with e^-m underflowing, the spam side read 0 and this said 1.0) ...
    assert 0.5 <= combine([0.6] * 1000) < 0.8
    # ... a thousand leaning 99 to 1 are.
    assert combine([0.99] * 1000) > 0.999
    assert combine([0.01] * 1000) < 0.001


def test_combine():
    assert combine([]) == 0.5
    assert combine([0.99] * 20) > 0.99
    assert combine([0.01] * 20) < 0.01
    assert combine([0.99] * 10 + [0.01] * 10) == pytest.approx(0.5)


def test_classify_uses_only_telling_tokens():
    counts = {"viagra": (10, 0), "meeting": (0, 10), "the": (10, 10), "rare": (1, 1)}
    result = classify(counts, 10, 10)
    assert result.used == 2
    assert result.probability == pytest.approx(0.5)
    spammy = classify({"viagra": (10, 0), "cheap": (9, 1), "the": (10, 10)}, 10, 10)
    assert spammy.probability > 0.9 and spammy.used == 2
    assert spammy.clues[0][0] == "viagra"


def test_classify_reports_how_much_of_the_message_is_known():
    # "once" was learned in one message only: a sighting, not knowledge.
    counts = {"viagra": (10, 0), "meeting": (0, 3), "once": (1, 0)}
    result = classify(counts, 10, 10, n_tokens=8)
    assert (result.tokens, result.known) == (8, 2)
    assert result.coverage == pytest.approx(0.25)
    assert classify({}, 10, 10, n_tokens=0).coverage == 0.0


@pytest.mark.parametrize("probability, coverage, known, spam_clues, ham_clues, expected", [
    (0.99, 0.9, 200, 0, 0, 1.0),      # familiar: the verdict counts in full
    (0.99, 0.6, 30, 0, 0, 1.0),       # at the familiar edges
    (0.99, 0.3, 200, 0, 0, 0.0),      # at unfamiliar_coverage: not at all
    (0.99, 0.1, 200, 0, 0, 0.0),
    (0.99, 0.45, 200, 0, 0, 0.5),     # half-way between the two coverages
    (0.99, 0.9, 15, 0, 0, 0.5),       # familiar share, but only half the known tokens it takes
    (0.99, 0.45, 15, 0, 0, 0.25),     # both
    # Padded with one-off words, yet known as spam: its strong spam clues count ...
    (0.99, 0.1, 200, 30, 0, 1.0),
    (0.99, 0.1, 200, 15, 0, 0.5),
    (0.99, 0.45, 200, 6, 0, 0.5),     # ... when they say more than the share
    # ... but only for the verdict they support.
    (0.99, 0.1, 200, 0, 30, 0.0),
    (0.01, 0.1, 200, 0, 30, 1.0),
    (0.01, 0.1, 200, 30, 0, 0.0),
])
def test_familiarity(probability, coverage, known, spam_clues, ham_clues, expected):
    tokens = round(known / coverage)
    result = Classification(probability, known, (), tokens, known, spam_clues, ham_clues)
    assert familiarity(result, 0.6, 0.3, 30, 30) == pytest.approx(expected, abs=0.01)


def test_classify_counts_content_and_strong_clues():
    # Form tokens (markup, MIME, header presence) are known for any mail and
    # say nothing of whether the training knows this message.
    counts = {"html:font": (50, 0), "content-type:text/html": (50, 2), "reply_to:<none>": (40, 40),
              "viagra": (20, 0), "cheap": (9, 1), "meeting": (0, 12), "once": (1, 0)}
    result = classify(counts, 50, 50, n_tokens=10)
    assert (result.tokens, result.known) == (10, 3)   # viagra, cheap, meeting; once is a sighting
    assert (result.spam_clues, result.ham_clues) == (1, 1)   # cheap is 9 to 1 in 10: f = 0.86
    # Every telling token votes, form tokens included.
    assert result.used == 6


# ---------------------------------------------------------------- storage (SQLite)

def run(coro):
    return asyncio.run(coro)


async def _sqlite(tmp_path) -> SQLiteStore:
    store = SQLiteStore(StoreConfig(), str(tmp_path / "state.db"))
    await store.open()
    return store


SPAM = [msg("Cheap pills", f"Buy cheap pills now, best price offer {i}") for i in range(3)]
HAM = [msg("Meeting notes", f"The project meeting moved to Tuesday, agenda item {i}") for i in range(3)]


def test_learn_twice_does_nothing_and_relearn_moves(tmp_path):
    async def main():
        store = await _sqlite(tmp_path)
        bayes = BayesStore(store, 3600)
        raw = SPAM[0]
        tokens = tokenize(parse(raw))
        mid = message_id(raw)
        assert await bayes.learn(mid, tokens, "spam") == LEARNED
        assert await bayes.learn(mid, tokens, "spam") == ALREADY
        totals, counts = await bayes.token_counts(["cheap", "pills"])
        assert (totals.nspam, totals.nham) == (1, 0)
        assert counts == {"cheap": (1, 0), "pills": (1, 0)}
        assert await bayes.learn(mid, tokens, "ham") == MOVED
        totals, counts = await bayes.token_counts(["cheap", "pills"])
        assert (totals.nspam, totals.nham) == (0, 1)
        assert counts == {"cheap": (0, 1), "pills": (0, 1)}
        assert await bayes.learned_as(mid) == "ham"
        assert await bayes.forget(mid, tokens)
        totals, counts = await bayes.token_counts(["cheap"])
        assert (totals.nspam, totals.nham, counts) == (0, 0, {})
        await store.close()

    run(main())


def test_message_id_ignores_headers():
    assert message_id(b"Subject: a\r\n\r\nbody") == message_id(b"Subject: b\nX: y\n\nbody")
    assert message_id(b"Subject: a\r\n\r\nbody") != message_id(b"Subject: a\r\n\r\nother")


def test_learn_many_sums_a_batch(tmp_path):
    async def main():
        store = await _sqlite(tmp_path)
        bayes = BayesStore(store, 3600)
        items = [(message_id(r), tokenize(parse(r))) for r in SPAM]
        assert await bayes.learn_many(items, "spam") == [LEARNED] * 3
        assert await bayes.learn_many(items, "spam") == [ALREADY] * 3
        totals, counts = await bayes.token_counts(["cheap", "offer"])
        assert totals.nspam == 3 and counts == {"cheap": (3, 0), "offer": (3, 0)}
        await store.close()

    run(main())


def test_tokens_expire_when_not_learned_again(tmp_path):
    """The bound: a token no learned message carried for token_ttl_s is gone;
    one learned again meanwhile stays."""
    async def main():
        store = await _sqlite(tmp_path)
        short = BayesStore(store, 0.5)
        await short.learn(message_id(SPAM[0]), ["old-token", "kept"], "spam")
        await asyncio.sleep(0.3)
        await short.learn(message_id(SPAM[1]), ["kept"], "spam")
        await asyncio.sleep(0.4)
        totals, counts = await short.token_counts(["old-token", "kept"])
        assert counts == {"kept": (2, 0)}
        assert totals.nspam == 2
        assert await store.purge(time.time()) >= 1  # the expired rows really leave the file
        await store.close()

    run(main())


# ---------------------------------------------------------------- through the engine

def _cfg(tmp_path, **bayes):
    overrides = {f"scan.bayes.{k}": v for k, v in {"min_learned": 3, "min_tokens": 3, **bayes}.items()}
    return config_mod.load(None, {"state_dir": str(tmp_path), **overrides})


async def _scan(cfg, store, raw, rcpt_tos=()):
    engine = Engine(cfg.scan, [BayesCheck(cfg)])
    ctx = CheckContext(message=parse(raw), client=ClientInfo(addr=None, helo=None, name=None),
                       mail_from="", rcpt_tos=list(rcpt_tos), profile="inbound", resolver=None,
                       store=store)
    return await engine.scan(ctx)


def test_symbols_through_the_engine_once_the_minimum_is_reached(tmp_path):
    cfg = _cfg(tmp_path, familiar_tokens=3)
    spam_probe = msg("Cheap pills", "Buy cheap pills now, best price offer today")
    ham_probe = msg("Meeting notes", "The project meeting moved to Tuesday, see the agenda")

    async def main():
        store = await _sqlite(tmp_path)
        bayes = BayesStore(store, 3600)
        await bayes.learn_many([(message_id(r), tokenize(parse(r))) for r in SPAM[:2]], "spam")
        await bayes.learn_many([(message_id(r), tokenize(parse(r))) for r in HAM], "ham")
        silent = await _scan(cfg, store, spam_probe)  # 2 spam < min_learned 3
        assert silent.symbols == {}
        await bayes.learn(message_id(SPAM[2]), tokenize(parse(SPAM[2])), "spam")
        spam = await _scan(cfg, store, spam_probe)
        ham = await _scan(cfg, store, ham_probe)
        await store.close()
        return spam, ham

    spam, ham = run(main())
    sym = spam.symbols["BAYES_SPAM"]
    probability = float(sym.options[0])
    assert probability >= 0.9
    assert sym.options[2].startswith("coverage=") and sym.options[3].startswith("known=")
    # The score scales with the confidence; these probes are worded as the
    # training and long enough (familiar_tokens 3), so familiarity is 1.
    full = Engine(cfg.scan, [BayesCheck(cfg)]).symbols["BAYES_SPAM"].score
    assert sym.score == pytest.approx(full * (probability - 0.5) * 2, abs=0.01)
    assert "BAYES_HAM" in ham.symbols and ham.symbols["BAYES_HAM"].score < 0


def test_unfamiliar_mail_weighs_less_or_nothing(tmp_path):
    """The same spam clues in a message mostly made of words the training
    never saw: the verdict is as sure, its score smaller; in a message the
    training hardly knows at all it is shown (BAYES_UNFAMILIAR) but not scored."""
    cfg = _cfg(tmp_path, familiar_tokens=3)
    known = "Buy cheap pills now, best price offer today"
    partly = msg("Cheap pills", known + " " + " ".join(f"zq{i}x" for i in range(14)))
    hardly = msg("Cheap pills", known + " " + " ".join(f"zq{i}x" for i in range(60)))

    async def main():
        store = await _sqlite(tmp_path)
        bayes = BayesStore(store, 3600)
        await bayes.learn_many([(message_id(r), tokenize(parse(r))) for r in SPAM], "spam")
        await bayes.learn_many([(message_id(r), tokenize(parse(r))) for r in HAM], "ham")
        results = [await _scan(cfg, store, raw) for raw in (msg("Cheap pills", known), partly, hardly)]
        await store.close()
        return results

    familiar, partial, unfamiliar = run(main())
    full = familiar.symbols["BAYES_SPAM"]
    some = partial.symbols["BAYES_SPAM"]
    assert float(some.options[0]) >= 0.9
    assert 0 < some.score < full.score
    coverage = float(some.options[2].removeprefix("coverage="))
    expected = 10.0 * (float(some.options[0]) - 0.5) * 2 * (coverage - 0.3) / 0.3
    # The option shows the coverage to two decimals: 0.005 is 0.17 points here.
    assert some.score == pytest.approx(expected, abs=0.17)
    assert "BAYES_SPAM" not in unfamiliar.symbols
    shown = unfamiliar.symbols["BAYES_UNFAMILIAR"]
    assert shown.score == 0 and shown.options[0] == "BAYES_SPAM"
    assert float(shown.options[3].removeprefix("coverage=")) <= 0.3


def test_spam_known_as_spam_counts_despite_one_off_words(tmp_path):
    """The same padded message as above, once the training has seen its clues
    in enough spam to make them strong: its strong clues say what the low
    share of known words does not, and the verdict counts in full."""
    cfg = _cfg(tmp_path, familiar_tokens=3, familiar_clues=5)
    known = "Buy cheap pills now, best price offer today"
    spam = [msg("Cheap pills", f"Buy cheap pills now, best price offer {i}") for i in range(6)]
    hardly = msg("Cheap pills", known + " " + " ".join(f"zq{i}x" for i in range(60)))

    async def main():
        store = await _sqlite(tmp_path)
        bayes = BayesStore(store, 3600)
        await bayes.learn_many([(message_id(r), tokenize(parse(r))) for r in spam], "spam")
        await bayes.learn_many([(message_id(r), tokenize(parse(r))) for r in HAM], "ham")
        result = await _scan(cfg, store, hardly)
        await store.close()
        return result

    sym = run(main()).symbols["BAYES_SPAM"]
    assert float(sym.options[2].removeprefix("coverage=")) <= 0.3   # hardly any of it known ...
    assert int(sym.options[4].removeprefix("clues=")) >= 5           # ... but known as spam
    assert sym.score == pytest.approx(10.0 * (float(sym.options[0]) - 0.5) * 2, abs=0.01)


@pytest.mark.parametrize("address, per_user, owner", [
    ("Alice@Example.COM", "user", "alice@example.com"),
    ("<alice@example.com>", "domain", "example.com"),
    ("alice@example.com.", "domain", "example.com"),
    ("alice@example.com", "off", ""),
    ("", "user", ""),
    # Characters that would break the key's hash tag or layout are hashed.
    ("we}ird:{x}@example.com", "user", "h-"),
    ("\u00e9l\u00e8ve@example.com", "user", "h-"),
])
def test_owner_of(address, per_user, owner):
    got = owner_of(address, per_user)
    assert got.startswith("h-") and len(got) == 26 if owner == "h-" else got == owner


def test_recipients_share_a_classifier_or_use_the_sites():
    assert recipients_owner(["a@x.org", "A@X.org"], "user") == "a@x.org"
    assert recipients_owner(["a@x.org", "b@x.org"], "user") == ""
    assert recipients_owner(["a@x.org", "b@x.org"], "domain") == "x.org"
    assert recipients_owner(["a@x.org", "b@y.org"], "domain") == ""
    assert recipients_owner([], "user") == ""


def test_per_user_classifier_once_ready_else_the_sites(tmp_path):
    """Alice taught her classifier the opposite of the site's: mail to her
    alone follows hers once it has min_learned of each class; mail to her and
    Bob, or before she taught enough, follows the site's."""
    cfg = _cfg(tmp_path, per_user="user")
    probe = msg("Cheap pills", "Buy cheap pills now, best price offer today")

    async def main():
        store = await _sqlite(tmp_path)
        site, alice = BayesStore(store, 3600), BayesStore(store, 3600, owner_of("alice@x.org", "user"))
        await site.learn_many([(message_id(r), tokenize(parse(r))) for r in SPAM], "spam")
        await site.learn_many([(message_id(r), tokenize(parse(r))) for r in HAM], "ham")
        await alice.learn_many([(message_id(r), tokenize(parse(r))) for r in SPAM], "ham")
        await alice.learn_many([(message_id(r), tokenize(parse(r))) for r in HAM[:2]], "spam")
        early = await _scan(cfg, store, probe, ["alice@x.org"])  # hers has 2 spam < 3
        await alice.learn(message_id(HAM[2]), tokenize(parse(HAM[2])), "spam")
        hers = await _scan(cfg, store, probe, ["Alice@X.org"])
        both = await _scan(cfg, store, probe, ["alice@x.org", "bob@x.org"])
        # The site's classifier did not learn what Alice taught hers.
        totals = await site.counts()
        await store.close()
        return early, hers, both, totals

    early, hers, both, totals = run(main())
    assert "BAYES_SPAM" in early.symbols and not any("user=" in o for o in early.symbols["BAYES_SPAM"].options)
    assert "BAYES_HAM" in hers.symbols and "user=alice@x.org" in hers.symbols["BAYES_HAM"].options
    assert "BAYES_SPAM" in both.symbols
    assert (totals.nspam, totals.nham) == (3, 3)


def test_an_untrained_classifier_is_not_asked_again_for_a_while(tmp_path, monkeypatch):
    """Until min_learned, a message costs no tokenizing and no store call; the
    check looks again after NOT_READY_RECHECK_S."""
    from smtpproxy.scan.checks import bayes as bayes_check

    cfg = _cfg(tmp_path)
    probe = msg("Cheap pills", "Buy cheap pills now, best price offer today")
    clock = [1000.0]
    monkeypatch.setattr(bayes_check, "_clock", lambda: clock[0])

    async def main():
        store = await _sqlite(tmp_path)
        lookups = []
        real_mget = store.mget

        async def counted_mget(keys):
            lookups.append(len(keys))
            return await real_mget(keys)

        store.mget = counted_mget
        check = BayesCheck(cfg)
        engine = Engine(cfg.scan, [check])

        async def scan():
            ctx = CheckContext(message=parse(probe), client=ClientInfo(addr=None, helo=None, name=None),
                               mail_from="", rcpt_tos=[], profile="inbound", resolver=None, store=store)
            return (await engine.scan(ctx)).symbols

        assert await scan() == {} and len(lookups) == 1
        bayes = BayesStore(store, 3600)
        await bayes.learn_many([(message_id(r), tokenize(parse(r))) for r in SPAM], "spam")
        await bayes.learn_many([(message_id(r), tokenize(parse(r))) for r in HAM], "ham")
        lookups.clear()
        assert await scan() == {} and lookups == []  # remembered as untrained
        clock[0] += bayes_check.NOT_READY_RECHECK_S
        assert "BAYES_SPAM" in await scan() and len(lookups) == 1
        await store.close()

    run(main())


def test_no_store_no_symbols(tmp_path):
    result = run(_scan(_cfg(tmp_path), None, SPAM[0]))
    assert result.symbols == {}


@pytest.mark.parametrize("key, value", [
    ("min_learned", 0), ("spam_threshold", 0.4), ("ham_threshold", 0.6), ("spam_threshold", 1.0),
    ("token_ttl_s", 0), ("autolearn_max_ratio", 0.5), ("autolearn_ham_score", 20.0),
    ("familiar_coverage", 1.5), ("unfamiliar_coverage", -0.1), ("unfamiliar_coverage", 0.7),
    ("familiar_tokens", 0),
])
def test_bad_bayes_keys_are_named(tmp_path, key, value):
    with pytest.raises(ConfigError) as exc:
        config_mod.load(None, {f"scan.bayes.{key}": value})
    assert f"scan.bayes.{key}" in str(exc.value)


def test_hit_weight_defaults_to_the_full_score():
    cfg = config_mod.load(None, {})
    engine = Engine(cfg.scan, [])
    from smtpproxy.scan.checks.base import Hit
    result = engine._score([Hit("BAYES_HAM", ("0.010",), 0.5), Hit("CHECK_ERROR", ("x",))])
    assert result.symbols["BAYES_HAM"].score == pytest.approx(engine.symbols["BAYES_HAM"].score / 2)
    assert result.symbols["CHECK_ERROR"].score == engine.symbols["CHECK_ERROR"].score


# ---------------------------------------------------------------- the commands

def smtpproxy(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SMTPPROXY_CONFIG": ""}
    env.pop("STATE_DIRECTORY", None)
    return subprocess.run([sys.executable, "-m", "smtpproxy.cli", *args], input=stdin,
                          capture_output=True, timeout=120, env=env,
                          cwd=os.path.join(os.path.dirname(__file__), "..", ".."))


def test_learn_cli_files_dir_stdin_and_stats(tmp_path):
    state = str(tmp_path / "state")
    spam_dir = tmp_path / "spam"
    spam_dir.mkdir()
    for i, raw in enumerate(SPAM):
        (spam_dir / f"{i}.eml").write_bytes(raw)
    out = smtpproxy("learn", "spam", "--state-dir", state, str(spam_dir))
    assert out.returncode == 0, out.stderr
    assert b"spam: 3 learned" in out.stdout
    assert b"now 3 spam and 0 ham learned" in out.stdout
    out = smtpproxy("learn", "spam", "--state-dir", state, str(spam_dir / "0.eml"))
    assert b"0 learned" in out.stdout and b"1 already learned" in out.stdout
    # From a sieve pipe: one message on stdin, moved from spam to ham.
    out = smtpproxy("learn", "ham", "--state-dir", state, "-", stdin=SPAM[0])
    assert out.returncode == 0 and b"1 moved from spam" in out.stdout
    out = smtpproxy("learn", "ham", "--state-dir", state, str(tmp_path / "missing"))
    assert out.returncode == 1 and b"missing" in out.stderr
    out = smtpproxy("bayes", "stats", "--state-dir", state)
    assert b"spam learned: 2" in out.stdout and b"ham learned: 1" in out.stdout
    # No progress bar when stderr is not a terminal.
    assert b"[#" not in out.stderr


def test_dump_restore_round_trip(tmp_path):
    state, other = str(tmp_path / "a"), str(tmp_path / "b")
    for i, raw in enumerate(SPAM + HAM):
        (tmp_path / f"{i}.eml").write_bytes(raw)
    smtpproxy("learn", "spam", "--state-dir", state, *(str(tmp_path / f"{i}.eml") for i in range(3)))
    smtpproxy("learn", "ham", "--state-dir", state, *(str(tmp_path / f"{i}.eml") for i in range(3, 6)))
    dump = tmp_path / "bayes.jsonl"
    out = smtpproxy("bayes", "dump", "--state-dir", state, "-o", str(dump))
    assert out.returncode == 0, out.stderr
    out = smtpproxy("bayes", "restore", "--state-dir", other, str(dump))
    assert out.returncode == 0, out.stderr
    a = smtpproxy("bayes", "stats", "--state-dir", state).stdout.splitlines()[1:]
    b = smtpproxy("bayes", "stats", "--state-dir", other).stdout.splitlines()[1:]
    assert a == b and b"spam learned: 3" in a[1]
    # Restored ids still know the messages.
    out = smtpproxy("learn", "ham", "--state-dir", other, str(tmp_path / "3.eml"))
    assert b"1 already learned" in out.stdout


def test_learn_and_stats_for_one_user(tmp_path):
    state = str(tmp_path / "state")
    (tmp_path / "0.eml").write_bytes(SPAM[0])
    out = smtpproxy("learn", "spam", "--state-dir", state, "--user", "alice@x.org", str(tmp_path / "0.eml"))
    assert out.returncode == 64 and b"scan.bayes.per_user" in out.stderr
    conf = tmp_path / "c.toml"
    conf.write_text('[scan.bayes]\nper_user = "domain"\n')
    out = smtpproxy("learn", "spam", "-c", str(conf), "--state-dir", state, "--user", "Alice@X.org",
                    str(tmp_path / "0.eml"))
    assert out.returncode == 0, out.stderr
    assert b"spam for x.org: 1 learned" in out.stdout
    mine = smtpproxy("bayes", "stats", "-c", str(conf), "--state-dir", state, "--user", "bob@x.org")
    assert b"classifier: x.org" in mine.stdout and b"spam learned: 1" in mine.stdout
    assert b"token keys: 0 spam" not in mine.stdout
    site = smtpproxy("bayes", "stats", "-c", str(conf), "--state-dir", state)
    assert b"classifier: site" in site.stdout and b"spam learned: 0" in site.stdout
    assert b"user and domain classifiers: 1" in site.stdout
    # Dump and restore carry every classifier.
    dump = tmp_path / "all.jsonl"
    assert smtpproxy("bayes", "dump", "--state-dir", state, "-o", str(dump)).returncode == 0
    other = str(tmp_path / "other")
    assert smtpproxy("bayes", "restore", "--state-dir", other, str(dump)).returncode == 0
    again = smtpproxy("bayes", "stats", "-c", str(conf), "--state-dir", other, "--user", "x.org")
    assert again.stdout.splitlines()[1:] == mine.stdout.splitlines()[1:]


def test_store_down_is_a_tempfail_for_pipes(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[store]\nurl = "redis://127.0.0.1:1/0"\ntimeout_s = 0.5\n')
    out = smtpproxy("learn", "spam", "-c", str(cfg), "-", stdin=SPAM[0])
    assert out.returncode == 75 and b"store unusable" in out.stderr


def test_dataclass_defaults_documented():
    names = {f.name for f in dataclasses.fields(config_mod.BayesConfig)}
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "conf", "smtpproxy.toml")) as f:
        text = f.read()
    for name in names:
        assert f"# {name} =" in text


# ---------------------------------------------------------------- autolearn

def _result(score: float, bayes: float = 0.0, forced: str | None = None):
    from smtpproxy.scan.engine import ScanResult, SymbolResult
    symbols = {"X": SymbolResult("X", score - bayes, ())}
    if bayes:
        symbols["BAYES_SPAM"] = SymbolResult("BAYES_SPAM", bayes, ())
    return ScanResult(score, 15.0, "no action", symbols, forced)


@pytest.mark.parametrize("label, result, profile, expected", [
    ("reject-level score: spam", _result(16.0), "inbound", "spam"),
    ("clearly negative: ham", _result(-2.0), "inbound", "ham"),
    ("in between: nothing", _result(5.0), "inbound", None),
    ("Bayes' own score does not count", _result(16.0, bayes=7.5), "inbound", None),
    ("outbound mail is never learned", _result(16.0), "outbound", None),
    ("a forced action is not learned", _result(16.0, forced="GTUBE"), "inbound", None),
])
def test_autolearn_rules(label, result, profile, expected):
    from smtpproxy.scan.bayes.autolearn import autolearn_class
    cfg = dataclasses.replace(config_mod.BayesConfig(), autolearn=True)
    assert autolearn_class(cfg, result, profile) == expected, label
    off = config_mod.BayesConfig()
    assert autolearn_class(off, result, profile) is None


def test_autolearn_through_the_hook_with_class_balance(tmp_path):
    """Spam is autolearned until it outweighs ham by autolearn_max_ratio."""
    from smtpproxy.scan.hook import EngineHook
    from smtpproxy.transaction import Transaction

    cfg = config_mod.load(None, {"state_dir": str(tmp_path), "scan.bayes.autolearn": True,
                                 "scan.bayes.min_learned": 1, "scan.bayes.autolearn_max_ratio": 2.0,
                                 "scan.scores": {"MISSING_MID": 20.0}})
    from smtpproxy.scan.checks.headers import HeadersCheck

    async def main():
        store = await _sqlite(tmp_path)
        hook = EngineHook(cfg, Engine(cfg.scan, [HeadersCheck(), BayesCheck(cfg)]), store, None, "mx")
        for i in range(4):  # no Message-ID: 20 points, spam
            txn = Transaction("s", "l", "inbound", ClientInfo(), "a@example.com", [], ["b@example.org"],
                              [[]], msg("Cheap", f"pills number {i}"))
            await hook.scan(txn)
        counts = await BayesStore(store, 3600).counts()
        await store.close()
        return counts

    counts = run(main())
    # ham 0 counts as min_learned 1; ratio 2: the third spam would be 3 > 2 * 1.
    assert (counts.nspam, counts.nham) == (2, 0)


def test_scan_command_classifies_with_the_store_and_creates_none(tmp_path):
    import json
    conf = tmp_path / "c.toml"
    conf.write_text("[scan.bayes]\nmin_learned = 2\nmin_tokens = 3\n")
    state = tmp_path / "state"
    for i, raw in enumerate(SPAM + HAM):
        (tmp_path / f"{i}.eml").write_bytes(raw)
    smtpproxy("learn", "spam", "-c", str(conf), "--state-dir", str(state),
              *(str(tmp_path / f"{i}.eml") for i in range(3)))
    smtpproxy("learn", "ham", "-c", str(conf), "--state-dir", str(state),
              *(str(tmp_path / f"{i}.eml") for i in range(3, 6)))
    probe = tmp_path / "probe.eml"
    probe.write_bytes(msg("Cheap pills", "Buy cheap pills now, best price offer today"))
    out = smtpproxy("scan", "-c", str(conf), "--state-dir", str(state), "--json", str(probe))
    assert out.returncode == 0, out.stderr
    assert "BAYES_SPAM" in json.loads(out.stdout)["symbols"]
    fresh = tmp_path / "fresh"
    out = smtpproxy("scan", "-c", str(conf), "--state-dir", str(fresh), "--json", str(probe))
    assert out.returncode == 0 and "BAYES_SPAM" not in json.loads(out.stdout)["symbols"]
    assert not fresh.exists()
