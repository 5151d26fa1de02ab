"""README "Installing", run verbatim as root, in a throwaway root.

The first ``sh`` block after "## Installing" runs as written (``sh -e``), from
a copy of the tracked files, in a mount namespace of its own (unshare) whose
/etc, /opt, /var, /run, /root and /usr are overlays with their upper layers
under the test's tmp path: apt-get, the virtualenv, ``pip install .`` from the
package index, useradd, the installed configuration and units all land there
and vanish with the namespace. The host's paths and user are recorded before
and compared after.

systemd is absent: a ``systemctl`` first in PATH stands in for it. ``enable
--now`` reads each installed unit from /etc/systemd/system, makes its
StateDirectory= and RuntimeDirectory= as systemd does (owned by User=, with
the unit's mode), runs its ExecStartPre= and ExecStart= lines as User= and
Group= (setpriv), with the unit's UMask= and systemd's environment, and waits
for READY=1 on a NOTIFY_SOCKET (Type=notify) like ``systemctl start`` does.
The daemons then listen on the shipped configuration's ports (127.0.0.1:10025
and 10040, on the host's network), where this test talks to them.

The module is also the program run inside the namespace (``driver``) and the
``systemctl`` stand-in: see ``main``.
"""

from __future__ import annotations

import ctypes
import grp
import hashlib
import json
import os
import pwd
import re
import resource
import select
import shlex
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.policy.support import PolicyClient, rcpt
from tests.support.net import port_open
from tests.support.postfix import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# Everything the block (and the units it starts) may write to.
OVERLAID = ("/etc", "/opt", "/var", "/run", "/root", "/usr")
# The shipped configuration's ports. 10026 is its re-injection listener: with
# something there, MAIL could get a 250 where this test wants the 451.
PORTS = {10025: "the proxy's listener", 10040: "the policy daemon's listener",
         10026: "the proxy's re-injection listener (nothing may listen there)"}
# What the block and its units create on a real machine: recorded whole ...
HOST_PATHS = ("/etc/smtpproxy", "/opt/smtpproxy", "/etc/systemd/system/smtpproxy.service",
              "/etc/systemd/system/smtpproxy-policy.service",
              "/etc/systemd/system/multi-user.target.wants", "/etc/passwd", "/etc/group",
              "/etc/shadow", "/etc/gshadow")
# ... and the directories made for the units, by owner and mode only (other tests
# may write below the default state directory while this one runs).
HOST_DIRS = ("/var/lib/smtpproxy", "/var/lib/smtpproxy-policy", "/run/smtpproxy-policy")
UNITS = ("smtpproxy.service", "smtpproxy-policy.service")
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNIT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
BLOCK_TIMEOUT_S = 600
START_TIMEOUT_S = 90  # systemd's default TimeoutStartSec=
STOP_TIMEOUT_S = 45  # the longer TimeoutStopSec= of the two units
# How this module runs as a program (the driver, the systemctl stand-in).
BOOT = ("import sys; sys.path[:0] = [sys.argv[1]]; "
        "from tests.integration import test_readme_install as t; sys.exit(t.main(sys.argv[2:]))")


def readme_block() -> str:
    """The first ```sh block after "## Installing"."""
    text = (REPO / "README.md").read_text()
    _, found, rest = text.partition("\n## Installing\n")
    assert found, "README.md has no '## Installing' section"
    match = re.search(r"^```sh\n(.*?)^```\s*$", rest, re.S | re.M)
    assert match, "README.md '## Installing' has no ```sh block"
    return match.group(1)


# ------------------------------------------------------------ the host, before and after


def path_state(path: str):
    """What a path holds: None, a file's stat and digest, or a tree's stats."""
    def meta(p: Path) -> list:
        st = p.lstat()
        return [stat.filemode(st.st_mode), st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns]

    top = Path(path)
    if not top.exists() and not top.is_symlink():
        return None
    if top.is_file():
        return meta(top) + [hashlib.sha256(top.read_bytes()).hexdigest()]
    return {str(p.relative_to(top)): meta(p) for p in [top, *sorted(top.rglob("*"))]}


