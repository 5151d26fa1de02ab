"""A private clamd (Debian's clamav-daemon) for tests: our own signatures, nothing downloaded.

The database directory holds two files the test writes: ``test.hdb`` with
the MD5 and size of the EICAR test file, and ``test.ndb`` with one body
signature of our own (``MARKER`` anywhere in any file). clamd runs in the
foreground with a private config (its own socket, log, temp dir, limits);
freshclam is never run. A missing clamd is a failure, not a skip:
scripts/test.sh installs clamav-daemon.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.procs import stop_process

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
MARKER = b"SMTPPROXY-CLAMD-TEST-MARKER-7f3a9c"
EICAR_NAME = "Smtpproxy.Test.Eicar"
MARKER_NAME = "Smtpproxy.Test.Marker"


class Clamd:
    def __init__(self, base: Path, stream_max_length: str = "40M"):
        self.base = Path(base)
        self.socket = self.base / "clamd.sock"
        self.address = f"unix:{self.socket}"
        self.db = self.base / "db"
        self.log = self.base / "clamd.log"
        self.stream_max_length = stream_max_length
        self.proc: subprocess.Popen | None = None

    def write_config(self) -> Path:
        self.db.mkdir(parents=True, exist_ok=True)
        (self.base / "tmp").mkdir(exist_ok=True)
        (self.db / "test.hdb").write_text(f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:{EICAR_NAME}\n")
        (self.db / "test.ndb").write_text(f"{MARKER_NAME}:0:*:{MARKER.hex()}\n")
        conf = self.base / "clamd.conf"
        conf.write_text(
            f"Foreground yes\nLocalSocket {self.socket}\nDatabaseDirectory {self.db}\n"
            f"LogFile {self.log}\nTemporaryDirectory {self.base / 'tmp'}\n"
            f"PidFile {self.base / 'clamd.pid'}\n"
            f"StreamMaxLength {self.stream_max_length}\nMaxScanSize 100M\nMaxFileSize 60M\n"
            "ScanMail yes\nScanArchive yes\nBytecode no\n")
        return conf

    def start(self, timeout_s: float = 120) -> None:
        binary = shutil.which("clamd") or "/usr/sbin/clamd"
        if not os.path.exists(binary):
            pytest.fail("clamd is not installed (apt-get install clamav-daemon)")
        conf = self.write_config()
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.base / "clamd.stderr", "ab"))
        deadline = time.monotonic() + timeout_s
        while not self.socket.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"clamd exited: {(self.base / 'clamd.stderr').read_text()}"
                                   f"{self.log.read_text() if self.log.exists() else ''}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("clamd did not open its socket")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
