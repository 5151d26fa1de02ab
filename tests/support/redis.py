"""Real redis-server processes for tests and benchmarks: standalone, Sentinel, Cluster.

``start_redis`` starts one server (the benchmarks use it too); the session
fixtures ``redis_server``, ``redis_sentinel`` and ``redis_cluster`` are
registered for every test directory by ``pytest_plugins`` in tests/conftest.py.

Every server listens on 127.0.0.1 on a free port, keeps its files in a temp
dir and is killed at the end. A missing redis-server is a failure, not a
skip: scripts/test.sh installs it (Debian's redis-server package).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.net import free_cluster_port, free_port, wait_port
from tests.support.procs import stop_process


def redis_binary(name: str = "redis-server") -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if path is None:
        pytest.fail(f"{name} is not installed (apt-get install redis-server)")
    return path


@dataclass
class RedisServer:
    port: int
    directory: str
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *args: str) -> str:
        return subprocess.run(
            [redis_binary("redis-cli"), "-h", "127.0.0.1", "-p", str(self.port), *args],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout

    def stop(self) -> None:
        stop_process(self.proc, 10)


def start_redis(directory: str, *extra: str, port: int | None = None) -> RedisServer:
    os.makedirs(directory, exist_ok=True)
    port = port or free_port()
    proc = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
         "--save", "", "--appendonly", "no", "--protected-mode", "no", *extra],
        stdout=open(os.path.join(directory, "redis.log"), "wb"), stderr=subprocess.STDOUT,
    )
    server = RedisServer(port, directory, proc)
    try:
        wait_port(port)
    except RuntimeError:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = start_redis(str(tmp_path_factory.mktemp("redis")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> Iterator[list[RedisServer]]:
    """Three masters, no replicas, slots spread by redis-cli --cluster create."""
    base = tmp_path_factory.mktemp("cluster")
    nodes: list[RedisServer] = []
    try:
        for i in range(3):
            d = str(base / f"n{i}")
            nodes.append(start_redis(
                d, "--cluster-enabled", "yes", "--cluster-config-file", f"{d}/nodes.conf",
                "--cluster-node-timeout", "5000", port=free_cluster_port(),
            ))
        subprocess.run(
            [redis_binary("redis-cli"), "--cluster", "create",
             *[f"127.0.0.1:{n.port}" for n in nodes], "--cluster-replicas", "0",
             "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        deadline = time.monotonic() + 30
        while "cluster_state:ok" not in nodes[0].cli("cluster", "info"):
            if time.monotonic() > deadline:
                raise RuntimeError("cluster did not reach cluster_state:ok")
            time.sleep(0.2)
        yield nodes
    finally:
        for n in nodes:
            n.stop()


@pytest.fixture(scope="session")
def redis_sentinel(redis_server, tmp_path_factory) -> Iterator[RedisServer]:
    """One Sentinel watching ``redis_server`` as master "mymaster"."""
    d = tmp_path_factory.mktemp("sentinel")
    port = free_port()
    conf = d / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {d}\n"
        f"sentinel monitor mymaster 127.0.0.1 {redis_server.port} 1\n"
        "sentinel down-after-milliseconds mymaster 5000\n"
    )
    proc = subprocess.Popen(
        [redis_binary(), str(conf), "--sentinel"],
        stdout=open(d / "sentinel.log", "wb"), stderr=subprocess.STDOUT,
    )
    server = RedisServer(port, str(d), proc)
    try:
        wait_port(port)
        yield server
    finally:
        server.stop()
