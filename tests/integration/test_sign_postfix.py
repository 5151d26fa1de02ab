"""DKIM signing and ARC sealing through real Postfix, checked by verifiers nobody here wrote.

    client ─► Postfix smtpd (submission, smtpd_proxy_filter) ─► smtpproxy outbound
    listener (signs) ─► Postfix re-injection ─► queue ─► smtp ─► smtp-sink

The keys come from ``smtpproxy dkim keygen`` and the local DNS server serves
the records exactly as keygen printed them (255-octet strings). At the sink:
Perl Mail::DKIM (RSA; Debian 12's version reports ed25519 as unsupported) and
opendkim-testmsg (RSA and ed25519, each signature on its own). ARC sets made
on the inbound listener are checked by Mail::DKIM's ARC verifier, over two hops.
"""

from __future__ import annotations

import email.utils
import re
import smtplib
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support.dkim_verifiers import MailDkim, Opendkim, available_mail_dkim, available_opendkim
from tests.support.dns_server import DnsTestServer
from tests.support.net import free_port, port_open
from tests.support.postfix import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not available_mail_dkim(), reason="libmail-dkim-perl is not installed"),
    pytest.mark.skipif(not available_opendkim(), reason="opendkim-tools is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]


def keygen(directory: Path, domain: str, selector: str, kind: str) -> tuple[Path, list[str]]:
    """Run the CLI; (key file, the TXT record's strings as printed)."""
    out = subprocess.run(
        [sys.executable, "-m", "smtpproxy.cli", "dkim", "keygen", "-d", domain, "-s", selector,
         "--type", kind, "--dir", str(directory)],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith(f"{selector}._domainkey.{domain}. IN TXT"))
    return directory / f"{domain}.{selector}.key", re.findall(r'"([^"]*)"', line)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tests.support.pipeline import Pipeline

    base = tmp_path_factory.mktemp("sign")
    keys = base / "keys"
    keys.mkdir()
    dns = DnsTestServer({}).start()
    made = {}
    for domain, selector, kind in (("example.org", "rsa2026", "rsa"), ("example.org", "ed2026", "ed25519"),
                                   ("example.org", "new2027", "rsa"), ("forwarder.example", "arc1", "rsa")):
        path, strings = keygen(keys, domain, selector, kind)
        dns.add(f"{selector}._domainkey.{domain}", "TXT", strings)
        made[selector] = path
    (keys / "key_table").write_text(
        f"rsa example.org:rsa2026:{made['rsa2026']}\ned example.org:ed2026:{made['ed2026']}\n"
        f"new example.org:new2027:{made['new2027']}\n")
    (keys / "signing_table").write_text("example.org rsa,ed\n.example.org rsa\n")
    p = Pipeline(base / "pipeline", extra_config=f"""
[sign]
key_table = "{keys / 'key_table'}"
signing_table = "{keys / 'signing_table'}"
table_check_interval_s = 0.2
expire_s = 604800
[sign.arc]
profiles = ["inbound"]
domain = "forwarder.example"
selector = "arc1"
key_file = "{made['arc1']}"
[dns]
nameserver = "{dns.nameserver}"
timeout_s = 2.0
""")
    # The submission side: its own before-filter smtpd and an outbound listener.
    p.outbound_proxy_port, p.submission_port = free_port(), free_port()
    p.proxy.config_text += f"""
[[proxy.listeners]]
name = "outbound"
listen = "127.0.0.1:{p.outbound_proxy_port}"
profile = "outbound"
downstream = "127.0.0.1:{p.reinject_port}"
"""
    p.postfix.add_service(f"127.0.0.1:{p.submission_port}", {
        "smtpd_proxy_filter": f"127.0.0.1:{p.outbound_proxy_port}",
        "smtpd_client_connection_count_limit": "0"})
    p.start()
    wait_until(lambda: port_open(p.submission_port), 20, "submission port")
    mail_dkim = MailDkim(dns.host, dns.port)
    opendkim = Opendkim(dns.host, dns.port)
    try:
        yield p, dns, keys, mail_dkim, opendkim
    finally:
        opendkim.stop()
        p.stop()
        dns.stop()


def compose(sender="alice@example.org") -> tuple[bytes, str]:
    token = uuid.uuid4().hex
    return (f"From: Alice <{sender}>\r\nTo: Bob <bob@example.net>\r\nSubject: Quarterly figures\r\n"
            f"Date: {email.utils.formatdate()}\r\nMessage-ID: <{token}@example.org>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"Hello Bob,  \r\n\r\nthe figures are attached in spirit.\r\ntoken {token}\r\n\r\n\r\n"
            ).encode(), token


def submit(port: int, raw: bytes, sender="alice@example.org") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.ehlo("client.example.org")
        assert s.sendmail(sender, ["bob@example.net"], raw) == {}


def delivered(p, token: str) -> bytes:
    (got,) = wait_until(lambda: [m for m in p.sink.messages() if token.encode() in m.message],
                        60, "delivery at the sink")
    return got.message


def without_signatures_but(message: bytes, selector: str) -> bytes:
    """The message with every DKIM-Signature field removed except the one of ``selector``."""
    head, _, body = message.partition(b"\n\n")
    fields: list[bytes] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\n" + line
        else:
            fields.append(line)
    kept = [f for f in fields if not f.lower().startswith(b"dkim-signature:")
            or re.search(rb"\bs=" + selector.encode() + rb";", f)]
    return b"\n".join(kept) + b"\n\n" + body


def test_submitted_mail_is_dual_signed_and_verified_by_mail_dkim_and_opendkim(world):
    p, _dns, _keys, mail_dkim, opendkim = world
    raw, token = compose()
    submit(p.submission_port, raw)
    got = delivered(p, token)
    assert got.count(b"DKIM-Signature:") == 2
    report = mail_dkim.verify(got)
    assert "result=pass" in report
    assert re.search(r"s=rsa2026 a=rsa-sha256 result=pass", report), report
    # Debian 12's Mail::DKIM predates RFC 8463: it says so instead of failing.
    assert re.search(r"s=ed2026 a=ed25519-sha256 result=invalid detail=invalid \(unsupported", report)
    for selector in ("rsa2026", "ed2026"):
        single = without_signatures_but(got, selector)
        assert single.count(b"DKIM-Signature:") == 1 and f"s={selector}".encode() in single
        assert opendkim.verify(single) == (0, ""), selector


def test_a_changed_body_fails_both_verifiers(world):
    # The control: the verifiers do check what we think they check.
    p, _dns, _keys, mail_dkim, opendkim = world
    raw, token = compose()
    submit(p.submission_port, raw)
    got = delivered(p, token).replace(b"in spirit", b"in spirit!")
    assert "s=rsa2026 a=rsa-sha256 result=fail" in mail_dkim.verify(got)
    for selector in ("rsa2026", "ed2026"):
        status, said = opendkim.verify(without_signatures_but(got, selector))
        assert status != 0 and "Bad signature" in said


def test_subdomain_sender_is_signed_with_the_parent_domain(world):
    p, _dns, _keys, mail_dkim, _opendkim = world
    raw, token = compose("carol@lists.example.org")
    submit(p.submission_port, raw, "carol@lists.example.org")
    got = delivered(p, token)
    assert got.count(b"DKIM-Signature:") == 1
    assert re.search(r"d=example.org s=rsa2026 a=rsa-sha256 result=pass", mail_dkim.verify(got))


def test_foreign_from_domain_is_relayed_unsigned(world):
    p, *_ = world
    raw, token = compose("eve@example.com")
    submit(p.submission_port, raw, "eve@example.com")
    assert b"DKIM-Signature:" not in delivered(p, token)
    assert "From domain example.com is not in the signing table" in p.proxy.log_text()


def test_rotation_signs_with_the_new_selector_after_the_table_changes(world):
    p, _dns, keys, mail_dkim, opendkim = world
    table = keys / "signing_table"
    old = table.read_text()
    try:
        table.write_text("example.org new\n")
        # The files are looked at, at most every table_check_interval_s, when
        # a message is signed: the first message after that uses the new table.
        for _attempt in range(10):
            time.sleep(0.3)
            raw, token = compose()
            submit(p.submission_port, raw)
            got = delivered(p, token)
            if b"s=new2027" in got:
                break
        assert "signing tables reloaded" in p.proxy.log_text()
        assert b"s=new2027" in got and b"s=rsa2026" not in got
        assert re.search(r"s=new2027 a=rsa-sha256 result=pass", mail_dkim.verify(got))
        assert opendkim.verify(got) == (0, "")
    finally:
        table.write_text(old)


def test_inbound_mail_is_arc_sealed_and_mail_dkim_verifies_two_hops(world):
    p, _dns, _keys, mail_dkim, _opendkim = world
    raw, token = compose("dave@elsewhere.example")
    submit(p.inbound_port, raw, "dave@elsewhere.example")
    hop1 = delivered(p, token)
    assert b"DKIM-Signature:" not in hop1  # inbound mail is not ours to sign
    assert re.search(rb"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=forwarder.example; s=arc1;", hop1)
    assert b"ARC-Authentication-Results: i=1; filter.example.test;" in hop1
    assert "result=pass" in mail_dkim.verify(hop1, "arc")
    # The sealed message comes back unchanged (a list forwarding it on): our
    # chain check passes it, so instance 2 records cv=pass.
    head, _, body = hop1.partition(b"\n\n")
    resent = (head + b"\n\n" + body).replace(b"\n", b"\r\n")
    with smtplib.SMTP("127.0.0.1", p.inbound_port, timeout=60) as s:
        s.ehlo("client.example.org")
        s.sendmail("dave@elsewhere.example", ["bob2@example.net"], resent)
    hop2 = wait_until(lambda: [m.message for m in p.sink.messages()
                               if token.encode() in m.message and b"ARC-Seal: i=2" in m.message],
                      60, "hop 2")[0]
    assert re.search(rb"ARC-Seal: i=2; cv=pass; a=rsa-sha256; d=forwarder.example; s=arc1;", hop2)
    assert re.search(rb"Authentication-Results: filter.example.test;\s+arc=pass", hop2)
    report = mail_dkim.verify(hop2, "arc")
    assert "result=pass" in report, report
    # A changed body breaks the newest ARC-Message-Signature: Mail::DKIM says fail.
    assert "result=fail" in mail_dkim.verify(hop2.replace(b"in spirit", b"in letter"), "arc")
