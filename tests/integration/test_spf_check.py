"""SpfCheck as the engine uses it: identities, symbols with evidence, facts, DNS trouble.

Against the loopback test DNS server through the project's Resolver.
"""

from __future__ import annotations

import asyncio

import pytest

from smtpproxy.common.config import DnsConfig
from smtpproxy.common.dns import Resolver
from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.checks.spf import SpfCheck
from smtpproxy.transaction import ClientInfo
from tests.support.dns_server import DnsTestServer

pytestmark = pytest.mark.integration

RECORDS = {
    "pass.test": [("TXT", "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all")],
    "soft.test": [("TXT", "v=spf1 ~all")],
    "neutral.test": [("TXT", "v=spf1 ?all")],
    "broken.test": [("TXT", "v=spf1 ip4:192.0.2.300 -all")],
    "nospf.test": [("TXT", "just some text")],
    "mx.helo.test": [("TXT", "v=spf1 a -all"), ("A", "192.0.2.25")],
    "slow-include.test": [("TXT", "v=spf1 include:slow.test -all")],
    "include.test": [("TXT", "v=spf1 include:pass.test -all")],
    # 11 lookups before the match: more than the event loop fetches inline
    # (names with macros, which the look-ahead cannot fetch early).
    "many.test": [("TXT", "v=spf1 " + " ".join(f"a:h{i}.%{{d}}" for i in range(9))
                   + " include:p.%{d} -all")],
    "p.many.test": [("TXT", "v=spf1 ip4:192.0.2.0/24 -all")],
    # The look-ahead: both names are fetched as soon as the record is there.
    "ahead.test": [("TXT", "v=spf1 a:web.ahead.test include:inc.ahead.test -all")],
    "web.ahead.test": [("A", "198.51.100.1")],
    "inc.ahead.test": [("TXT", "v=spf1 ip4:192.0.2.0/24 -all")],
    **{f"h{i}.many.test": [("A", f"198.51.100.{i}")] for i in range(9)},
}


@pytest.fixture(scope="module")
def server():
    with DnsTestServer(RECORDS) as srv:
        srv.drop("slow.test")
        srv.servfail("servfail.test")
        yield srv


@pytest.fixture(scope="module", params=["on loop", "thread"])
def check(request):
    return SpfCheck(max_threads=2, on_loop=request.param == "on loop")


def context(resolver, addr="192.0.2.10", helo="mx.helo.test", mail_from="user@pass.test"):
    return CheckContext(message=None, client=ClientInfo(addr=addr, helo=helo),
                        mail_from=mail_from, rcpt_tos=["rcpt@example.org"], profile="inbound",
                        resolver=resolver)


def resolver_for(server):
    return Resolver(DnsConfig(nameserver=server.nameserver, timeout_s=0.3, attempts=1))


@pytest.mark.parametrize("label, addr, helo, mail_from, hit, facts", [
    ("pass names domain and mechanism", "192.0.2.10", "mx.helo.test", "user@pass.test",
     Hit("R_SPF_ALLOW", ("pass.test", "ip4:192.0.2.0/24")), ("pass", "pass.test", "mailfrom")),
    ("ipv6 client as Postfix writes it", "IPv6:2001:db8::5", "mx.helo.test", "user@pass.test",
     Hit("R_SPF_ALLOW", ("pass.test", "ip6:2001:db8::/32")), ("pass", "pass.test", "mailfrom")),
    ("fail", "198.51.100.1", "mx.helo.test", "user@pass.test",
     Hit("R_SPF_FAIL", ("pass.test", "-all")), ("fail", "pass.test", "mailfrom")),
    ("fail through include", "198.51.100.1", "x", "user@include.test",
     Hit("R_SPF_FAIL", ("include.test", "-all")), ("fail", "include.test", "mailfrom")),
    ("softfail", "198.51.100.1", "x", "a@soft.test",
     Hit("R_SPF_SOFTFAIL", ("soft.test", "~all")), ("softfail", "soft.test", "mailfrom")),
    ("neutral", "198.51.100.1", "x", "a@neutral.test",
     Hit("R_SPF_NEUTRAL", ("neutral.test", "?all")), ("neutral", "neutral.test", "mailfrom")),
    ("no spf record", "198.51.100.1", "x", "a@nospf.test",
     Hit("R_SPF_NA", ("nospf.test",)), ("none", "nospf.test", "mailfrom")),
    ("no such domain", "198.51.100.1", "x", "a@nx.test",
     Hit("R_SPF_NA", ("nx.test",)), ("none", "nx.test", "mailfrom")),
    ("null sender checks HELO", "192.0.2.25", "mx.helo.test", "",
     Hit("R_SPF_ALLOW", ("mx.helo.test", "a")), ("pass", "mx.helo.test", "helo")),
    ("null sender, HELO not allowed", "192.0.2.26", "mx.helo.test", "",
     Hit("R_SPF_FAIL", ("mx.helo.test", "-all")), ("fail", "mx.helo.test", "helo")),
    ("null sender, HELO an address literal", "192.0.2.26", "[192.0.2.26]", "",
     Hit("R_SPF_NA", ("[192.0.2.26]",)), ("none", "[192.0.2.26]", "helo")),
])
def test_results(server, check, label, addr, helo, mail_from, hit, facts):
    ctx = context(resolver_for(server), addr, helo, mail_from)
    assert asyncio.run(check.run(ctx)) == [hit], label
    spf_facts = ctx.facts["spf"]
    assert (spf_facts["result"], spf_facts["domain"], spf_facts["identity"]) == facts, label


