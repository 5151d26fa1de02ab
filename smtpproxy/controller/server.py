"""The controller's listener: aiohttp, routing, errors as short JSON, body limits.

Why aiohttp: the controller speaks HTTP/1.1 to clients we do not write
(rspamc keeps connections, browsers pipeline and send chunked bodies,
proxies add headers); the metrics endpoint's hand-written HTTP/1.0 reader
answers one GET and closes, which is right for a scraper and wrong here.
aiohttp is asyncio's well-kept server: its request parser is in C, it
bounds header sizes itself, and it runs on the proxy's own event loop
(uvloop), so no thread or process is added.

Promises:
- every error is a 4xx/5xx with a JSON body ``{"error": "short text"}``;
  a bug is logged with its traceback and answered 500 "internal error",
  never the traceback;
- a body is read up to ``controller.max_body_bytes`` (0: the proxy's
  message size) and refused with 413 beyond it, before it is all read;
- a request that changes state is a POST, never answered to a GET (405),
  and refused (403) when a browser says it comes from another origin;
- the listener moves on reload as daemon.py does with the others: ``bind``
  the new one next to the old, ``swap`` when nothing can fail any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from smtpproxy.common import workers
from smtpproxy.common.config import Config, parse_hostport, parse_socket_mode
from smtpproxy.controller import api
from smtpproxy.controller import web as web_ui
from smtpproxy.controller.api import CONTROLLER, ControllerError, json_error
from smtpproxy.controller.auth import WRITE, Authenticator, cross_origin

logger = logging.getLogger("smtpproxy.controller")

MAX_HEADER_BYTES = 8190
# Connections closed on a reload or stop wait at most this long for their request.
SHUTDOWN_TIMEOUT_S = 2.0


class _ClientFaults(logging.Filter):
    """aiohttp logs a request it cannot parse (a client's fault, already
    answered 400) with a traceback at ERROR: a flood of garbage would flood
    the log. Those are counted instead; anything else is logged as it comes."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            self.dropped += 1
            return False
        return True


_http_logger = logging.getLogger("smtpproxy.controller.http")
CLIENT_FAULTS = _ClientFaults()
_http_logger.addFilter(CLIENT_FAULTS)


