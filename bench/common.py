"""Helpers shared by the benchmarks (bench/*.py), one copy each.

Test-support helpers (ports, Postfix, redis-server, the pipeline) come from
tests/support; this module holds what only the benchmarks need:

- ``pct``: a percentile of a list of timings;
- ``stop``: SIGTERM a child process, kill it if it does not exit in time;
- ``apt_install``: install Debian packages without starting system services;
- ``start_rspamd``: a private rspamd with its network modules off;
  ``RSPAMC_RESULT``: one message's result in rspamc's output;
- ``spamd_site``, ``running_spamd``, ``spamd_symbols``: a private spamd -L
  with a site configuration of its own, and one SYMBOLS request to it;
- ``process_tree_cpu_seconds``: the CPU time of a daemon and its workers;
- ``wait_until_idle``: until a daemon has finished its start-up work;
- ``smtp_source``, ``MESSAGE_SIZE``, ``cpu_seconds``, ``drain``: throughput
  runs through the test pipeline with Postfix's smtp-source.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support.net import free_port, port_open
from tests.support.postfix import wait_until
from tests.support.procs import stop_process

if TYPE_CHECKING:
    from tests.support.pipeline import Pipeline

MESSAGE_SIZE = 5 * 1024


# A Postfix smtpd that takes XFORWARD and mail from loopback without the
# usual restrictions: the listener behind a content filter (re-injection).
OPEN_LOOPBACK_SMTPD = {
    "smtpd_authorized_xforward_hosts": "127.0.0.0/8",
    "smtpd_client_restrictions": "",
    "smtpd_helo_restrictions": "",
    "smtpd_sender_restrictions": "",
    "smtpd_recipient_restrictions": "permit_mynetworks,reject",
    "smtpd_data_restrictions": "",
    "mynetworks": "127.0.0.0/8",
}

def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; NaN for no values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL (tests/support/procs.py)."""
    stop_process(proc, timeout)


def apt_install(packages: list[str], allowed: bool) -> str | None:
    """Install what is missing of ``packages`` (only if ``allowed``); None when all are
    installed afterwards, else why not. No service is started (policy-rc.d)."""
    missing = [p for p in packages if subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True
    ).stdout != "install ok installed"]
    if not missing:
        return None
    if not allowed:
        return f"not installed: {' '.join(missing)}"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    made_policy = not os.path.exists("/usr/sbin/policy-rc.d")
    if made_policy:  # packages must not start system-wide services
        Path("/usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
        os.chmod("/usr/sbin/policy-rc.d", 0o755)
    try:
        result = subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env,
                                capture_output=True, text=True, timeout=900)
    finally:
        if made_policy:
            os.unlink("/usr/sbin/policy-rc.d")
    return None if result.returncode == 0 else f"apt-get failed: {result.stderr[-300:]}"


RSPAMD_LOCAL = {
    "worker-normal.inc": 'bind_socket = "127.0.0.1:{port}";\ncount = 2;\n',
    "worker-controller.inc": 'bind_socket = "127.0.0.1:{cport}";\n',
    "worker-proxy.inc": "enabled = false;\n",
    "options.inc": 'dns {{ nameserver = ["{dns}"]; timeout = 1s; retransmits = 1; }}\n',
    "logging.inc": 'type = "file"; filename = "{log}"; level = "error";\n',
}
RSPAMD_NETWORK_MODULES = ("rbl", "fuzzy_check", "surbl", "url_reputation", "asn", "emails",
                          "phishing", "replies", "neural", "ratelimit", "greylist")


