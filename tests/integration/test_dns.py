"""The test DNS server on the wire, and the Resolver (cache, negative caching, temp errors) against it.

The server half is a table of labelled queries sent with dnspython's own
query functions over UDP and TCP, so it is checked independently of our
resolver. The resolver half counts the questions that reach the server to
tell a cache hit from a lookup; time is an injected clock, never a sleep.
"""

from __future__ import annotations

import asyncio
import socket

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from smtpproxy.common.config import DnsConfig
from smtpproxy.common.dns import DnsTempError, Resolver
from tests.support.dns_server import DnsTestServer

pytestmark = pytest.mark.integration

RECORDS = {
    "example.test": [("A", "192.0.2.1"), ("AAAA", "2001:db8::1"), ("MX", "10 mx.example.test."),
                     ("MX", "5 mx0.example.test."), ("TXT", ["v=spf1 ", "-all"], 120)],
    "www.example.test": [("CNAME", "example.test.")],
    "dangling.example.test": [("CNAME", "nowhere.example.test.")],
    "deep.sub.example.test": [("A", "192.0.2.7")],  # sub.example.test: empty non-terminal
    "big.example.test": [("TXT", f"record {i:02d} " + "x" * 100) for i in range(20)],
    "1.2.0.192.in-addr.arpa": [("PTR", "host.example.test.")],
}

ZONE = """\
$TTL 600
@       IN SOA ns.zone.test. hostmaster.zone.test. 1 3600 600 86400 30
@       IN NS  ns.zone.test.
ns      IN A   192.0.2.53
text    IN TXT "one" "two"
"""


@pytest.fixture(scope="module")
def server():
    with DnsTestServer(RECORDS, zone_text=ZONE, origin="zone.test", negative_ttl=60) as srv:
        srv.drop("slow.example.test")
        srv.drop("example.test", "SPF")
        srv.servfail("broken.example.test")
        yield srv


def ask(server, name, rdtype, *, tcp=False, edns=True):
    query = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, server.host, port=server.port, timeout=2)


def answer_texts(response):
    return sorted(rd.to_text() for rrset in response.answer for rd in rrset)


@pytest.mark.parametrize("label, name, rdtype, tcp, rcode, answers", [
    ("a record", "example.test", "A", False, "NOERROR", ["192.0.2.1"]),
    ("a record over tcp", "example.test", "A", True, "NOERROR", ["192.0.2.1"]),
    ("name case is ignored", "EXAMPLE.Test", "A", False, "NOERROR", ["192.0.2.1"]),
    ("mx set", "example.test", "MX", False, "NOERROR", ["10 mx.example.test.", "5 mx0.example.test."]),
    ("txt character-strings kept", "example.test", "TXT", False, "NOERROR", ['"v=spf1 " "-all"']),
    ("cname followed in the data", "www.example.test", "A", False, "NOERROR",
     ["192.0.2.1", "example.test."]),
    ("cname to nothing", "dangling.example.test", "A", False, "NXDOMAIN", ["nowhere.example.test."]),
    ("nodata", "example.test", "PTR", False, "NOERROR", []),
    ("empty non-terminal is nodata", "sub.example.test", "A", False, "NOERROR", []),
    ("nxdomain", "missing.example.test", "A", False, "NXDOMAIN", []),
    ("zone text", "text.zone.test", "TXT", False, "NOERROR", ['"one" "two"']),
    ("zone text nxdomain", "nope.zone.test", "A", False, "NXDOMAIN", []),
    ("servfail", "broken.example.test", "A", False, "SERVFAIL", []),
    ("servfail over tcp", "broken.example.test", "A", True, "SERVFAIL", []),
])
def test_server_answers(server, label, name, rdtype, tcp, rcode, answers):
    response = ask(server, name, rdtype, tcp=tcp)
    assert dns.rcode.to_text(response.rcode()) == rcode, label
    assert answer_texts(response) == sorted(answers), label
    assert response.flags & dns.flags.AA
    if rcode in ("NXDOMAIN", "NOERROR") and not answers:
        (soa,) = response.authority  # RFC 2308: negative answers carry the SOA
        assert soa.rdtype == dns.rdatatype.SOA
    assert server.errors == []


