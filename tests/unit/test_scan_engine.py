"""The engine (scores, actions, timeouts, ordering) and the verdict (headers, greylisting)."""

from __future__ import annotations

import asyncio
import re
from typing import ClassVar

import pytest

from smtpproxy.common import config
from smtpproxy.common.store import open_store
from smtpproxy.headers import prepend_headers, remove_headers
from smtpproxy.scan.checks.all import all_checks
from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.engine import Engine, SymbolDef, load_symbols
from smtpproxy.scan.hook import EngineHook
from smtpproxy.scan.message import parse
from smtpproxy.scan.results import spamd_result
from smtpproxy.transaction import ClientInfo, Transaction

SYMBOLS = {
    "A": SymbolDef(2.0, "a"), "B": SymbolDef(3.0, "b"), "NEG": SymbolDef(-1.0, "n"),
    "DNS_DNSFAIL": SymbolDef(0.0, "d"), "FORCE": SymbolDef(0.0, "f", "reject"),
    "WHITELISTED": SymbolDef(0.0, "w", "no action"),
    "CHECK_TIMEOUT": SymbolDef(0.0, "t"), "CHECK_ERROR": SymbolDef(0.0, "e"),
}


class Fixed:
    """A unit-test check that reports fixed hits (optionally late, or broken)."""

    after: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name, hits, sleep_s=0.0, raises=False, after=()):
        self.name, self.hits, self.sleep_s, self.raises = name, hits, sleep_s, raises
        self.symbols = tuple(h.symbol for h in hits)
        self.after = tuple(after)
        self.saw: dict = {}

    async def run(self, ctx):
        await asyncio.sleep(self.sleep_s)
        if self.raises:
            raise ValueError("bug")
        self.saw = dict(ctx.results)
        return list(self.hits)


def scan_cfg(**kw) -> config.ScanConfig:
    return config.load(None, {f"scan.{k}": v for k, v in kw.items()}).scan


def ctx() -> CheckContext:
    return CheckContext(message=parse(b"Subject: x\r\n\r\nbody\r\n"), client=ClientInfo(),
                        mail_from="", rcpt_tos=[], profile="inbound", resolver=None)


def scan(checks, **kw):
    return asyncio.run(Engine(scan_cfg(**kw), checks, SYMBOLS).scan(ctx()))


@pytest.mark.parametrize("hits, action", [
    ([], "no action"),
    ([Hit("A")], "no action"),
    ([Hit("A"), Hit("B")], "greylist"),          # 5 >= 4
    ([Hit("A"), Hit("B"), Hit("NEG")], "greylist"),
    ([Hit("B"), Hit("B"), Hit("A"), Hit("NEG")], "greylist"),  # B counts once: 4
    ([Hit("FORCE")], "reject"),
    ([Hit("WHITELISTED"), Hit("A"), Hit("B")], "no action"),
    ([Hit("WHITELISTED"), Hit("FORCE")], "reject"),
    ([Hit("FORCE"), Hit("WHITELISTED")], "reject"),
    ([Hit("DNS_DNSFAIL")], "soft reject"),
])
def test_actions_by_score(hits, action):
    assert scan([Fixed("x", hits)]).action == action


def test_thresholds_come_from_config():
    result = scan([Fixed("x", [Hit("A"), Hit("B")])], actions={"add_header": 5.0, "greylist": 0.0})
    assert (result.score, result.action) == (5.0, "add header")
    result = scan([Fixed("x", [Hit("A"), Hit("B")])], actions={"reject": 5.0})
    assert result.action == "reject"


def test_dns_failure_can_be_ignored():
    assert scan([Fixed("x", [Hit("DNS_DNSFAIL")])], dns_failure_action="ignore").action == "no action"


def test_slow_and_broken_checks_become_symbols_and_the_scan_goes_on():
    result = scan([Fixed("slow", [Hit("A")], sleep_s=5), Fixed("broken", [Hit("B")], raises=True),
                   Fixed("fine", [Hit("NEG")])], check_timeout_s=0.2)
    assert result.symbols["CHECK_TIMEOUT"].options == ("slow",)
    assert result.symbols["CHECK_ERROR"].options == ("broken",)
    assert "NEG" in result.symbols and "A" not in result.symbols


