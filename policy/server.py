"""The policy server: asyncio, persistent connections, TCP or unix socket.

Contract with Postfix (SMTPD_POLICY_README):
- a connection carries any number of requests, answered in order; Postfix
  keeps it open between SMTP sessions and closes it when idle;
- every complete request gets exactly one reply, always within
  ``decision_timeout_s``: store trouble, a timeout or a bug answer the
  configured default action (DUNNO, i.e. fail open, unless
  DEFER_IF_PERMIT was chosen) and the details go to our log;
- a malformed request (see codec.py), a request that takes longer than
  ``request_timeout_s`` to arrive, or ``idle_timeout_s`` of silence closes
  the connection; Postfix then applies its own ``default_action`` for that
  attempt and reconnects. Nothing a client sends can stall the daemon.

Store trouble is never silent and never fatal: each failed store call
answers the default action, is counted (``smtpproxy_policy_store_errors_total``)
and logged at WARNING, at most once per ``store.error_log_interval_s`` for
each kind of trouble, the next line saying how many were held back. A store
that cannot be opened at start-up (a corrupt or locked SQLite file) does not
stop the daemon, which would make Postfix defer every message: it starts,
answers the default action, logs an ERROR and retries opening the store in
the background (``store.backoff_s`` doubling up to ``store.backoff_max_s``)
until it works. Only a store location that cannot exist (an SQLite directory
that cannot be created) is a configuration error that refuses to start.

Map files are re-checked every ``map_check_interval_s`` in an executor.
SIGHUP (via smtpproxy.common.runtime) swaps the configuration; a changed
listen address needs a restart, a changed store URL opens the new store
before the old one is closed.

With ``policy.workers`` above 1 this service runs in each worker process
(smtpproxy/common/supervisor.py) on the sockets the supervising parent bound;
greylisting and rate limits stay exact across workers because their state
lives in the store, whose updates are atomic against other processes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import stat
import time

from policy import replies
from policy.codec import ProtocolError, RequestParser, format_reply
from policy.decisions import DecisionWriter
from policy.engine import BadRequest, Policy, StoreFailure
from policy.stats import PolicyStats
from smtpproxy.common import workers
from smtpproxy.common.config import Config, parse_hostport
from smtpproxy.common.metrics import MetricsEndpoint
from smtpproxy.common.store import Store, StoreError, open_store

logger = logging.getLogger("policy.server")

# Requests a client may pipeline before we stop reading from it.
MAX_PIPELINED = 32


class PolicyConnection(asyncio.Protocol):
    __slots__ = ("service", "transport", "parser", "queue", "worker", "timer", "peer", "closed",
                 "paused", "eof")

    def __init__(self, service: PolicyService):
        self.service = service
        self.transport: asyncio.Transport | None = None
        pc = service.cfg.policy
        self.parser = RequestParser(pc.max_line_bytes, pc.max_attributes)
        self.queue: collections.deque[dict[str, str]] = collections.deque()
        self.worker: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.peer = "?"
        self.closed = False
        self.paused = False
        self.eof = False

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        svc = self.service
        if len(svc.connections) >= svc.cfg.policy.max_connections:
            svc.stats.refused.inc()
            svc.log_limited("connections", "too many connections (%d); closing new ones",
                            len(svc.connections))
            self.closed = True
            transport.close()
            return
        svc.connections.add(self)
        self._arm(svc.cfg.policy.idle_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            requests = self.parser.feed(data)
        except ProtocolError as exc:
            self.service.stats.malformed.inc()
            logger.warning("malformed request from %s: %s; closing", self.peer, exc)
            self.close()
            return
        pc = self.service.cfg.policy
        self._arm(pc.request_timeout_s if self.parser.pending else pc.idle_timeout_s)
        if requests:
            self.queue.extend(requests)
            if len(self.queue) > MAX_PIPELINED and not self.paused:
                self.paused = True
                self.transport.pause_reading()
            if self.worker is None:
                self.worker = asyncio.get_running_loop().create_task(self._work())

    def eof_received(self) -> bool:
        # Answer what was asked, then close (Postfix does not half-close; tools do).
        self.eof = True
        if self.worker is None:
            self.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        self.service.connections.discard(self)
        self.queue.clear()

    # -- internals

    def _arm(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._timeout)

    def _timeout(self) -> None:
        if self.worker is not None:
            # Busy answering: the decision has its own budget.
            self._arm(self.service.cfg.policy.request_timeout_s)
            return
        if self.parser.pending:
            logger.warning("request from %s incomplete after %gs; closing", self.peer,
                           self.service.cfg.policy.request_timeout_s)
        else:
            logger.debug("connection from %s idle; closing", self.peer)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def _work(self) -> None:
        try:
            while self.queue and not self.closed:
                req = self.queue.popleft()
                action = await self.service.answer(req)
                if self.closed:
                    return
                self.transport.write(format_reply(action))
                if self.paused and len(self.queue) <= MAX_PIPELINED // 2:
                    self.paused = False
                    self.transport.resume_reading()
        finally:
            self.worker = None
            if self.eof and not self.closed:
                self.close()


class PolicyService:
    """A runtime.Service: start(), reload(cfg), stop()."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.hostname = cfg.policy.hostname
        self.store: Store | None = None
        self.policy: Policy | None = None
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[PolicyConnection] = set()
        self.default = replies.default_action(cfg.policy.default_action)
        self._maps_task: asyncio.Task | None = None
        self._reopen_task: asyncio.Task | None = None
        # Kind of trouble -> [when last logged (monotonic), lines held back since].
        self._limited: dict[str, list] = {}
        self._inflight = 0
        self.stats = PolicyStats(lambda: len(self.connections), lambda: self._inflight)
        self.metrics = MetricsEndpoint(self.stats.registry, "policy.metrics_listen")
        self.decisions = DecisionWriter(self.stats.decisions_lost)

    def log_limited(self, kind: str, message: str, *args: object) -> None:
        """A WARNING, at most one per ``kind`` per ``store.error_log_interval_s``.

        Trouble repeats per request; one line per interval says it is still
        there without flooding the mail log, and the count of lines held
        back since the last one says how often. Kinds are a fixed few names.
        """
        now = time.monotonic()
        entry = self._limited.get(kind)
        if entry is not None and now - entry[0] < self.cfg.store.error_log_interval_s:
            entry[1] += 1
            return
        held = entry[1] if entry is not None else 0
        self._limited[kind] = [now, 0]
        if held:
            message += " (%d more like it since the last report)"
            args = (*args, held)
        logger.warning(message, *args)

    # -- lifecycle

    async def _open_store(self, cfg: Config, at_start: bool = False) -> Store:
        """The store for ``cfg``, opened if it can be.

        At start-up only a location that cannot exist is fatal; any other
        failure starts the daemon on the default action (see the module
        docstring). On a reload every failure is raised, so that the
        running store is kept.
        """
        store = open_store(cfg.store, cfg.state_dir)
        try:
            await store.open()
        except StoreError as exc:
            self.stats.store_errors.inc("open")
            if store.reconnects:
                # Redis down at start is not fatal: its operations reconnect
                # by themselves; requests get the default action until then.
                logger.error("store not available at start: %s", exc)
                return store
            # SQLiteStore.open() raises from the OSError when the directory
            # cannot be created: a wrong path, not trouble that passes.
            if not at_start or isinstance(exc.__cause__, OSError):
                raise OSError(f"store: {exc}") from exc
            logger.error("store cannot be opened: %s; answering the default action (%s) "
                         "and retrying in the background", exc, self.default.split(" ", 1)[0])
            self._reopen_task = asyncio.get_running_loop().create_task(self._reopen(store))
        return store

    async def _reopen(self, store: Store) -> None:
        """Open ``store`` again and again, backing off, until it works or is replaced."""
        delay = self.cfg.store.backoff_s
        attempts = 1
        while True:
            await asyncio.sleep(delay)
            if self.store is not store:  # a reload brought another store
                return
            attempts += 1
            try:
                await store.open()
            except StoreError as exc:
                self.stats.store_errors.inc("open")
                delay = min(delay * 2, self.cfg.store.backoff_max_s)
                self.log_limited("store open", "store still cannot be opened: %s; answering "
                                 "the default action, next try in %gs", exc, delay)
                continue
            if self.store is not store:
                await store.close()
                return
            logger.warning("store usable again after %d attempts", attempts)
            return

    async def _hostname(self, cfg: Config) -> str:
        # getfqdn() may ask DNS: never on the event loop.
        if cfg.policy.hostname:
            return cfg.policy.hostname
        return await asyncio.get_running_loop().run_in_executor(None, socket.getfqdn)

    async def start(self) -> None:
        self.hostname = await self._hostname(self.cfg)
        self.store = await self._open_store(self.cfg, at_start=True)
        self.decisions.configure(self.store, self.cfg.policy.decisions_ttl_s)
        self.policy = Policy(self.cfg, self.store, self.hostname, self.stats,
                             self.decisions.record)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.policy.refresh_maps)
        listen = self.cfg.policy.listen
        ctx = workers.current()
        try:
            if ctx is not None:  # several worker processes: the parent's sockets
                self.server = await workers.serve_sockets(
                    ctx.sockets_for(listen, "policy.listen"), lambda: PolicyConnection(self))
            elif listen.startswith("unix:"):
                path = listen[len("unix:"):]
                try:
                    if stat.S_ISSOCK(os.lstat(path).st_mode):
                        os.unlink(path)  # a stale socket from a previous run
                except FileNotFoundError:
                    pass
                self.server = await loop.create_unix_server(lambda: PolicyConnection(self), path)
                os.chmod(path, int(self.cfg.policy.socket_mode, 8))
            else:
                host, port = parse_hostport(listen)
                self.server = await loop.create_server(
                    lambda: PolicyConnection(self), host, port, reuse_address=True, backlog=1024,
                )
        except OSError:
            await self._close_store()
            raise
        try:
            await self.metrics.serve(self.cfg.policy.metrics_listen)
        except OSError:
            self.server.close()
            await self._close_store()
            raise
        self.metrics.share()
        self._maps_task = loop.create_task(self._watch_maps())
        logger.info("listening on %s, store %s, event loop %s", listen,
                    self.cfg.store.url.rpartition("@")[2] or "sqlite (state_dir)",
                    type(loop).__module__.split(".")[0])

    async def _watch_maps(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.cfg.policy.map_check_interval_s)
            policy = self.policy
            if policy is not None:
                try:
                    await loop.run_in_executor(None, policy.refresh_maps)
                except Exception:
                    logger.exception("reloading map files failed")

    async def reload(self, cfg: Config) -> None:
        if cfg.policy.listen != self.cfg.policy.listen:
            logger.warning("policy.listen changed: takes effect at the next restart")
        old_store = None
        store = self.store
        if cfg.store != self.cfg.store or cfg.state_dir != self.cfg.state_dir:
            old_store, store = self.store, await self._open_store(cfg)
        try:
            policy = Policy(cfg, store, await self._hostname(cfg), self.stats,
                            self.decisions.record)
            await asyncio.get_running_loop().run_in_executor(None, policy.refresh_maps)
        except BaseException:
            if old_store is not None:  # keep running on the old store
                await store.close()
            raise
        await self.metrics.serve(cfg.policy.metrics_listen)  # moved, started or stopped
        self.cfg, self.store, self.policy = cfg, store, policy
        self.decisions.configure(store, cfg.policy.decisions_ttl_s)
        self.default = replies.default_action(cfg.policy.default_action)
        if old_store is not None:
            await old_store.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        if self._maps_task is not None:
            self._maps_task.cancel()
        self.metrics.close()
        # Drain: let requests being decided get their answer, bounded.
        deadline = time.monotonic() + self.cfg.policy.drain_timeout_s
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        await self.decisions.close()
        await self._close_store()
        self.metrics.stop_sharing()  # after the drain: what it counted is in
        listen = self.cfg.policy.listen
        if listen.startswith("unix:") and workers.current() is None:  # else the parent's
            try:
                os.unlink(listen[len("unix:"):])
            except OSError:
                pass

    async def _close_store(self) -> None:
        if self._reopen_task is not None:
            self._reopen_task.cancel()
            self._reopen_task = None
        if self.store is not None:
            await self.store.close()

    # -- one request

    async def answer(self, req: dict[str, str]) -> str:
        policy = self.policy
        assert policy is not None
        stats = self.stats
        self._inflight += 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.cfg.policy.decision_timeout_s):
                action = await policy.decide(req)
        except StoreError as exc:
            operation = exc.operation if isinstance(exc, StoreFailure) else "other"
            stats.store_errors.inc(operation)
            stats.defaulted.inc("store")
            action = self.default
            self.log_limited("store " + operation, "store trouble (%s); answering the default "
                             "action %s", exc, action.split(" ", 1)[0])
        except BadRequest as exc:
            logger.warning("%s; answering the default action %s", exc, self.default.split(" ", 1)[0])
            stats.defaulted.inc("bad_request")
            action = self.default
        except TimeoutError:
            self.log_limited("timeout", "decision took longer than %gs; answering the default action",
                             self.cfg.policy.decision_timeout_s)
            stats.defaulted.inc("timeout")
            action = self.default
        except Exception:
            logger.exception("bug while deciding; answering the default action")
            stats.defaulted.inc("error")
            action = self.default
        finally:
            self._inflight -= 1
        stats.seconds.observe(time.monotonic() - started)
        stats.reply(action)
        return action