def test_negative_answer_soa_from_the_zone(server):
    (soa,) = ask(server, "nope.zone.test", "A").authority
    assert soa.name.to_text() == "zone.test." and soa[0].minimum == 30


@pytest.mark.parametrize("edns, expected", [(True, 0), (False, -1)])
def test_server_echoes_edns_only_when_asked(server, edns, expected):
    assert ask(server, "example.test", "A", edns=edns).edns == expected


def test_server_truncates_large_udp_answers(server):
    udp = ask(server, "big.example.test", "TXT", edns=False)
    assert udp.flags & dns.flags.TC and not udp.answer
    assert len(answer_texts(ask(server, "big.example.test", "TXT", tcp=True))) == 20


@pytest.mark.parametrize("name, rdtype, tcp", [
    ("slow.example.test", "A", False),
    ("slow.example.test", "A", True),
    ("example.test", "SPF", False),  # a drop rule for one type only
])
def test_server_drops(server, name, rdtype, tcp):
    with pytest.raises(dns.exception.Timeout):
        query = dns.message.make_query(name, rdtype)
        (dns.query.tcp if tcp else dns.query.udp)(query, server.host, port=server.port, timeout=0.3)


def test_server_delays_every_answer_and_counts_questions():
    with DnsTestServer({"a.example.test": [("A", "192.0.2.1")]}, delay_s=0.5) as srv:
        with pytest.raises(dns.exception.Timeout):  # held back past the client's patience
            dns.query.udp(dns.message.make_query("a.example.test", "A"), srv.host, port=srv.port,
                          timeout=0.05)
        assert answer_texts(ask(srv, "a.example.test", "A")) == ["192.0.2.1"]
        assert answer_texts(ask(srv, "a.example.test", "A", tcp=True)) == ["192.0.2.1"]
        srv.delay_s = 0
        assert dns.rcode.to_text(ask(srv, "b.example.test", "A").rcode()) == "NXDOMAIN"
        assert srv.query_count == 4 and srv.errors == []


def test_server_forgets_names_on_clear():
    with DnsTestServer({"deep.sub.example.test": [("A", "192.0.2.7")]}) as srv:
        assert dns.rcode.to_text(ask(srv, "sub.example.test", "A").rcode()) == "NOERROR"
        srv.clear()
        assert dns.rcode.to_text(ask(srv, "sub.example.test", "A").rcode()) == "NXDOMAIN"
        srv.add("other.example.test", "A", "192.0.2.8")
        assert dns.rcode.to_text(ask(srv, "example.test", "A").rcode()) == "NOERROR"


# ---------------------------------------------------------------- the Resolver


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_resolver(server, clock=None, **kwargs):
    cfg = DnsConfig(nameserver=server.nameserver, timeout_s=kwargs.pop("timeout_s", 0.3),
                    attempts=1, **kwargs)
    return Resolver(cfg, clock=clock or Clock())


def run(coro):
    return asyncio.run(coro)


def test_helpers_return_plain_values(server):
    async def go():
        r = make_resolver(server)
        assert await r.a("example.test") == ["192.0.2.1"]
        assert await r.aaaa("example.test") == ["2001:db8::1"]
        assert await r.mx("example.test") == [(5, "mx0.example.test"), (10, "mx.example.test")]
        assert await r.txt("example.test") == [b"v=spf1 -all"]
        assert await r.ptr("192.0.2.1") == ["host.example.test"]
        assert await r.a("www.example.test") == ["192.0.2.1"]
        assert len(await r.txt("big.example.test")) == 20  # via TCP after TC
    run(go())


@pytest.mark.parametrize("name", ["missing.example.test", "sub.example.test", "dangling.example.test"])
def test_nxdomain_and_nodata_are_empty(server, name):
    assert run(make_resolver(server).a(name)) == []


@pytest.mark.parametrize("name", ["a..example.test", "x" * 64 + ".example.test", "", "."])
def test_impossible_names_are_empty_without_a_query(server, name):
    before = len(server.queries)
    assert run(make_resolver(server).query(name, "TXT")) == []
    assert len(server.queries) == before


