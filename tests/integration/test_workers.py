"""Several worker processes (proxy.workers, policy.workers), as an administrator runs them.

The real daemons on loopback: the proxy relays to Postfix's smtp-sink, the
policy daemon keeps its state in SQLite. Which worker serves a connection is
read from /proc: the worker that holds the accepted socket.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import time
from pathlib import Path

import pytest

from tests.policy.support import PolicyDaemon
from tests.support.controller import READ_PASSWORD, controller_config, request
from tests.support.net import free_port, port_open
from tests.support.pipeline import ProxyProcess
from tests.support.postfix import SmtpSink, wait_until

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- helpers


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def serving_pid(client: socket.socket, server_port: int, pids: set[int]) -> int | None:
    """The process holding the server side of ``client``'s connection."""
    client_port = client.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            inode = fields[9]
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


def greet(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return sock, data


def who_serves(port: int, pids: set[int], connections: int = 24) -> dict[int, list[bytes]]:
    """Greetings seen by worker pid over ``connections`` connections."""
    seen: dict[int, list[bytes]] = {}
    for _ in range(connections):
        sock, greeting = greet(port)
        with sock:
            pid = serving_pid(sock, port, pids)
            seen.setdefault(pid, []).append(greeting)
    return seen


def metric(port: int, line_prefix: str) -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    for line in data.decode().splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class Proxy:
    """The proxy with ``workers`` processes relaying to smtp-sink."""

    def __init__(self, base: Path, workers: int | str = 2, hostname: str = "filter.example.test",
                 extra: str = "", unix: bool = False, controller_port: int | None = None):
        self.base = base
        self.port, self.metrics_port, self.sink_port = free_port(), free_port(), free_port()
        self.socket_path = base / "proxy.sock" if unix else None
        self.controller_port = controller_port
        self.sink = SmtpSink(base / "sink", self.sink_port)
        self.workers, self.extra = workers, extra
        self.proc = ProxyProcess(base / "proxy", self.config(hostname))

    def config(self, hostname: str, port: int | None = None) -> str:
        workers = f'"{self.workers}"' if isinstance(self.workers, str) else self.workers
        listen = f"unix:{self.socket_path}" if self.socket_path else f"127.0.0.1:{port or self.port}"
        controller = controller_config(self.controller_port) if self.controller_port else ""
        return f"""
state_dir = "{self.base / 'proxy' / 'state'}"
[log]
level = "info"
[proxy]
hostname = "{hostname}"
workers = {workers}
drain_timeout_s = 20
metrics_listen = "127.0.0.1:{self.metrics_port}"
{self.extra}
[[proxy.listeners]]
name = "inbound"
listen = "{listen}"
downstream = "127.0.0.1:{self.sink_port}"
[scan]
enabled = false
{controller}
"""

    def start(self) -> Proxy:
        self.sink.start()
        self.proc.start(None if self.socket_path else self.port)
        if self.workers != 1:
            wait_until(lambda: "started: " in self.log(), 20, "every worker ready")
        return self

    def stop(self) -> None:
        self.proc.stop()
        self.sink.stop()

    @property
    def pid(self) -> int:
        return self.proc.proc.pid

    def workers_now(self) -> set[int]:
        return children(self.pid)

    def rewrite(self, **kwargs) -> None:
        self.proc.config.write_text(self.config(**kwargs))

    def log(self) -> str:
        return self.proc.log_text()


@pytest.fixture
def proxy(tmp_path):
    made: list[Proxy] = []

    def make(**kwargs) -> Proxy:
        p = Proxy(tmp_path / f"p{len(made)}", **kwargs)
        made.append(p)
        return p.start()

    yield make
    for p in made:
        p.stop()


def send(port: int, subject: str) -> None:
    body = f"From: a@example.org\r\nTo: b@example.net\r\nSubject: {subject}\r\n\r\nhello\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail("a@example.org", ["b@example.net"], body)


# ---------------------------------------------------------------- the proxy


def test_two_workers_share_the_listener_and_relay_mail(proxy):
    p = proxy(workers=2)
    pids = p.workers_now()
    assert len(pids) == 2 and p.pid not in pids
    seen = who_serves(p.port, pids)
    assert set(seen) == pids, f"connections landed on {sorted(map(str, seen))}, workers {pids}"
    for i in range(6):
        send(p.port, f"through the workers {i}")
    wait_until(lambda: len(p.sink.files()) >= 6, 20, "6 messages at the sink")
    assert {m.message.split(b"Subject: ", 1)[1].split(b"\n")[0] for m in p.sink.messages()} == \
        {f"through the workers {i}".encode() for i in range(6)}


def test_metrics_endpoint_sums_every_worker(proxy):
    p = proxy(workers=2)
    for i in range(10):
        send(p.port, f"counted {i}")
    prefix = 'smtpproxy_messages_total{listener="inbound",verdict="accept"}'
    # Whichever worker answers, a count never goes back; within a snapshot
    # interval (1 s) every worker's share is in.
    seen = [metric(p.metrics_port, prefix) for _ in range(6)]
    assert seen == sorted(seen) and seen[-1] <= 10, seen
    time.sleep(1.2)
    for _ in range(6):  # both workers answer scrapes: each shows the total
        assert metric(p.metrics_port, prefix) == 10
    assert len(list((p.base / "proxy" / "state").glob(".workers-smtpproxy-*/metrics-*.json"))) == 2


def test_sighup_reloads_every_worker(proxy):
    p = proxy(workers=2)
    p.rewrite(hostname="reloaded.example.test")
    p.proc.signal(signal.SIGHUP)
    wait_until(lambda: p.log().count("configuration reloaded") >= 2, 20, "both workers reloaded")
    pids = p.workers_now()
    seen = who_serves(p.port, pids)
    assert set(seen) == pids
    for greetings in seen.values():
        assert all(g.startswith(b"220 reloaded.example.test") for g in greetings), greetings


def test_reload_moving_a_listener_is_refused_naming_the_key(proxy):
    p = proxy(workers=2)
    p.rewrite(hostname="moved.example.test", port=free_port())
    p.proc.signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in p.log(), 20, "the refusal")
    assert re.search(r"reload refused, keeping the running configuration: "
                     r"proxy\.listeners\[0\]\.listen: .* restart", p.log())
    assert "configuration reloaded" not in p.log()
    _, greeting = greet(p.port)
    assert greeting.startswith(b"220 filter.example.test")


