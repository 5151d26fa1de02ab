"""Scan settings per listener profile: which checks run, which actions the score may pick."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import pytest

from smtpproxy.common import config
from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.engine import Engine, SymbolDef, load_symbols
from smtpproxy.scan.hook import EngineHook, build_engine
from smtpproxy.scan.message import parse
from smtpproxy.transaction import ClientInfo, Transaction

SYMBOLS = {
    "SPAMMY": SymbolDef(9.0, "s"), "GREY": SymbolDef(4.5, "g"), "HEADERISH": SymbolDef(6.5, "h"),
    "SPF_FAIL": SymbolDef(1.0, "f"), "SPF_DNSFAIL": SymbolDef(0.0, "d"),
    "FORCE": SymbolDef(0.0, "f", "reject"), "FORCE_GREY": SymbolDef(0.0, "fg", "greylist"),
    "ANSWER": SymbolDef(-1.0, "a", skip_greylist=True),
    "CHECK_TIMEOUT": SymbolDef(0.0, "t"), "CHECK_ERROR": SymbolDef(0.0, "e"),
}


class Fixed:
    after: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name, hits, after=()):
        self.name, self.hits, self.after = name, hits, tuple(after)
        self.symbols = tuple(h.symbol for h in hits)
        self.ran = False
        self.saw: dict = {}

    async def run(self, ctx):
        self.ran = True
        self.saw = dict(ctx.results)
        return list(self.hits)


def cfg(text: str = "", tmp_path=None) -> config.Config:
    if not text:
        return config.load(None)
    path = tmp_path / "c.toml"
    path.write_text(text)
    return config.load(str(path))


def ctx(profile: str) -> CheckContext:
    return CheckContext(message=parse(b"Subject: x\r\n\r\nbody\r\n"), client=ClientInfo(),
                        mail_from="", rcpt_tos=[], profile=profile, resolver=None)


def scan(checks, profile, c: config.Config | None = None):
    c = c or config.load(None)
    return asyncio.run(Engine(c.scan, checks, SYMBOLS).scan(ctx(profile)))


@pytest.mark.parametrize("label, hits, inbound, outbound", [
    ("spam by score", [Hit("SPAMMY")], "add header", "no action"),
    ("greylist level", [Hit("GREY")], "greylist", "no action"),
    ("DNS trouble", [Hit("SPF_DNSFAIL")], "soft reject", "no action"),
    ("a forcing symbol acts everywhere", [Hit("FORCE")], "reject", "reject"),
    ("a forced greylist without greylisting", [Hit("FORCE_GREY")], "greylist", "no action"),
    ("an answer is never greylisted", [Hit("GREY"), Hit("ANSWER"), Hit("ANSWER")], "no action",
     "no action"),
    ("an answer at greylist level after its credit", [Hit("HEADERISH"), Hit("ANSWER")],
     "no action", "no action"),
    ("an answer at add-header level", [Hit("SPAMMY"), Hit("ANSWER")], "add header", "no action"),
])
def test_outbound_default_acts_only_on_forcing_symbols(label, hits, inbound, outbound):
    assert scan([Fixed("x", hits)], "inbound").action == inbound, label
    result = scan([Fixed("x", hits)], "outbound")
    assert result.action == outbound, label
    assert result.profile == "outbound" and "profile=outbound" in result.summary()


def test_outbound_score_is_still_computed_and_logged():
    result = scan([Fixed("x", [Hit("SPAMMY"), Hit("SPF_FAIL")])], "outbound")
    assert result.score == 10.0 and "score=10.00" in result.summary()


def test_outbound_default_leaves_out_spf_dmarc_and_dnsbl():
    spf, dmarc = Fixed("spf", [Hit("SPF_FAIL")]), Fixed("dmarc", [], after=["spf"])
    dnsbl, headers = Fixed("dnsbl", [Hit("SPAMMY")]), Fixed("headers", [Hit("GREY")])
    result = scan([spf, dmarc, dnsbl, headers], "outbound")
    assert (spf.ran, dmarc.ran, dnsbl.ran, headers.ran) == (False, False, False, True)
    assert set(result.symbols) == {"GREY"}
    inbound = scan([spf, Fixed("dmarc", [], after=["spf"]), dnsbl, headers], "inbound")
    assert set(inbound.symbols) == {"SPF_FAIL", "SPAMMY", "GREY"}


def test_a_check_waiting_for_a_disabled_one_runs_without_its_results(tmp_path):
    c = cfg('[scan.profiles.inbound]\nchecks_disabled = ["spf"]\n', tmp_path)
    spf, dmarc = Fixed("spf", [Hit("SPF_FAIL")]), Fixed("dmarc", [Hit("GREY")], after=["spf"])
    result = scan([spf, dmarc], "inbound", c)
    assert not spf.ran and dmarc.ran and dmarc.saw == {"spf": []}
    assert set(result.symbols) == {"GREY"}


def test_enabled_list_runs_only_those(tmp_path):
    c = cfg('[scan.profiles.inbound]\nchecks_enabled = ["b"]\n', tmp_path)
    a, b = Fixed("a", [Hit("SPAMMY")]), Fixed("b", [Hit("GREY")])
    assert scan([a, b], "inbound", c).action == "greylist" and not a.ran


def test_profile_thresholds_override_the_global_ones(tmp_path):
    c = cfg("[scan.actions]\nreject = 30.0\n"
            "[scan.profiles.inbound]\nactions = { reject = 9.0, greylist = 0.0 }\n"
            "[scan.profiles.outbound]\nscore_actions = true\n", tmp_path)
    assert scan([Fixed("x", [Hit("SPAMMY")])], "inbound", c).action == "reject"
    assert scan([Fixed("x", [Hit("GREY")])], "inbound", c).action == "no action"
    # Outbound with score actions on: [scan.actions] (reject 30), still no greylisting.
    assert scan([Fixed("x", [Hit("SPAMMY")])], "outbound", c).action == "add header"
    assert scan([Fixed("x", [Hit("GREY")])], "outbound", c).action == "no action"


def test_greylisting_can_be_turned_off_for_inbound(tmp_path):
    c = cfg("[scan.profiles.inbound]\ngreylist = false\n", tmp_path)
    assert scan([Fixed("x", [Hit("GREY")])], "inbound", c).action == "no action"


@pytest.mark.parametrize("text, key", [
    ('[scan.profiles.inbound]\nchecks_disabled = ["spff"]', "scan.profiles.inbound.checks_disabled[0]"),
    ('[scan.profiles.outbound]\nchecks_enabled = ["gtube", "nope"]',
     "scan.profiles.outbound.checks_enabled[1]"),
    ("[scan.profiles.inbound]\nactions = { spam = 3.0 }", "scan.profiles.inbound.actions.spam"),
    ("[scan.profiles.inbound]\nactions = { reject = -1.0 }", "scan.profiles.inbound.actions.reject"),
    ("[scan.profiles.inbound]\ngreylist = 'no'", "scan.profiles.inbound.greylist"),
    ("[scan.profiles.sideways]\ngreylist = false", "scan.profiles.sideways"),
])
def test_bad_profile_settings_name_the_key(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as err:
        build_engine(config.load(str(path)))
    assert err.value.key == key


def test_shipped_symbols_force_reject_for_gtube_and_a_virus():
    table = load_symbols(config.load(None).scan)
    assert table["GTUBE"].force_action == "reject"


MESSAGE = (b"X-Spam-Status: Yes, forged by the sender\r\nAuthentication-Results: mx.example.test; "
           b"spf=pass\r\nSubject: Hello\r\n\r\nbody\r\n")


def test_outbound_mail_gets_no_result_headers_but_loses_forged_ones():
    c = config.load(None)
    hook = EngineHook(c, Engine(c.scan, [Fixed("x", [Hit("SPAMMY")])], SYMBOLS), None, None,
                      "mx.example.test")

    def verdict(profile):
        return asyncio.run(hook.scan(Transaction(
            session_id="S", listener=profile, profile=profile, client=ClientInfo(),
            mail_from="a@example.org", mail_options=[], rcpt_tos=["b@example.net"],
            rcpt_options=[[]], content=MESSAGE)))

    out = verdict("outbound")
    assert out.action == "accept" and out.add_headers == []
    assert "X-Spam-Status" in out.remove_headers and out.remove_matching
    assert "action=no action" in out.summary and "score=9.00" in out.summary
    inbound = verdict("inbound")
    assert ("X-Spam", "Yes") in inbound.add_headers
