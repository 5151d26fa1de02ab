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

import email.utils
import os
import re
import shlex
import shutil
import smtplib
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.support.net import free_port, port_open
from tests.support.postfix import SmtpSink, wait_until
from tests.support.procs import stop_process

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


def test_installed_package_holds_the_web_interface(installed, tmp_path):
    out = run(installed, "python", "-c", "from smtpproxy.controller import web\n"
              "for name in web.FILES: print(name, len(web._read(name)))", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    sizes = dict(line.split() for line in out.stdout.splitlines())
    assert set(sizes) == {"index.html", "app.js", "app.css"}
    assert all(int(size) > 500 for size in sizes.values()), sizes


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
        stop_process(proc)


# Where README "Installing" puts things; the units must agree with it.
VENV_BIN = "/opt/smtpproxy/bin/"
ETC_CONFIG = "/etc/smtpproxy/smtpproxy.toml"
UNITS = ("smtpproxy.service", "smtpproxy-policy.service")


def unit_exec_start(unit: str) -> list[str]:
    (line,) = re.findall(r"^ExecStart=(.*)$", (REPO / "systemd" / unit).read_text(), re.M)
    return shlex.split(line)


def test_units_and_readme_agree_on_the_install_paths():
    readme = (REPO / "README.md").read_text()
    assert "python3 -m venv /opt/smtpproxy" in readme and "useradd --system" in readme
    for unit in UNITS:
        text = (REPO / "systemd" / unit).read_text()
        argv = unit_exec_start(unit)
        assert argv[0] == VENV_BIN + unit.removesuffix(".service") and ETC_CONFIG in argv
        assert "DynamicUser" not in re.sub(r"#.*", "", text)
        assert re.search(r"^User=smtpproxy$", text, re.M), unit


def test_systemd_analyze_accepts_the_units(installed, tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed: the units are not verified")
    # The units as installed by README "Installing", with the virtualenv of
    # this test in place of /opt/smtpproxy (verify wants the binaries to exist).
    for unit in UNITS:
        text = (REPO / "systemd" / unit).read_text().replace(VENV_BIN, f"{installed}/")
        (tmp_path / unit).write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / u) for u in UNITS)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def start_unit(installed: Path, unit: str, *flags: str, cwd: Path) -> subprocess.Popen:
    """The unit's ExecStart= line, started directly (no systemd here), on the shipped config."""
    argv = [a.replace(VENV_BIN, f"{installed}/").replace(ETC_CONFIG, str(REPO / "conf" / "smtpproxy.toml"))
            for a in unit_exec_start(unit)]
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "SMTPPROXY_CONFIG", "STATE_DIRECTORY")}
    return subprocess.Popen([*argv, *flags], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_installed_daemons_carry_a_message_and_answer_a_policy_question(installed, tmp_path):
    sink = SmtpSink(tmp_path / "sink", free_port())
    sink.start()
    proxy_port, policy_port = free_port(), free_port()
    procs = [
        start_unit(installed, "smtpproxy.service", "--listen", f"127.0.0.1:{proxy_port}",
                   "--downstream", f"127.0.0.1:{sink.port}", "--state-dir", str(tmp_path / "proxy"),
                   cwd=tmp_path),
        start_unit(installed, "smtpproxy-policy.service", "--listen", f"127.0.0.1:{policy_port}",
                   "--state-dir", str(tmp_path / "policy"), cwd=tmp_path),
    ]
    try:
        for proc, port in zip(procs, (proxy_port, policy_port), strict=True):
            wait_until(lambda p=proc, n=port: port_open(n) or p.poll() is not None, 30, "installed daemon")
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        message = (b"From: sender@example.invalid\r\nTo: rcpt@example.invalid\r\n"
                   b"Subject: through the installed proxy\r\nMessage-ID: <wheel@example.invalid>\r\n"
                   + email.utils.formatdate().encode().join((b"Date: ", b"\r\n")) + b"\r\nHello.\r\n")
        with smtplib.SMTP("127.0.0.1", proxy_port, local_hostname="client.example.test",
                          timeout=60) as smtp:
            smtp.sendmail("sender@example.invalid", ["rcpt@example.invalid"], message)
        wait_until(lambda: sink.files(), 10, "the message at the sink")
        (got,) = sink.messages()
        assert b"Subject: through the installed proxy" in got.message
        assert b"X-Smtpproxy: " in got.message and b"X-Spamd-Result: " in got.message
        with socket.create_connection(("127.0.0.1", policy_port), timeout=10) as conn:
            conn.sendall(b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.1\n"
                         b"client_name=unknown\nsender=a@example.invalid\nrecipient=b@example.invalid\n\n")
            reply = b""
            while not reply.endswith(b"\n\n"):
                chunk = conn.recv(4096)
                assert chunk, reply
                reply += chunk
        # A client never seen: greylisted, which needs the store.
        assert reply.startswith(b"action=DEFER_IF_PERMIT 4.7.1 Greylisted"), reply
    finally:
        for proc in procs:
            stop_process(proc)
        sink.stop()
