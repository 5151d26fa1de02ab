"""The real daemon over loopback, on SQLite, a real Redis and a Redis Cluster.

Each test is named after the failure it pins. Short delays are configured
(greylist delay of a second) so waits stay short; nothing asserts on time.
"""

from __future__ import annotations

import json
import re
import socket
import stat
import time

import pytest

from tests.policy.support import PolicyDaemon, rcpt
from tests.support.redis import start_redis

pytestmark = pytest.mark.integration

FAST_GREYLIST = {"delay_s": 1.0, "awl_deliveries": 2, "awl_count_interval_s": 0.2}


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/state/policy.db"
    server = request.getfixturevalue("redis_server")
    # A fresh database number per test keeps tests apart without FLUSHALL races.
    db = abs(hash(request.node.name)) % 15 + 1
    server.cli("-n", str(db), "flushdb")
    return f"redis://127.0.0.1:{server.port}/{db}"


@pytest.fixture
def daemon_factory(tmp_path):
    started: list[PolicyDaemon] = []

    def make(store_url: str, name: str = "d", **config) -> PolicyDaemon:
        d = PolicyDaemon(tmp_path / f"{name}{len(started)}", store_url, **config)
        started.append(d)
        return d.start()

    yield make
    for d in started:
        d.stop()


def test_first_attempt_greylisted_retry_after_delay_accepted(daemon_factory, store_url):
    d = daemon_factory(store_url, greylist=FAST_GREYLIST)
    with d.connect() as c:
        first = c.ask(**rcpt())
        assert first.startswith("DEFER_IF_PERMIT 4.7.1 Greylisted")
        assert c.ask(**rcpt()).startswith("DEFER_IF_PERMIT")  # too early
        time.sleep(1.2)
        passed = c.ask(**rcpt())
        # At least the delay; more if this host is slow (no timing assertion).
        assert re.match(r"PREPEND X-Greylist: delayed [1-9]\d* seconds by smtpproxy-policy at mx\.test; ",
                        passed), passed
        assert c.ask(**rcpt()) == "DUNNO"


def test_retry_from_neighbouring_address_and_new_bounce_tag_passes(daemon_factory, store_url):
    d = daemon_factory(store_url, greylist=FAST_GREYLIST)
    assert d.ask(**rcpt("198.51.100.7", "prvs=1111111111=news@pool.example")).startswith("DEFER")
    time.sleep(1.2)
    assert d.ask(**rcpt("198.51.100.99", "prvs=2222222222=news@pool.example")).startswith("PREPEND")
    # IPv6: the same /64 is the same client.
    assert d.ask(**rcpt("2001:db8:1:2::25")).startswith("DEFER_IF_PERMIT")
    time.sleep(1.2)
    assert d.ask(**rcpt("2001:db8:1:2:ffff::26")).startswith("PREPEND")
    assert d.ask(**rcpt("2001:db8:1:3::25")).startswith("DEFER_IF_PERMIT")


def test_auto_whitelist_after_deliveries(daemon_factory, store_url):
    d = daemon_factory(store_url, greylist=FAST_GREYLIST)
    with d.connect() as c:
        c.ask(**rcpt(sender="a@one.example"))
        time.sleep(1.1)
        assert c.ask(**rcpt(sender="a@one.example")).startswith("PREPEND")  # delivery 1
        time.sleep(0.3)
        assert c.ask(**rcpt(sender="a@one.example")) == "DUNNO"  # delivery 2: whitelisted
        assert c.ask(**rcpt(sender="new@other.example")) == "DUNNO"


def test_sasl_and_trusted_clients_never_greylisted(daemon_factory, store_url):
    d = daemon_factory(store_url, greylist={"trusted_networks": ["203.0.113.0/24"]})
    assert d.ask(**rcpt(sasl_username="alice")) == "DUNNO"
    assert d.ask(**rcpt("203.0.113.5")) == "DUNNO"
    assert d.ask(**rcpt("192.0.2.200")).startswith("DEFER_IF_PERMIT")