def test_sigterm_drains_transactions_in_every_worker(proxy):
    p = proxy(workers=2)
    pids = p.workers_now()
    held: dict[int, smtplib.SMTP] = {}
    deadline = time.monotonic() + 20
    while set(held) != pids and time.monotonic() < deadline:
        smtp = smtplib.SMTP("127.0.0.1", p.port, timeout=30)
        pid = serving_pid(smtp.sock, p.port, pids)
        if pid in held:
            smtp.quit()
            continue
        smtp.ehlo("before-filter.example.test")
        assert smtp.mail("a@example.org")[0] == 250
        assert smtp.rcpt("b@example.net")[0] == 250
        assert smtp.docmd("DATA")[0] == 354
        smtp.send(b"Subject: in flight\r\n\r\nstill coming")
        held[pid] = smtp
    assert set(held) == pids
    p.proc.signal(signal.SIGTERM)
    wait_until(lambda: p.log().count("draining in-flight work") >= 2, 10, "both workers draining")
    assert not port_open(p.port)  # nobody accepts new sessions any more
    for smtp in held.values():
        smtp.send(b"\r\n.\r\n")
        code, _ = smtp.getreply()
        assert code == 250
        smtp.close()
    p.proc.proc.wait(30)
    assert p.proc.proc.returncode == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not list((p.base / "proxy" / "state").glob(".workers-*"))
    wait_until(lambda: len(p.sink.files()) >= 2, 10, "the drained messages at the sink")


