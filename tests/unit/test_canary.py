"""The canary's token, its recognition and its configuration (canary.py)."""

from __future__ import annotations

import time

import pytest

from smtpproxy import canary
from smtpproxy.common import config
from smtpproxy.common.config import CanaryConfig, ConfigError
from smtpproxy.common.metrics import Registry
from smtpproxy.transaction import ClientInfo, Transaction, Verdict

KEY = canary.load_key(CanaryConfig(secret="$scrypt$ln=14,r=8,p=1$c2FsdA$aGFzaA"))
OTHER_KEY = canary.load_key(CanaryConfig(secret="$scrypt$ln=14,r=8,p=1$c2FsdA$b3RoZXI"))
RCPT = "canary@example.net"
NOW = 1_800_000_000
NONCE = "0123456789abcdef01234567"


def token(key=KEY, rcpt=RCPT, stamp=NOW, nonce=NONCE) -> str:
    return canary.make_token(key, rcpt, stamp, nonce)


@pytest.mark.parametrize("label, value, rcpt, ok", [
    ("genuine", token(), RCPT, True),
    ("recipient case does not matter", token(), RCPT.upper(), True),
    ("another key", token(key=OTHER_KEY), RCPT, False),
    ("another recipient", token(), "someone@example.net", False),
    ("stale", token(stamp=NOW - 400), RCPT, False),
    ("from the future", token(stamp=NOW + 3600), RCPT, False),
    ("mac of another nonce", token().replace(NONCE, "f" * 24), RCPT, False),
    ("mac cut short", token()[:-2], RCPT, False),
    ("garbage", "t=1; n=zz; mac=00", RCPT, False),
    ("empty", "", RCPT, False),
])
def test_token_is_verified(label, value, rcpt, ok):
    got = canary.verify_token(KEY, value, rcpt, NOW, max_age_s=300)
    assert (got == NONCE) is ok, label


@pytest.mark.parametrize("label, content, values", [
    ("one", b"A: 1\r\nX-Smtpproxy-Canary: t=1\r\n\r\nX-Smtpproxy-Canary: body\r\n", ["t=1"]),
    ("folded", b"x-smtpproxy-canary: t=1;\r\n n=2\r\nB: 2\r\n\r\n", ["t=1; n=2"]),
    ("LF only", b"X-Smtpproxy-Canary: a\nX-Smtpproxy-Canary: b\n\nbody\n", ["a", "b"]),
    ("none", b"Subject: hi\r\n\r\nX-Smtpproxy-Canary: t=1\r\n", []),
])
def test_header_values(label, content, values):
    assert canary.header_values(content, canary.HEADER) == values, label


def _check(alert_after_s=300.0) -> canary.CanaryCheck:
    cfg = CanaryConfig(enabled=True, recipient=RCPT, sender="m@example.org",
                       secret="$scrypt$x", alert_after_s=alert_after_s)
    return canary.CanaryCheck(cfg, KEY, canary.CanaryMonitor())


def _txn(content: bytes, rcpts=(RCPT,)) -> Transaction:
    return Transaction("S1", "inbound", "inbound", ClientInfo(), "m@example.org", [],
                       list(rcpts), [[] for _ in rcpts], content)


def _canary_message(key=KEY) -> bytes:
    cfg = CanaryConfig(recipient=RCPT, sender="m@example.org")
    message, _nonce = canary.build_message(cfg, key, "filter.example", time.time())
    return message


def test_a_genuine_canary_is_recognised_once_and_answered():
    check = _check()
    message = _canary_message()
    nonce = check.recognise(_txn(message))
    assert nonce is not None
    reply = check.passed(_txn(message), nonce, b"ARC-Seal: i=1\r\n" + message,
                         Verdict(scan_action="no action"))
    assert reply.startswith(f"250 2.0.0 smtpproxy canary n={nonce} passed: scanned (no action), signed")
    assert check.monitor.last_pass is not None
    # Replayed: an ordinary message.
    assert check.recognise(_txn(message)) is None


