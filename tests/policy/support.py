"""Run the real smtpproxy-policy daemon in a subprocess and talk to it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from policy.codec import format_request, parse_reply
from tests.support.net import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def write_config(path: Path, store_url: str, listen: str, greylist: dict | None = None,
                 rules: list[dict] | None = None, policy: dict | None = None,
                 store: dict | None = None) -> None:
    lines = [f"state_dir = {toml_value(str(path.parent / 'state'))}", "[log]", 'level = "debug"',
             "[store]", f"url = {toml_value(store_url)}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in (store or {}).items()]
    lines += ["[policy]", f"listen = {toml_value(listen)}", 'hostname = "mx.test"']
    lines += [f"{k} = {toml_value(v)}" for k, v in (policy or {}).items()]
    gl = {"trusted_networks": [], "whitelist_client_maps": []}
    gl.update(greylist or {})
    lines += ["[policy.greylist]"] + [f"{k} = {toml_value(v)}" for k, v in gl.items()]
    for rule in rules or []:
        lines += ["[[policy.rate_limits]]"] + [f"{k} = {toml_value(v)}" for k, v in rule.items()]
    path.write_text("\n".join(lines) + "\n")


class PolicyDaemon:
    """``smtpproxy-policy run -c FILE`` as a child process."""

    def __init__(self, directory: Path, store_url: str, unix: bool = False, **config):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.socket_path = str(self.dir / "policy.sock")
        self.listen = f"unix:{self.socket_path}" if unix else f"127.0.0.1:{self.port}"
        self.config = self.dir / "policy.toml"
        write_config(self.config, store_url, self.listen, **config)
        self.logfile = self.dir / "policy.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> PolicyDaemon:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("STATE_DIRECTORY", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "policy.cli", "run", "-c", str(self.config)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(self.logfile, "ab"),
        )
        deadline = time.monotonic() + 15
        while "started (pid" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"policy daemon did not start:\n{self.log()}")
            time.sleep(0.05)
        if not self.listen.startswith("unix:"):
            wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def connect(self, timeout_s: float = 15.0) -> PolicyClient:
        if self.listen.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout_s)
            sock.connect(self.socket_path)
        else:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s)
        return PolicyClient(sock)

    def ask(self, **attrs: str) -> str:
        with self.connect() as client:
            return client.ask(**attrs)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        return subprocess.run(
            [sys.executable, "-m", "policy.cli", args[0], "-c", str(self.config), *args[1:]],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )


class PolicyClient:
    """A persistent policy-protocol connection, like one Postfix smtpd process."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_reply(self) -> str | None:
        """One reply, or None when the server closed the connection."""
        while b"\n\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                return None
            self.buf += chunk
        reply, _, self.buf = self.buf.partition(b"\n\n")
        return parse_reply(reply + b"\n\n")

    def ask(self, **attrs: str) -> str:
        req = {"request": "smtpd_access_policy", "protocol_state": "RCPT"}
        req.update(attrs)
        self.send(format_request(req))
        reply = self.read_reply()
        assert reply is not None, "server closed the connection"
        return reply


def rcpt(client_address="192.0.2.10", sender="alice@sender.example",
         recipient="bob@rcpt.example", **extra) -> dict[str, str]:
    return {"client_address": client_address, "client_name": "unknown", "sender": sender,
            "recipient": recipient, **extra}