def test_answers_cached_for_their_ttl(server):
    clock = Clock()

    async def go():
        r = make_resolver(server, clock)
        start = server.count("example.test", "TXT")
        await r.txt("example.test")             # TTL 120
        clock.now += 119
        await r.txt("example.test")
        assert server.count("example.test", "TXT") == start + 1
        clock.now += 2
        await r.txt("example.test")
        assert server.count("example.test", "TXT") == start + 2
    run(go())



def test_cached_reads_the_cache_without_asking(server):
    clock = Clock()

    async def go():
        r = make_resolver(server, clock)
        before = len(server.queries)
        assert r.cached("Example.TEST.", "TXT") is None       # not asked yet
        assert r.cached("a..example.test", "TXT") == []       # cannot exist
        await r.txt("example.test")
        assert [b"".join(t.strings) for t in r.cached("EXAMPLE.test", "TXT")] == [b"v=spf1 -all"]
        await r.a("missing.example.test")
        assert r.cached("missing.example.test.", "A") == []   # cached NXDOMAIN
        assert len(server.queries) == before + 2
        clock.now += 121
        assert r.cached("example.test", "TXT") is None        # expired
    run(go())

def test_ttl_capped_by_cache_max_ttl(server):
    clock = Clock()

    async def go():
        r = make_resolver(server, clock, cache_max_ttl_s=10.0)
        start = server.count("example.test", "A")
        await r.a("example.test")               # TTL 300, capped to 10
        clock.now += 11
        await r.a("example.test")
        assert server.count("example.test", "A") == start + 2
    run(go())


@pytest.mark.parametrize("name, rdtype", [("missing.example.test", "A"),   # NXDOMAIN
                                          ("example.test", "PTR")])         # NODATA
def test_negative_answers_cached_for_the_soa_ttl(server, name, rdtype):
    clock = Clock()

    async def go():
        r = make_resolver(server, clock)
        start = server.count(name, rdtype)
        assert await r.query(name, rdtype) == []
        clock.now += 59                          # the SOA says 60
        assert await r.query(name, rdtype) == []
        assert server.count(name, rdtype) == start + 1
        clock.now += 2
        await r.query(name, rdtype)
        assert server.count(name, rdtype) == start + 2
    run(go())


def test_negative_ttl_capped_by_config(server):
    clock = Clock()

    async def go():
        r = make_resolver(server, clock, cache_negative_ttl_s=5.0)
        start = server.count("missing.example.test", "A")
        await r.a("missing.example.test")
        clock.now += 6
        await r.a("missing.example.test")
        assert server.count("missing.example.test", "A") == start + 2
    run(go())


@pytest.mark.parametrize("name, reason", [("slow.example.test", "timeout"),
                                          ("broken.example.test", "SERVFAIL")])
def test_temp_errors_raise_and_are_not_cached(server, name, reason):
    async def go():
        r = make_resolver(server)
        start = server.count(name, "A")
        for _ in range(2):
            with pytest.raises(DnsTempError) as err:
                await r.a(name)
            assert err.value.reason == reason
        assert server.count(name, "A") >= start + 2
        assert len(r) == 0
    run(go())


def test_unreachable_nameserver_is_a_temp_error():
    # A port nobody listens on: ICMP port unreachable or a timeout, both temporary.
    with DnsTestServer() as srv:
        nameserver = srv.nameserver
    r = Resolver(DnsConfig(nameserver=nameserver, timeout_s=0.3, attempts=1))
    with pytest.raises(DnsTempError):
        run(r.a("example.test"))


def test_cache_is_bounded_lru(server):
    async def go():
        r = make_resolver(server, cache_size=2)
        await r.a("example.test")
        await r.aaaa("example.test")
        await r.a("example.test")                # example.test/A is now the most recent
        await r.mx("example.test")               # evicts AAAA
        assert len(r) == 2
        start = server.count("example.test", "AAAA")
        await r.aaaa("example.test")
        assert server.count("example.test", "AAAA") == start + 1
        start = server.count("example.test", "MX")
        await r.mx("example.test")
        assert server.count("example.test", "MX") == start
    run(go())


