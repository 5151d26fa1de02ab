"""The supervising parent of several worker processes (``proxy.workers``, ``policy.workers``).

One Python process runs on one core. With ``workers`` above 1 the program
runs pre-forked, as Postfix's master and nginx do: a supervising parent
binds every listening socket, then forks the workers, which inherit the
sockets and serve them with asyncio exactly as a single process would. The
parent itself runs no event loop, holds no store connection and builds no
scan engine; it only

- binds the sockets before any worker exists: the SMTP and policy TCP
  listeners once per worker with SO_REUSEPORT (the kernel spreads new
  connections evenly over the workers, and a socket whose worker died keeps
  its queue until the replacement accepts it); UNIX-domain listeners, the
  controller and the metrics endpoint once, shared by all workers (any
  worker answers a scrape, see metrics.py);
- tells systemd ``READY=1`` once every worker has said it is ready (workers
  report over a pipe instead of to systemd);
- passes SIGHUP on to every worker, which reloads as a single process does,
  after loading the file itself: a configuration that is invalid, or that
  moves a listening address (which only a restart can rebind: the parent
  owns the sockets), is refused whole and the log line names the key;
- passes SIGTERM and SIGINT on, waits for the workers to drain (their own
  drain timeout, plus a few seconds), kills what is left and exits 0;
- replaces a worker that dies unexpectedly, waiting longer after each quick
  death (RESTART_BACKOFF_S doubling up to RESTART_BACKOFF_MAX_S), and gives
  up, stopping the others and exiting 1, after MAX_QUICK_DEATHS deaths in a
  row each within STABLE_AFTER_S of its start. A worker that fails during
  start-up stops the whole program at once, as one process would.

``workers = 1`` runs no parent at all: the single process of old.
"""


from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import logging
import os
import select
import shutil
import signal
import socket
import stat
import time
from collections.abc import Callable

from smtpproxy.common import log as logsetup
from smtpproxy.common.config import Config, ConfigError, parse_hostport, worker_count
from smtpproxy.common.metrics import retire_snapshot
from smtpproxy.common.runtime import sd_notify
from smtpproxy.common.workers import Endpoint, WorkerContext, become

logger = logging.getLogger("smtpproxy.workers")

RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
# A worker that lived this long was not dying of something permanent.
STABLE_AFTER_S = 30.0
MAX_QUICK_DEATHS = 5
# Beyond the daemon's own drain timeout: the time a worker takes to close
# its store and exit after draining.
STOP_GRACE_S = 5.0
LISTEN_BACKLOG = 1024
SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
_PR_SET_PDEATHSIG = 1

# ---------------------------------------------------------------- sockets


def _bind_tcp(address: str, key: str, reuse_port: bool) -> list[socket.socket]:
    host, port = parse_hostport(address, key)
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                               0, socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _name, sockaddr in infos:
            if (family, sockaddr) in seen:
                continue
            seen.add((family, sockaddr))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # as asyncio: v4 and v6 are separate sockets
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise OSError(exc.errno, f"{key}: cannot bind {address}: {exc.strerror}") from None
    return sockets


def _bind_unix(endpoint: Endpoint) -> list[socket.socket]:
    path = endpoint.address[5:]
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # left over from a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        if endpoint.mode is not None:
            os.chmod(path, endpoint.mode)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"{endpoint.key}: cannot bind {endpoint.address}: "
                                 f"{exc.strerror}") from None
    return [sock]


class BoundSockets:
    """Every socket the parent bound: shared ones, and per-worker ones by slot."""

    def __init__(self, endpoints: list[Endpoint], count: int):
        self.endpoints = endpoints
        self.shared: dict[str, list[socket.socket]] = {}
        self.per_slot: dict[str, list[list[socket.socket]]] = {}
        try:
            for ep in endpoints:
                if ep.address.startswith("unix:"):
                    self.shared[ep.address] = _bind_unix(ep)
                elif ep.per_worker:
                    self.per_slot[ep.address] = [_bind_tcp(ep.address, ep.key, True)
                                                 for _ in range(count)]
                else:
                    self.shared[ep.address] = _bind_tcp(ep.address, ep.key, False)
        except OSError:
            self.close()
            raise

    def for_slot(self, index: int) -> dict[str, list[socket.socket]]:
        mine = dict(self.shared)
        for address, slots in self.per_slot.items():
            mine[address] = slots[index]
        return mine

    def all(self) -> list[socket.socket]:
        out = [s for socks in self.shared.values() for s in socks]
        return out + [s for slots in self.per_slot.values() for socks in slots for s in socks]

    def drop(self, address: str) -> None:
        """Close the sockets of an address no configuration uses any more (a
        listener removed, the controller turned off): a socket nobody serves
        would hold connections that no worker accepts."""
        for sock in self.shared.pop(address, []):
            sock.close()
        for socks in self.per_slot.pop(address, []):
            for s in socks:
                s.close()
        if address.startswith("unix:"):
            with contextlib.suppress(OSError):
                os.unlink(address[5:])
        self.endpoints = [ep for ep in self.endpoints if ep.address != address]

    def close(self) -> None:
        for sock in self.all():
            sock.close()
        for ep in self.endpoints:
            if ep.address.startswith("unix:") and ep.address in self.shared:
                with contextlib.suppress(OSError):
                    os.unlink(ep.address[5:])


