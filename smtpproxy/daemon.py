"""The proxy service: its listeners, admission, reload and draining.

Each configured listener is one asyncio server with a profile and its own
downstream. Admission happens here, before the greeting: clients outside the
listener's networks get 554, clients beyond the session cap get 421.

The service owns what lives as long as the process: the store, the one DNS
Resolver (built once, handed to the scan and the signer, so both share its
cache) and the downstream pools. Per configuration it builds a Delivery
(delivery.py: the scan hook, the signer and their settings), which sessions
use at end-of-data.

Reload (SIGHUP) swaps the configuration for new sessions only: running
sessions keep the configuration they started with. Listeners whose address
changed, or that were added or removed, are rebound; connections already
accepted are never dropped.

Stop (SIGTERM) closes the listening sockets, sends 421 to sessions that are
not inside a transaction, waits up to ``proxy.drain_timeout_s`` for the rest,
then closes whatever is left. A transaction cut off this way was never
answered 250, so the sending Postfix keeps the message and retries.

With ``proxy.workers`` above 1 this service runs in each worker process
(smtpproxy/common/supervisor.py): the listeners, the controller and the
metrics endpoint serve the sockets the supervising parent bound, a reload
cannot move them (the parent refuses such a reload before it reaches the
workers), and only the first worker sends canaries. Everything shared
between the workers lives in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat

from smtpproxy import replies
from smtpproxy.budget import InflightBudget
from smtpproxy.canary import CanaryMonitor
from smtpproxy.common import workers
from smtpproxy.common.config import (
    Config,
    ConfigError,
    ListenerConfig,
    parse_hostport,
    parse_networks,
    parse_socket_mode,
    worker_count,
)
from smtpproxy.common.dns import Resolver
from smtpproxy.common.metrics import MetricsEndpoint, Registry
from smtpproxy.common.store import Store, StoreError, open_store
from smtpproxy.controller.history import HistoryWriter
from smtpproxy.delivery import Delivery
from smtpproxy.relay import Downstream, DownstreamPool
from smtpproxy.scan.hook import build_hook
from smtpproxy.server import ProxySMTP
from smtpproxy.sign import NoSigner
from smtpproxy.sign.setup import build_signer
from smtpproxy.transaction import NoScan, ScanHook, parse_client_address

logger = logging.getLogger("smtpproxy")


def listener_networks(cfg: Config, listener: ListenerConfig) -> tuple:
    networks = listener.client_networks or cfg.proxy.client_networks
    return parse_networks(networks, "client_networks")


def client_allowed(peer_addr: str, networks: tuple) -> bool:
    addr = parse_client_address(peer_addr)
    return addr is not None and any(addr in net for net in networks)


class _Listener:
    def __init__(self, cfg: ListenerConfig, server: asyncio.Server | None, networks: tuple):
        self.cfg = cfg
        self.server = server
        self.networks = networks


class ProxyStats:
    """What the proxy counts, for GET /metrics (proxy.metrics_listen)."""

    def __init__(self, service: ProxyService):
        r = self.registry = Registry()
        r.gauge("smtpproxy_sessions_active", "Client sessions open now",
                lambda: len(service.sessions))
        self.sessions = r.counter("smtpproxy_sessions_total", "Client sessions accepted",
                                  ("listener",))
        self.refused = r.counter("smtpproxy_sessions_refused_total",
                                 "Client sessions refused at connect", ("listener", "reason"))
        self.messages = r.counter("smtpproxy_messages_total",
                                  "Transactions by outcome (the verdict= of the log line)",
                                  ("listener", "verdict"))
        self.downstream_errors = r.counter("smtpproxy_downstream_errors_total",
                                           "Failures talking to the re-injection listener",
                                           ("listener", "stage"))
        r.gauge("smtpproxy_inflight_bytes", "Message bytes held by all sessions now",
                lambda: service.inflight.used)
        self.inflight_refused = r.counter(
            "smtpproxy_inflight_refused_total",
            "Messages answered 452 4.3.1: proxy.max_inflight_bytes was reached", ("listener",))
        self.actions = r.counter("smtpproxy_scan_actions_total", "Scoring actions", ("action",))
        self.symbols = r.counter("smtpproxy_scan_symbols_total", "Symbols found", ("symbol",))
        self.scan_seconds = r.histogram(
            "smtpproxy_scan_seconds", "Time to score a message",
            (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))


class _ControllerWhenEnabled:
    """The HTTP controller, imported (with aiohttp: about 14 MB of every
    process, the workers included) only once a configuration enables it;
    it is off by default. Same calls as controller/server.py's Controller."""

    def __init__(self, service):
        self.service = service
        self.controller = None

    def _get(self, cfg: Config):
        if self.controller is None and cfg.controller.enabled:
            from smtpproxy.controller.server import Controller
            self.controller = Controller(self.service, cfg)
        return self.controller

    async def serve(self, cfg: Config) -> None:
        controller = self._get(cfg)
        if controller is not None:
            await controller.serve(cfg)

    async def bind(self, cfg: Config):
        controller = self._get(cfg)
        return await controller.bind(cfg) if controller is not None else None

    async def swap(self, cfg: Config, runner) -> None:
        if self.controller is not None:
            await self.controller.swap(cfg, runner)

    async def close(self) -> None:
        if self.controller is not None:
            await self.controller.close()


