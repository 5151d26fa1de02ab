"""``smtpproxy doctor`` against private Postfix instances: one per misconfiguration, and one wired right.

The proxy and the policy daemon run for the whole module (real processes);
each test starts its own Postfix instance on the same two ports (the front
smtpd, whose smtpd_proxy_filter points at the proxy, and the re-injection
smtpd the proxy delivers to), breaks one thing, and asks the doctor with
--postfix-config pointing at that instance. The resolver is the test DNS
server: a DNS list whose test entry is listed, one that refuses (127.255.255.254),
and the DKIM record of the signing key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smtpproxy import cli
from smtpproxy.sign import keys as keymod
from tests.support.dns_server import DnsTestServer
from tests.support.net import free_port, port_open
from tests.support.postfix import PostfixInstance, wait_until
from tests.support.procs import stop_process

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


class Setup:
    def __init__(self, base: Path):
        self.base = base
        self.front, self.reinject = free_port(), free_port()
        self.proxy, self.policy = free_port(), free_port()
        self.dead = free_port()  # nothing listens here
        self.key_path = base / "example.test.sel1.key"
        keymod.write_private_key(str(self.key_path), keymod.generate_ed25519())
        self.key = keymod.load_key(str(self.key_path))
        other = keymod.parse_key(keymod.generate_ed25519())
        self.dns = DnsTestServer({
            "2.0.0.127.bl.test": [("A", "127.0.0.2")],
            "2.0.0.127.refusing.test": [("A", "127.255.255.254")],
            "example.com.refusing.test": [("A", "127.255.255.254")],
            "sel1._domainkey.example.test": [("TXT", keymod.dns_record(self.key))],
            "sel1._domainkey.mismatch.test": [("TXT", keymod.dns_record(other))],
        }).start()
        (base / "key_table").write_text(f"k1 example.test:sel1:{self.key_path}\n")
        (base / "signing_table").write_text("example.test k1\n")
        self.procs: list[subprocess.Popen] = []

    def config(self, name: str = "smtpproxy.toml", zone: str = "bl.test", key_domain: str = "example.test") -> Path:
        (self.base / f"{name}.keys").write_text(f"k1 {key_domain}:sel1:{self.key_path}\n")
        (self.base / f"{name}.signing").write_text(f"{key_domain} k1\n")
        path = self.base / name
        path.write_text(f"""\
