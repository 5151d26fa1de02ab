"""DNS over UDP (and TCP when an answer is truncated) for the resolver, at the cost of a packet.

One ``DnsClient`` per event loop, sending to the configured nameservers.

Contract:

- ``lookup(qname_wire, rdtype, done)`` sends the question and returns at
  once; ``done(response, None)`` or ``done(None, reason)`` is called exactly
  once, from the event loop, within ``timeout_s`` (unless the client is
  closed first: then ``done(None, "resolver closed")``). A response is
  NOERROR, NXDOMAIN or YXDOMAIN; any other rcode, a timeout, a malformed
  answer or a network error is a reason (text) instead.
- No task and no socket per lookup: one connected UDP socket per nameserver
  (opened on first use, kept until ``close``), read with the loop's reader
  callback; each lookup is a small record in a dict keyed by its 16-bit
  message id, plus one timer. Only a truncated answer costs more: a TCP
  connection (and a task) for that lookup alone.
- An answer counts only if it carries a pending id, comes from the
  nameserver's address and port (the socket is connected: the kernel drops
  anything else) and repeats the question; anything else is ignored, so a
  forged or stray datagram cannot end a lookup. Ids come from the
  operating system's random source.
- ``attempts`` UDP tries share ``timeout_s``, each given
  ``timeout_s / attempts``; with several nameservers each try goes to the
  next one. A late answer to an earlier try still counts. SERVFAIL, REFUSED
  and the like move on to the next nameserver at once when there is another
  one and a try left, else end the lookup. A lookup that waits never holds up another: each
  has its own timer and the socket is shared, not locked.
- ``close()`` ends pending lookups and closes the sockets; safe to call
  twice, and after the event loop itself was closed.

A socket of our own rather than an asyncio datagram transport: it can be
closed even when its loop is gone (a command that runs one loop per file).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import weakref
from collections.abc import Callable

from smtpproxy.common.dnswire import (
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    RCODE_YXDOMAIN,
    MalformedMessage,
    Response,
    make_query,
    parse_response,
)

__all__ = ["DnsClient"]

Done = Callable[[Response | None, str | None], None]

MAX_MESSAGE = 65535
# Datagrams read per wake-up before yielding to the loop (a burst of answers
# is read in one go, but cannot starve the rest).
READ_BATCH = 64
# Lookups in flight per nameserver: beyond it a lookup fails at once rather
# than hunt for a free id among the 65536.
MAX_PENDING = 30_000
_RCODE_TEXT = {1: "FORMERR", 2: "SERVFAIL", 4: "NOTIMP", 5: "REFUSED", 9: "NOTAUTH"}


class _Lookup:
    __slots__ = ("qname", "rdtype", "done", "deadline", "tries", "channel", "msg_id", "wire",
                 "timer", "ids", "tcp")

    def __init__(self, qname: bytes, rdtype: int, done: Done, deadline: float):
        self.qname = qname
        self.rdtype = rdtype
        self.done: Done | None = done
        self.deadline = deadline
        self.tries = 0
        self.channel: _Channel | None = None
        self.msg_id = 0
        self.wire = b""
        self.timer: asyncio.TimerHandle | None = None
        # Every (channel, id) it is registered under: late answers to earlier tries count.
        self.ids: list[tuple[_Channel, int]] = []
        self.tcp: asyncio.Task | None = None


class _Channel:
    """One nameserver's UDP socket and the lookups waiting on it."""

    __slots__ = ("address", "sock", "pending")

    def __init__(self, address: tuple[str, int]):
        self.address = address
        self.sock: socket.socket | None = None
        self.pending: dict[int, _Lookup] = {}