def test_cache_size_zero_caches_nothing(server):
    async def go():
        r = make_resolver(server, cache_size=0)
        start = server.count("example.test", "A")
        await r.a("example.test")
        await r.a("example.test")
        assert server.count("example.test", "A") == start + 2 and len(r) == 0
    run(go())


def test_concurrent_identical_queries_share_one_lookup(server):
    async def go():
        r = make_resolver(server)
        start = server.count("deep.sub.example.test", "A")
        results = await asyncio.gather(*(r.a("deep.sub.example.test") for _ in range(10)))
        assert results == [["192.0.2.7"]] * 10
        assert server.count("deep.sub.example.test", "A") == start + 1
    run(go())


def test_a_cancelled_caller_does_not_cancel_the_shared_lookup(server):
    async def go():
        r = make_resolver(server, timeout_s=1.0)
        first = asyncio.ensure_future(r.a("deep.sub.example.test"))
        second = asyncio.ensure_future(r.a("deep.sub.example.test"))
        await asyncio.sleep(0)
        first.cancel()
        assert await second == ["192.0.2.7"]
    run(go())




def test_a_lookup_stranded_on_a_closed_loop_is_not_awaited(server):
    # White-box: a lookup still in flight when its loop was closed (a caller
    # that closed its loop without finishing) must not capture later callers.
    r = make_resolver(server)
    dead = asyncio.new_event_loop()
    r._inflight[("deep.sub.example.test.", 1)] = dead.create_future()
    dead.close()
    assert run(asyncio.wait_for(r.a("deep.sub.example.test"), 10)) == ["192.0.2.7"]


# ---------------------------------------------------------------- the transport
#
# A scripted nameserver on a real UDP socket in the test's own event loop:
# each case decides what goes back (nothing, late, a forgery first, an error
# rcode), and every datagram that arrives is counted.


class Scripted(asyncio.DatagramProtocol):
    def __init__(self, script):
        self.script = script          # (server, query, addr) -> None; replies via self.reply
        self.received: list[tuple[str, int]] = []  # (name, message id)
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        query = dns.message.from_wire(data)
        self.received.append((query.question[0].name.to_text().lower(), query.id))
        self.script(self, query, addr)

    def answer(self, query, *addresses, rcode=dns.rcode.NOERROR, msg_id=None, ttl=300):
        response = dns.message.make_response(query)
        response.set_rcode(rcode)
        if addresses:
            response.answer.append(dns.rrset.from_text(
                query.question[0].name, ttl, "IN", "A", *addresses))
        if msg_id is not None:
            response.id = msg_id
        return response.to_wire()

    def reply(self, wire, addr, delay=0.0):
        loop = asyncio.get_running_loop()
        if delay:
            loop.call_later(delay, self.transport.sendto, wire, addr)
        else:
            self.transport.sendto(wire, addr)

    @property
    def nameserver(self) -> str:
        host, port = self.transport.get_extra_info("sockname")[:2]
        return f"{host}:{port}"


async def scripted(script):
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(lambda: Scripted(script),
                                                   local_addr=("127.0.0.1", 0))
    return proto


def answers_at_once(server, query, addr):
    server.reply(server.answer(query, "192.0.2.10"), addr)


def scripted_resolver(*servers, timeout_s=0.5, attempts=1):
    # One nameserver is the configured form; several come from resolv.conf.
    r = Resolver(DnsConfig(nameserver=servers[0].nameserver, timeout_s=timeout_s, attempts=attempts))
    r.nameservers = [(s.transport.get_extra_info("sockname")[0],
                      s.transport.get_extra_info("sockname")[1]) for s in servers]
    return r


def test_timeout_is_a_temp_error_after_every_attempt():
    async def go():
        silent = await scripted(lambda server, query, addr: None)
        r = scripted_resolver(silent, timeout_s=0.3, attempts=3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DnsTempError) as err:
            await r.a("quiet.example.test")
        assert err.value.reason == "timeout"
        assert 0.25 <= loop.time() - started < 1.0  # not the sum of three full tries and more
        # Three tries of one question: the same id each time (a late answer still counts).
        assert len(silent.received) == 3 and len({i for _n, i in silent.received}) == 1
        r.close()
    run(go())