def host_state() -> dict:
    state: dict = {path: path_state(path) for path in HOST_PATHS}
    for path in HOST_DIRS:
        st = os.stat(path) if os.path.isdir(path) else None
        state[path] = st and [stat.filemode(st.st_mode), st.st_uid, st.st_gid]
    for name, lookup in (("user", pwd.getpwnam), ("group", grp.getgrnam)):
        try:
            state[name] = list(lookup("smtpproxy"))
        except KeyError:
            state[name] = None
    state["mounts"] = sorted(line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines())
    return state


def port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def copy_tracked(dst: Path) -> None:
    """The checkout the README runs from: its tracked files (as in the work tree)."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                             check=True).stdout.split(b"\0")
    for name in filter(None, tracked):
        path = Path(os.fsdecode(name))
        if (REPO / path).is_file():
            (dst / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / path, dst / path)


# ------------------------------------------------------------ inside the namespace


def overlay(tmp: Path, target: str) -> str:
    """Mount an overlay on target, its upper layer under tmp; on a tmpfs there if need be."""
    base = tmp / "overlay" / target.strip("/")
    errors = []
    for attempt in ("disk", "tmpfs"):
        if attempt == "tmpfs":
            base.mkdir(parents=True, exist_ok=True)
            out = subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(base)],
                                 capture_output=True, text=True)
            if out.returncode:
                errors.append(out.stderr.strip())
                break
        (base / "upper").mkdir(parents=True, exist_ok=True)
        (base / "work").mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                              f"lowerdir={target},upperdir={base}/upper,workdir={base}/work", target],
                             capture_output=True, text=True)
        if out.returncode == 0:
            return attempt
        errors.append(out.stderr.strip())
    raise RuntimeError(f"cannot overlay {target}: {errors}")


def driver(tmp: Path) -> int:
    """In the namespace: overlays, the block, then wait for 'stop' on stdin and undo it all."""
    report: dict = {"mounted": {}}
    # Daemons the systemctl stand-in leaves behind become our children, to reap.
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    try:
        for target in OVERLAID:
            report["mounted"][target] = overlay(tmp, target)
    except RuntimeError as exc:
        report["error"] = str(exc)
    if "error" not in report:
        env = {"PATH": f"{tmp / 'bin'}:{ROOT_PATH}", "HOME": "/root", "USER": "root",
               "LOGNAME": "root", "SHELL": "/bin/sh", "LANG": "C.UTF-8",
               "README_INSTALL_DIR": str(tmp)}
        # How this machine reaches the package index.
        env.update({k: v for k, v in os.environ.items()
                    if k.startswith("PIP_") or k.lower() in ("http_proxy", "https_proxy", "no_proxy")})
        with open(tmp / "install.log", "wb") as log:
            try:
                report["rc"] = subprocess.run(["/bin/sh", "-e", "-x", str(tmp / "install.sh")],
                                              cwd=tmp / "src", env=env, stdin=subprocess.DEVNULL,
                                              stdout=log, stderr=subprocess.STDOUT,
                                              timeout=BLOCK_TIMEOUT_S).returncode
            except subprocess.TimeoutExpired:
                report["rc"] = f"timed out after {BLOCK_TIMEOUT_S} s"
        try:
            report["user"] = list(pwd.getpwnam("smtpproxy"))
        except KeyError:
            report["user"] = None
        report["dirs"] = {}
        for path in HOST_DIRS:
            if os.path.isdir(path):
                st = os.stat(path)
                report["dirs"][path] = [stat.filemode(st.st_mode), st.st_uid, st.st_gid]
    report["pids"] = started_pids(tmp)
    print(json.dumps(report), flush=True)
    sys.stdin.readline()  # "stop", or EOF when the test went away
    stopped = {str(pid): stop_pid(pid) for pid in report["pids"].values()}
    # What the daemons left in their state directories (read before the overlays go).
    state = {path: sorted(os.listdir(path)) for path in HOST_DIRS[:2] if os.path.isdir(path)}
    unmounted = {}
    for target in reversed(list(report["mounted"])):
        out = subprocess.run(["umount", target], capture_output=True, text=True)
        if out.returncode:
            out = subprocess.run(["umount", "--lazy", target], capture_output=True, text=True)
        unmounted[target] = out.returncode == 0
    print(json.dumps({"stopped": stopped, "state": state, "unmounted": unmounted}), flush=True)
    return 0


def started_pids(tmp: Path) -> dict[str, int]:
    path = tmp / "pids.json"
    return json.loads(path.read_text()) if path.exists() else {}


def stop_pid(pid: int) -> str:
    """SIGTERM, as systemctl stop does; SIGKILL after TimeoutStopSec=. How it ended."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not ours (never was, or already reaped)
            return "gone" if not Path(f"/proc/{pid}").exists() else "not a child"
        if done:
            return f"status {os.waitstatus_to_exitcode(status)}"
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "killed"
        time.sleep(0.1)


