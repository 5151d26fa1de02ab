"""Pure parts of the policy daemon: sender normalisation, networks, maps, rules, config."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy.greylist import client_network, normalize_sender
from policy.ratelimit import key_value
from policy.whitelist import Whitelist
from smtpproxy.common.config import ConfigError, RateLimitRule, load, parse_rate
from smtpproxy.common.store import gcra

SENDERS = [
    ("lowercased", "Alice@Example.COM", "alice@example.com"),
    ("plus_extension_stripped", "alice+list@example.com", "alice@example.com"),
    ("batv_prvs_unwrapped", "prvs=0123456789=bounce@example.com", "bounce@example.com"),
    ("batv_msprvs_unwrapped", "msprvs1=19727ZxHXgOMR=bounces-123@x.example", "bounces-#@x.example"),
    ("srs0_unwrapped", "SRS0=HHH=TT=orig.example=alice@forwarder.example", "alice@orig.example"),
    ("srs1_unwrapped", "SRS1=HHH=fwd.example==HHH=TT=orig.example=alice@fwd2.example",
     "alice@orig.example"),
    ("verp_digits_folded", "bounce-4711-0815@lists.example", "bounce-#-#@lists.example"),
    ("null_sender_stays_empty", "", ""),
]


@pytest.mark.parametrize("label,raw,expected", SENDERS, ids=[s[0] for s in SENDERS])
def test_normalize_sender(label, raw, expected):
    assert normalize_sender(raw) == expected


NETWORKS = [
    ("ipv4_slash24", "192.0.2.77", "192.0.2.0/24"),
    ("ipv6_slash64", "2001:db8:1:2:3::4", "2001:db8:1:2::/64"),
    ("ipv4_mapped_ipv6_as_ipv4", "::ffff:192.0.2.9", "192.0.2.0/24"),
    ("unparsable_stands_for_itself", "unknown", "unknown"),
]


@pytest.mark.parametrize("label,address,expected", NETWORKS, ids=[n[0] for n in NETWORKS])
def test_client_network(label, address, expected):
    assert client_network(address) == expected


def test_whitelist_maps(tmp_path):
    clients = tmp_path / "clients"
    clients.write_text(
        "# comment\n198.51.100.0/24\n2001:db8::/32 OK\n.outbound.protection.outlook.com\n"
        "mx.exact.example\n/^mail-[a-z0-9]+-f[0-9]+\\.google\\.com$/\n"
    )
    senders = tmp_path / "senders"
    senders.write_text("bank.example\n.newsletters.example\nceo@corp.example\n")
    rcpts = tmp_path / "rcpts"
    rcpts.write_text("postmaster@\nabuse@example.org\n")
    w = Whitelist((str(clients),), (str(senders),), (str(rcpts),))
    w.refresh()
    assert w.client("198.51.100.200", None)
    assert w.client("2001:db8:ffff::1", None)
    assert not w.client("198.51.101.1", None)
    assert w.client("203.0.113.1", "mail-eopbgr1.outbound.protection.outlook.com")
    assert not w.client("203.0.113.1", "outbound.protection.outlook.com.evil.example")
    assert w.client("203.0.113.1", "MX.Exact.Example.")
    assert w.client("203.0.113.1", "mail-yw1-f172.google.com")
    assert not w.client("203.0.113.1", "unknown")
    assert w.sender("Info@Bank.Example")
    assert w.sender("x@a.newsletters.example")
    assert not w.sender("x@newsletters.example.evil")
    assert w.sender("ceo@corp.example") and not w.sender("cfo@corp.example")
    assert w.recipient("postmaster@anything.example")
    assert w.recipient("abuse@example.org") and not w.recipient("bob@example.org")


def test_whitelist_map_change_is_picked_up_and_missing_file_keeps_entries(tmp_path):
    clients = tmp_path / "clients"
    clients.write_text("192.0.2.1\n")
    w = Whitelist((str(clients),))
    w.refresh()
    assert w.client("192.0.2.1", None)
    clients.write_text("192.0.2.2\n# longer now\n")
    w.refresh()
    assert w.client("192.0.2.2", None) and not w.client("192.0.2.1", None)
    clients.unlink()
    w.refresh()
    assert w.client("192.0.2.2", None)


def test_default_whitelist_ships_big_pools():
    w = Whitelist(("conf/policy/whitelist_clients",))
    w.refresh()
    assert w.client("40.107.1.1", None)  # Exchange Online Protection
    assert w.client("209.85.220.41", "mail-sor-f41.google.com")
    assert w.client("54.240.1.1", None)  # Amazon SES


def test_rate_key_absent_attribute_means_rule_does_not_apply():
    rule = RateLimitRule(name="u", key=("sasl_username",))
    assert key_value(rule, {"sender": "a@b"}) is None
    assert key_value(rule, {"sasl_username": "Alice"}) == "alice"
    rule = RateLimitRule(name="d", key=("sender_domain", "client_network"))
    assert key_value(rule, {"sender": "x@Example.org", "client_address": "192.0.2.9"}) == \
        "example.org|192.0.2.0/24"


def test_gcra_reference_burst_semantics():
    limits = ((3, 60.0),)
    tats: list[float] = []
    allowed = []
    for _ in range(4):
        r, tats = gcra(tats, limits, 1, 1000.0)
        allowed.append(r.allowed)
    assert allowed == [True, True, True, False]
    r, _ = gcra(tats, limits, 1, 1000.0)
    assert r.retry_after_s == pytest.approx(20.0)


RATES = [("20/1m", (20, 60.0)), ("300/1h", (300, 3600.0)), ("1000/1d", (1000, 86400.0)),
         ("5/10s", (5, 10.0)), ("7/h", (7, 3600.0))]


@pytest.mark.parametrize("text,expected", RATES)
def test_parse_rate(text, expected):
    assert parse_rate(text) == expected


CONFIG_ERRORS = [
    ("bad_rate", {"policy.rate_limits": [{"name": "a", "limits": ["20 per minute"]}]},
     "policy.rate_limits[0].limits[0]"),
    ("bad_key_part", {"policy.rate_limits": [{"name": "a", "key": ["helo"]}]},
     "policy.rate_limits[0].key[0]"),
    ("recipient_key_when_counting_messages",
     {"policy.rate_limits": [{"name": "a", "key": ["recipient"], "count": "messages"}]},
     "policy.rate_limits[0].key[0]"),
    ("duplicate_rule", {"policy.rate_limits": [{"name": "a"}, {"name": "a"}]},
     "policy.rate_limits[1].name"),
    ("bad_action", {"policy.rate_limits": [{"name": "a", "action": "DROP"}]},
     "policy.rate_limits[0].action"),
    ("bad_default_action", {"policy.default_action": "REJECT"}, "policy.default_action"),
    ("bad_socket_mode", {"policy.socket_mode": "rw"}, "policy.socket_mode"),
    ("bad_store_scheme", {"store.url": "mysql://x"}, "store.url"),
    ("negative_delay", {"policy.greylist.delay_s": -1}, "policy.greylist.delay_s"),
    ("unknown_greylist_key", {"policy.greylist.dealy_s": 1}, "policy.greylist.dealy_s"),
    ("bad_state", {"policy.greylist.protocol_states": ["RCTP"]}, "policy.greylist.protocol_states[0]"),
    ("bad_defer_text", {"policy.greylist.defer_text": "wait {minutes}"}, "policy.greylist.defer_text"),
]


@pytest.mark.parametrize("label,overrides,key", CONFIG_ERRORS, ids=[c[0] for c in CONFIG_ERRORS])
def test_config_error_names_the_key(label, overrides, key):
    with pytest.raises(ConfigError) as info:
        load(None, overrides)
    assert info.value.key == key


def test_example_config_loads():
    cfg = load(str(Path(__file__).resolve().parents[2] / "conf" / "smtpproxy.toml"))
    assert cfg.policy.greylist.delay_s == 300.0


class FakeStore:
    """Records decisions; answers what the test tells it (unit tests only)."""

    prefix = "t:"

    def __init__(self, greylist_state="new", rate_allowed=True):
        from smtpproxy.common.store import GreylistResult, RateResult

        self.calls: list[str] = []
        self.gl = GreylistResult(greylist_state, wait_s=300.0, delayed_s=320.0)
        self.rl = RateResult(rate_allowed, 42.0, 0)

    def key(self, tag, *parts):
        return f"t:{{{tag}}}:" + ":".join(parts)

    async def greylist(self, *args):
        self.calls.append("greylist")
        return self.gl

    async def rate_limit(self, *args):
        self.calls.append("rate_limit")
        return self.rl


DECISIONS = [
    ("greylist_defer_charges_no_rate_limit", "new", True,
     "DEFER_IF_PERMIT 4.7.1 Greylisted, please try again in 300 seconds", ["greylist"]),
    ("passed_then_rate_limit_ok_prepends", "passed", True,
     "PREPEND X-Greylist: delayed 320 seconds", ["greylist", "rate_limit"]),
    ("passed_but_rate_limited_refusal_wins", "passed", False,
     "DEFER 4.7.1 Message rate limit exceeded, try again in 42 seconds", ["greylist", "rate_limit"]),
    ("known_and_allowed_is_dunno", "known", True, "DUNNO", ["greylist", "rate_limit"]),
]


@pytest.mark.parametrize("label,state,allowed,expected,calls", DECISIONS, ids=[d[0] for d in DECISIONS])
def test_decision_order(label, state, allowed, expected, calls):
    import asyncio

    from policy.engine import Policy

    cfg = load(None, {
        "policy.greylist.trusted_networks": [], "policy.greylist.whitelist_client_maps": [],
        "policy.rate_limits": [{"name": "c", "key": ["client_address"], "limits": ["5/1m"]}],
    })
    store = FakeStore(state, allowed)
    policy = Policy(cfg, store, "mx.test")
    req = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": "192.0.2.1",
           "sender": "a@b.example", "recipient": "c@d.example"}
    action = asyncio.run(policy.decide(req))
    assert action.startswith(expected)
    assert store.calls == calls


def test_decision_writer_batches_and_counts_what_it_cannot_write():
    import asyncio

    from policy.decisions import DecisionWriter
    from policy.stats import PolicyStats
    from smtpproxy.common.config import StoreConfig
    from smtpproxy.common.store import StoreError, open_store

    class FailingStore:
        key = open_store(StoreConfig(), "/nonexistent").key

        def __init__(self, fail):
            self.fail, self.batches = fail, []

        async def set_many(self, values, ttl_s):
            if self.fail:
                raise StoreError("down")
            self.batches.append((dict(values), ttl_s))

    async def main():
        stats = PolicyStats(lambda: 0, lambda: 0)
        for fail in (False, True):
            store = FailingStore(fail)
            writer = DecisionWriter(stats.decisions_lost)
            writer.configure(store, 60.0)
            for i in range(3):
                writer.record({"client_address": "192.0.2.1", "sender": "a@x",
                               "recipient": f"r{i}@y"}, {"greylist": "new"})
            await writer.close()
            if not fail:
                assert len(store.batches) == 1 and len(store.batches[0][0]) == 3
                assert store.batches[0][1] == 60.0
        assert stats.decisions_lost.values[("store",)] == 3

    asyncio.run(main())
