"""The key both daemons use for the policy daemon's decisions (smtpproxy/common/decisions.py)."""

from __future__ import annotations

from smtpproxy.common.config import StoreConfig
from smtpproxy.common.decisions import decision_key, decode, encode
from smtpproxy.common.store import open_store


def _store(prefix: str = ""):
    """A store that is never opened: only its ``key`` is used."""
    return open_store(StoreConfig(key_prefix=prefix), "/nonexistent")


STORE = _store()
BASE = ("192.0.2.10", "alice@example.org", "bob@example.net")


def test_same_inputs_same_key():
    assert decision_key(STORE, *BASE) == decision_key(STORE, *BASE)
    # As Postfix and the proxy may spell them: case, angle brackets, IPv6 forms.
    assert decision_key(STORE, "192.0.2.10", "<Alice@Example.org>", "BOB@example.net") == \
        decision_key(STORE, *BASE)
    assert decision_key(STORE, "IPV6:2001:DB8:0::1", "a@b", "c@d") == \
        decision_key(STORE, "2001:db8::1", "a@b", "c@d")


def test_any_differing_part_gives_another_key():
    base = decision_key(STORE, *BASE)
    for i, other in enumerate(("192.0.2.11", "alice2@example.org", "carol@example.net")):
        parts = list(BASE)
        parts[i] = other
        assert decision_key(STORE, *parts) != base
    # The parts are separated: moving text from one part to the next is another key.
    assert decision_key(STORE, "192.0.2.1", "0alice@example.org", "bob@example.net") != base


def test_key_holds_no_address_and_uses_the_prefix():
    key = decision_key(_store("x:"), *BASE)
    assert key.startswith("x:{pd}:") and "example" not in key


def test_record_round_trip():
    record = {"t": 1.5, "greylist": "passed", "delayed_s": 300}
    assert decode(encode(record)) == record
    assert decode(None) is None and decode(b"not json") is None and decode(b"[1]") is None