class DnsClient:
    def __init__(self, loop: asyncio.AbstractEventLoop, nameservers: list[tuple[str, int]], *,
                 timeout_s: float, attempts: int, payload: int):
        if not nameservers:
            raise ValueError("no nameserver")
        self.loop = loop
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.try_s = timeout_s / attempts
        self.payload = payload
        self._channels = [_Channel(ns) for ns in nameservers]
        self._sockets: list[socket.socket] = []
        self.closed = False
        # A client dropped without close() (its loop ended) still closes its
        # sockets, without a ResourceWarning.
        self._finalizer = weakref.finalize(self, _close_sockets, self._sockets)

    # ------------------------------------------------------------ lookups

    def lookup(self, qname_wire: bytes, rdtype: int, done: Done) -> None:
        lookup = _Lookup(qname_wire, rdtype, done, self.loop.time() + self.timeout_s)
        if self.closed:
            self._finish(lookup, None, "resolver closed")
            return
        self._try(lookup)

    def _try(self, lookup: _Lookup) -> None:
        """Send the next UDP try and arm its timer."""
        channel = self._channels[lookup.tries % len(self._channels)]
        lookup.tries += 1
        if channel is not lookup.channel:
            if len(channel.pending) >= MAX_PENDING:
                self._finish(lookup, None, "too many lookups in flight")
                return
            msg_id = secrets.randbits(16)
            while msg_id in channel.pending:
                msg_id = secrets.randbits(16)
            channel.pending[msg_id] = lookup
            lookup.ids.append((channel, msg_id))
            lookup.channel, lookup.msg_id = channel, msg_id
            lookup.wire = make_query(msg_id, lookup.qname, lookup.rdtype, self.payload)
        try:
            sock = channel.sock or self._open(channel)
            sock.send(lookup.wire)
        except BlockingIOError:
            pass  # the send buffer is full: as if the datagram were lost, the timer retries
        except OSError as exc:
            self._failed_try(lookup, f"{type(exc).__name__}: {exc}")
            return
        lookup.timer = self.loop.call_at(min(self.loop.time() + self.try_s, lookup.deadline),
                                         self._timed_out, lookup)

    def _open(self, channel: _Channel) -> socket.socket:
        host, port = channel.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((host, port))  # UDP: no packet, just the peer the kernel filters on
            self.loop.add_reader(sock.fileno(), self._readable, channel)
        except BaseException:
            sock.close()
            raise
        channel.sock = sock
        self._sockets.append(sock)
        return sock

    def _timed_out(self, lookup: _Lookup) -> None:
        lookup.timer = None
        self._failed_try(lookup, "timeout")

    def _failed_try(self, lookup: _Lookup, reason: str) -> None:
        """This try is over: another if tries and time are left, else the lookup ends."""
        if lookup.timer is not None:
            lookup.timer.cancel()
            lookup.timer = None
        if lookup.tries < self.attempts and self.loop.time() < lookup.deadline and not self.closed:
            self._try(lookup)
        else:
            self._finish(lookup, None, reason)

    def _finish(self, lookup: _Lookup, response: Response | None, reason: str | None) -> None:
        done, lookup.done = lookup.done, None
        if done is None:
            return  # already ended (a late TCP answer after the timeout, say)
        if lookup.timer is not None:
            lookup.timer.cancel()
            lookup.timer = None
        for channel, msg_id in lookup.ids:
            if channel.pending.get(msg_id) is lookup:
                del channel.pending[msg_id]
        lookup.ids.clear()
        if (lookup.tcp is not None and not self.loop.is_closed()
                and lookup.tcp is not asyncio.current_task(self.loop)):
            lookup.tcp.cancel()
        lookup.tcp = None
        done(response, reason)

    # ------------------------------------------------------------ answers

    def _readable(self, channel: _Channel) -> None:
        sock = channel.sock
        if sock is None:
            return
        for _ in range(READ_BATCH):
            try:
                data = sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # ICMP port unreachable and the like, reported on the connected
                # socket: every try waiting on this nameserver has failed.
                reason = f"{type(exc).__name__}: {exc}"
                for lookup in list(channel.pending.values()):
                    if lookup.channel is channel and lookup.done is not None:
                        self._failed_try(lookup, reason)
                continue
            if len(data) < 12:
                continue
            lookup = channel.pending.get(int.from_bytes(data[:2], "big"))
            if lookup is not None:
                self._answered(lookup, channel, data)

    def _answered(self, lookup: _Lookup, channel: _Channel, data: bytes) -> None:
        msg_id = int.from_bytes(data[:2], "big")
        try:
            response = parse_response(data, msg_id, lookup.qname, lookup.rdtype)
        except MalformedMessage as exc:
            self._finish(lookup, None, f"malformed answer: {exc}")
            return
        if response is None:
            return  # not an answer to this question: keep waiting
        if response.truncated:
            self._to_tcp(lookup, channel, msg_id)
            return
        self._settle(lookup, response)

    def _settle(self, lookup: _Lookup, response: Response) -> None:
        if response.rcode in (RCODE_NOERROR, RCODE_NXDOMAIN, RCODE_YXDOMAIN):
            self._finish(lookup, response, None)
            return
        reason = _RCODE_TEXT.get(response.rcode, f"rcode {response.rcode}")
        if len(self._channels) > 1 and lookup.tries < self.attempts:
            self._failed_try(lookup, reason)  # another nameserver may know better
        else:
            self._finish(lookup, None, reason)

    # ------------------------------------------------------------ TCP

    def _to_tcp(self, lookup: _Lookup, channel: _Channel, msg_id: int) -> None:
        if lookup.tcp is not None:
            return  # already asking over TCP
        if lookup.timer is not None:
            lookup.timer.cancel()
        # What is left of the lookup's time: no more UDP tries.
        lookup.timer = self.loop.call_at(lookup.deadline, self._timed_out_tcp, lookup)
        wire = make_query(msg_id, lookup.qname, lookup.rdtype, self.payload)
        lookup.tcp = self.loop.create_task(self._ask_tcp(lookup, channel.address, msg_id, wire))

    def _timed_out_tcp(self, lookup: _Lookup) -> None:
        lookup.timer = None
        self._finish(lookup, None, "timeout")

    async def _ask_tcp(self, lookup: _Lookup, address: tuple[str, int], msg_id: int,
                       wire: bytes) -> None:
        writer = None
        try:
            reader, writer = await asyncio.open_connection(*address)
            writer.write(len(wire).to_bytes(2, "big") + wire)
            size = int.from_bytes(await reader.readexactly(2), "big")
            data = await reader.readexactly(size)
            response = parse_response(data, msg_id, lookup.qname, lookup.rdtype)
        except MalformedMessage as exc:
            self._finish(lookup, None, f"malformed answer: {exc}")
        except (OSError, asyncio.IncompleteReadError) as exc:
            self._finish(lookup, None, f"TCP {type(exc).__name__}: {exc}")
        else:
            if response is None or response.truncated:
                self._finish(lookup, None, "TCP answer does not match the question")
            else:
                self._settle(lookup, response)
        finally:
            if writer is not None:
                writer.close()

    # ------------------------------------------------------------ closing

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for channel in self._channels:
            for lookup in list(channel.pending.values()):
                self._finish(lookup, None, "resolver closed")
            if channel.sock is not None:
                # A closed loop has nothing to remove (asyncio); uvloop says so.
                with contextlib.suppress(RuntimeError, ValueError, OSError):
                    if not self.loop.is_closed():
                        self.loop.remove_reader(channel.sock.fileno())
                channel.sock = None
        self._finalizer()


def _close_sockets(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()
    sockets.clear()