def test_a_late_answer_to_an_earlier_try_counts():
    def late_first(server, query, addr):
        if len(server.received) == 1:
            server.reply(server.answer(query, "192.0.2.11"), addr, delay=0.15)

    async def go():
        server = await scripted(late_first)
        r = scripted_resolver(server, timeout_s=0.6, attempts=3)  # a try lasts 0.2 s
        assert await r.a("late.example.test") == ["192.0.2.11"]
        r.close()
    run(go())


@pytest.mark.parametrize("label, forge", [
    ("another id", lambda srv, q: srv.answer(q, "198.51.100.1", msg_id=(q.id + 1) % 65536)),
    ("another question", lambda srv, q: srv.answer(
        dns.message.make_query("other.example.test", "A", id=q.id), "198.51.100.2")),
    ("another type", lambda srv, q: srv.answer(
        dns.message.make_query(q.question[0].name, "AAAA", id=q.id))),
    ("not a response", lambda srv, q: q.to_wire()),
    ("too short", lambda srv, q: q.to_wire()[:8]),
])
def test_answers_that_do_not_match_are_ignored(label, forge):
    def forged_first(server, query, addr):
        server.reply(forge(server, query), addr)
        server.reply(server.answer(query, "192.0.2.12"), addr, delay=0.05)

    async def go():
        server = await scripted(forged_first)
        r = scripted_resolver(server)
        assert await r.a("target.example.test") == ["192.0.2.12"], label
        r.close()
    run(go())


def test_an_answer_from_another_address_is_ignored():
    async def go():
        loop = asyncio.get_running_loop()
        # The forger knows the id and the question but sends from its own port.
        forger, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                        local_addr=("127.0.0.1", 0))

        def forged_first(server, query, addr):
            forger.sendto(server.answer(query, "198.51.100.3"), addr)
            server.reply(server.answer(query, "192.0.2.13"), addr, delay=0.05)

        server = await scripted(forged_first)
        r = scripted_resolver(server)
        assert await r.a("target.example.test") == ["192.0.2.13"]
        forger.close()
        r.close()
    run(go())


def test_one_datagram_for_many_waiters():
    async def go():
        server = await scripted(lambda srv, q, addr: srv.reply(srv.answer(q, "192.0.2.14"), addr,
                                                                 delay=0.05))
        r = scripted_resolver(server)
        results = await asyncio.gather(*(r.a("shared.example.test") for _ in range(50)))
        assert results == [["192.0.2.14"]] * 50
        assert server.received == [("shared.example.test.", server.received[0][1])]
        r.close()
    run(go())


def test_cancelled_waiters_leave_the_shared_lookup_to_the_others():
    async def go():
        server = await scripted(lambda srv, q, addr: srv.reply(srv.answer(q, "192.0.2.15"), addr,
                                                                 delay=0.1))
        r = scripted_resolver(server)
        waiters = [asyncio.ensure_future(r.a("shared.example.test")) for _ in range(5)]
        await asyncio.sleep(0.02)  # the question is on the wire
        for waiter in waiters[:4]:
            waiter.cancel()
        assert await waiters[4] == ["192.0.2.15"]
        assert all(w.cancelled() for w in waiters[:4])
        assert len(server.received) == 1
        # Every waiter gone: the lookup still ends and fills the cache.
        lone = asyncio.ensure_future(r.a("alone.example.test"))
        await asyncio.sleep(0.02)
        lone.cancel()
        await asyncio.sleep(0.15)
        assert r.cached("alone.example.test", "A")[0].address == "192.0.2.15"
        r.close()
    run(go())


@pytest.mark.parametrize("rcode", [dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.NOTIMP])
def test_error_rcodes_are_temp_errors_not_cached(rcode):
    async def go():
        server = await scripted(lambda srv, q, addr: srv.reply(srv.answer(q, rcode=rcode), addr))
        r = scripted_resolver(server, attempts=2)
        for _ in range(2):
            with pytest.raises(DnsTempError) as err:
                await r.a("failing.example.test")
            assert err.value.reason == dns.rcode.to_text(rcode)
        assert len(server.received) == 2 and len(r) == 0  # one nameserver: no retry at it
        r.close()
    run(go())


