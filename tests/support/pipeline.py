"""The whole path, for integration tests and benchmarks:

    client ─► Postfix smtpd (before-filter, smtpd_proxy_filter) ─► smtpproxy ─►
    Postfix smtpd (re-injection, XFORWARD allowed) ─► queue ─► smtp ─► smtp-sink

plus a second before-filter port with ``smtpd_proxy_options=speed_adjust``
and a plain "direct" smtpd (client ─► queue) as the benchmark baseline.
The proxy runs as a real subprocess (``python -m smtpproxy.cli run``) so
signals, logging and start-up behave as in production.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.net import free_port, port_open
from tests.support.postfix import PostfixInstance, SmtpSink, wait_until

REPO = Path(__file__).resolve().parents[2]
REJECTED_RCPT = "rejected@example.net"
# The re-injection listener answers 421 to this recipient: a downstream that
# fails (temporarily) at one RCPT of a transaction.
TEMPFAIL_RCPT = "going-away@example.net"
MAILDIR_DOMAIN = "maildir.example.net"


class ProxyProcess:
    def __init__(self, base: Path, config_text: str):
        self.base = Path(base)
        self.config = self.base / "smtpproxy.toml"
        self.logfile = self.base / "smtpproxy.log"
        self.config_text = config_text
        self.proc: subprocess.Popen | None = None

    def start(self, wait_port: int | None) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.config_text)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smtpproxy.cli", "run", "-c", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=open(self.logfile, "ab"), env=env, cwd=REPO,
        )
        if wait_port is not None:
            wait_until(lambda: port_open(wait_port) or self.proc.poll() is not None, 20, "smtpproxy")
            if self.proc.poll() is not None:
                raise RuntimeError(f"smtpproxy exited: {self.log_text()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 40) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code, self.proc = self.proc.returncode, None
        return code

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class Pipeline:
    def __init__(self, base: Path, proxy_extra: str = "", listeners_extra: str = "",
                 unix_socket: bool = False, scan: bool = False, extra_config: str = ""):
        """``unix_socket``: Postfix reaches the proxy over a UNIX-domain socket.
        ``scan``: score messages (off by default: most tests are about the proxy
        itself); ``extra_config``: TOML appended to the proxy's file."""
        self.base = Path(base)
        self.unix_socket = unix_socket
        self.sink_port = free_port()
        self.inbound_port = free_port()        # before-filter smtpd
        self.speed_adjust_port = free_port()   # before-filter smtpd, speed_adjust
        self.direct_port = free_port()         # plain smtpd, no filter (baseline)
        self.reinject_port = free_port()       # re-injection smtpd
        self.proxy_port = free_port()
        self.sink = SmtpSink(self.base / "sink", self.sink_port)
        self.postfix = PostfixInstance(
            self.base / "postfix",
            relay_port=self.sink_port,
            reinject_rcpt_access=(f"inline:{{ {{ {REJECTED_RCPT} = 550 5.1.1 No such user here }}, "
                                  f"{{ {TEMPFAIL_RCPT} = 421 4.3.0 Going away }} }}"),
            # smtp-sink cannot take SMTPUTF8 mail: this domain is delivered to a
            # Maildir by Postfix's virtual(8) instead.
            virtual_mailbox_domains=MAILDIR_DOMAIN,
            virtual_mailbox_base=str(self.base / "mail"),
            virtual_mailbox_maps="static:maildir/",
            virtual_uid_maps="static:65534",
            virtual_gid_maps="static:65534",
        )
        (self.base / "mail").mkdir(parents=True, exist_ok=True)
        shutil.chown(self.base / "mail", 65534, 65534)
        self.proxy_socket = self.base / "proxy" / "smtpproxy.sock"
        proxy_address = f"unix:{self.proxy_socket}" if unix_socket else f"127.0.0.1:{self.proxy_port}"
        before_filter = {
            "smtpd_proxy_filter": proxy_address,
            "smtpd_client_connection_count_limit": "0",
        }
        self.postfix.add_service(f"127.0.0.1:{self.inbound_port}", before_filter)
        self.postfix.add_service(
            f"127.0.0.1:{self.speed_adjust_port}",
            {**before_filter, "smtpd_proxy_options": "speed_adjust"},
        )
        self.postfix.add_service(f"127.0.0.1:{self.direct_port}", {})
        self.reinject_service = len(self.postfix.services)
        self.postfix.add_service(
            f"127.0.0.1:{self.reinject_port}",
            {
                "smtpd_authorized_xforward_hosts": "127.0.0.0/8",
                "smtpd_client_restrictions": "",
                "smtpd_helo_restrictions": "",
                "smtpd_sender_restrictions": "",
                "smtpd_recipient_restrictions":
                    "check_recipient_access,$reinject_rcpt_access,permit_mynetworks,reject",
                "smtpd_data_restrictions": "",
                "mynetworks": "127.0.0.0/8",
                "receive_override_options": "no_unknown_recipient_checks",
            },
        )
        self.proxy = ProxyProcess(
            self.base / "proxy",
            f"""
state_dir = "{self.base / 'proxy' / 'state'}"
[log]
level = "info"
[proxy]
hostname = "filter.example.test"
{proxy_extra}
[[proxy.listeners]]
name = "inbound"
listen = "{proxy_address}"
profile = "inbound"
downstream = "127.0.0.1:{self.reinject_port}"
{listeners_extra}
[scan]
enabled = {"true" if scan else "false"}
{extra_config}
""",
        )

    def start(self) -> None:
        """Start everything; if any part fails, stop what did start before raising."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.sink.start()
        self.postfix.start()
        self.proxy.start(None if self.unix_socket else self.proxy_port)
        if self.unix_socket:
            wait_until(self.proxy_socket.exists, 20, "smtpproxy's socket")
        for port in (self.inbound_port, self.reinject_port, self.direct_port):
            wait_until(lambda port=port: port_open(port), 20, f"postfix port {port}")

    def stop(self) -> None:
        self.proxy.stop()
        self.postfix.stop()
        self.sink.stop()

    def maildir_messages(self) -> list[bytes]:
        new = self.base / "mail" / "maildir" / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []

    def stop_reinjection(self) -> str:
        """Take the re-injection listener away (as if it were down); returns its line."""
        line = self.postfix.services[self.reinject_service]
        self.postfix.services[self.reinject_service] = "# re-injection listener stopped"
        self.postfix.reload()
        wait_until(lambda: not port_open(self.reinject_port), 20, "re-injection port closed")
        return line

    def start_reinjection(self, line: str) -> None:
        self.postfix.services[self.reinject_service] = line
        self.postfix.reload()
        wait_until(lambda: port_open(self.reinject_port), 20, "re-injection port open")

    def wait_delivered(self, count: int, timeout: float = 60) -> list:
        """Wait until the sink holds ``count`` messages and the queue is empty."""
        wait_until(
            lambda: len(self.sink.files()) >= count and self.postfix.queue_is_empty(),
            timeout, f"{count} messages at the sink",
        )
        return self.sink.messages()