@web.middleware
async def _errors(request: web.Request, handler) -> web.StreamResponse:
    ctl: Controller = request.app[CONTROLLER]
    ctl.requests += 1
    try:
        return await handler(request)
    except ControllerError as exc:
        return json_error(exc.status, exc.error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        text = {404: "no such endpoint", 405: "method not allowed",
                413: "request body too large"}.get(exc.status, exc.reason)
        response = json_error(exc.status, text)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except (ConnectionError, asyncio.CancelledError):
        raise
    except Exception:
        logger.exception("controller: %s %s failed", request.method, request.path)
        return json_error(500, "internal error")


class Controller:
    """The HTTP API of one proxy daemon; ``service`` is the daemon's ProxyService."""

    def __init__(self, service, cfg: Config):
        self.service = service
        self.cfg = cfg
        self.auth = Authenticator(cfg.controller)
        self.started = time.time()
        self.requests = 0
        self.listen = ""
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------ requests

    @property
    def max_body_bytes(self) -> int:
        return self.cfg.controller.max_body_bytes or self.cfg.proxy.max_message_size_bytes

    @staticmethod
    def peer(request: web.Request) -> str | None:
        """The client's address; None over a unix: socket."""
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if isinstance(peer, tuple) and peer:
            return str(peer[0])
        return None

    async def authorize(self, request: web.Request, need: str) -> str:
        """Raise ControllerError unless the request may do ``need``; returns the level held."""
        if need == WRITE and request.method != "POST":
            raise ControllerError(405, "method not allowed")
        if request.method == "POST" and cross_origin(request.headers):
            logger.warning("controller: cross-origin %s %s from %s refused",
                           request.method, request.path, self.peer(request))
            raise ControllerError(403, "cross-origin request refused")
        decision = await self.auth.check(self.peer(request), request.headers.get("Password"), need)
        if not decision.ok:
            raise ControllerError(decision.status, decision.error)
        return decision.level

    async def read_body(self, request: web.Request, required: bool = True) -> bytes:
        limit = self.max_body_bytes
        if request.headers.get("Compression") or request.headers.get("Content-Encoding", "identity") \
                not in ("identity", ""):
            raise ControllerError(415, "compressed bodies are not supported")
        if request.content_length is not None and request.content_length > limit:
            raise ControllerError(413, f"request body over {limit} bytes")
        data = bytearray()
        while True:
            chunk = await request.content.read(1 << 16)
            if not chunk:
                break
            data += chunk
            if len(data) > limit:
                raise ControllerError(413, f"request body over {limit} bytes")
        if required and not data:
            raise ControllerError(400, "a message body is required")
        return bytes(data)

    # ------------------------------------------------------------ listening

    def _app(self) -> web.Application:
        # client_max_size is not what limits bodies (read_body is), but caps
        # what aiohttp itself would buffer for request.read()/post().
        app = web.Application(middlewares=[_errors], client_max_size=1 << 16,
                              handler_args={"max_field_size": MAX_HEADER_BYTES,
                                            "max_line_size": MAX_HEADER_BYTES})
        app[CONTROLLER] = self
        api.add_routes(app)
        web_ui.add_routes(app)
        return app

    async def _start(self, listen: str, cfg: Config) -> web.AppRunner:
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False,
                               logger=_http_logger,
                               keepalive_timeout=cfg.controller.keepalive_timeout_s,
                               shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            ctx = workers.current()
            if ctx is not None:  # several worker processes: the parent's sockets
                for sock in ctx.sockets_for(listen, "controller.listen"):
                    await web.SockSite(runner, sock, shutdown_timeout=SHUTDOWN_TIMEOUT_S).start()
            elif listen.startswith("unix:"):
                path = listen[5:]
                if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
                    os.unlink(path)  # left over from a previous run
                site = web.UnixSite(runner, path, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
                await site.start()
                os.chmod(path, parse_socket_mode(cfg.controller.socket_mode))
            else:
                host, port = parse_hostport(listen, "controller.listen")
                site = web.TCPSite(runner, host, port, reuse_address=True,
                                   shutdown_timeout=SHUTDOWN_TIMEOUT_S)
                await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        logger.info("controller on %s", listen)
        return runner

    def _wanted(self, cfg: Config) -> str:
        return cfg.controller.listen if cfg.controller.enabled else ""

    async def serve(self, cfg: Config) -> None:
        """At start: listen as ``cfg`` says (OSError when it cannot)."""
        self.swap_config(cfg)
        listen = self._wanted(cfg)
        if listen:
            self._runner = await self._start(listen, cfg)
            self.listen = listen

    async def bind(self, cfg: Config) -> web.AppRunner | None:
        """For a reload: the new listener next to the current one (None: no new one
        is needed). OSError when it cannot be bound; nothing has changed then."""
        listen = self._wanted(cfg)
        if not listen or listen == self.listen:
            return None
        return await self._start(listen, cfg)

    def swap_config(self, cfg: Config) -> None:
        self.cfg = cfg
        self.auth.configure(cfg.controller)

    async def swap(self, cfg: Config, runner: web.AppRunner | None) -> None:
        """Make ``cfg`` (and ``runner``, from ``bind(cfg)``) current; cannot fail."""
        self.swap_config(cfg)
        listen = self._wanted(cfg)
        if listen == self.listen:
            return
        await self.close()
        if runner is not None:
            self._runner, self.listen = runner, listen

    async def close(self) -> None:
        runner, listen = self._runner, self.listen
        self._runner, self.listen = None, ""
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.cleanup()
            if listen.startswith("unix:") and workers.current() is None:
                with contextlib.suppress(OSError):
                    os.unlink(listen[5:])
            logger.info("controller on %s closed", listen)