def test_whitelist_map_change_applies_without_restart(daemon_factory, store_url, tmp_path):
    clients = tmp_path / "wl_clients"
    clients.write_text("# empty\n")
    d = daemon_factory(store_url, greylist={"whitelist_client_maps": [str(clients)]},
                       policy={"map_check_interval_s": 0.1})
    assert d.ask(**rcpt("192.0.2.50")).startswith("DEFER_IF_PERMIT")
    clients.write_text("192.0.2.0/24\n")
    deadline = time.monotonic() + 10
    while d.ask(**rcpt("192.0.2.51", sender="x@y.example")) != "DUNNO":
        assert time.monotonic() < deadline, "map change not picked up"
        time.sleep(0.1)


def test_checks_follow_protocol_state_and_policy_context(daemon_factory, store_url):
    rule = {"name": "sub", "key": ["sasl_username"], "limits": ["2/1h"], "count": "recipients",
            "action": "REJECT", "policy_contexts": ["submission"]}
    d = daemon_factory(store_url, rules=[rule])
    sub = rcpt(sasl_username="alice", policy_context="submission")
    assert d.ask(**sub) == "DUNNO"  # submission: no greylisting
    assert d.ask(**sub) == "DUNNO"
    assert d.ask(**sub) == "REJECT 5.7.1 Message rate limit exceeded"
    # Port 25 (no context): the rule does not apply; greylisting does.
    assert d.ask(**rcpt(sasl_username="")).startswith("DEFER_IF_PERMIT")
    # Not at DATA.
    assert d.ask(**dict(sub, protocol_state="DATA")) == "DUNNO"


def test_message_count_rule_at_end_of_message_with_overrides(daemon_factory, store_url, tmp_path):
    overrides = tmp_path / "overrides"
    overrides.write_text("vip@corp.example 5/1h\nrobot@corp.example none\n")
    rule = {"name": "msgs", "key": ["sender"], "limits": ["1/1h"], "count": "messages",
            "action": "DEFER", "policy_contexts": [""], "overrides_map": str(overrides),
            "exempt": ["exempt@corp.example"]}
    d = daemon_factory(store_url, rules=[rule], greylist={"enabled": False})
    eom = {"protocol_state": "END-OF-MESSAGE", "recipient": "", "recipient_count": "3"}
    assert d.ask(**rcpt(sender="joe@corp.example", **eom)) == "DUNNO"
    refused = d.ask(**rcpt(sender="joe@corp.example", **eom))
    assert refused.startswith("DEFER 4.7.1 Message rate limit exceeded, try again in ")
    assert [d.ask(**rcpt(sender="vip@corp.example", **eom)) for _ in range(6)].count("DUNNO") == 5
    assert all(d.ask(**rcpt(sender="robot@corp.example", **eom)) == "DUNNO" for _ in range(3))
    assert all(d.ask(**rcpt(sender="exempt@corp.example", **eom)) == "DUNNO" for _ in range(3))
    # Counting is per message: RCPT requests are not charged.
    assert d.ask(**rcpt(sender="new@corp.example")) == "DUNNO"
    assert d.ask(**rcpt(sender="new@corp.example", **eom)) == "DUNNO"


