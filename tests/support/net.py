"""Loopback ports for tests and benchmarks: pick a free one, wait for a listener.

The one ``free_port`` of the test suite and the benchmarks; the Postfix,
Redis and policy-daemon helpers all take their ports from here.
"""

from __future__ import annotations

import random
import socket
import time

_rng = random.Random()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now, below Linux's ephemeral range
    (32768-60999): the kernel's own pick comes from that range, where any
    outgoing connection's local port could take it before our server binds it."""
    for _ in range(1000):
        port = _rng.randrange(12000, 32000)
        if _port_free(port, host):
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_cluster_port(host: str = "127.0.0.1") -> int:
    """A free port whose Redis Cluster bus port (port + 10000) is free too."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 45000)
        if _port_free(port, host) and _port_free(port + 10000, host):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on host:port now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> None:
    """Wait until something listens on host:port; RuntimeError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {host}:{port} after {timeout_s}s")
