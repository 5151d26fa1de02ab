"""A small authoritative DNS server on loopback, for tests that need real DNS.

It speaks DNS over UDP and TCP on one port of 127.0.0.1 (dnspython does the
wire format) and runs its own event loop in a background thread, so a test
can use it from synchronous code or from any event loop.

What it promises:

- Answers from the records it was given (Python data or zone-file text),
  authoritatively: NOERROR with data; NODATA (NOERROR, empty answer, SOA in
  the authority section) when the name exists without that type, including
  empty non-terminals; NXDOMAIN (with SOA) when the name does not exist.
  The SOA's TTL and minimum are ``negative_ttl``, so RFC 2308 negative
  caching can be tested. CNAMEs are followed inside the data (at most 8 hops),
  as an authoritative server does for in-zone targets.
- Echoes an EDNS OPT record when the query carries one (some resolvers stall
  without it) and truncates UDP answers over the client's payload size (512
  without EDNS) with TC set, so clients fall back to TCP.
- Failure simulation, per name and optionally per type: ``drop`` (never
  answer: the client times out) and ``servfail``.
- Records every question it saw in ``queries`` (bounded), so tests can tell
  a cache hit from a lookup without measuring time, and any exception raised
  while answering in ``errors`` (no reply is sent for such a query).
  ``query_count`` counts every question ever asked (not bounded like
  ``queries``), for benchmarks that report queries per message.
- ``delay_s`` (settable while serving): every reply is sent that long after
  its query arrived, as from a server some network distance away; replies
  are delayed independently, so concurrent queries overlap their waits.
- Bounded: a UDP or TCP message over 64 KiB is ignored, a TCP connection is
  closed after 30 s idle or 1000 queries, ``stop`` waits at most 5 s.

Record data (``records=``): {name: [(TYPE, value) or (TYPE, value, ttl), ...]}.
A value is presentation text as in a zone file ("10 mx.example.com.",
"192.0.2.1"), a dnspython Rdata, or for TXT/SPF the record's text itself
(not quoted; split into 255-octet character-strings) or a list of its
character-strings (str or bytes).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Iterable, Mapping

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.SPF
import dns.rdtypes.ANY.TXT
import dns.rrset
import dns.zone

MAX_CHAIN = 8
MAX_MESSAGE = 65535
TCP_IDLE_S = 30.0
TCP_MAX_QUERIES = 1000
ANY_TYPE = None  # a rule for every type of a name

RecordSpec = tuple  # (TYPE, value) or (TYPE, value, ttl)


def _name(name: str | dns.name.Name) -> dns.name.Name:
    if isinstance(name, dns.name.Name):
        return name
    return dns.name.from_text(name.rstrip(".") + "." if name.strip(".") else ".")


def _as_bytes(s: str | bytes) -> bytes:
    # The OpenSPF suite writes non-ASCII test bytes as \x escapes in YAML
    # strings; its reference driver hands them to pyspf encoded as UTF-8.
    return s if isinstance(s, bytes) else s.encode("utf-8")


def make_rdata(rdtype: str, value) -> dns.rdata.Rdata:
    """One Rdata from the forms the module docstring lists."""
    rtype = dns.rdatatype.RdataType.make(rdtype)
    if isinstance(value, dns.rdata.Rdata):
        return value
    if rtype in (dns.rdatatype.TXT, dns.rdatatype.SPF):
        if isinstance(value, str | bytes):
            raw = _as_bytes(value)
            strings = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
        else:
            strings = [_as_bytes(s) for s in value]
        cls = dns.rdtypes.ANY.TXT.TXT if rtype == dns.rdatatype.TXT else dns.rdtypes.ANY.SPF.SPF
        return cls(dns.rdataclass.IN, rtype, strings)
    return dns.rdata.from_text(dns.rdataclass.IN, rtype, str(value), origin=dns.name.root,
                               relativize=False)


class DnsTestServer:
    """See the module docstring. Use as a context manager or start()/stop()."""

    def __init__(self, records: Mapping[str, Iterable[RecordSpec]] | None = None, *,
                 zone_text: str | None = None, origin: str = ".",
                 default_ttl: int = 300, negative_ttl: int = 60, host: str = "127.0.0.1",
                 delay_s: float = 0.0):
        self.host = host
        self.delay_s = delay_s
        self.query_count = 0
        self.port = 0
        self.default_ttl = default_ttl
        self.negative_ttl = negative_ttl
        self.queries: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=10_000)
        # Exceptions while answering (should stay empty; tests may assert so).
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._data: dict[dns.name.Name, dict[int, dns.rrset.RRset]] = {}
        # Every owner name and its ancestors (empty non-terminals): a name
        # exists iff it is here, without scanning all the data per NXDOMAIN.
        self._names: set[dns.name.Name] = set()
        self._soas: dict[dns.name.Name, dns.rrset.RRset] = {}
        self._drop: set[tuple[dns.name.Name, int | None]] = set()
        self._servfail: set[tuple[dns.name.Name, int | None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        if records:
            self.add_records(records)
        if zone_text:
            self.load_zone(zone_text, origin)

    # ------------------------------------------------------------ data

    def add(self, name: str, rdtype: str, value, ttl: int | None = None) -> None:
        owner = _name(name)
        rdata = make_rdata(rdtype, value)
        with self._lock:
            node = self._data.setdefault(owner, {})
            self._add_name(owner)
            rrset = node.get(rdata.rdtype)
            if rrset is None:
                rrset = node[rdata.rdtype] = dns.rrset.RRset(owner, dns.rdataclass.IN, rdata.rdtype)
            rrset.add(rdata, self.default_ttl if ttl is None else ttl)

    def add_records(self, records: Mapping[str, Iterable[RecordSpec]]) -> None:
        for name, specs in records.items():
            for spec in specs:
                self.add(name, spec[0], spec[1], spec[2] if len(spec) > 2 else None)

    def load_zone(self, text: str, origin: str) -> None:
        """Zone-file text; its SOA (if any) answers the negative replies under its origin."""
        zone = dns.zone.from_text(text, origin=_name(origin), relativize=False,
                                  check_origin=False)
        with self._lock:
            for owner, node in zone.nodes.items():
                for rdataset in node.rdatasets:
                    rrset = dns.rrset.RRset(owner, rdataset.rdclass, rdataset.rdtype)
                    rrset.update(rdataset)
                    if rdataset.rdtype == dns.rdatatype.SOA:
                        self._soas[owner] = rrset
                    else:
                        self._data.setdefault(owner, {})[rdataset.rdtype] = rrset
                        self._add_name(owner)

    def _add_name(self, owner: dns.name.Name) -> None:
        name = owner
        while name not in self._names:
            self._names.add(name)
            if name == dns.name.root:
                break
            name = name.parent()

    def drop(self, name: str, rdtype: str | None = ANY_TYPE) -> None:
        """Never answer queries for name (and type): the client times out."""
        with self._lock:
            self._drop.add((_name(name), self._type(rdtype)))

    def servfail(self, name: str, rdtype: str | None = ANY_TYPE) -> None:
        with self._lock:
            self._servfail.add((_name(name), self._type(rdtype)))

    def clear(self) -> None:
        """Forget every record and failure rule (and the query log)."""
        with self._lock:
            self._data.clear()
            self._names.clear()
            self._soas.clear()
            self._drop.clear()
            self._servfail.clear()
            self.queries.clear()

    def count(self, name: str, rdtype: str) -> int:
        """How many times this question reached the server."""
        key = (_name(name).to_text().lower(), rdtype.upper())
        return sum(1 for q in list(self.queries) if (q[0], q[1]) == key)

    @staticmethod
    def _type(rdtype: str | None) -> int | None:
        return None if rdtype is None else int(dns.rdatatype.RdataType.make(rdtype))

    # ------------------------------------------------------------ answering

    def _rule(self, rules: set, name: dns.name.Name, rtype: int) -> bool:
        return (name, None) in rules or (name, rtype) in rules

    def _exists(self, name: dns.name.Name) -> bool:
        # A name exists if it owns records or is an empty non-terminal.
        return name in self._names

    def _soa_for(self, name: dns.name.Name) -> dns.rrset.RRset:
        for apex in sorted(self._soas, key=lambda n: len(n), reverse=True):
            if name.is_subdomain(apex):
                return self._soas[apex]
        return dns.rrset.from_text(
            dns.name.root, self.negative_ttl, "IN", "SOA",
            f"ns.test. hostmaster.test. 1 3600 600 86400 {self.negative_ttl}")

    def answer(self, wire: bytes, transport: str) -> dns.message.Message | None:
        """The response to one query message; None: send nothing."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None  # not worth a FORMERR in a test server
        # make_response echoes EDNS (version 0, our payload) when the query had it.
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response.set_rcode(dns.rcode.NOTIMP)
            return response
        question = query.question[0]
        qname, rtype = question.name, int(question.rdtype)
        self.queries.append((qname.to_text().lower(), dns.rdatatype.to_text(rtype), transport))
        self.query_count += 1
        with self._lock:
            name = qname
            for _hop in range(MAX_CHAIN):
                if self._rule(self._drop, name, rtype):
                    return None
                if self._rule(self._servfail, name, rtype):
                    response.answer.clear()
                    response.set_rcode(dns.rcode.SERVFAIL)
                    return response
                node = self._data.get(name, {})
                if rtype in node:
                    # A copy: add() may change the stored set while this is on the wire.
                    response.answer.append(node[rtype].copy())
                    return response
                cname = node.get(dns.rdatatype.CNAME)
                if cname is None:
                    break
                response.answer.append(cname.copy())
                name = cname[0].target
            if not self._exists(name):
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa_for(name))
        return response

    def _udp_wire(self, query_wire: bytes, response: dns.message.Message) -> bytes:
        # The client's advertised size (the OPT it sent), 512 without EDNS (RFC 1035, RFC 6891).
        limit = max(512, response.request_payload) if response.edns >= 0 else 512
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(dns.message.from_wire(query_wire))
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire(max_size=limit)

    # ------------------------------------------------------------ serving

    @property
    def nameserver(self) -> str:
        """The value for dns.nameserver: "127.0.0.1:PORT"."""
        return f"{self.host}:{self.port}"

    def start(self) -> DnsTestServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(ready))
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
            finally:
                # TCP clients still connected: end their handlers before the loop goes.
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name="dns-test-server", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            self.stop()
            raise RuntimeError(f"DNS test server did not start: {failure[:1]}")
        return self

    async def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                if len(data) > MAX_MESSAGE:
                    return
                try:
                    response = server.answer(data, "udp")
                    if response is None:
                        return
                    wire = server._udp_wire(data, response)
                except Exception as exc:  # a bug in the test data or here: tests check .errors
                    server.errors.append(repr(exc))
                    return
                if server.delay_s > 0:
                    loop.call_later(server.delay_s, self._send, wire, addr)
                else:
                    self.transport.sendto(wire, addr)

            def _send(self, wire, addr):
                if not self.transport.is_closing():
                    self.transport.sendto(wire, addr)

        # UDP and TCP on the same port: take a free UDP port, then try TCP on
        # it; another process may hold that TCP port, so a few tries.
        for _attempt in range(20):
            udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=(self.host, 0))
            port = udp.get_extra_info("sockname")[1]
            try:
                tcp = await asyncio.start_server(self._tcp_client, self.host, port)
            except OSError:
                udp.close()
                continue
            break
        else:
            raise RuntimeError("no port free for both UDP and TCP")
        self.port = port
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            udp.close()
            tcp.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(tcp.wait_closed(), 2)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(TCP_MAX_QUERIES):
                header = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_S)
                length = int.from_bytes(header, "big")
                data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE_S)
                try:
                    response = self.answer(data, "tcp")
                    if response is None:
                        continue  # dropped: the client waits for its own timeout
                    wire = response.to_wire(max_size=MAX_MESSAGE)
                except Exception as exc:  # a bug in the test data or here: tests check .errors
                    self.errors.append(repr(exc))
                    continue
                if self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)
                writer.write(len(wire).to_bytes(2, "big") + wire)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, dns.exception.DNSException):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop already finished
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> DnsTestServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