class ProxyService:
    def __init__(self, cfg: Config, hook: ScanHook | None = None):
        self.cfg = cfg
        # A hook given here (tests) is kept; otherwise start() builds the
        # scoring engine when scan.enabled, and reload() rebuilds it.
        self.stats = ProxyStats(self)
        self.metrics = MetricsEndpoint(self.stats.registry, "proxy.metrics_listen")
        # The canary (canary.py): smtpproxy_canary_ok, the sending loop.
        self.canary = CanaryMonitor(self.stats)
        self._fixed_hook = hook
        self._store: Store | None = None
        self.resolver = Resolver(cfg.dns)
        self.hostname = cfg.proxy.hostname or socket.getfqdn()
        # The history rows (written in the background) and the HTTP controller.
        self.history = HistoryWriter(cfg.history, self.hostname)
        self.controller = _ControllerWhenEnabled(self)
        # Replaced by start(): what the configuration asks for is built there.
        self.delivery = Delivery(cfg, hook or NoScan(), NoSigner(), self.stats, self.hostname)
        self.sessions: set[ProxySMTP] = set()
        # One budget for all sessions; a reload changes its limit, not what is held.
        self.inflight = InflightBudget(cfg.proxy.max_inflight_bytes)
        self._listeners: dict[str, _Listener] = {}
        self._stopping = False
        self._pools: dict[str, DownstreamPool] = {}
        self._expiry: asyncio.Task | None = None

    def pool(self, downstream: str) -> DownstreamPool:
        """The pool of idle connections to one re-injection listener."""
        pool = self._pools.get(downstream)
        if pool is None:
            host, port = parse_hostport(downstream)
            proxy, hostname = self.cfg.proxy, self.hostname
            pool = DownstreamPool(
                lambda: Downstream(host, port, hostname, proxy.downstream_connect_timeout_s,
                                   proxy.downstream_reply_timeout_s),
                max_idle=proxy.downstream_pool_size,
                idle_timeout_s=proxy.downstream_idle_timeout_s,
            )
            self._pools[downstream] = pool
        return pool

    def _close_pools(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools = {}

    async def _expire_idle(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for pool in self._pools.values():
                pool.expire()

    # ---------------------------------------------------------------- admission

    def admit(self, session: ProxySMTP) -> str | None:
        """None to serve the client, else the reply to send before closing."""
        listener = self._listeners.get(session.listener.name)
        networks = listener.networks if listener else listener_networks(self.cfg, session.listener)
        # A UNIX-domain listener is guarded by its file mode, not by networks.
        unix = session.listener.listen.startswith("unix:")
        if not unix and not client_allowed(session.peer_addr, networks):
            logger.warning(
                "%s: listener=%s client=%s refused: not in client_networks",
                session.session_id, session.listener.name, session.peer_addr,
            )
            self.stats.refused.inc(session.listener.name, "client_networks")
            return replies.ACCESS_DENIED
        if self._stopping:
            self.stats.refused.inc(session.listener.name, "shutting_down")
            return replies.SHUTTING_DOWN
        if len(self.sessions) > self.cfg.proxy.max_sessions:
            logger.warning(
                "%s: listener=%s client=%s refused: %d sessions, limit proxy.max_sessions=%d",
                session.session_id, session.listener.name, session.peer_addr,
                len(self.sessions) - 1, self.cfg.proxy.max_sessions,
            )
            self.stats.refused.inc(session.listener.name, "max_sessions")
            return replies.TOO_MANY_SESSIONS
        self.stats.sessions.inc(session.listener.name)
        return None

    # ---------------------------------------------------------------- listeners

    async def _bind(self, cfg: ListenerConfig, config: Config | None = None) -> _Listener:
        """Listen as ``cfg`` says (``config``: the configuration it belongs to)."""
        loop = asyncio.get_running_loop()
        listener = _Listener(cfg, None, listener_networks(config or self.cfg, cfg))
        ctx = workers.current()
        if ctx is not None:
            key = f"proxy.listeners[{_index_of(config or self.cfg, cfg)}].listen"
            listener.server = await workers.serve_sockets(
                ctx.sockets_for(cfg.listen, key), lambda: self._new_session(listener))
        elif cfg.listen.startswith("unix:"):
            path = cfg.listen[5:]
            if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # left over from a previous run
            listener.server = await loop.create_unix_server(lambda: self._new_session(listener), path)
            os.chmod(path, parse_socket_mode(cfg.socket_mode))
        else:
            host, port = parse_hostport(cfg.listen)
            listener.server = await loop.create_server(
                lambda: self._new_session(listener), host, port, reuse_address=True
            )
        logger.info(
            "listener %s on %s (profile %s) relays to %s",
            cfg.name, cfg.listen, cfg.profile, cfg.downstream,
        )
        return listener

    def _new_session(self, listener: _Listener) -> ProxySMTP:
        # Read per connection, so a reload's listener settings apply to the
        # next session without rebinding the socket; a listener bound by a
        # reload still under way serves before the swap too.
        return ProxySMTP(self, listener.cfg, self.hostname)

    async def _build_hook(self, cfg: Config, hostname: str) -> ScanHook:
        """The scoring engine for ``cfg``; raises ConfigError for a bad symbols table."""
        if self._fixed_hook is not None:
            return self._fixed_hook
        if not cfg.scan.enabled:
            return NoScan()
        await self.open_store(cfg)
        return build_hook(cfg, self._store, self.resolver, hostname)

    async def open_store(self, cfg: Config | None = None) -> Store:
        """The store, opened on first use (the scan, the controller's learning)."""
        if self._store is None:
            store = open_store((cfg or self.cfg).store, (cfg or self.cfg).state_dir)
            try:
                await store.open()
            except StoreError as exc:
                if not store.reconnects:
                    raise
                # Redis down at start is not fatal (as for the policy daemon):
                # its operations reconnect by themselves; until then the scan
                # goes on without it (BAYES_UNAVAILABLE, no greylisting).
                logger.error("store not available at start: %s", exc)
            self._store = store
        return self._store

    async def _build_delivery(self, cfg: Config, hostname: str) -> Delivery:
        """Everything ``cfg`` needs at end-of-data, built before any of it is used:
        a bad symbols table, key or signing table raises ConfigError and nothing changes."""
        hook = await self._build_hook(cfg, hostname)
        delivery = Delivery(cfg, hook, build_signer(cfg, self.resolver), self.stats, hostname)
        delivery.history = self.history
        delivery.canary = self.canary.check_for(cfg)
        return delivery

    async def start(self) -> None:
        self.delivery = await self._build_delivery(self.cfg, self.hostname)
        await self.metrics.serve(self.cfg.proxy.metrics_listen)
        self.metrics.share()
        self.history.configure(self.cfg.history, self._store, self.hostname)
        self.canary.configure(self.cfg, self.delivery.canary, self.hostname)
        await self.controller.serve(self.cfg)
        self._expiry = asyncio.get_running_loop().create_task(self._expire_idle())
        try:
            for cfg in self.cfg.proxy.listeners:
                self._listeners[cfg.name] = await self._bind(cfg)
        except OSError:
            await self._close_listeners(list(self._listeners))
            raise
        ctx = workers.current()
        if ctx is None or ctx.index == 0:  # one sender of canaries, whichever worker gets them
            self.canary.start()  # after the listeners: the canary comes back through them

    async def _close_listeners(self, names: list[str]) -> None:
        for name in names:
            listener = self._listeners.pop(name)
            listener.server.close()
            # A worker's UNIX socket is the parent's: the other workers serve it still.
            if listener.cfg.listen.startswith("unix:") and workers.current() is None:
                with contextlib.suppress(OSError):
                    os.unlink(listener.cfg.listen[5:])
            logger.info("listener %s on %s closed", name, listener.cfg.listen)

    async def reload(self, cfg: Config) -> None:
        """All of ``cfg`` or none of it.

        Everything the new configuration needs is built first: the Delivery
        (a bad symbols table or signing key raises ConfigError), the metrics
        endpoint and every added or moved listener, each bound next to the
        old ones. Any failure closes what was bound and raises, with the old
        configuration whole and in use. Only then is it swapped in, in steps
        that cannot fail. (A listener or metrics endpoint moved to an address
        its old socket still blocks, such as 127.0.0.1:P to 0.0.0.0:P, cannot
        be bound next to it: that move takes a restart.)
        """
        if workers.current() is None and worker_count(cfg.proxy.workers) != 1:
            logger.warning("proxy.workers changed to %s: takes effect at the next restart",
                           cfg.proxy.workers)
        delivery = await self._build_delivery(cfg, cfg.proxy.hostname or socket.getfqdn())
        metrics_server = await self.metrics.bind(cfg.proxy.metrics_listen)
        try:
            controller_runner = await self.controller.bind(cfg)
        except (OSError, ConfigError):
            if metrics_server is not None:
                metrics_server.close()
            raise
        wanted = {listener.name: listener for listener in cfg.proxy.listeners}
        moved = [n for n, lcfg in wanted.items()
                 if n not in self._listeners or self._listeners[n].cfg.listen != lcfg.listen]
        bound: dict[str, _Listener] = {}
        try:
            for name in moved:
                bound[name] = await self._bind(wanted[name], cfg)
        except (OSError, ConfigError) as exc:
            logger.error("listener %s: cannot bind %s: %s", name, wanted[name].listen, exc)
            for listener in bound.values():
                listener.server.close()
            if metrics_server is not None:
                metrics_server.close()
            if controller_runner is not None:
                await controller_runner.cleanup()
            raise
        # From here on nothing can fail.
        self.metrics.swap(cfg.proxy.metrics_listen, metrics_server)
        self.history.configure(cfg.history, self._store, delivery.hostname)
        self.canary.configure(cfg, delivery.canary, delivery.hostname)
        await self.controller.swap(cfg, controller_runner)
        self.delivery = delivery
        self.cfg = cfg
        self.hostname = delivery.hostname
        self.inflight.limit = cfg.proxy.max_inflight_bytes
        # Pools are rebuilt with the new settings; sessions holding a
        # connection keep it until they end.
        self._close_pools()
        await self._close_listeners([n for n in self._listeners if n not in wanted or n in bound])
        self._listeners.update(bound)
        for name, lcfg in wanted.items():
            current = self._listeners[name]
            current.cfg = lcfg
            current.networks = listener_networks(cfg, lcfg)

    # ---------------------------------------------------------------- stop

    async def stop(self) -> None:
        self._stopping = True
        await self._close_listeners(list(self._listeners))
        for session in list(self.sessions):
            if not session.in_transaction and not session.busy:
                await _say_goodbye(session)
        deadline = asyncio.get_running_loop().time() + self.cfg.proxy.drain_timeout_s
        while self.sessions and asyncio.get_running_loop().time() < deadline:
            for session in list(self.sessions):
                if not session.in_transaction and not session.busy:
                    await _say_goodbye(session)
            await asyncio.sleep(0.05)
        if self.sessions:
            logger.warning("drain timeout: closing %d sessions in transaction", len(self.sessions))
            for session in list(self.sessions):
                if session.transport is not None:
                    session.transport.close()
        await asyncio.sleep(0)
        if self._expiry is not None:
            self._expiry.cancel()
        self.canary.stop()
        self.metrics.close()
        self.metrics.stop_sharing()
        await self.controller.close()
        await self.history.close()
        self._close_pools()
        self.resolver.close()
        if self._store is not None:
            await self._store.close()


def _index_of(cfg: Config, listener: ListenerConfig) -> int:
    for i, candidate in enumerate(cfg.proxy.listeners):
        if candidate.name == listener.name:
            return i
    return 0


def endpoints(cfg: Config) -> list[workers.Endpoint]:
    """Every address the proxy listens on, for the parent of several workers to bind."""
    out = [workers.Endpoint(f"proxy.listeners[{i}].listen", lcfg.listen,
                            parse_socket_mode(lcfg.socket_mode) if lcfg.listen.startswith("unix:")
                            else None, per_worker=True)
           for i, lcfg in enumerate(cfg.proxy.listeners)]
    if cfg.controller.enabled and cfg.controller.listen:
        out.append(workers.Endpoint("controller.listen", cfg.controller.listen,
                                    parse_socket_mode(cfg.controller.socket_mode)
                                    if cfg.controller.listen.startswith("unix:") else None))
    if cfg.proxy.metrics_listen:
        out.append(workers.Endpoint("proxy.metrics_listen", cfg.proxy.metrics_listen))
    return out


async def _say_goodbye(session: ProxySMTP) -> None:
    transport = session.transport
    if transport is None or transport.is_closing():
        session.service.sessions.discard(session)
        return
    try:
        await asyncio.wait_for(session.push(replies.SHUTTING_DOWN), 1.0)
    except (OSError, TimeoutError):
        pass
    # The client may have gone while it was told (aiosmtpd then drops
    # session.transport): close what was there, never stop the drain.
    transport.close()
