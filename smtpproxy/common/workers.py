"""What a worker process knows: its place among the workers, the sockets it serves.

With ``proxy.workers`` or ``policy.workers`` above 1 a supervising parent
(supervisor.py) binds every listening socket and forks the workers; in each
of them ``current()`` says which worker this is and holds the sockets
inherited for it, which the services serve instead of binding their own.
In a single process ``current()`` is None and nothing here is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket

from smtpproxy.common.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One listening address of a configuration, and the key that sets it."""

    key: str
    address: str  # HOST:PORT or unix:PATH
    mode: int | None = None  # a UNIX-domain socket's file mode
    per_worker: bool = False  # TCP only: one SO_REUSEPORT socket per worker


@dataclasses.dataclass
class WorkerContext:
    """What a worker process knows of the others (``current()``)."""

    index: int
    count: int
    runtime_dir: str  # shared by the workers and the parent (metrics snapshots)
    sockets: dict[str, list[socket.socket]]  # address -> this worker's sockets
    notify_fd: int

    def sockets_for(self, address: str, key: str) -> list[socket.socket]:
        """The inherited sockets of ``address``; ConfigError naming ``key`` when the
        parent bound none (a reload that moved an address: a restart binds it)."""
        found = self.sockets.get(address)
        if not found:
            raise ConfigError(key, f"{address} is not among the addresses bound at start "
                                   "(with several worker processes a listening address "
                                   "changes at a restart)")
        return found


_current: WorkerContext | None = None


def current() -> WorkerContext | None:
    """This process's place among the workers; None for a single process."""
    return _current


def notify_parent(state: str) -> bool:
    """In a worker: hand an sd_notify state (``READY=1``) to the parent; False elsewhere."""
    if _current is None:
        return False
    with contextlib.suppress(OSError):
        os.write(_current.notify_fd, f"{_current.index} {os.getpid()} {state}\n".encode())
    return True


def become(ctx: WorkerContext) -> None:
    """In a freshly forked worker (supervisor.py): this is who we are now."""
    global _current
    _current = ctx


async def serve_sockets(sockets: list[socket.socket], factory) -> ServerGroup:
    """asyncio servers on inherited ``sockets`` (one per socket), closed together."""
    import asyncio

    loop = asyncio.get_running_loop()
    servers = []
    for sock in sockets:
        if sock.family == socket.AF_UNIX:
            servers.append(await loop.create_unix_server(factory, sock=sock))
        else:
            servers.append(await loop.create_server(factory, sock=sock))
    return ServerGroup(servers)


class ServerGroup:
    """The servers of one address, closed as one (what asyncio.Server offers for one socket).

    Closing one in a worker closes the worker's copy of the socket only: the
    parent's stays open (and a UNIX socket's path stays, the parent unlinks it)."""

    def __init__(self, servers: list):
        self.servers = servers

    def close(self) -> None:
        for server in self.servers:
            server.close()