def test_dependent_check_sees_results_of_the_checks_it_waits_for():
    first = Fixed("first", [Hit("A")], sleep_s=0.05)
    second = Fixed("second", [Hit("B")], after=["first"])
    scan([second, first])
    assert second.saw == {"first": [Hit("A")]}


def test_symbol_without_score_is_refused_at_start():
    with pytest.raises(config.ConfigError) as err:
        Engine(scan_cfg(), [Fixed("x", [Hit("UNKNOWN")])], SYMBOLS)
    assert "UNKNOWN" in str(err.value)


def test_every_shipped_check_symbol_has_a_score_and_description():
    table = load_symbols(scan_cfg())
    Engine(scan_cfg(), all_checks(), table)  # raises if a symbol is missing
    for name, definition in table.items():
        assert definition.description, name


def test_score_overrides_must_name_real_symbols():
    assert load_symbols(scan_cfg(scores={"MISSING_MID": 0.5}))["MISSING_MID"].score == 0.5
    with pytest.raises(config.ConfigError):
        load_symbols(scan_cfg(scores={"NO_SUCH": 1.0}))



class Inline(Fixed):
    """A check the engine starts in its own task; it may still wait (sleep_s)."""

    inline = True

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.cancelled = False
        self.task = None

    async def run(self, ctx):
        self.task = asyncio.current_task()
        try:
            if self.sleep_s:
                await asyncio.sleep(self.sleep_s)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.raises:
            raise ValueError("bug")
        self.saw = dict(ctx.results)
        return list(self.hits)


def test_inline_checks_that_do_not_wait_run_in_the_engines_task():
    quick, other = Inline("quick", [Hit("A")]), Fixed("other", [Hit("B")])

    async def main():
        result = await Engine(scan_cfg(), [quick, other], SYMBOLS).scan(ctx())
        return result, asyncio.current_task()

    result, engine_task = asyncio.run(main())
    assert quick.task is engine_task
    assert set(result.symbols) == {"A", "B"}


@pytest.mark.parametrize("label, check, expected", [
    ("waits, then answers", Inline("c", [Hit("A")], sleep_s=0.01), {"A": ()}),
    ("waits too long", Inline("c", [Hit("A")], sleep_s=5), {"CHECK_TIMEOUT": ("c",)}),
    ("fails at once", Inline("c", [Hit("A")], raises=True), {"CHECK_ERROR": ("c",)}),
    ("fails after waiting", Inline("c", [Hit("A")], sleep_s=0.01, raises=True), {"CHECK_ERROR": ("c",)}),
])
def test_inline_check_that_waits_or_fails_keeps_the_check_semantics(label, check, expected):
    result = scan([check], check_timeout_s=0.2)
    assert {name: s.options for name, s in result.symbols.items()} == expected, label
    assert check.cancelled == (label == "waits too long")


def test_each_check_gets_its_own_time_from_its_start_and_the_budget_bounds_all():
    first = Inline("first", [Hit("A")], sleep_s=0.15)
    second = Inline("second", [Hit("B")], sleep_s=0.15, after=["first"])
    result = scan([first, second], check_timeout_s=0.25)  # 0.3 s in all, each under 0.25
    assert {"A", "B"} <= set(result.symbols) and "CHECK_TIMEOUT" not in result.symbols
    assert second.saw == {"first": [Hit("A")]}
    third = Inline("third", [Hit("NEG")], after=["second"])
    result = scan([Inline("first", [Hit("A")], sleep_s=0.15),
                   Inline("second", [Hit("B")], sleep_s=0.15, after=["first"]), third],
                  check_timeout_s=0.25, budget_s=0.2)
    assert result.symbols["CHECK_TIMEOUT"].options == ("second", "budget", "third", "budget")
    assert "A" in result.symbols and third.saw == {}


