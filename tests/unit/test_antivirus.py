"""Antivirus: clamd's replies, and what CLAM_VIRUS / CLAM_VIRUS_FAIL lead to."""

from __future__ import annotations

import asyncio

import pytest

from smtpproxy.common import config
from smtpproxy.scan.checks.base import CheckContext
from smtpproxy.scan.clamd import ClamdError, parse_reply
from smtpproxy.scan.hook import build_engine
from smtpproxy.scan.message import parse
from smtpproxy.transaction import ClientInfo


@pytest.mark.parametrize("label, reply, expected", [
    ("clean", b"stream: OK\0", None),
    ("found", b"stream: Eicar-Test-Signature FOUND\0", "Eicar-Test-Signature"),
    ("found, name with spaces", b"stream: Some Name.UNOFFICIAL FOUND\0", "Some Name.UNOFFICIAL"),
    ("size refused", b"INSTREAM size limit exceeded. ERROR\0", ClamdError),
    ("other error", b"stream: Can't allocate memory ERROR\0", ClamdError),
    ("empty", b"\0", ClamdError),
    ("FOUND alone", b"stream: FOUND\0", ClamdError),
])
def test_clamd_replies(label, reply, expected):
    if expected is ClamdError:
        with pytest.raises(ClamdError):
            parse_reply(reply)
    else:
        assert parse_reply(reply) == expected, label


@pytest.mark.parametrize("on_failure, profile, tempfails", [
    ("tempfail", "inbound", True),
    ("tempfail", "outbound", True),
    ("accept", "inbound", False),
    ("accept", "outbound", False),
])
def test_clamd_down_gives_the_configured_failure(tmp_path, on_failure, profile, tempfails):
    cfg = config.load(None, {"scan.antivirus.clamd": f"unix:{tmp_path}/nothing.sock",
                             "scan.antivirus.on_failure": on_failure, "scan.spamassassin.enabled": False})
    ctx = CheckContext(message=parse(b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"),
                       client=ClientInfo(), mail_from="", rcpt_tos=[], profile=profile, resolver=None)
    result = asyncio.run(build_engine(cfg).scan(ctx))
    assert "CLAM_VIRUS_FAIL" in result.symbols
    assert (result.action == "soft reject") == tempfails
    assert (result.forced_by == "CLAM_VIRUS_FAIL") == tempfails
    assert "unreachable" in result.symbols["CLAM_VIRUS_FAIL"].options[0]


def test_antivirus_is_off_by_default():
    ctx = CheckContext(message=parse(b"Subject: hi\r\n\r\nbody\r\n"), client=ClientInfo(),
                       mail_from="", rcpt_tos=[], profile="inbound", resolver=None)
    result = asyncio.run(build_engine(config.load(None, {"scan.spamassassin.enabled": False})).scan(ctx))
    assert not {"CLAM_VIRUS", "CLAM_VIRUS_FAIL"} & set(result.symbols)


@pytest.mark.parametrize("overrides, key", [
    ({"scan.antivirus.clamd": "unix:relative.sock"}, "scan.antivirus.clamd"),
    ({"scan.antivirus.clamd": "nohost"}, "scan.antivirus.clamd"),
    ({"scan.antivirus.on_failure": "reject"}, "scan.antivirus.on_failure"),
    ({"scan.antivirus.clamd": "127.0.0.1:3310", "scan.antivirus.timeout_s": 30.0},
     "scan.antivirus.timeout_s"),
])
def test_bad_antivirus_settings_name_the_key(overrides, key):
    with pytest.raises(config.ConfigError) as err:
        config.load(None, overrides)
    assert err.value.key == key