# ---------------------------------------------------------------- the parent


@dataclasses.dataclass
class _Slot:
    index: int
    pid: int = 0
    started: float = 0.0
    ready: bool = False
    quick_deaths: int = 0
    restart_at: float | None = None
    generation: int = 0  # the reloads this worker has had, counted as the parent's


class Supervisor:
    """The parent of ``count`` workers; ``run()`` returns the program's exit code.

    ``endpoints(cfg)``: the listening addresses of a configuration;
    ``workers_key``: the key that set the count (for log lines);
    ``drain_timeout(cfg)``: how long a worker may drain on SIGTERM;
    ``worker_main(cfg)``: runs in the forked worker, returns its exit code.
    """

    def __init__(self, program: str, cfg: Config, count: int, workers_key: str,
                 endpoints: Callable[[Config], list[Endpoint]],
                 reload_config: Callable[[], Config],
                 drain_timeout: Callable[[Config], float],
                 worker_main: Callable[[Config], int],
                 on_reload: Callable[[Config], None] = lambda cfg: None):
        self.program, self.cfg, self.count = program, cfg, count
        self.workers_key = workers_key
        self.endpoints, self.reload_config = endpoints, reload_config
        self.drain_timeout, self.worker_main, self.on_reload = drain_timeout, worker_main, on_reload
        self.slots = [_Slot(i) for i in range(count)]
        self.sockets: BoundSockets | None = None
        self.runtime_dir = ""
        self.stopping = False
        self.exit_code = 0
        self.stop_deadline = 0.0
        self.started = False  # every worker was ready once
        self.generation = 0  # reloads so far
        self._pending: list[int] = []
        self._notify_r = self._notify_w = -1
        self._wake_r = self._wake_w = -1
        self._buffer = b""

    # -------------------------------------------------------------- main loop

    def run(self) -> int:
        self._notify_socket = os.environ.pop("NOTIFY_SOCKET", None)  # systemd speaks to us only
        try:
            self.sockets = BoundSockets(self.endpoints(self.cfg), self.count)
        except OSError as exc:
            logger.error("cannot start: %s", exc)
            return 1
        try:
            self.runtime_dir = _make_runtime_dir(self.cfg.state_dir, self.program)
        except OSError as exc:
            logger.error("cannot start: the workers' directory in %s: %s", self.cfg.state_dir, exc)
            self.sockets.close()
            return 1
        self._notify_r, self._notify_w = os.pipe()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        old_handlers = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS}
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        code = 1
        try:
            logger.info("%s supervisor (pid %d) starting %d workers", self.program, os.getpid(),
                        self.count)
            for slot in self.slots:
                self._fork(slot)
            code = self._loop()
        finally:
            signal.set_wakeup_fd(-1)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            self._kill_all(signal.SIGKILL)
            self._reap(block=True)
            self.sockets.close()
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            for fd in (self._notify_r, self._notify_w, self._wake_r, self._wake_w):
                os.close(fd)
            if self._notify_socket is not None:
                os.environ["NOTIFY_SOCKET"] = self._notify_socket
        if code == 0:
            logger.info("%s stopped", self.program)
        return code

    def _stop(self, code: int) -> None:
        """Every worker drains and exits; the program then exits ``code``."""
        self.stopping, self.exit_code = True, code
        self._notify("STOPPING=1")
        logger.info("stopping: %d workers drain", self._alive())
        self._kill_all(signal.SIGTERM)
        # As a single process closes its listeners: new connections are
        # refused at once, not queued for workers that no longer accept.
        self.sockets.close()
        self.stop_deadline = time.monotonic() + self.drain_timeout(self.cfg) + STOP_GRACE_S

    def _on_signal(self, signum: int, _frame) -> None:
        self._pending.append(signum)

    def _loop(self) -> int:
        while True:
            now = time.monotonic()
            for signum in self._take_signals():
                if signum == signal.SIGHUP and not self.stopping:
                    self._reload()
                elif signum in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                    self._stop(0)
            self._reap()
            if self.stopping:
                if not self._alive():
                    return self.exit_code
                if now >= self.stop_deadline:
                    logger.warning("%d workers still running after the drain: killed",
                                   self._alive())
                    self._kill_all(signal.SIGKILL)
                    self._reap(block=True)
                    return self.exit_code
            else:
                for slot in self.slots:
                    if slot.restart_at is not None and now >= slot.restart_at:
                        self._fork(slot)
            self._wait(0.2)

    def _wait(self, timeout: float) -> None:
        try:
            readable, _, _ = select.select([self._notify_r, self._wake_r], [], [], timeout)
        except InterruptedError:
            return
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass
        if self._notify_r in readable:
            self._read_notifications()

    def _take_signals(self) -> list[int]:
        taken, self._pending = self._pending, []
        return taken

    def _read_notifications(self) -> None:
        self._buffer += os.read(self._notify_r, 4096)
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            parts = line.decode(errors="replace").split(" ", 2)
            if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
                continue
            index, pid, state = int(parts[0]), int(parts[1]), parts[2]
            if index >= len(self.slots) or self.slots[index].pid != pid:
                continue  # from a worker already gone
            slot = self.slots[index]
            if state == "READY=1":
                slot.ready = True
                if slot.generation != self.generation:  # a reload came while it started
                    slot.generation, slot.ready = self.generation, False
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(slot.pid, signal.SIGHUP)
            elif state == "RELOADING=1":
                slot.ready = False
        if not self.stopping and all(slot.ready for slot in self.slots):
            if not self.started:
                logger.info("%s started: %d workers (pids %s)", self.program, self.count,
                            " ".join(str(s.pid) for s in self.slots))
            self.started = True
            self._notify("READY=1")

    def _notify(self, state: str) -> None:
        if self._notify_socket is not None:
            sd_notify(state, self._notify_socket)

    def _alive(self) -> int:
        return sum(1 for slot in self.slots if slot.pid)

    def _kill_all(self, sig: int) -> None:
        for slot in self.slots:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, sig)

    # -------------------------------------------------------------- workers

    def _fork(self, slot: _Slot) -> None:
        slot.restart_at = None
        slot.ready = False
        slot.generation = self.generation  # forked with the configuration of now
        parent = os.getpid()
        # Signals wait until the child has its own handlers: the parent's
        # would only queue them for a loop the child never runs.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = self._become_worker(slot.index, parent, mask)
            except KeyboardInterrupt:
                code = 130
            except ConfigError as exc:  # found while starting (a key, a symbols table)
                logger.error("configuration error: %s", exc)
                code = 2
            except BaseException:
                logger.exception("worker %d failed", slot.index)
            finally:
                logging.shutdown()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        slot.pid, slot.started = pid, time.monotonic()
        logger.info("worker %d started (pid %d)", slot.index, pid)

    def _become_worker(self, index: int, parent: int, mask) -> int:
        signal.set_wakeup_fd(-1)
        # Until the worker's event loop takes them over (runtime.serve, once
        # started): SIGTERM ends a worker still starting, as it would end a
        # single process; SIGHUP is ignored, the parent sends it again once
        # the worker is ready (_read_notifications).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _die_with_parent()
        if os.getppid() != parent:  # the parent died before the line above
            return 1
        for fd in (self._notify_r, self._wake_r, self._wake_w):
            os.close(fd)
        mine = self.sockets.for_slot(index)
        keep = {id(s) for socks in mine.values() for s in socks}
        for sock in self.sockets.all():  # the other workers' SO_REUSEPORT sockets
            if id(sock) not in keep:
                sock.close()
        become(WorkerContext(index, self.count, self.runtime_dir, mine, self._notify_w))
        return self.worker_main(self.cfg)

    def _reap(self, block: bool = False) -> None:
        """Collect exited workers."""
        while any(slot.pid for slot in self.slots):
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:
                break
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            self._exited(slot, status)

    def _exited(self, slot: _Slot, status: int) -> None:
        how = _describe(status)
        lived = time.monotonic() - slot.started
        was_ready, slot.pid, slot.ready = slot.ready, 0, False
        retire_snapshot(self.runtime_dir, slot.index)  # its counters stay in the totals
        if self.stopping:
            logger.info("worker %d %s", slot.index, how)
            return
        if not self.started and not was_ready:
            logger.error("worker %d %s while starting: stopping", slot.index, how)
            # Its status is the program's (2: a configuration error, as one process).
            code = os.waitstatus_to_exitcode(status)
            self._stop(code if code > 0 else 1)
            return
        slot.quick_deaths = slot.quick_deaths + 1 if lived < STABLE_AFTER_S else 1
        if slot.quick_deaths > MAX_QUICK_DEATHS:
            logger.error("worker %d %s, %d times in a row within %.0fs of its start: "
                         "giving up", slot.index, how, slot.quick_deaths, STABLE_AFTER_S)
            self._stop(1)
            return
        delay = min(RESTART_BACKOFF_S * 2 ** (slot.quick_deaths - 1), RESTART_BACKOFF_MAX_S)
        logger.error("worker %d %s after %.0fs; replacing it in %gs", slot.index, how, lived, delay)
        slot.restart_at = time.monotonic() + delay

    # -------------------------------------------------------------- reload

    def _reload(self) -> None:
        try:
            new = self.reload_config()
            problem = self._moved(new)
            if problem:
                raise ConfigError(*problem)
        except ConfigError as exc:
            logger.error("reload refused, keeping the running configuration: %s", exc)
            return
        wanted = worker_count(_workers_value(new, self.workers_key))
        if wanted != self.count:
            logger.warning("%s changed from %d to %d: takes effect at the next restart",
                           self.workers_key, self.count, wanted)
        for ep in self.endpoints(new):  # a UNIX socket's mode is the parent's to change
            if ep.address.startswith("unix:") and ep.mode is not None:
                with contextlib.suppress(OSError):
                    os.chmod(ep.address[5:], ep.mode)
        wanted = {ep.address for ep in self.endpoints(new)}
        for ep in list(self.sockets.endpoints):
            if ep.address not in wanted:
                logger.info("%s: %s no longer used, closed (using it again takes a restart)",
                            ep.key, ep.address)
                self.sockets.drop(ep.address)
        self.cfg = new
        self.on_reload(new)
        logger.info("reload: passing SIGHUP to %d workers", self._alive())
        self._notify("RELOADING=1")
        self.generation += 1
        for slot in self.slots:
            if slot.pid and slot.ready:  # a worker still starting gets it when ready
                slot.ready, slot.generation = False, self.generation
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGHUP)

    def _moved(self, new: Config) -> tuple[str, str] | None:
        bound = {ep.address for ep in self.sockets.endpoints}
        for ep in self.endpoints(new):
            if ep.address not in bound:
                return ep.key, (f"{ep.address} is not bound (the workers share the sockets "
                                f"bound at start: with {self.workers_key} > 1 a listening "
                                "address changes at a restart)")
        return None