state_dir = "{self.base / 'state'}"
[proxy]
[[proxy.listeners]]
name = "inbound"
listen = "127.0.0.1:{self.proxy}"
downstream = "127.0.0.1:{self.reinject}"
[policy]
listen = "127.0.0.1:{self.policy}"
[dns]
nameserver = "{self.dns.nameserver}"
timeout_s = 2.0
[scan.dnsbl]
[[scan.dnsbl.zones]]
zone = "{zone}"
kind = "ip"
returncodes = {{ RBL_TEST = ["127.0.0.2"] }}
scores = {{ RBL_TEST = 1.0 }}
[sign]
key_table = "{self.base / f'{name}.keys'}"
signing_table = "{self.base / f'{name}.signing'}"
""")
        return path

    def start_daemons(self) -> None:
        cfg = self.config("daemons.toml")
        env = {k: v for k, v in os.environ.items() if k not in ("SMTPPROXY_CONFIG", "STATE_DIRECTORY")}
        for argv, port in (([sys.executable, "-m", "smtpproxy.cli", "run", "-c", str(cfg)], self.proxy),
                           ([sys.executable, "-m", "policy.cli", "run", "-c", str(cfg)], self.policy)):
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
            self.procs.append(proc)
            wait_until(lambda p=proc, n=port: port_open(n) or p.poll() is not None, 30, "daemon")
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)
        self.dns.stop()

    def postfix(self, base: Path, front: dict | None = None, reinject: dict | None = None,
                extra: list[tuple[str, dict]] = (), **main_cf: str) -> PostfixInstance:
        main = {"smtpd_proxy_timeout": "100s",
                "smtpd_recipient_restrictions":
                    f"permit_mynetworks, reject_unauth_destination, check_policy_service inet:127.0.0.1:{self.policy}"}
        main.update(main_cf)
        pf = PostfixInstance(base, **main)
        pf.add_service(str(self.front), {"smtpd_proxy_filter": f"127.0.0.1:{self.proxy}", **(front or {})})
        pf.add_service(f"127.0.0.1:{self.reinject}", reinject if reinject is not None else {
            "smtpd_authorized_xforward_hosts": "127.0.0.0/8", "smtpd_proxy_filter": "",
            "smtpd_recipient_restrictions": "permit_mynetworks,reject"})
        for endpoint, options in extra:
            pf.add_service(endpoint, options)
        return pf


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    s = Setup(tmp_path_factory.mktemp("doctor"))
    try:
        s.start_daemons()
        yield s
    finally:
        s.stop()


def doctor(setup: Setup, pf: PostfixInstance, capsys, config: Path | None = None) -> tuple[int, list[dict]]:
    pf.start()
    try:
        capsys.readouterr()
        code = cli.main(["doctor", "-c", str(config or setup.config()), "--postfix-config", str(pf.conf),
                         "--json"])
        findings = json.loads(capsys.readouterr().out)["findings"]
        return code, findings
    finally:
        pf.stop()


def failed(findings: list[dict]) -> list[dict]:
    return [f for f in findings if f["status"] == "FAIL"]


def test_correctly_wired_instance_passes(setup, tmp_path, capsys):
    code, findings = doctor(setup, setup.postfix(tmp_path), capsys)
    assert code == 0, failed(findings)
    checks = {f["check"] for f in findings if f["status"] == "OK"}
    assert {"bypass", "proxy", "reinject", "xforward", "loop", "timeout", "policy", "dns", "dnsbl",
            "dkim", "keyfile", "profile"} <= checks, findings


def test_second_public_smtpd_without_the_filter_fails(setup, tmp_path, capsys):
    other = free_port()
    code, findings = doctor(setup, setup.postfix(tmp_path, extra=[(str(other), {})]), capsys)
    assert code == 1
    (bad,) = failed(findings)
    assert bad["check"] == "bypass" and bad["subject"] == f"master.cf {other}/inet"
    assert bad["fix"].startswith(f'add "  -o smtpd_proxy_filter=127.0.0.1:{setup.proxy}" under')


def test_public_smtpd_deliberately_without_the_filter_is_ok_by_config(setup, tmp_path, capsys):
    other = free_port()
    config = setup.config()
    config.write_text(config.read_text() + f'\n[doctor]\nignore_services = ["{other}/inet"]\n')
    code, findings = doctor(setup, setup.postfix(tmp_path, extra=[(str(other), {})]), capsys, config)
    assert code == 0, failed(findings)
    (seen,) = [f for f in findings if f["subject"] == f"master.cf {other}/inet"]
    assert seen["status"] == "OK" and "doctor.ignore_services" in seen["saw"]


def test_xforward_not_authorised_fails(setup, tmp_path, capsys):
    code, findings = doctor(setup, setup.postfix(tmp_path, reinject={"smtpd_proxy_filter": ""}), capsys)
    assert code == 1
    (bad,) = failed(findings)
    assert bad["check"] == "xforward" and "smtpd_authorized_xforward_hosts=127.0.0.0/8" in bad["fix"]


def test_reinjection_listener_looping_back_into_the_proxy_fails(setup, tmp_path, capsys):
    code, findings = doctor(setup, setup.postfix(tmp_path, reinject={
        "smtpd_authorized_xforward_hosts": "127.0.0.0/8",
        "smtpd_proxy_filter": f"127.0.0.1:{setup.proxy}"}), capsys)
    assert code == 1
    (bad,) = failed(findings)
    assert bad["check"] == "loop" and "pass the proxy again" in bad["saw"]
    assert bad["fix"].startswith('add "  -o smtpd_proxy_filter=" under')


def test_content_filter_back_into_the_front_door_is_a_loop(setup, tmp_path, capsys):
    code, findings = doctor(setup, setup.postfix(tmp_path, reinject={
        "smtpd_authorized_xforward_hosts": "127.0.0.0/8", "smtpd_proxy_filter": "",
        "content_filter": f"smtp:[127.0.0.1]:{setup.front}"}), capsys)
    assert code == 1
    (bad,) = failed(findings)
    assert bad["check"] == "loop" and "sent back in" in bad["saw"]
    assert bad["fix"].startswith('add "  -o content_filter=" under')


def test_short_proxy_timeout_fails(setup, tmp_path, capsys):
    code, findings = doctor(setup, setup.postfix(tmp_path, smtpd_proxy_timeout="30s"), capsys)
    assert code == 1
    (bad,) = failed(findings)
    assert bad["check"] == "timeout" and "= 90s" in bad["saw"]
    assert bad["fix"].startswith("smtpd_proxy_timeout = 100s in main.cf")


def test_unreachable_policy_service_fails(setup, tmp_path, capsys):
    pf = setup.postfix(tmp_path, smtpd_recipient_restrictions=(
        f"permit_mynetworks, reject_unauth_destination, check_policy_service inet:127.0.0.1:{setup.dead}"))
    code, findings = doctor(setup, pf, capsys)
    assert code == 1
    (bad,) = failed(findings)
    assert bad["check"] == "policy" and "nothing answers" in bad["saw"]
    assert f'policy.listen = "127.0.0.1:{setup.dead}"' in bad["fix"]


def test_blocklist_refusing_resolver_fails(setup, tmp_path, capsys):
    code, findings = doctor(setup, setup.postfix(tmp_path), capsys,
                            config=setup.config("refusing.toml", zone="refusing.test"))
    assert code == 1
    (bad,) = failed(findings)
    assert bad["check"] == "dnsbl" and "127.255.255.254" in bad["saw"] and "refuses" in bad["saw"]
    assert "dns.nameserver" in bad["fix"]


def test_mismatched_dkim_record_fails(setup, tmp_path, capsys):
    code, findings = doctor(setup, setup.postfix(tmp_path), capsys,
                            config=setup.config("mismatch.toml", key_domain="mismatch.test"))
    assert code == 1
    (bad,) = failed(findings)
    assert bad["check"] == "dkim" and bad["subject"] == "sel1._domainkey.mismatch.test"
    assert "MISMATCH" in bad["saw"] and bad["fix"].startswith("publish: sel1._domainkey.mismatch.test")


def test_text_report_one_line_per_check(setup, tmp_path, capsys):
    pf = setup.postfix(tmp_path, smtpd_proxy_timeout="30s")
    pf.start()
    try:
        capsys.readouterr()
        code = cli.main(["doctor", "-c", str(setup.config()), "--postfix-config", str(pf.conf)])
    finally:
        pf.stop()
    out = capsys.readouterr().out
    assert code == 1
    assert any(line.startswith("FAIL timeout ") and " -- fix: smtpd_proxy_timeout = 100s" in line
               for line in out.splitlines()), out
    assert out.splitlines()[-1].endswith("1 failed")