def test_malformed_request_closes_that_connection_only(daemon_factory, store_url):
    d = daemon_factory(store_url, policy={"max_line_bytes": 512, "max_attributes": 20})
    bad_inputs = [
        b"this is not a policy request\n\n",
        b"a=" + b"x" * 2000 + b"\n\n",
        b"".join(b"a%d=1\n" % i for i in range(50)) + b"\n",
        b"sender=\x00\n\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ]
    with d.connect() as good:
        for data in bad_inputs:
            with d.connect() as bad:
                bad.send(data)
                assert bad.read_reply() is None  # closed without an answer
            assert good.ask(**rcpt(sasl_username="u")) == "DUNNO"
    assert "malformed request" in d.log()
    assert d.proc.poll() is None


def test_idle_and_stalled_connections_are_closed(daemon_factory, store_url):
    d = daemon_factory(store_url, policy={"idle_timeout_s": 0.3, "request_timeout_s": 0.3})
    with d.connect(timeout_s=10) as idle:
        assert idle.read_reply() is None
    with d.connect(timeout_s=10) as stalled:
        stalled.send(b"request=smtpd_access_policy\n")
        assert stalled.read_reply() is None


def test_pipelined_requests_answered_in_order(daemon_factory, store_url):
    from policy.codec import format_request

    d = daemon_factory(store_url)
    with d.connect() as c:
        reqs = b""
        for i in range(100):
            ctx = {"request": "smtpd_access_policy", "protocol_state": "RCPT",
                   **rcpt(f"192.0.{i}.1", sasl_username="u" if i % 2 else "")}
            reqs += format_request(ctx)
        c.send(reqs)
        replies = [c.read_reply() for _ in range(100)]
    assert [r == "DUNNO" for r in replies] == [bool(i % 2) for i in range(100)]


def test_unix_socket_has_configured_mode(tmp_path, store_url):
    d = PolicyDaemon(tmp_path / "u", store_url, unix=True, policy={"socket_mode": "0660"})
    d.start()
    try:
        assert stat.S_IMODE((tmp_path / "u" / "policy.sock").stat().st_mode) == 0o660
        assert d.ask(**rcpt(sasl_username="x")) == "DUNNO"
    finally:
        d.stop()


def test_sighup_with_invalid_file_keeps_running_config(daemon_factory, store_url):
    d = daemon_factory(store_url)
    text = d.config.read_text()
    d.config.write_text(text.replace("[policy.greylist]", "[policy.greylist]\ndelay_s = -5"))
    d.hup()
    deadline = time.monotonic() + 10
    while "reload refused" not in d.log():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert d.ask(**rcpt()).startswith("DEFER_IF_PERMIT")


def test_admin_cli_show_delete_and_whitelist(daemon_factory, store_url):
    rule = {"name": "snd", "key": ["sender"], "limits": ["10/1h"], "count": "recipients"}
    d = daemon_factory(store_url, rules=[rule], greylist={"delay_s": 3600.0})
    assert d.ask(**rcpt("192.0.2.77", "a@x.example", "r@y.example")).startswith("DEFER")
    out = d.cli("greylist", "show", "192.0.2.1", "a@x.example", "r@y.example")
    assert out.returncode == 0 and "passed=0" in out.stdout, out.stdout + out.stderr
    assert "1 entries" in d.cli("greylist", "list").stdout
    out = d.cli("greylist", "delete", "192.0.2.1", "a@x.example", "r@y.example")
    assert out.returncode == 0 and "deleted" in out.stdout
    assert d.cli("greylist", "show", "192.0.2.1", "a@x.example", "r@y.example").returncode == 1
    # Whitelist the client's network: the next new triplet passes at once.
    out = d.cli("whitelist-client", "192.0.2.200")
    assert out.returncode == 0, out.stderr
    assert d.ask(**rcpt("192.0.2.78", "b@x.example", "r@y.example")) == "DUNNO"
    assert "count=" in d.cli("greylist", "show-client", "192.0.2.1").stdout
    # Rate-limit buckets.
    d.ask(**rcpt("192.0.2.78", "b@x.example", "r2@y.example"))
    out = d.cli("ratelimit", "show", "snd", "B@x.example")
    assert out.returncode == 0 and "of 10 in use" in out.stdout, out.stdout + out.stderr
    assert "1 buckets" in d.cli("ratelimit", "list").stdout
    assert d.cli("ratelimit", "delete", "snd", "b@x.example").returncode == 0
    assert d.cli("ratelimit", "show", "snd", "b@x.example").returncode == 1


# ---------------------------------------------------------------- Redis specifics


def test_two_daemons_sharing_redis_see_the_same_state(daemon_factory, redis_server):
    redis_server.cli("-n", "14", "flushdb")
    url = f"redis://127.0.0.1:{redis_server.port}/14"
    rule = {"name": "client", "key": ["client_address"], "limits": ["3/1h"], "count": "recipients"}
    a = daemon_factory(url, "a", greylist=FAST_GREYLIST, rules=[rule])
    b = daemon_factory(url, "b", greylist=FAST_GREYLIST, rules=[rule])
    # Greylisted on MX a, retried on MX b: passes there.
    assert a.ask(**rcpt("192.0.2.9")).startswith("DEFER_IF_PERMIT")
    time.sleep(1.2)
    assert b.ask(**rcpt("192.0.2.9")).startswith("PREPEND")
    # The rate limit counts across both hosts: 3 allowed in total (one already used on b).
    answers = [a.ask(**rcpt("192.0.2.9")), b.ask(**rcpt("192.0.2.9")), a.ask(**rcpt("192.0.2.9"))]
    assert answers[:2] == ["DUNNO", "DUNNO"]
    assert answers[2].startswith("DEFER 4.7.1 Message rate limit exceeded")
    # Every key the daemons wrote expires.
    time.sleep(0.3)  # decisions are recorded in the background (policy/decisions.py)
    keys = redis_server.cli("-n", "14", "--scan").split()
    assert len(keys) == 4  # triplet, client network, bucket, the triplet's last decision
    decision = json.loads(redis_server.cli("-n", "14", "get", next(k for k in keys if "{pd}" in k)))
    assert decision["ratelimit"] == "client" and decision["action"] == "DEFER"
    assert decision["greylist"] == "known"
    assert all(int(redis_server.cli("-n", "14", "ttl", k)) > 0 for k in keys)


def test_redis_dead_answers_default_action_and_recovers(daemon_factory, tmp_path):
    server = start_redis(str(tmp_path / "r"))
    url = f"redis://127.0.0.1:{server.port}/0"
    try:
        d = daemon_factory(url, policy={"default_action": "DEFER_IF_PERMIT"},
                           store={"timeout_s": 0.5, "backoff_s": 0.2, "backoff_max_s": 0.5})
        assert d.ask(**rcpt("192.0.2.1")).startswith("DEFER_IF_PERMIT 4.7.1 Greylisted")
        server.stop()
        with d.connect(timeout_s=20) as c:  # well under Postfix's 100 s policy timeout
            for _ in range(20):
                assert c.ask(**rcpt("192.0.2.1")) == (
                    "DEFER_IF_PERMIT 4.3.0 Temporary policy service problem, try again later")
        server = start_redis(str(tmp_path / "r"), port=server.port)
        deadline = time.monotonic() + 15
        while not d.ask(**rcpt("192.0.2.2")).startswith("DEFER_IF_PERMIT 4.7.1 Greylisted"):
            assert time.monotonic() < deadline, "did not reconnect to redis"
            time.sleep(0.1)
        log = d.log()
        errors = [line for line in log.splitlines() if "ERROR" in line and "redis unreachable" in line]
        assert 1 <= len(errors) <= 2, errors  # rate-limited, not once per request
        assert "redis reachable again" in log
    finally:
        server.stop()


def test_redis_down_at_start_fails_open_with_dunno(daemon_factory, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = daemon_factory(f"redis://127.0.0.1:{port}/0", store={"timeout_s": 0.3})
    assert d.ask(**rcpt()) == "DUNNO"
    assert d.proc.poll() is None


def test_daemon_on_redis_cluster(daemon_factory, redis_cluster):
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in redis_cluster)
    rule = {"name": "snd", "key": ["sender"], "limits": ["5/1h"], "count": "recipients"}
    d = daemon_factory(url, greylist=FAST_GREYLIST, rules=[rule])
    # Many client networks, so keys land on every master.
    for i in range(30):
        assert d.ask(**rcpt(f"10.{i}.0.1", f"s{i}@c.example")).startswith("DEFER_IF_PERMIT")
    time.sleep(1.2)
    for i in range(30):
        assert d.ask(**rcpt(f"10.{i}.0.1", f"s{i}@c.example")).startswith("PREPEND")
    per_node = [int(n.cli("dbsize").strip()) for n in redis_cluster]
    assert all(count > 0 for count in per_node), per_node
    answers = [d.ask(**rcpt(f"10.{i}.0.1", "bulk@c.example", f"r{i}@x.example", sasl_username="u"))
               for i in range(8)]
    assert sum(a.startswith("DEFER 4.7.1 Message rate limit") for a in answers) == 3


def test_start_log_names_the_event_loop(daemon_factory, tmp_path):
    """uvloop exactly when it is installed, asyncio's own loop otherwise."""
    import importlib.util

    d = daemon_factory(f"sqlite://{tmp_path}/l.db")
    assert d.ask(**rcpt(sasl_username="u")) == "DUNNO"
    uses_uvloop = importlib.util.find_spec("uvloop") is not None
    assert f"event loop {'uvloop' if uses_uvloop else 'asyncio'}" in d.log()


def test_half_closed_client_gets_its_answers_then_close(daemon_factory, store_url):
    import socket as socketlib

    from policy.codec import format_request

    d = daemon_factory(store_url)
    with d.connect() as c:
        req = {"request": "smtpd_access_policy", "protocol_state": "RCPT", **rcpt(sasl_username="u")}
        c.send(format_request(req) * 3)
        c.sock.shutdown(socketlib.SHUT_WR)
        assert [c.read_reply() for _ in range(3)] == ["DUNNO"] * 3
        assert c.read_reply() is None


def test_unusable_sqlite_path_refuses_to_start(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    d = PolicyDaemon(tmp_path / "bad", f"sqlite://{blocker}/sub/state.db")
    with pytest.raises(RuntimeError, match="did not start"):
        d.start()
    assert d.proc.wait(10) == 1
    assert "cannot start" in d.log()


def test_sighup_with_valid_file_applies_new_settings(daemon_factory, store_url):
    d = daemon_factory(store_url, greylist={"delay_s": 3600.0})
    assert d.ask(**rcpt("192.0.2.1")).endswith("try again in 3600 seconds")
    d.config.write_text(d.config.read_text().replace("delay_s = 3600.0", "delay_s = 60.0"))
    d.hup()
    deadline = time.monotonic() + 10
    while "configuration reloaded" not in d.log():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert d.ask(**rcpt("192.0.2.2")).endswith("try again in 60 seconds")


def test_redis_hung_answers_default_action_then_recovers(daemon_factory, tmp_path):
    import signal

    server = start_redis(str(tmp_path / "hung"))
    try:
        d = daemon_factory(f"redis://127.0.0.1:{server.port}/0",
                           store={"timeout_s": 0.3, "backoff_s": 0.2, "backoff_max_s": 0.4})
        assert d.ask(**rcpt("192.0.2.1")).startswith("DEFER_IF_PERMIT 4.7.1")
        server.proc.send_signal(signal.SIGSTOP)  # accepts nothing, answers nothing
        try:
            with d.connect(timeout_s=20) as c:
                assert [c.ask(**rcpt(f"192.0.2.{i}")) for i in range(2, 6)] == ["DUNNO"] * 4
        finally:
            server.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 15
        while not d.ask(**rcpt("192.0.2.99")).startswith("DEFER_IF_PERMIT 4.7.1"):
            assert time.monotonic() < deadline, "did not recover after redis resumed"
            time.sleep(0.1)
        # Replies that arrived late were never taken for another request's:
        assert d.ask(**rcpt("192.0.2.1")).startswith("DEFER_IF_PERMIT 4.7.1")
    finally:
        server.stop()


def test_metrics_count_replies_greylist_rate_limits_and_trouble(daemon_factory, store_url):
    import urllib.request

    from tests.support.net import free_port

    port = free_port()
    rule = {"name": "per_client", "key": ["client_address"], "limits": ["1/1h"], "action": "REJECT"}
    d = daemon_factory(store_url, greylist=FAST_GREYLIST, rules=[rule],
                       policy={"metrics_listen": f"127.0.0.1:{port}"})
    assert d.ask(**rcpt()).startswith("DEFER_IF_PERMIT 4.7.1 Greylisted")
    assert d.ask(**rcpt(sasl_username="u")) == "DUNNO"  # exempt, first use of the rule
    assert d.ask(**rcpt(sasl_username="u")).startswith("REJECT 5.7.1")
    with d.connect() as bad:
        bad.send(b"not a request\n\n")
        assert bad.read_reply() is None

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            assert reply.status == 200
            text = reply.read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line and not line.startswith("#")}

    m = scrape()
    assert m['smtpproxy_policy_replies_total{action="DEFER_IF_PERMIT"}'] == 1
    assert m['smtpproxy_policy_replies_total{action="DUNNO"}'] == 1
    assert m['smtpproxy_policy_replies_total{action="REJECT"}'] == 1
    assert m['smtpproxy_policy_greylist_total{result="new"}'] == 1
    assert m['smtpproxy_policy_greylist_total{result="sasl"}'] == 2
    assert m['smtpproxy_policy_rate_limited_total{rule="per_client"}'] == 1
    assert m["smtpproxy_policy_malformed_total"] == 1
    assert m["smtpproxy_policy_decision_seconds_count"] == 3
    assert m["smtpproxy_policy_connections_active"] >= 0
    # A reload keeps the counts (they belong to the daemon, not to one configuration).
    d.hup()
    deadline = time.monotonic() + 15
    while "configuration reloaded" not in d.log():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert d.ask(**rcpt(sasl_username="u")).startswith("REJECT 5.7.1")
    assert scrape()['smtpproxy_policy_rate_limited_total{rule="per_client"}'] == 2