@pytest.mark.parametrize("label, mail_from, symbol, result, evidence", [
    ("dns timeout is a temperror", "a@slow.test", "R_SPF_DNSFAIL", "temperror", "timeout"),
    ("timeout inside an include", "a@slow-include.test", "R_SPF_DNSFAIL", "temperror", "timeout"),
    ("servfail is a temperror", "a@servfail.test", "R_SPF_DNSFAIL", "temperror", "SERVFAIL"),
    ("broken record is a permerror", "a@broken.test", "R_SPF_PERMFAIL", "permerror", "192.0.2.300"),
])
def test_errors_are_symbols_not_exceptions(server, check, label, mail_from, symbol, result, evidence):
    ctx = context(resolver_for(server), mail_from=mail_from)
    (hit,) = asyncio.run(check.run(ctx))
    assert hit.symbol == symbol, label
    assert hit.options[0] == mail_from.partition("@")[2]
    assert evidence in hit.options[1], hit.options
    assert ctx.facts["spf"]["result"] == result


@pytest.mark.parametrize("label, addr, helo, mail_from, resolver, reason", [
    ("no client address", None, "mx.helo.test", "a@pass.test", True, "no client address"),
    ("address unavailable", "[UNAVAILABLE]", "mx.helo.test", "a@pass.test", True, "no client address"),
    ("null sender, no HELO", "192.0.2.1", None, "", True, "no sender and no HELO"),
    ("no resolver", "192.0.2.1", "mx.helo.test", "a@pass.test", False, "no resolver"),
])
def test_nothing_to_check_is_na(server, check, label, addr, helo, mail_from, resolver, reason):
    ctx = context(resolver_for(server) if resolver else None, addr, helo, mail_from)
    assert asyncio.run(check.run(ctx)) == [Hit("R_SPF_NA", (reason,))], label
    assert ctx.facts["spf"]["result"] == "none"


def test_lookups_share_the_resolver_cache(server, check):
    async def go():
        resolver = resolver_for(server)
        await check.run(context(resolver, mail_from="a@include.test"))
        before = len(server.queries)
        hits = await check.run(context(resolver, mail_from="b@include.test"))
        assert hits[0].symbol == "R_SPF_ALLOW"
        assert len(server.queries) == before  # all answered from the one cache
    asyncio.run(go())


def test_the_event_loop_runs_while_spf_waits_for_dns(server, check):
    async def go():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.ensure_future(ticker())
        (hit,) = await check.run(context(resolver_for(server), mail_from="a@slow.test"))
        task.cancel()
        assert hit.symbol == "R_SPF_DNSFAIL"
        assert ticks > 1  # the loop kept running while pyspf waited in its thread
    asyncio.run(go())


def test_a_cancelled_check_frees_its_thread(server):
    one_thread = SpfCheck(max_threads=1, on_loop=False)

    async def go():
        resolver = Resolver(DnsConfig(nameserver=server.nameserver, timeout_s=30, attempts=1))
        slow = asyncio.ensure_future(one_thread.run(context(resolver, mail_from="a@slow.test")))
        for _ in range(1000):  # until the worker is inside the lookup
            if server.count("slow.test", "TXT"):
                break
            await asyncio.sleep(0.01)
        slow.cancel()
        # With the only worker stuck in a 30 s lookup this would wait for
        # it; the abort makes the worker give up the lookup at once.
        return await asyncio.wait_for(
            one_thread.run(context(resolver, mail_from="a@pass.test")), 20)
    assert asyncio.run(go())[0].symbol == "R_SPF_ALLOW"


def test_answers_at_hand_need_no_thread_and_many_lookups_go_to_one(server, monkeypatch):
    from smtpproxy.scan.checks import spf as spf_module
    threads = []
    real = spf_module.run_in_pool

    async def counting(*args):
        threads.append(args[2])
        return await real(*args)

    monkeypatch.setattr(spf_module, "run_in_pool", counting)
    check = SpfCheck(max_threads=1)

    async def go():
        resolver = resolver_for(server)
        first = await check.run(context(resolver, mail_from="a@include.test"))
        before = len(server.queries)
        again = await check.run(context(resolver, mail_from="b@include.test"))
        assert threads == [] and len(server.queries) == before  # inline, from the cache
        start = len(server.queries)
        many = await check.run(context(resolver_for(server), mail_from="c@many.test"))
        asked = [(n.rstrip(".").lower(), t) for n, t, _ in list(server.queries)[start:]]
        return first, again, many, asked

    first, again, many, asked = asyncio.run(go())
    assert first[0].symbol == again[0].symbol == many[0].symbol == "R_SPF_ALLOW"
    assert len(threads) == 1  # many.test: the rest of it in a worker thread
    assert len(asked) == len(set(asked))  # nothing fetched inline was asked again


def test_names_the_record_shows_are_fetched_together(server):
    check = SpfCheck(max_threads=1)

    async def go():
        resolver = resolver_for(server)
        real = resolver.query
        in_flight = peak = 0

        async def counting(name, rdtype):
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await real(name, rdtype)
            finally:
                in_flight -= 1

        resolver.query = counting
        start = len(server.queries)
        hits = await check.run(context(resolver, mail_from="a@ahead.test"))
        await asyncio.sleep(0.1)  # the look-ahead's own lookups settle
        asked = [(n.rstrip(".").lower(), t) for n, t, _ in list(server.queries)[start:]]
        return hits, peak, asked

    hits, peak, asked = asyncio.run(go())
    assert hits[0].symbol == "R_SPF_ALLOW"  # the same verdict, in pyspf's order
    assert peak >= 2  # web.ahead.test and inc.ahead.test asked at once, not one after the other
    assert sorted(asked) == sorted(set(asked))  # each name asked once
    assert {("web.ahead.test", "A"), ("inc.ahead.test", "TXT")} <= set(asked)