@pytest.mark.parametrize("label, txn", [
    ("forged token (another key)", _txn(_canary_message(OTHER_KEY))),
    ("a second recipient", _txn(_canary_message(), (RCPT, "other@example.net"))),
    ("another recipient", _txn(_canary_message(), ("other@example.net",))),
    ("two canary headers", _txn(b"X-Smtpproxy-Canary: x\r\n" + _canary_message())),
    ("no header", _txn(b"Subject: hi\r\n\r\nbody\r\n")),
])
def test_anything_else_is_an_ordinary_message(label, txn):
    assert _check().recognise(txn) is None, label


def test_monitor_gauge_is_absent_when_off_then_follows_the_last_pass():
    class Stats:
        registry = Registry()

    monitor = canary.CanaryMonitor(Stats())
    assert "\nsmtpproxy_canary_ok " not in Stats.registry.render()
    on = config.build(config.Config, {"canary": {
        "enabled": True, "recipient": RCPT, "sender": "m@example.org", "secret": "$scrypt$x",
        "alert_after_s": 10}})
    monitor.configure(on, _check(), "filter.example")
    assert "\nsmtpproxy_canary_ok 1\n" in Stats.registry.render()  # the grace period
    monitor.since = time.time() - 11
    assert "\nsmtpproxy_canary_ok 0\n" in Stats.registry.render()
    monitor.record_pass("n=1")
    assert "\nsmtpproxy_canary_ok 1\n" in Stats.registry.render()


@pytest.mark.parametrize("table, key", [
    ({"enabled": True, "recipient": RCPT, "sender": "m@example.org"}, "canary.secret"),
    ({"secret": "plain words"}, "canary.secret"),
    ({"secret": "$scrypt$x", "secret_file": "/k"}, "canary.secret_file"),
    ({"enabled": True, "secret": "$scrypt$x", "sender": "m@example.org"}, "canary.recipient"),
    ({"target": "nowhere"}, "canary.target"),
    ({"interval_s": -1}, "canary.interval_s"),
    ({"alert_after_s": 0}, "canary.alert_after_s"),
    ({"bogus": 1}, "canary.bogus"),
])
def test_bad_canary_config_names_the_key(table, key):
    with pytest.raises(ConfigError) as err:
        config.build(config.Config, {"canary": table})
    assert err.value.key == key


def test_key_file_must_exist_and_be_long_enough(tmp_path):
    short = tmp_path / "short.key"
    short.write_text("tiny\n")
    for path in (short, tmp_path / "missing.key"):
        with pytest.raises(ConfigError) as err:
            canary.load_key(CanaryConfig(secret_file=str(path)))
        assert err.value.key == "canary.secret_file"
    good = tmp_path / "good.key"
    good.write_text("x" * 40 + "\n")
    assert len(canary.load_key(CanaryConfig(secret_file=str(good)))) == 32


def test_once_without_the_canary_enabled_is_unknown(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text("")
    args = type("A", (), {"config": str(path)})()
    assert canary.cmd_canary(args) == canary.UNKNOWN
    assert capsys.readouterr().out.startswith("CANARY UNKNOWN - configuration: canary.enabled")


def test_once_with_the_front_door_unreachable_is_critical(tmp_path, capsys):
    from tests.support.net import free_port

    path = tmp_path / "c.toml"
    path.write_text(f'[canary]\nenabled = true\nrecipient = "{RCPT}"\nsender = "m@example.org"\n'
                    f'secret = "$scrypt$x"\ntarget = "127.0.0.1:{free_port()}"\ntimeout_s = 5\n')
    args = type("A", (), {"config": str(path)})()
    assert canary.cmd_canary(args) == canary.CRITICAL
    out = capsys.readouterr().out
    assert out.startswith("CANARY CRITICAL - 127.0.0.1:") and out.count("\n") == 1