# ------------------------------------------------------------ the systemctl stand-in


def parse_unit(text: str) -> dict[str, list[str]]:
    """The [Service] and [Install] settings of a unit file, each key with all its values."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def one(unit: dict[str, list[str]], key: str, default: str = "") -> str:
    values = unit.get(f"Service.{key}") or [default]
    return values[-1]


def systemctl(args: list[str]) -> int:
    """Enough of systemctl for README "Installing": daemon-reload, enable [--now] UNIT..."""
    tmp = Path(os.environ["README_INSTALL_DIR"])
    options = [a for a in args if a.startswith("-")]
    words = [a for a in args if not a.startswith("-")]
    if words == ["daemon-reload"]:
        return 0
    if not words or words[0] not in ("enable", "start") or len(words) < 2:
        print(f"systemctl stand-in: unsupported: {shlex.join(args)}", file=sys.stderr)
        return 1
    names = [w if w.endswith(".service") else w + ".service" for w in words[1:]]
    units = {}
    for name in names:
        path = Path("/etc/systemd/system") / name
        if not path.is_file():
            print(f"Failed to {words[0]} unit: Unit file {name} does not exist.", file=sys.stderr)
            return 1
        units[name] = parse_unit(path.read_text())
    if words[0] == "enable":
        for name, unit in units.items():
            for target in " ".join(unit.get("Install.WantedBy", [])).split():
                wants = Path("/etc/systemd/system") / f"{target}.wants"
                wants.mkdir(exist_ok=True)
                if not (wants / name).is_symlink():
                    (wants / name).symlink_to(f"/etc/systemd/system/{name}")
                    print(f"Created symlink {wants / name} → /etc/systemd/system/{name}.")
        if "--now" not in options:
            return 0
    for name, unit in units.items():
        if not start(tmp, name, unit):
            print(f"Job for {name} failed (see {tmp / (name + '.log')}).", file=sys.stderr)
            return 1
    return 0


def make_directory(path: Path, mode: int, uid: int, gid: int) -> None:
    """As systemd makes a StateDirectory=: created, chowned (recursively when it was not ours), chmodded."""
    path.mkdir(parents=True, exist_ok=True)
    st = path.stat()
    if (st.st_uid, st.st_gid) != (uid, gid):
        for p in [path, *path.rglob("*")]:
            os.lchown(p, uid, gid)
    path.chmod(mode)


def start(tmp: Path, name: str, unit: dict[str, list[str]]) -> bool:
    """Start one unit as systemd would; False when it failed."""
    user = pwd.getpwnam(one(unit, "User", "root"))
    gid = grp.getgrnam(one(unit, "Group")).gr_gid if one(unit, "Group") else user.pw_gid
    env = {"PATH": UNIT_PATH, "LANG": "C.UTF-8", "HOME": user.pw_dir, "USER": user.pw_name,
           "LOGNAME": user.pw_name, "SHELL": user.pw_shell}
    for key, root, variable in (("StateDirectory", "/var/lib", "STATE_DIRECTORY"),
                                ("RuntimeDirectory", "/run", "RUNTIME_DIRECTORY")):
        dirs = " ".join(unit.get(f"Service.{key}", [])).split()
        mode = int(one(unit, f"{key}Mode", "0755"), 8)
        for d in dirs:
            make_directory(Path(root, d), mode, user.pw_uid, gid)
        if dirs:
            env[variable] = ":".join(f"{root}/{d}" for d in dirs)
    config_dirs = " ".join(unit.get("Service.ConfigurationDirectory", [])).split()
    if config_dirs:
        env["CONFIGURATION_DIRECTORY"] = ":".join(f"/etc/{d}" for d in config_dirs)
    for assignment in unit.get("Service.Environment", []):
        env.update(a.split("=", 1) for a in shlex.split(assignment))
    umask = int(one(unit, "UMask", "0022"), 8)
    nofile = one(unit, "LimitNOFILE")

    def as_systemd() -> None:
        os.umask(umask)
        if nofile:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (int(nofile), int(nofile)))
            except (ValueError, OSError):  # no CAP_SYS_RESOURCE here: what the hard limit allows
                hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    drop = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={gid}", "--init-groups"]
    if one(unit, "NoNewPrivileges") == "yes":
        drop.append("--no-new-privs")
    log = open(tmp / f"{name}.log", "ab")  # the daemon's stdout and stderr, as a journal
    for line in unit.get("Service.ExecStartPre", []):
        argv = shlex.split(line.lstrip("-@:+!"))
        out = subprocess.run([*drop, "--", *argv], env=env, cwd="/", stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT, preexec_fn=as_systemd,
                             timeout=START_TIMEOUT_S)
        if out.returncode and not line.startswith("-"):
            print(f"{name}: ExecStartPre={line} exited {out.returncode}", file=sys.stderr)
            return False
    (line,) = unit["Service.ExecStart"]
    notify = one(unit, "Type", "simple") == "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = f"smtpproxy-readme-{os.getpid()}-{name}"
    sock.bind("\0" + address)
    if notify:
        env["NOTIFY_SOCKET"] = "@" + address
    proc = subprocess.Popen([*drop, "--", *shlex.split(line.lstrip("-@:+!"))], env=env, cwd="/",
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=as_systemd, start_new_session=True)
    pids = started_pids(tmp)
    pids[name] = proc.pid
    (tmp / "pids.json").write_text(json.dumps(pids))
    deadline = time.monotonic() + START_TIMEOUT_S
    while notify:
        if proc.poll() is not None:
            print(f"{name}: exited {proc.returncode} before READY=1", file=sys.stderr)
            return False
        if time.monotonic() > deadline:
            print(f"{name}: no READY=1 in {START_TIMEOUT_S} s", file=sys.stderr)
            return False
        if select.select([sock], [], [], 0.2)[0]:
            if "READY=1" in sock.recv(4096).decode(errors="replace").split("\n"):
                break
    sock.close()
    print(f"{name}: started, pid {proc.pid}")
    return True


def main(argv: list[str]) -> int:
    role, *args = argv
    if role == "driver":
        return driver(Path(args[0]))
    if role == "systemctl":
        return systemctl(args)
    raise SystemExit(f"unknown role {role}")


# ------------------------------------------------------------ the test


def read_line(proc: subprocess.Popen, timeout_s: float) -> dict:
    """One JSON line from the driver, or an assertion error when none comes in time."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, f"the namespace driver said nothing in {timeout_s} s"
    line = proc.stdout.readline()
    assert line, f"the namespace driver ended (status {proc.wait()})"
    return json.loads(line)


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path.name}: none)"


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))