def serve_with_workers(program: str, cfg: Config, key: str, workers: int | str,
                       endpoints: Callable[[Config], list[Endpoint]],
                       reload_config: Callable[[], Config],
                       drain_timeout: Callable[[Config], float],
                       serve_one: Callable[[Config], int]) -> int:
    """A daemon's main: ``serve_one(cfg)`` in this process when ``workers`` (the
    value of ``key``) is 1, with no supervisor; otherwise a Supervisor forks that
    many workers running it. Called before any event loop, thread, store or
    scan engine exists in this process, so the workers inherit none."""
    count = worker_count(workers)
    if count == 1:
        return serve_one(cfg)
    return Supervisor(
        program, cfg, count, key, endpoints, reload_config,
        drain_timeout=drain_timeout, worker_main=serve_one,
        on_reload=lambda c: logsetup.setup(c.log, program),
    ).run()

def _workers_value(cfg: Config, key: str) -> int | str:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by signal {sig} ({signal.Signals(sig).name})"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _die_with_parent() -> None:
    """SIGTERM this worker when the parent goes (killed): it drains and exits
    rather than serve on without a supervisor."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl")


def _make_runtime_dir(state_dir: str, program: str) -> str:
    """``<state_dir>/.workers-<program>-<pid>``; those of earlier runs whose parent
    is gone (killed) are removed first."""
    prefix = f".workers-{program}-"
    os.makedirs(state_dir, mode=0o750, exist_ok=True)
    with contextlib.suppress(OSError):
        for name in os.listdir(state_dir):
            pid = name[len(prefix):]
            if name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(state_dir, name), ignore_errors=True)
    path = os.path.join(state_dir, f"{prefix}{os.getpid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True
