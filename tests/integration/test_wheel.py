"""Installed as users install it: a wheel built from the tracked files, in a virtualenv outside the checkout.

The test suite and the demo run the checkout in editable mode, which hides a
file the packages read at run time but the wheel lacks (it did:
scan/symbols.toml). Here the wheel is built from a copy of the tracked files,
installed without its dependencies into a fresh virtualenv (the dependencies
come from the test environment's site-packages through a .pth line, so no
package index is needed), and the installed scripts are run from a
directory that is not the checkout.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.support.net import free_port, port_open
from tests.support.postfix import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GTUBE = (b"From: gtube@example.org\r\nTo: rcpt@example.net\r\nSubject: gtube\r\n\r\n"
         b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ directory of a virtualenv holding only the built wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                             check=True).stdout.split(b"\0")
    for name in filter(None, tracked):
        path = Path(os.fsdecode(name))
        if (REPO / path).is_file():
            (src / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / path, src / path)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("smtpproxy-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True)
    site = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The dependencies, from the test environment; its own .pth files (the
    # editable checkout among them) are not processed from a plain path line.
    Path(site, "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def run(bin_dir: Path, *args: str, stdin: bytes | None = None, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SMTPPROXY_CONFIG")}
    out = subprocess.run([str(bin_dir / args[0]), *args[1:]], input=stdin, capture_output=True,
                         cwd=cwd, env=env, timeout=60)
    out.stdout, out.stderr = out.stdout.decode(errors="replace"), out.stderr.decode(errors="replace")
    return out


def test_installed_package_is_the_wheel_not_the_checkout(installed, tmp_path):
    out = run(installed, "python", "-c", "import smtpproxy, policy; print(smtpproxy.__file__, policy.__file__)",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert str(REPO) not in out.stdout and str(installed.parent) in out.stdout


def test_installed_scripts_accept_every_shipped_config(installed, tmp_path):
    proxy = run(installed, "smtpproxy", "configtest", "-c", str(REPO / "conf" / "smtpproxy.toml"),
                cwd=tmp_path)
    assert proxy.returncode == 0, proxy.stderr
    policy = run(installed, "smtpproxy-policy", "configtest", "-c", str(REPO / "conf" / "smtpproxy.toml"),
                 cwd=tmp_path)
    assert policy.returncode == 0, policy.stderr


def test_installed_scan_rejects_gtube(installed, tmp_path):
    out = run(installed, "smtpproxy", "scan", "--state-dir", str(tmp_path), "--dns", "127.0.0.1:9",
              "-", stdin=GTUBE, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Action: reject" in out.stdout and "GTUBE" in out.stdout, out.stdout


def test_installed_daemon_greets_and_answers(installed, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SMTPPROXY_CONFIG")}
    proc = subprocess.Popen([str(installed / "smtpproxy"), "run", "--listen", f"127.0.0.1:{port}",
                             "--downstream", f"127.0.0.1:{free_port()}", "--state-dir", str(tmp_path)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 20, "installed smtpproxy")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            code, text = smtp.ehlo("client.example.test")
            assert code == 250 and b"XFORWARD" in text
            # Nothing listens downstream: the client gets the generic 451, never a 250.
            code, _ = smtp.mail("sender@example.org")
            assert code == 451
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