def test_killed_worker_is_replaced_and_its_counts_kept(proxy):
    p = proxy(workers=2)
    for i in range(8):
        send(p.port, f"before {i}")
    prefix = 'smtpproxy_messages_total{listener="inbound",verdict="accept"}'
    wait_until(lambda: metric(p.metrics_port, prefix) == 8, 10, "8 messages counted")
    pids = p.workers_now()
    victim = min(pids)
    time.sleep(1.2)  # its last snapshot is written
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(p.workers_now() - {victim}) == 2, 20, "a replacement worker")
    assert re.search(r"worker \d killed by signal 9 \(SIGKILL\) after \d+s; replacing it in",
                     p.log())
    assert "replacing it in" in p.log()
    new_pids = p.workers_now()
    assert victim not in new_pids and p.proc.proc.poll() is None
    wait_until(lambda: set(who_serves(p.port, new_pids)) == new_pids, 20,
               "connections on both workers again")
    send(p.port, "after")
    wait_until(lambda: metric(p.metrics_port, prefix) == 9, 10, "9 messages counted")


def test_listener_address_taken_fails_start_naming_the_key(tmp_path):
    p = Proxy(tmp_path, workers=2)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", p.port))
        squatter.listen(1)
        p.proc.start(None)
        p.proc.proc.wait(20)
    assert p.proc.proc.returncode == 1
    assert "proxy.listeners[0].listen: cannot bind" in p.log()


def test_one_worker_runs_no_supervisor(proxy):
    p = proxy(workers=1, extra="")
    assert p.workers_now() == set()
    assert "supervisor" not in p.log()
    send(p.port, "single process")
    wait_until(lambda: len(p.sink.files()) >= 1, 20, "the message at the sink")


def test_unix_listener_and_controller_are_shared_by_the_workers(proxy):
    p = proxy(workers=2, unix=True, controller_port=free_port())
    path = str(p.socket_path)
    for i in range(6):
        with smtplib.SMTP(timeout=30) as smtp:
            smtp.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            smtp.sock.settimeout(30)
            smtp.sock.connect(path)
            assert smtp.getreply()[0] == 220
            smtp.sendmail("a@example.org", ["b@example.net"],
                          f"Subject: over the socket {i}\r\n\r\nhello\r\n")
    wait_until(lambda: len(p.sink.files()) >= 6, 20, "6 messages at the sink")
    # /stat counts over both workers, whichever answers.
    time.sleep(1.2)
    for _ in range(4):
        status, body = request(p.controller_port, "GET", "/stat",
                               headers={"Password": READ_PASSWORD})
        assert status == 200 and body["connections"] == 6, body
    victim = min(p.workers_now())
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(p.workers_now() - {victim}) == 2, 20, "a replacement worker")
    assert p.socket_path.exists()  # the parent's socket: no worker removes it
    p.proc.stop()
    assert not p.socket_path.exists()


# ---------------------------------------------------------------- the policy daemon


def test_policy_daemon_with_two_workers_shares_greylisting(tmp_path):
    d = PolicyDaemon(tmp_path / "policy", f"sqlite://{tmp_path}/state/policy.db",
                     greylist={"delay_s": 1.0}, policy={"workers": 2}).start()
    try:
        wait_until(lambda: "started: 2 workers" in d.log(), 20, "both workers ready")
        pids = children(d.proc.pid)
        assert len(pids) == 2
        attrs = {"request": "smtpd_access_policy", "protocol_state": "RCPT",
                 "client_address": "192.0.2.10", "client_name": "mx.example.org",
                 "sender": "a@example.org", "recipient": "b@example.net"}
        answered_by: dict[int, list[str]] = {}
        with d.connect() as first:
            answer = first.ask(**attrs)  # answered: accepted by a worker
            first_pid = serving_pid(first.sock, d.port, pids)
            answered_by.setdefault(first_pid, []).append(answer)
        assert answered_by[first_pid][0].startswith("DEFER_IF_PERMIT")
        time.sleep(1.2)
        # The retry, from whichever worker: greylisting state is the store's, not a worker's.
        for _ in range(16):
            with d.connect() as client:
                answer = client.ask(**attrs)
                answered_by.setdefault(serving_pid(client.sock, d.port, pids), []).append(answer)
        assert set(answered_by) == pids
        later = [a for pid, answers in answered_by.items() for a in answers]
        later.remove(answered_by[first_pid][0])
        assert all(not a.startswith("DEFER") for a in later), later
        assert any(a.startswith("PREPEND X-Greylist: delayed") for a in later), later
        d.hup()
        wait_until(lambda: d.log().count("configuration reloaded") >= 2, 20, "both reloaded")
    finally:
        d.stop()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