def test_a_malformed_answer_is_a_temp_error():
    def garbled(server, query, addr):
        response = dns.message.make_response(query)
        response.use_edns(False)  # the A record last, so cutting the end cuts it
        response.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "A", "192.0.2.16"))
        server.reply(response.to_wire()[:-3], addr)

    async def go():
        server = await scripted(garbled)
        r = scripted_resolver(server)
        with pytest.raises(DnsTempError) as err:
            await r.a("garbled.example.test")
        assert err.value.reason.startswith("malformed answer")
        r.close()
    run(go())


def test_a_slow_answer_does_not_hold_up_the_others():
    def slow_for_one(server, query, addr):
        slow = query.question[0].name.labels[0] == b"slow"
        server.reply(server.answer(query, "192.0.2.17"), addr, delay=1.0 if slow else 0)

    async def go():
        server = await scripted(slow_for_one)
        r = scripted_resolver(server, timeout_s=3.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        slow = asyncio.ensure_future(r.a("slow.example.test"))
        fast = await asyncio.gather(*(r.a(f"fast{i}.example.test") for i in range(20)))
        assert fast == [["192.0.2.17"]] * 20 and not slow.done()
        assert loop.time() - started < 0.8
        assert await slow == ["192.0.2.17"]
        r.close()
    run(go())


def test_a_dead_nameserver_hands_over_to_the_next():
    def refuses(server, query, addr):
        server.reply(server.answer(query, rcode=dns.rcode.SERVFAIL), addr)

    async def go():
        silent = await scripted(lambda srv, q, addr: None)
        failing = await scripted(refuses)
        working = await scripted(answers_at_once)
        r = scripted_resolver(silent, working, timeout_s=0.6, attempts=2)
        assert await r.a("next.example.test") == ["192.0.2.10"]
        assert len(silent.received) == 1 and len(working.received) == 1
        r.close()
        # SERVFAIL moves on at once, without waiting for the try to time out.
        r = scripted_resolver(failing, working, timeout_s=10.0, attempts=2)
        started = asyncio.get_running_loop().time()
        assert await r.a("next.example.test") == ["192.0.2.10"]
        assert asyncio.get_running_loop().time() - started < 1.0
        r.close()
    run(go())


def test_truncated_answers_are_asked_again_over_tcp(server):
    async def go():
        r = make_resolver(server)
        before = len(server.queries)
        assert len(await r.txt("big.example.test")) == 20
        assert [q[2] for q in list(server.queries)[before:]] == ["udp", "tcp"]
        r.close()
    run(go())


def test_close_closes_the_socket_and_ends_lookups():
    async def go():
        server = await scripted(lambda srv, q, addr: None)
        r = scripted_resolver(server, timeout_s=5.0)
        pending = asyncio.ensure_future(r.a("never.example.test"))
        await asyncio.sleep(0.02)
        (sock,) = r._client._sockets  # white-box: the one socket
        r.close()
        assert sock.fileno() == -1
        with pytest.raises(DnsTempError) as err:
            await pending
        assert err.value.reason == "resolver closed"
        # Used again: a new socket.
        server.script = answers_at_once
        assert await r.a("again.example.test") == ["192.0.2.10"]
        r.close()
    run(go())


def test_one_socket_for_many_lookups_and_a_new_one_per_event_loop(server):
    r = make_resolver(server)

    async def go(prefix):
        await asyncio.gather(*(r.query(f"{prefix}{i}.example.test", "A") for i in range(30)))
        return r._client._sockets[:]

    first = run(go("first"))
    assert len(first) == 1
    second = run(go("second"))  # a second asyncio.run: the first loop is gone
    assert len(second) == 1 and second[0] is not first[0] and first[0].fileno() == -1
    r.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_an_ipv6_nameserver():
    async def go():
        loop = asyncio.get_running_loop()
        _, server = await loop.create_datagram_endpoint(lambda: Scripted(answers_at_once),
                                                        local_addr=("::1", 0))
        port = server.transport.get_extra_info("sockname")[1]
        r = Resolver(DnsConfig(nameserver=f"[::1]:{port}", timeout_s=0.5, attempts=1))
        assert await r.a("v6.example.test") == ["192.0.2.10"]
        r.close()
    run(go())
