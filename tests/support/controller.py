"""Helpers for controller tests: hashed passwords, HTTP requests, rspamc, corpus messages."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from smtpproxy.controller.auth import hash_password

READ_PASSWORD = "read-secret"
WRITE_PASSWORD = "write-secret"
CORPUS = Path("/work/shared/corpora/spam-ham/spamassassin-public-corpus")


def controller_config(port: int, extra: str = "") -> str:
    """A [controller] table (TOML) with both passwords hashed."""
    return f"""
[controller]
enabled = true
listen = "127.0.0.1:{port}"
password = "{hash_password(READ_PASSWORD)}"
enable_password = "{hash_password(WRITE_PASSWORD)}"
{extra}
"""


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None, timeout: float = 30) -> tuple[int, dict | str]:
    """(status, the JSON body or the text) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read().decode("utf-8", "replace")
    finally:
        conn.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, data


def rspamc_binary() -> str:
    path = shutil.which("rspamc")
    if path is None:
        pytest.fail("rspamc is not installed (apt-get install rspamd; scripts/test.sh does)")
    return path


def rspamc(port: int, password: str | None, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    argv = [rspamc_binary(), "-h", f"127.0.0.1:{port}", "-t", "60"]
    if password is not None:
        argv += ["-P", password]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout)


def corpus_files(kind: str, start: int, count: int) -> list[Path]:
    """Messages ``start`` .. ``start + count`` of a corpus directory (spam, easy_ham, ...)."""
    files = sorted(p for p in (CORPUS / kind).iterdir() if p.name != "cmds")
    if len(files) < start + count:
        pytest.fail(f"{CORPUS / kind}: fewer than {start + count} messages")
    return files[start:start + count]


def copy_corpus(kind: str, start: int, count: int, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for path in corpus_files(kind, start, count):
        shutil.copy(path, target / path.name)
    return target
