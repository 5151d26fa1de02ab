"""A private Postfix instance on loopback, and Postfix's smtp-sink, for tests and benchmarks.

Everything lives under one base directory: main.cf/master.cf, the queue, the
data directory and the mail log (``maillog_file``, so no syslog is needed).
Debian's package provides the binaries; the system's own Postfix is never
touched. Every wait is bounded.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# free_port is re-exported for callers that still import it from here.
from tests.support.net import free_port, port_open  # noqa: F401

MASTER_CF_BASE = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class PostfixInstance:
    """A Postfix instance of our own: ``add_service`` lines, then ``start``."""

    def __init__(self, base: Path, relay_port: int | None = None, **main_cf: str):
        self.base = Path(base)
        self.conf = self.base / "conf"
        self.queue = self.base / "queue"
        self.data = self.base / "data"
        self.maillog = self.base / "maillog"
        self.services: list[str] = []
        self.params: dict[str, str] = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "meta_directory": "/etc/postfix",
            "command_directory": "/usr/sbin",
            "daemon_directory": "/usr/lib/postfix/sbin",
            "shlib_directory": "/usr/lib/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "myhostname": "mx.example.test",
            "mydomain": "example.test",
            "myorigin": "example.test",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "alias_maps": "",
            "alias_database": "",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.base),
            "syslog_name": "pftest",
            "in_flow_delay": "0",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "message_size_limit": "52428800",
            "virtual_mailbox_limit": "0",
            "mailbox_size_limit": "0",
            # Long lines must reach the sink unsplit.
            "smtp_line_length_limit": "0",
            "smtpd_forbid_bare_newline": "no",
            "smtputf8_enable": "yes",
            "biff": "no",
            "smtp_connection_cache_on_demand": "no",
            "default_process_limit": "200",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "smtpd_client_message_rate_limit": "0",
            "anvil_rate_time_unit": "60s",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
        }
        if relay_port is not None:
            self.params["relayhost"] = f"[127.0.0.1]:{relay_port}"
        self.params.update(main_cf)

    def add_service(self, endpoint: str, options: dict[str, str] | None = None,
                    command: str = "smtpd", kind: str = "inet", maxproc: str = "-") -> None:
        line = f"{endpoint} {kind} n - n - {maxproc} {command}"
        for key, value in (options or {}).items():
            line += f"\n  -o {{ {key} = {value} }}" if " " in value else f"\n  -o {key}={value}"
        self.services.append(line)

    def write_config(self) -> None:
        for path in (self.conf, self.queue, self.data):
            path.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data, "postfix")
        # Postfix daemons run as the postfix user and must reach data_directory
        # (temporary directories are 0700).
        for d in (self.base, *self.base.parents):
            mode = d.stat().st_mode
            if not mode & 0o001:
                d.chmod(mode | 0o011)
        (self.conf / "main.cf").write_text(
            "".join(f"{k} = {v}\n" for k, v in self.params.items())
        )
        (self.conf / "master.cf").write_text("\n".join(self.services) + "\n" + MASTER_CF_BASE)

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["postfix", "-c", str(self.conf), *args],
                              capture_output=True, text=True, check=check, timeout=60)

    def start(self) -> None:
        self.write_config()
        result = self.postfix("start", check=False)
        if result.returncode != 0:
            raise RuntimeError(f"postfix start failed: {result.stderr}{self.log_text()}")
        wait_until(lambda: "daemon started" in self.log_text(), 20, "postfix master")

    def reload(self) -> None:
        self.write_config()
        self.postfix("reload")

    def stop(self) -> None:
        self.postfix("stop", check=False)
        # The master may take a moment to release its ports.
        pid_file = self.queue / "pid" / "master.pid"
        try:
            wait_until(lambda: not pid_file.exists() or not _pid_alive(pid_file), 20, "postfix stop")
        except TimeoutError:
            self.postfix("abort", check=False)

    def log_text(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def queue_ids_removed(self) -> int:
        return len(re.findall(r": removed$", self.log_text(), re.M))

    def queue_is_empty(self) -> bool:
        for sub in ("incoming", "active", "deferred", "hold", "maildrop"):
            d = self.queue / sub
            if d.exists() and any(p.is_file() for p in d.rglob("*")):
                return False
        return True


def _pid_alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
        return True
    except (ValueError, IndexError, ProcessLookupError, FileNotFoundError):
        return False


@dataclass
class SinkMessage:
    path: Path
    client_addr: str
    helo: str
    mail_args: str
    rcpt_args: list[str]
    message: bytes  # as delivered, LF line ends (smtp-sink writes LF)
    received: list[bytes] = field(default_factory=list)


class SmtpSink:
    """Postfix's smtp-sink, dumping each transaction to a file in ``directory``."""

    def __init__(self, directory: Path, port: int, extra_args: tuple[str, ...] = ()):
        self.directory = Path(directory)
        self.port = port
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["smtp-sink", "-u", "root", *self.extra_args,
             "-d", f"{self.directory}/%Y%m%d%H%M%S.", f"127.0.0.1:{self.port}", "256"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: port_open(self.port), 10, "smtp-sink")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file())

    def messages(self) -> list[SinkMessage]:
        return [parse_sink_file(p) for p in self.files()]


def parse_sink_file(path: Path) -> SinkMessage:
    raw = path.read_bytes()
    # smtp-sink ends each dump with one empty line of its own.
    if raw.endswith(b"\n\n"):
        raw = raw[:-1]
    lines = raw.split(b"\n")
    meta: dict[str, list[str]] = {}
    i = 0
    while i < len(lines) and lines[i].startswith(b"X-") and b": " in lines[i]:
        key, _, value = lines[i].decode("utf-8", "surrogateescape").partition(": ")
        meta.setdefault(key, []).append(value)
        i += 1
    # smtp-sink's own Received: header (three lines) comes next.
    received = []
    if i < len(lines) and lines[i].startswith(b"Received: from") and b"smtp-sink" in lines[i + 1]:
        received = lines[i:i + 3]
        i += 3
    return SinkMessage(
        path=path,
        client_addr=meta.get("X-Client-Addr", [""])[0],
        helo=meta.get("X-Helo-Args", [""])[0],
        mail_args=meta.get("X-Mail-Args", [""])[0],
        rcpt_args=meta.get("X-Rcpt-Args", []),
        message=b"\n".join(lines[i:]),
        received=received,
    )