def test_readme_install_block_runs_verbatim_in_a_throwaway_root(tmp_path):
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("needs root on Linux (a mount namespace with overlays)")
    for tool in ("unshare", "setpriv", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    taken = {port: what for port, what in PORTS.items() if port_taken(port)}
    if taken:
        pytest.fail("the shipped configuration's ports are taken on this machine: "
                    + ", ".join(f"127.0.0.1:{p} ({w})" for p, w in taken.items())
                    + "; free them to run README 'Installing' as it is")
    before = host_state()
    copy_tracked(tmp_path / "src")
    (tmp_path / "install.sh").write_text(readme_block())
    shim = tmp_path / "bin" / "systemctl"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -P -c {shlex.quote(BOOT)} "
                    f"{shlex.quote(str(REPO))} systemctl \"$@\"\n")
    shim.chmod(0o755)
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--",
                             sys.executable, "-P", "-c", BOOT, str(REPO), "driver", str(tmp_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    report: dict = {}
    try:
        report = read_line(proc, BLOCK_TIMEOUT_S + 4 * START_TIMEOUT_S)
        assert "error" not in report, report["error"]
        logs = "\n".join(f"--- {name}\n{tail(tmp_path / name)}"
                         for name in ("install.log", *(u + ".log" for u in UNITS)))
        assert report["rc"] == 0, f"README 'Installing' failed ({report['rc']}):\n{logs}"
        install_log = (tmp_path / "install.log").read_text(errors="replace")
        assert re.search(rf"^smtpproxy {re.escape(version)}$", install_log, re.M), logs

        # The user the block made, and the state directories made as systemd makes them.
        assert report["user"] is not None, logs
        uid, gid = report["user"][2], report["user"][3]
        assert report["dirs"]["/var/lib/smtpproxy"] == ["drwxr-x---", uid, gid]
        assert report["dirs"]["/var/lib/smtpproxy-policy"] == ["drwxr-x---", uid, gid]
        # Both units running, as that user, on the shipped configuration's ports.
        assert set(report["pids"]) == set(UNITS), logs
        for unit, port in zip(UNITS, (10025, 10040), strict=True):
            pid = report["pids"][unit]
            wait_until(lambda n=port, p=pid: port_open(n) or not Path(f"/proc/{p}").exists(), 30,
                       f"{unit} listening on {port}")
            assert port_open(port), logs
            assert uid_of(pid) == uid, unit

        with smtplib.SMTP("127.0.0.1", 10025, local_hostname="client.example.test",
                          timeout=30) as smtp:
            code, text = smtp.ehlo("client.example.test")
            assert code == 250 and b"XFORWARD" in text, text
            # Nothing listens on the re-injection port: 451, never 250.
            code, text = smtp.mail("sender@example.org")
            assert code == 451, (code, text)
        with PolicyClient(socket.create_connection(("127.0.0.1", 10040), timeout=30)) as client:
            reply = client.ask(**rcpt())
        # A client never seen: greylisted, through the store in the state directory.
        assert reply.startswith("DEFER_IF_PERMIT 4.7.1 Greylisted"), reply
    finally:
        done: dict = {}
        if proc.poll() is None:
            try:
                proc.stdin.write("stop\n")
                proc.stdin.flush()
                done = read_line(proc, STOP_TIMEOUT_S * len(UNITS) + 60)
                proc.wait(60)
            except (AssertionError, OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        # Whatever the driver did not stop (it hung, or died): by PID, from here.
        for pid in report.get("pids", {}).values():
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
        proc.stdin.close()
        proc.stdout.close()

    assert proc.returncode == 0
    assert all(done["unmounted"].values()), done
    # The stores went where StateDirectory= (through $STATE_DIRECTORY) put them.
    assert any(f.endswith(".db") for f in done["state"]["/var/lib/smtpproxy-policy"]), done
    assert any(f.endswith(".db") for f in done["state"]["/var/lib/smtpproxy"]), done
    for unit, pid in report["pids"].items():
        assert not Path(f"/proc/{pid}").exists(), f"{unit} (pid {pid}) still running"
    after = host_state()
    assert after == before, "the host changed: " + ", ".join(
        k for k in before if before[k] != after[k])
    for name in ("/etc/smtpproxy", "/opt/smtpproxy", "user"):
        if before[name] is None:
            assert after[name] is None, f"{name} exists on the host"
