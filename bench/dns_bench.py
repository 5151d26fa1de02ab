#!/usr/bin/env python3
"""DNS lookups at packet cost: the Resolver against dnspython's async resolver, CPU per lookup.

A minimal responder runs in a child process (its CPU is not counted): it
answers every question from the octets of the query, an A record
(127.0.0.2) for names under ``a.bench.``, NXDOMAIN with a SOA for names
under ``nx.bench.`` (a DNS list's usual answer) and a 60-octet TXT record
for names under ``txt.bench.``. Each target makes N lookups of distinct
names (so no cache can answer), a third of each kind, at each concurrency,
and the bench prints lookups per second and the client's CPU time per
lookup (time.process_time: this process only).

Targets, in the same run against the same responder:
  dnspython   dnspython's asyncresolver as the resolver used it before the
              transport of its own: a task per lookup, shielded, resolve()
              with a new socket per query (the old common/dns.py path)
  resolver    smtpproxy.common.dns.Resolver as shipped

Both run on uvloop when it is installed, as the daemons do (--loop asyncio
for the standard loop). ``--wire`` also prints what dnspython takes to build
a query and parse answers (the figures behind common/dnswire.py).

  python bench/dns_bench.py [--lookups 6000] [--concurrency 1,20] [--loop uvloop|asyncio] [--wire]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import struct
import subprocess
import sys
import time
import timeit

import dns.asyncresolver
import dns.exception
import dns.message
import dns.nameserver
import dns.rdatatype
import dns.resolver

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from smtpproxy.common.config import DnsConfig  # noqa: E402
from smtpproxy.common.dns import DnsTempError, Resolver  # noqa: E402
from tests.support.procs import stop_process  # noqa: E402

KINDS = (("a", "A"), ("nx", "A"), ("txt", "TXT"))
TXT_VALUE = b"v=spf1 ip4:192.0.2.0/24 include:_spf.bench.example -all bench"

# ---------------------------------------------------------------- the responder


def respond(query: bytes) -> bytes | None:
    """The answer to one query, from its octets (no parsing library: the bench measures the client)."""
    if len(query) < 17:
        return None
    end = 12
    while end < len(query) and query[end]:
        end += query[end] + 1
    qend = end + 5
    qname = query[12:end + 1].lower()
    qtype = query[end + 1:end + 3]
    header = bytearray(query[:12])
    header[2] = 0x84 | (query[2] & 0x01)   # QR, AA, RD echoed
    header[3] = 0x80                        # RA, NOERROR
    header[6:12] = b"\x00\x00\x00\x00\x00\x00"
    question = query[12:qend]
    if b"\x02nx\x05bench\x00" in qname:
        header[3] |= 3                      # NXDOMAIN
        header[8:10] = b"\x00\x01"          # one authority record: the zone's SOA
        soa_rdata = b"\x02ns\xc0\x0c" + b"\x00" + struct.pack("!IIIII", 1, 3600, 600, 86400, 60)
        soa = b"\x05bench\x00" + struct.pack("!HHIH", 6, 1, 60, len(soa_rdata)) + soa_rdata
        return bytes(header) + question + soa
    header[6:8] = b"\x00\x01"
    if qtype == b"\x00\x10":
        rdata = bytes((len(TXT_VALUE),)) + TXT_VALUE
        rr = b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 300, len(rdata)) + rdata
    else:
        rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + bytes((127, 0, 0, 2))
    return bytes(header) + question + rr


def serve() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    print(sock.getsockname()[1], flush=True)
    while True:
        data, peer = sock.recvfrom(65535)
        answer = respond(data)
        if answer is not None:
            sock.sendto(answer, peer)


# ---------------------------------------------------------------- the old path


class DnspythonResolver:
    """The lookup path of common/dns.py before its own transport, reproduced for comparison."""

    def __init__(self, port: int, timeout_s: float = 5.0, attempts: int = 2):
        res = dns.asyncresolver.Resolver(configure=False)
        res.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", port)]
        res.lifetime = timeout_s
        res.timeout = timeout_s / attempts
        res.use_edns(0, 0, 1232)
        res.cache = None
        self._res = res
        self._inflight: dict[tuple[str, str], asyncio.Task] = {}

    async def query(self, name: str, rdtype: str) -> list:
        key = (name, rdtype)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(name, rdtype))
            self._inflight[key] = task
            task.add_done_callback(lambda t, key=key: self._inflight.pop(key, None))
        return list(await asyncio.shield(task))

    async def _fetch(self, name: str, rdtype: str) -> tuple:
        qname = dns.name.from_text(name)
        try:
            answer = await self._res.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            response = exc.responses().get(qname)
            if response is not None:
                response.resolve_chaining()  # the old negative-TTL read
            return ()
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsTempError(name, rdtype, str(exc)) from None
        if answer.rrset is None:
            return ()
        _ttl = answer.chaining_result.minimum_ttl
        return tuple(answer.rrset)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- the runs


def names(count: int, run: str) -> list[tuple[str, str]]:
    out = []
    for i in range(count):
        kind, rdtype = KINDS[i % len(KINDS)]
        out.append((f"h{i}-{run}.{kind}.bench.", rdtype))
    return out


async def lookups(resolver, work: list[tuple[str, str]], concurrency: int) -> tuple[int, int]:
    queue = iter(work)
    ok = failed = 0

    async def worker() -> None:
        nonlocal ok, failed
        for name, rdtype in queue:
            try:
                await resolver.query(name, rdtype)
                ok += 1
            except DnsTempError:
                failed += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, failed


def measure(target: str, port: int, count: int, concurrency: int, loop_factory) -> dict:
    if target == "resolver":
        resolver = Resolver(DnsConfig(nameserver=f"127.0.0.1:{port}", cache_size=count * 2))
    else:
        resolver = DnspythonResolver(port)
    work = names(count, f"{target}-{concurrency}")
    warm = names(200, f"{target}-{concurrency}-warm")

    async def go() -> tuple[int, int, float, float]:
        await lookups(resolver, warm, concurrency)  # sockets opened, code paths warm
        cpu, wall = time.process_time(), time.perf_counter()
        ok, failed = await lookups(resolver, work, concurrency)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        resolver.close()
        return ok, failed, cpu, wall

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        ok, failed, cpu, wall = runner.run(go())
    return {"target": target, "concurrency": concurrency, "ok": ok, "failed": failed,
            "per_s": count / wall, "cpu_ms": cpu * 1000 / count}


def wire_costs() -> None:
    query = dns.message.make_query("host123.a.bench.", "A", use_edns=0, payload=1232)
    wire = query.to_wire()
    answers = {kind: respond(dns.message.make_query(f"host123.{kind}.bench.", rdtype).to_wire())
               for kind, rdtype in KINDS}
    number = 5000
    rows = [("make_query + to_wire", lambda: dns.message.make_query(
        "host123.a.bench.", "A", use_edns=0, payload=1232).to_wire())]
    rows += [(f"from_wire ({kind})", lambda a=a: dns.message.from_wire(a)) for kind, a in answers.items()]
    print("dnspython wire costs (us per call):")
    for label, fn in rows:
        print(f"  {label:24s} {timeit.timeit(fn, number=number) / number * 1e6:7.1f}")
    assert wire


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lookups", type=int, default=6000)
    parser.add_argument("--concurrency", default="1,20")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--targets", default="dnspython,resolver")
    parser.add_argument("--wire", action="store_true")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    loop_factory = asyncio.new_event_loop
    loop_name = "asyncio"
    if args.loop == "uvloop":
        try:
            import uvloop
            loop_factory, loop_name = uvloop.new_event_loop, "uvloop"
        except ImportError:
            pass
    if args.wire:
        wire_costs()
    responder = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"],
                                 stdout=subprocess.PIPE, text=True)
    try:
        port = int(responder.stdout.readline())
        print(f"{args.lookups} distinct lookups per run (A, NXDOMAIN, TXT in turn), {loop_name}, "
              f"responder in pid {responder.pid}")
        print(f"{'target':10s} {'conc':>4s} {'lookups/s':>10s} {'CPU ms/lookup':>14s} {'failed':>7s}")
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            for target in args.targets.split(","):
                row = measure(target, port, args.lookups, concurrency, loop_factory)
                print(f"{row['target']:10s} {concurrency:4d} {row['per_s']:10.0f} "
                      f"{row['cpu_ms']:14.3f} {row['failed']:7d}", flush=True)
    finally:
        stop_process(responder, 5)


if __name__ == "__main__":
    main()
