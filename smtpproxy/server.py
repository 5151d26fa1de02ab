"""The client side: an aiosmtpd SMTP subclass that Postfix's before-queue smtpd talks to.

Postfix (SMTPD_PROXY_README) opens one connection per transaction and sends
EHLO, XFORWARD, MAIL and RCPT lines unmodified (DSN parameters included),
DATA with long lines unsplit, and QUIT. Stock aiosmtpd accepts none of
XFORWARD, RET/ENVID/AUTH on MAIL, NOTIFY/ORCPT on RCPT or lines over 1001
bytes, so the verbs that matter are overridden here; aiosmtpd keeps the
connection, the command loop and the idle timer.

The promise: MAIL and every RCPT are relayed to the downstream listener as
they arrive and its reply is relayed back, so per-recipient rejects work; at
end-of-data the message goes through the delivery pipeline (delivery.py:
scan, header edits, signing, relay), and the client gets 250 for the message
only when the downstream said 250. Every failure of the downstream, at any
verb, goes through one method, ``_downstream_failed``: a generic 451 4.3.0,
the detail in the log, the downstream connection dropped so nothing is
queued twice or half. This module holds the verbs only; admission is the
daemon's (daemon.py), every reply text is in replies.py.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import time
from typing import Protocol

from aiosmtpd.smtp import SMTP, Session

from smtpproxy import replies, xforward
from smtpproxy.budget import InflightBudget, Reservation
from smtpproxy.common.config import Config, ListenerConfig
from smtpproxy.common.log import quote
from smtpproxy.delivery import Delivery
from smtpproxy.relay import Downstream, DownstreamError, DownstreamPool, Reply
from smtpproxy.transaction import ClientInfo, Transaction
from smtpproxy.wire import BareNewline, has_control_characters, params_valid, parse_path, read_data

logger = logging.getLogger("smtpproxy")

EHLO_KEYWORDS = ("8BITMIME", "SMTPUTF8", "DSN", "ENHANCEDSTATUSCODES")
XFORWARD_KEYWORD = "XFORWARD " + " ".join(xforward.ATTRIBUTES)

def _reset_session_ids() -> None:
    global _session_ids, _id_prefix
    _session_ids = itertools.count(1)
    _id_prefix = f"{os.getpid() & 0xFFFF:04X}"


_reset_session_ids()
# Each worker process (common/workers.py) numbers its sessions under its own prefix.
os.register_at_fork(after_in_child=_reset_session_ids)


def new_session_id() -> str:
    return f"{_id_prefix}{next(_session_ids):08X}"


class SessionOver(ConnectionResetError):
    """The session ends here: nothing more the client sent is read as a command.

    Raised after a 421 or 521 that closes the connection (DATA timeout, bare
    newline refused) and when the client has half-closed and every command
    it sent has been answered. aiosmtpd's command loop lets a
    ConnectionResetError end it; ``_handle_client`` closes the connection.
    """


class _ClientReader(asyncio.StreamReader):
    """The client's byte stream: its end (the client half-closed, and all it
    sent before has been read) ends the session instead of failing a read."""

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        try:
            return await super().readuntil(separator)
        except asyncio.IncompleteReadError:
            raise SessionOver("client closed its side of the connection") from None


# aiosmtpd's command loop answers these itself, without an enhanced status
# code; the client gets ours instead (``ProxySMTP.push``).
_AIOSMTPD_REPLIES = {
    "500 Command line too long": replies.LINE_TOO_LONG,
    "500 Error: bad syntax": replies.BAD_SYNTAX,
}
_AIOSMTPD_UNKNOWN_COMMAND = '500 Error: command "'


class _NoHooks:
    """aiosmtpd wants a handler object; every verb we serve is overridden."""


_NO_HOOKS = _NoHooks()


def _refuse_auth(mechanism: str, login: bytes, password: bytes) -> bool:
    return False


class ProxySession(Session):
    def __init__(self, loop: asyncio.AbstractEventLoop):
        super().__init__(loop)
        self.id = new_session_id()
        self.xforward: dict[str, str | None] = {}


# The log's words for where a downstream failure happened, by metrics stage.
_STAGES = {"mail": "unavailable at MAIL", "rcpt": "failed at RCPT", "data": "failed at end of data"}


class Service(Protocol):
    """What a session needs of the daemon (daemon.ProxyService)."""

    cfg: Config
    sessions: set
    stats: object  # daemon.ProxyStats
    delivery: Delivery
    inflight: InflightBudget

    def admit(self, session: ProxySMTP) -> str | None: ...

    def pool(self, downstream: str) -> DownstreamPool: ...


class ProxySMTP(SMTP):
    # Commands: Postfix's XFORWARD and MAIL with DSN and SMTPUTF8 can exceed
    # 512 bytes. The reader limit also bounds one readuntil() during DATA.
    command_size_limit = 4096
    command_size_limits = collections.defaultdict(lambda: ProxySMTP.command_size_limit)
    line_length_limit = 65536

    _verbs: tuple[str, ...] = ()

    def __init__(self, service: Service, listener: ListenerConfig, hostname: str):
        self.service = service
        self.listener = listener
        self.cfg: Config = service.cfg  # a reload never changes a running session
        proxy = self.cfg.proxy
        # aiosmtpd's own __init__ introspects the class and the handler with
        # inspect.getmembers() on every connection (about a third of our CPU
        # per message, since Postfix opens one connection per message). The
        # state it sets up is the same every time, so it is set here directly;
        # tests/unit/test_proxy_server.py checks that it matches aiosmtpd's.
        self._init_aiosmtpd_state(hostname, proxy.max_message_size_bytes, proxy.command_timeout_s)
        self.downstream: Downstream | None = None
        self.in_transaction = False
        # The 4xx of a transaction that failed before its end of data: later
        # RCPTs and the DATA get it, until RSET, MAIL or a new greeting.
        self.tempfailed: Reply | None = None
        self.busy = False  # between the end of DATA and our reply to it
        self._txn_started = 0.0

    def _init_aiosmtpd_state(self, hostname: str, data_size_limit: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self.__ident__ = replies.GREETING_IDENT
        self.loop = loop
        asyncio.StreamReaderProtocol.__init__(
            self,
            _ClientReader(loop=loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=loop,
        )
        self.event_handler = _NO_HOOKS
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = True
        self._decode_data = False
        self.hostname = hostname
        self.tls_context = None
        self.require_starttls = None
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = True
        self._proxy_timeout = None
        self._authenticator = None
        self._auth_callback = _refuse_auth
        self._auth_required = False
        self._auth_methods = {}  # no AUTH: Postfix never authenticates to a proxy
        self._handle_hooks = {}
        self._ehlo_hook_ver = None
        cls = type(self)
        if not cls._verbs:
            cls._verbs = tuple(m[5:] for m in dir(cls) if m.startswith("smtp_"))
        self._smtp_methods = {verb: getattr(self, "smtp_" + verb) for verb in cls._verbs}
        self._enforce_call_limit = False

    # ---------------------------------------------------------- connection

    def _create_session(self) -> Session:
        return ProxySession(self.loop)

    async def _handle_client(self) -> None:
        try:
            refusal = self.service.admit(self)
            if refusal is not None:
                await self.push(refusal)
                return
            await super()._handle_client()
        except ConnectionResetError:
            pass  # SessionOver, or the client went away; connection_lost logs a transaction cut short
        finally:
            # However the command loop ends (QUIT, EOF, an error while the
            # client is already gone), the connection and its slot are freed.
            if self.transport is not None:
                self.transport.close()

    def eof_received(self) -> bool | None:
        # A client may pipeline a whole transaction and half-close: every
        # command it sent still gets its reply (aiosmtpd would cancel the
        # command loop here). The reader hands out what is buffered, then
        # its end ends the loop (SessionOver) and the connection is closed.
        return asyncio.StreamReaderProtocol.eof_received(self)

    def _timeout_cb(self) -> None:
        # aiosmtpd closes an idle connection without a word; the client is
        # told why first, as Postfix's smtpd does.
        if self.transport is None or self.transport.is_closing():
            return
        logger.info("%s: client=%s timeout after %ss idle, closing", self.session_id,
                    self.peer_addr, self._timeout_duration)
        self.transport.write(replies.TIMEOUT.encode() + b"\r\n")
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()
        self.transport.close()

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str) and status.startswith("500 "):
            ours = _AIOSMTPD_REPLIES.get(status)
            if ours is None and status.startswith(_AIOSMTPD_UNKNOWN_COMMAND):
                ours = replies.UNKNOWN_COMMAND
            if ours is not None:
                logger.info("%s: client=%s %s", self.session_id, self.peer_addr, ours)
                status = ours
        await super().push(status)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.service.sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.service.sessions.discard(self)
        super().connection_lost(error)
        if self.in_transaction:
            self._log_transaction(size=None, verdict="aborted", reply="client disconnected")
            self.in_transaction = False
            self._drop_downstream()
        self._release_downstream()

    async def handle_exception(self, error: Exception) -> str:
        # A bug of ours: never show it to the client, never leave a
        # half-open downstream transaction behind.
        logger.exception("%s: internal error", self.session_id)
        self._drop_downstream()
        self._end_transaction()
        return replies.TEMPFAIL

    @property
    def session_id(self) -> str:
        return self.session.id if self.session is not None else "-"

    @property
    def peer_addr(self) -> str:
        peer = self.session.peer if self.session is not None else None
        return str(peer[0]) if peer else "unknown"

    async def push_reply(self, reply: Reply) -> None:
        for line in replies.lines(reply.code, reply.text):
            await self.push(line)

    # ---------------------------------------------------------- downstream

    async def _begin_downstream(self, mail_arg: bytes) -> Reply:
        """XFORWARD + MAIL downstream, on this session's connection, a pooled
        one, or a new one. A pooled connection the listener has meanwhile
        closed fails at its first command; then a fresh one is tried once.
        The session holds the connection from its first command on, so
        however the session ends, ``_release_downstream`` sees it."""
        assert self.session is not None
        pool = self.service.pool(self.listener.downstream)
        if self.downstream is not None and not self.downstream.idle:
            self._drop_downstream()
        if self.downstream is None:
            self.downstream = pool.take_idle()
            if self.downstream is not None:
                try:
                    return await self.downstream.begin(self.session.xforward, mail_arg)
                except DownstreamError as exc:
                    logger.debug("%s: pooled downstream connection unusable: %s", self.session_id, exc)
                    self._drop_downstream()
            self.downstream = await pool.connect()
        return await self.downstream.begin(self.session.xforward, mail_arg)

    def _release_downstream(self) -> None:
        """Session over: an idle connection goes back to the pool; anything else
        (a transaction open, a command in flight) is closed by the pool."""
        if self.downstream is not None:
            downstream, self.downstream = self.downstream, None
            self.service.pool(self.listener.downstream).release(downstream)

    def _drop_downstream(self) -> None:
        """Close at once; Postfix discards a transaction left open this way."""
        if self.downstream is not None:
            self.downstream.close()
            self.downstream = None

    async def _abandon_downstream_transaction(self) -> None:
        if self.downstream is None:
            return
        problem = await self.downstream.abandon()
        if problem:
            logger.warning("%s: abandoning downstream transaction: %s", self.session_id, problem)
            self._drop_downstream()

    def _end_transaction(self) -> None:
        self.in_transaction = False
        self.tempfailed = None
        self._set_rset_state()

    def _downstream_failed(self, stage: str, problem: object, size: int | None = None,
                           summary: str = "") -> Reply:
        """The one mapping of a downstream failure (any verb) to the client's reply.

        Logged with the stage, counted, the transaction logged and ended, the
        connection dropped (Postfix discards a transaction left open that
        way): the client gets the generic 451 and retries; nothing was queued.
        Before end of data the whole transaction fails, temporarily: later
        RCPTs and the DATA get the same 451 until RSET, MAIL or a new
        greeting. A 503 there would make the sending MTA bounce the
        recipients it had already been told were accepted.
        """
        logger.warning("%s: downstream %s %s: %s", self.session_id, self.listener.downstream,
                       _STAGES[stage], problem)
        self.service.stats.downstream_errors.inc(self.listener.name, stage)
        self._log_transaction(size, "tempfail", f"downstream {_STAGES[stage]}: {problem}", summary)
        self._drop_downstream()
        self._end_transaction()
        reply = Reply.parse(replies.TEMPFAIL)
        if stage != "data":
            self.tempfailed = reply
        return reply

    async def _no_transaction(self) -> None:
        """RCPT or DATA outside a transaction: the 4xx of one that failed
        temporarily, else 503."""
        if self.tempfailed is not None:
            await self.push_reply(self.tempfailed)
        else:
            await self.push(replies.NEED_MAIL)

    async def _refuse_control_characters(self, verb: str) -> None:
        # Refused here, before anything goes downstream; the argument itself
        # is not logged (it is made to break things).
        logger.info("%s: client=%s %s refused: control character in its arguments",
                    self.session_id, self.peer_addr, verb)
        await self.push(replies.CONTROL_CHARACTERS)

    # ---------------------------------------------------------- greeting verbs

    async def _refuse_helo(self, verb: str, hostname: str) -> bool:
        """A greeting name with a control character is refused: it would reach
        the scan's headers (SPF's smtp.helo) and log lines."""
        if not has_control_characters(hostname):
            return False
        logger.info("%s: client=%s %s refused: control character in the hostname",
                    self.session_id, self.peer_addr, verb)
        await self.push(replies.HELO_CONTROL_CHARACTERS.format(verb=verb))
        return True

    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push(replies.SYNTAX_HELO.format(verb="EHLO"))
            return
        if await self._refuse_helo("EHLO", hostname):
            return
        await self._new_greeting(hostname, extended=True)
        response = [
            f"250-{self.hostname}",
            f"250-SIZE {self.cfg.proxy.max_message_size_bytes}",
            *(f"250-{keyword}" for keyword in EHLO_KEYWORDS),
            f"250 {XFORWARD_KEYWORD}",
        ]
        await self.push("\r\n".join(response))

    async def smtp_HELO(self, hostname: str) -> None:
        if not hostname:
            await self.push(replies.SYNTAX_HELO.format(verb="HELO"))
            return
        if await self._refuse_helo("HELO", hostname):
            return
        await self._new_greeting(hostname, extended=False)
        await self.push(f"250 {self.hostname}")

    async def _new_greeting(self, hostname: str, extended: bool) -> None:
        assert self.session is not None
        if self.in_transaction:
            self._log_transaction(size=None, verdict="aborted", reply="new EHLO")
            await self._abandon_downstream_transaction()
        self._end_transaction()
        self.session.host_name = hostname
        self.session.extended_smtp = extended

    async def smtp_XFORWARD(self, arg: str | None) -> None:
        assert self.session is not None
        if not self.session.host_name:
            await self.push(replies.NEED_HELO)
            return
        if self.in_transaction:
            await self.push(replies.XFORWARD_IN_TRANSACTION)
            return
        if not arg:
            await self.push(replies.SYNTAX_XFORWARD)
            return
        try:
            self.session.xforward.update(xforward.parse(arg))
        except xforward.ControlCharacterError as exc:
            # Nothing of the command is kept: a value that decodes to CR LF
            # would otherwise start a header line of its own downstream.
            logger.info("%s: client=%s XFORWARD refused: %s", self.session_id, self.peer_addr, exc)
            await self.push(replies.XFORWARD_CONTROL_CHARACTERS)
            return
        except xforward.XforwardError as exc:
            await self.push(replies.BAD_XFORWARD.format(detail=exc))
            return
        await self.push(replies.OK)

    # ---------------------------------------------------------- transaction verbs

    async def smtp_MAIL(self, arg: str | None) -> None:
        assert self.session is not None and self.envelope is not None
        if not self.session.host_name:
            await self.push(replies.NEED_HELO)
            return
        if self.in_transaction:
            await self.push(replies.NESTED_MAIL)
            return
        if has_control_characters(arg):
            await self._refuse_control_characters("MAIL")
            return
        parsed = parse_path(arg, "FROM:")
        if parsed is None or not params_valid(parsed[1]):
            await self.push(replies.SYNTAX_MAIL)
            return
        address, params = parsed
        for param in params:
            key, _, value = param.partition("=")
            if key.upper() == "SIZE" and (
                not value.isdigit() or int(value) > self.cfg.proxy.max_message_size_bytes
            ):
                await self.push(replies.MESSAGE_TOO_BIG if value.isdigit() else replies.SYNTAX_MAIL)
                return
        assert arg is not None
        self._txn_started = time.monotonic()
        self.envelope.mail_from = address  # for the log line, also of a failure
        self.tempfailed = None
        # The transaction starts when MAIL goes downstream, not when its reply
        # is back: a session waiting for that reply is not idle. A drain leaves
        # it alone, and a client that leaves meanwhile gets its transaction
        # logged and the downstream connection dropped.
        self.in_transaction = True
        try:
            reply = await self._begin_downstream(arg.encode("utf-8", "surrogateescape"))
        except DownstreamError as exc:
            await self.push_reply(self._downstream_failed("mail", exc))
            return
        if not reply.relayable:
            await self.push_reply(self._downstream_failed("mail", f"bad reply {reply}"))
            return
        if reply.ok:
            self.envelope.mail_options = params
            self.envelope.smtp_utf8 = any(p.upper() == "SMTPUTF8" for p in params)
        else:
            self.in_transaction = False
            self.envelope.mail_from = None
        await self.push_reply(reply)

    async def smtp_RCPT(self, arg: str | None) -> None:
        assert self.session is not None and self.envelope is not None
        if not self.session.host_name:
            await self.push(replies.NEED_HELO)
            return
        if not self.in_transaction:
            await self._no_transaction()
            return
        if has_control_characters(arg):
            await self._refuse_control_characters("RCPT")
            return
        parsed = parse_path(arg, "TO:")
        if parsed is None or not parsed[0] or not params_valid(parsed[1]):
            await self.push(replies.SYNTAX_RCPT)
            return
        if len(self.envelope.rcpt_tos) >= self.cfg.proxy.max_recipients:
            await self.push(replies.TOO_MANY_RECIPIENTS)
            return
        address, params = parsed
        assert arg is not None and self.downstream is not None
        try:
            reply = await self.downstream.rcpt(arg.encode("utf-8", "surrogateescape"))
        except DownstreamError as exc:
            await self.push_reply(self._downstream_failed("rcpt", f"to=<{address}>: {exc}"))
            return
        if not reply.relayable:
            await self.push_reply(self._downstream_failed("rcpt", f"to=<{address}>: bad reply {reply}"))
            return
        if reply.ok:
            self.envelope.rcpt_tos.append(address)
            self.envelope.rcpt_options.append(params)  # one list per recipient
        await self.push_reply(reply)

    async def smtp_RSET(self, arg: str | None) -> None:
        if arg:
            await self.push(replies.SYNTAX_NO_ARGS.format(verb="RSET"))
            return
        if self.in_transaction:
            self._log_transaction(size=None, verdict="aborted", reply="RSET")
            await self._abandon_downstream_transaction()
        self._end_transaction()
        await self.push(replies.OK)

    async def smtp_NOOP(self, arg: str | None) -> None:
        await self.push(replies.OK)

    async def smtp_QUIT(self, arg: str | None) -> None:
        if arg:
            await self.push(replies.SYNTAX_NO_ARGS.format(verb="QUIT"))
            return
        if self.in_transaction:
            self._log_transaction(size=None, verdict="aborted", reply="QUIT")
            self._end_transaction()
            # Dropping the connection mid-transaction makes Postfix discard it.
            self._drop_downstream()
        self._release_downstream()
        await self.push(replies.BYE)
        assert self.transport is not None
        self.transport.close()

    async def smtp_AUTH(self, arg: str | None) -> None:
        await self.push(replies.NOT_IMPLEMENTED)

    async def smtp_VRFY(self, arg: str | None) -> None:
        await self.push(replies.NOT_IMPLEMENTED)

    async def smtp_EXPN(self, arg: str | None) -> None:
        await self.push(replies.NOT_IMPLEMENTED)

    # ---------------------------------------------------------- DATA

    async def smtp_DATA(self, arg: str | None) -> None:
        assert self.session is not None and self.envelope is not None
        if arg:
            await self.push(replies.SYNTAX_NO_ARGS.format(verb="DATA"))
            return
        if not self.session.host_name:
            await self.push(replies.NEED_HELO)
            return
        if not self.in_transaction:
            await self._no_transaction()
            return
        if not self.envelope.rcpt_tos:
            await self.push(replies.NEED_RCPT)
            return
        proxy = self.cfg.proxy
        # aiosmtpd's idle timer must not fire while we read, scan or relay.
        self._reset_timeout(
            proxy.data_timeout_s + proxy.scan_timeout_s + 2 * proxy.downstream_reply_timeout_s
        )
        await self.push(replies.START_DATA)
        # The message's bytes count against proxy.max_inflight_bytes from the
        # first one read until its end-of-data is answered.
        reservation = self.service.inflight.reserve()
        try:
            await self._read_and_deliver(reservation)
        finally:
            reservation.release()

    async def _read_and_deliver(self, reservation: Reservation) -> None:
        proxy = self.cfg.proxy
        try:
            async with asyncio.timeout(proxy.data_timeout_s):
                content, size = await read_data(self._reader, proxy.max_message_size_bytes,
                                                reservation, proxy.bare_newline)
        except TimeoutError:
            await self._close_in_data("aborted", "DATA timeout", replies.TIMEOUT)
        except BareNewline as exc:
            await self._close_in_data("reject", str(exc), exc.reply)
        self.busy = True
        try:
            if content is None and size > proxy.max_message_size_bytes:
                reply = Reply.parse(replies.MESSAGE_TOO_BIG)
                await self._abandon_downstream_transaction()
                self._log_transaction(size=size, verdict="too-big", reply=str(reply))
            elif content is None:
                reply = await self._over_inflight_budget(size)
            else:
                reply = await self._deliver(content, size)
            self._end_transaction()
            await self.push_reply(reply)
        finally:
            self.busy = False
            self._reset_timeout()

    async def _close_in_data(self, verdict: str, why: str, reply: str) -> None:
        """End the session in DATA: the transaction is dropped downstream, the
        client gets ``reply``, and whatever it sent after is never read as a
        command (message lines still buffered would otherwise run as commands)."""
        self._log_transaction(size=None, verdict=verdict, reply=f"{why}: {reply}")
        self._end_transaction()
        self._drop_downstream()
        await self.push(reply)
        assert self.transport is not None
        self.transport.close()
        raise SessionOver(why)

    async def _over_inflight_budget(self, size: int) -> Reply:
        """The message was read and dropped: holding it would take the bytes of
        all sessions over proxy.max_inflight_bytes. A 4xx: the client retries."""
        budget = self.service.inflight
        logger.warning("%s: message of %d bytes refused: %d bytes in flight, "
                       "proxy.max_inflight_bytes=%d", self.session_id, size, budget.used, budget.limit)
        self.service.stats.inflight_refused.inc(self.listener.name)
        reply = Reply.parse(replies.INSUFFICIENT_STORAGE)
        await self._abandon_downstream_transaction()
        self._log_transaction(size=size, verdict="tempfail", reply=f"over the in-flight budget: {reply}")
        return reply

    async def _deliver(self, content: bytes, size: int) -> Reply:
        """The delivery pipeline (delivery.py) on this transaction; the reply to its end-of-data."""
        assert self.downstream is not None
        outcome = await self.service.delivery.deliver(self._transaction(content), self.downstream)
        if outcome.failure is not None:
            return self._downstream_failed("data", outcome.failure, size, outcome.summary)
        self._log_transaction(size, outcome.verdict, outcome.detail, outcome.summary)
        return outcome.reply

    def _transaction(self, content: bytes) -> Transaction:
        """What the scan and the signer see of this transaction."""
        assert self.session is not None and self.envelope is not None
        x = self.session.xforward
        return Transaction(
            session_id=self.session_id,
            listener=self.listener.name,
            profile=self.listener.profile,
            client=ClientInfo(
                name=x.get("NAME"), addr=x.get("ADDR") or self.peer_addr, port=x.get("PORT"),
                proto=x.get("PROTO"), helo=x.get("HELO") or self.session.host_name,
                ident=x.get("IDENT"), source=x.get("SOURCE"),
            ),
            mail_from=self.envelope.mail_from or "",
            mail_options=list(self.envelope.mail_options),
            rcpt_tos=list(self.envelope.rcpt_tos),
            rcpt_options=list(self.envelope.rcpt_options),
            content=content,
        )

    # ---------------------------------------------------------- logging

    def _log_transaction(self, size: int | None, verdict: str, reply: str, summary: str = "") -> None:
        assert self.session is not None and self.envelope is not None
        self.service.stats.messages.inc(self.listener.name, verdict)
        x = self.session.xforward
        client = f"{x.get('NAME') or 'unknown'}[{x.get('ADDR') or self.peer_addr}]"
        if x.get("PORT"):
            client += f":{x['PORT']}"
        fields = [
            f"{self.session_id}:",
            f"listener={self.listener.name}",
            f"client={quote(client)}",
            f"helo={quote(x.get('HELO') or self.session.host_name or '')}",
            f"from={quote('<' + (self.envelope.mail_from or '') + '>')}",
            f"nrcpt={len(self.envelope.rcpt_tos)}",
            f"to={quote(','.join('<' + r + '>' for r in self.envelope.rcpt_tos))}",
            f"size={size if size is not None else '-'}",
            f"verdict={verdict}",
            f"reply={quote(reply)}",
            f"delay={time.monotonic() - self._txn_started:.3f}",
        ]
        if summary:
            fields.append(f"scan={quote(summary)}")
        logger.info(" ".join(fields))