def test_a_cancelled_scan_cancels_its_checks():
    slow = Inline("slow", [Hit("A")], sleep_s=5)
    other = Fixed("other", [Hit("B")], sleep_s=5)

    async def main():
        task = asyncio.ensure_future(Engine(scan_cfg(), [slow, other], SYMBOLS).scan(ctx()))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert asyncio.run(main()) == []
    assert slow.cancelled


# ---------------------------------------------------------------- verdict

MESSAGE = (b"Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=forged.example\r\n"
           b"Authentication-Results: upstream.example.net; dkim=pass\r\n"
           b"X-Spam-Status: No, forged by the sender\r\nSubject: Hello\r\n\r\nbody\r\n")


def txn(content=MESSAGE, mail_from="a@example.org") -> Transaction:
    return Transaction(session_id="S", listener="inbound", profile="inbound", client=ClientInfo(),
                       mail_from=mail_from, mail_options=[], rcpt_tos=["b@example.net"],
                       rcpt_options=[[]], content=content)


def hook(tmp_path, checks, store=None, **kw):
    cfg = config.load(None, {f"scan.{k}": v for k, v in kw.items()})
    return EngineHook(cfg, Engine(cfg.scan, checks, SYMBOLS), store, None, "mx.example.test")


def apply(verdict, content=MESSAGE) -> bytes:
    return prepend_headers(
        remove_headers(content, verdict.remove_headers, verdict.remove_matching), verdict.add_headers)


def test_accepted_message_gets_result_headers_and_loses_forged_ones(tmp_path):
    verdict = asyncio.run(hook(tmp_path, [Fixed("x", [Hit("A", ("why", "é,x"))])]).scan(txn()))
    assert verdict.action == "accept"
    out = apply(verdict).decode()
    assert "forged" not in out
    assert "Authentication-Results: upstream.example.net; dkim=pass" in out
    assert "Authentication-Results: mx.example.test; none" in out
    assert re.search(r"X-Spamd-Result: default: False \[2\.00 / 15\.00\];\r\n\tA\(2\.00\)\[why, \?;x\]", out)
    assert "X-Spam-Status: No, score=2.00 required=15.00" in out
    assert "X-Spam-Level: **\r\n" in out and "X-Spam-Action: no action" in out
    assert "X-Spam: Yes" not in out


def test_add_header_and_rewrite_subject(tmp_path):
    h = hook(tmp_path, [Fixed("x", [Hit("A"), Hit("B")])],
             actions={"greylist": 0.0, "rewrite_subject": 5.0})
    out = apply(asyncio.run(h.scan(txn()))).decode()
    assert "X-Spam: Yes" in out and "Subject: [SPAM] Hello" in out and "Subject: Hello" not in out


def test_reject_and_soft_reject_replies(tmp_path):
    v = asyncio.run(hook(tmp_path, [Fixed("x", [Hit("FORCE")])]).scan(txn()))
    assert (v.action, v.reply) == ("reject", "550 5.7.1 Message rejected as spam")
    v = asyncio.run(hook(tmp_path, [Fixed("x", [Hit("DNS_DNSFAIL")])]).scan(txn()))
    assert (v.action, v.reply) == ("tempfail", "451 4.7.1 Try again later")


def test_greylist_by_message_defers_then_accepts_the_retry_from_anywhere(tmp_path):
    async def go():
        store = open_store(config.StoreConfig(), str(tmp_path))
        await store.open()
        try:
            h = hook(tmp_path, [Fixed("x", [Hit("A"), Hit("B")])], store, greylist_delay_s=0.3)
            first = await h.scan(txn())
            too_soon = await h.scan(txn())
            other = await h.scan(txn(content=MESSAGE + b"another body\r\n"))
            await asyncio.sleep(0.4)
            # A retry with other trace headers (another MX of the pool) is the same message.
            retry = await h.scan(txn(content=b"Received: from elsewhere\r\n" + MESSAGE))
            return first, too_soon, other, retry
        finally:
            await store.close()

    first, too_soon, other, retry = asyncio.run(go())
    assert first.action == too_soon.action == other.action == "tempfail"
    assert first.reply.startswith("451 4.7.1")
    assert retry.action == "accept" and "greylist=passed" in retry.summary