def start_rspamd(conf: Path, nameserver: str, extra: dict[str, str] | None = None,
                 override: dict[str, str] | None = None) -> tuple[subprocess.Popen, int, int]:
    """A private rspamd (network modules off, DNS to ``nameserver``) configured
    under ``conf``; ``extra`` adds local.d files (merged with the shipped
    settings), ``override`` override.d files (replacing the shipped keys they
    name). Returns (process, normal worker port, controller port); the caller
    waits for the ports and stops it."""
    for sub in ("local.d", "override.d", "db", "run", "log"):
        (conf / sub).mkdir(parents=True)
    port, cport = free_port(), free_port()
    values = {"port": port, "cport": cport, "dns": nameserver, "log": conf / "log" / "rspamd.log"}
    for name, text in RSPAMD_LOCAL.items():
        (conf / "local.d" / name).write_text(text.format(**values))
    for module in RSPAMD_NETWORK_MODULES:
        (conf / "local.d" / f"{module}.conf").write_text("enabled = false;\n")
    for name, text in (extra or {}).items():
        (conf / "local.d" / name).write_text(text)
    for name, text in (override or {}).items():
        (conf / "override.d" / name).write_text(text)
    proc = subprocess.Popen(
        ["rspamd", "-f", "-c", "/etc/rspamd/rspamd.conf", "-u", "root", "-g", "root", "-i",
         "--var", f"LOCAL_CONFDIR={conf}", "--var", f"DBDIR={conf / 'db'}",
         "--var", f"RUNDIR={conf / 'run'}", "--var", f"LOGDIR={conf / 'log'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port, cport


# ---------------------------------------------------------------- smtp-source runs


RSPAMC_RESULT = re.compile(
    r"^Results for file: (?P<file>.*?) \((?P<secs>[0-9.]+) seconds\)$.*?^Score: (?P<score>-?[0-9.]+) /"
    r"(?P<rest>.*?)(?=^Results for file: |\Z)", re.M | re.S)


# ---------------------------------------------------------------- SpamAssassin


def spamd_site(folder: Path, local_cf: str) -> Path:
    """A site configuration directory: the system's .pre files (which plugins
    load) and ``local_cf`` as local.cf."""
    folder.mkdir(parents=True)
    for pre in Path("/etc/spamassassin").glob("*.pre"):
        (folder / pre.name).write_text(pre.read_text())
    (folder / "local.cf").write_text(local_cf)
    return folder


@contextlib.contextmanager
def running_spamd(site: Path, children: int = 4) -> Iterator[int]:
    """A private ``spamd -L`` (no network tests) reading ``site``; yields its
    port, raises RuntimeError when it does not start."""
    port = free_port()
    spamd = subprocess.Popen(
        ["spamd", "-L", "-i", "127.0.0.1", "-p", str(port), "-A", "127.0.0.1",
         "--siteconfigpath", str(site), f"--max-children={children}", f"--min-children={children}",
         "-u", "nobody", "-x", "-s", "stderr"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: port_open(port) or spamd.poll() is not None, 180, "spamd")
        if spamd.poll() is not None:
            raise RuntimeError("spamd exited at start")
        yield port
    finally:
        spamd.send_signal(signal.SIGTERM)
        spamd.wait(30)


def spamd_symbols(port: int, raw: bytes) -> tuple[float, list[str]]:
    """One SYMBOLS request in the spamd protocol: (score, rule names)."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(b"SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"Spam: \w+ ; (-?[0-9.]+) /", head)
    if match is None:
        raise RuntimeError(f"spamd answered {head[:200]!r}")
    return float(match.group(1)), [s for s in body.decode().strip().split(",") if s]


# ---------------------------------------------------------------- smtp-source runs


def smtp_source(port: int, messages: int, concurrency: int,
                sender: str = "bench@example.org") -> float:
    """Messages per second that smtp-source got accepted."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["smtp-source", "-s", str(concurrency), "-m", str(messages), "-l", str(MESSAGE_SIZE),
         "-S", "benchmark message", "-M", "client.example.org",
         "-f", sender, "-t", "sink@example.net", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
    )
    # A blocking wait, the time limit by a timer: wait(timeout=...) polls every
    # 50 ms, which rounded each run up to the next poll (at concurrency 1,
    # 200 messages in about 0.6 s: rates in steps of some 8%).
    limit = threading.Timer(600, proc.kill)
    limit.start()
    try:
        returncode = proc.wait()
    finally:
        limit.cancel()
    elapsed = time.perf_counter() - start
    if returncode:
        raise subprocess.CalledProcessError(returncode, proc.args)
    return messages / elapsed


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of ``pid`` and its descendants alive now
    (a daemon and its workers); a process that ends meanwhile is left out."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += cpu_seconds(current)
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        todo.extend(int(child) for child in children)
    return total


def wait_until_idle(pid: int, timeout: float = 300.0, quiet_s: float = 3.0) -> float:
    """Wait until ``pid`` and its workers use (almost) no CPU for ``quiet_s``
    seconds: rspamd compiles its Hyperscan databases for half a minute or more
    after it starts listening, and that CPU (and its slower scans meanwhile)
    must not be counted. Returns the seconds waited; at most ``timeout``."""
    start = time.monotonic()
    quiet_since = start
    last = process_tree_cpu_seconds(pid)
    while time.monotonic() - start < timeout:
        time.sleep(0.5)
        now = process_tree_cpu_seconds(pid)
        if now - last > 0.02:  # more than 4% of a core
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            break
        last = now
    return time.monotonic() - start


def drain(p: Pipeline) -> None:
    """Wait until the pipeline's Postfix queue is empty (at most 10 minutes)."""
    wait_until(p.postfix.queue_is_empty, 600, "queue drained", interval=0.2)