def test_spamd_result_sorts_by_weight():
    result = asyncio.run(Engine(scan_cfg(), [Fixed("x", [Hit("A"), Hit("NEG"), Hit("B")])],
                                SYMBOLS).scan(ctx()))
    assert [line.split("(")[0].strip() for line in spamd_result(result).split(";\r\n\t")[1:]] == [
        "B", "A", "NEG"]


# ---------------------------------------------------------------- prefetch

class _PolicyResolver:
    """Answers DMARC's TXT questions; notes when the policy was asked for."""

    def __init__(self):
        self.asked_policy = asyncio.Event()
        self.names: list[str] = []

    async def txt(self, name: str) -> list[bytes]:
        self.names.append(name)
        if name.startswith("_dmarc."):
            self.asked_policy.set()
        return [b"v=DMARC1; p=reject"] if name == "_dmarc.example.com" else []


def test_dmarc_looks_its_policy_up_while_spf_and_dkim_run(tmp_path):
    from smtpproxy.scan.checks.dmarc import DmarcCheck

    psl = tmp_path / "psl.dat"
    psl.write_text("com\n")
    cfg = config.load(None, {"scan.dmarc.public_suffix_list": str(psl), "scan.check_timeout_s": 5})
    resolver = _PolicyResolver()

    class SlowSpf(Fixed):
        async def run(self, ctx):
            # Finishes only once DMARC has asked for its policy: without the
            # prefetch DMARC would wait for this check, and this for DMARC.
            await resolver.asked_policy.wait()
            ctx.facts["spf"] = {"result": "pass", "domain": "example.com", "identity": "mailfrom"}
            return list(self.hits)

    class Dkim(Fixed):
        async def run(self, ctx):
            ctx.facts["dkim"] = {"signatures": []}
            return list(self.hits)

    checks = [SlowSpf("spf", [Hit("R_SPF_ALLOW")]), Dkim("dkim", [Hit("R_DKIM_NA")]),
              Fixed("arc", [Hit("ARC_NA")]), DmarcCheck(cfg)]
    engine = Engine(cfg.scan, checks, load_symbols(cfg.scan))
    context = CheckContext(message=parse(b"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n"),
                           client=ClientInfo(addr="192.0.2.1"), mail_from="a@example.com", rcpt_tos=[],
                           profile="inbound", resolver=resolver)
    result = asyncio.run(engine.scan(context))
    assert "CHECK_TIMEOUT" not in result.symbols, result.summary()
    assert "DMARC_POLICY_ALLOW" in result.symbols, result.summary()
    assert resolver.names.count("_dmarc.example.com") == 1  # fetched once, read by the check
    assert not context.prefetched


def test_a_prefetch_nobody_reads_is_cancelled_with_the_scan(tmp_path):
    from smtpproxy.scan.checks.dmarc import DmarcCheck

    psl = tmp_path / "psl.dat"
    psl.write_text("com\n")
    # The scan's budget ends while SPF still runs: DMARC never starts.
    cfg = config.load(None, {"scan.dmarc.public_suffix_list": str(psl), "scan.check_timeout_s": 5,
                             "scan.budget_s": 0.3})

    class Hanging:
        async def txt(self, name):
            await asyncio.sleep(30)
            return []

    never = Fixed("spf", [Hit("R_SPF_ALLOW")], sleep_s=30)
    checks = [never, Fixed("dkim", [Hit("R_DKIM_NA")]), Fixed("arc", [Hit("ARC_NA")]), DmarcCheck(cfg)]
    engine = Engine(cfg.scan, checks, load_symbols(cfg.scan))
    context = CheckContext(message=parse(b"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n"),
                           client=ClientInfo(addr="192.0.2.1"), mail_from="a@example.com", rcpt_tos=[],
                           profile="inbound", resolver=Hanging())

    async def go():
        result = await engine.scan(context)
        await asyncio.sleep(0)  # let the cancellation land
        return result

    result = asyncio.run(go())
    assert "CHECK_TIMEOUT" in result.symbols
    assert all(f.cancelled() for f in context.prefetched.values()) and context.prefetched
