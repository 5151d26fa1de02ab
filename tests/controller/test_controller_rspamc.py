"""Debian's rspamc against the controller of a running proxy daemon (real Postfix around it).

The compatibility test of docs/controller.md: rspamc scans (``symbols``),
learns spam and ham from directories of 200 corpus messages each, reads
``stat``; Bayes then classifies held-out messages with what was learned.
The rspamd daemon itself is never started: only its client is used.
"""

from __future__ import annotations

import re
import smtplib
import socket
import threading
import time

import pytest

from tests.support.controller import (
    READ_PASSWORD,
    WRITE_PASSWORD,
    controller_config,
    copy_corpus,
    corpus_files,
    request,
    rspamc,
)
from tests.support.dns_server import DnsTestServer
from tests.support.net import free_port
from tests.support.postfix import wait_until

pytestmark = pytest.mark.integration

LEARN_EACH = 200


@pytest.fixture(scope="module")
def dns():
    server = DnsTestServer({})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, dns):
    from tests.support.pipeline import Pipeline

    port = free_port()
    # Some corpus messages share a body (learned once): Bayes classifies from 150 of each.
    p = Pipeline(tmp_path_factory.mktemp("controller"), scan=True, extra_config=f"""
[scan.bayes]
min_learned = 150
[dns]
nameserver = "{dns.nameserver}"
timeout_s = 1.0
{controller_config(port)}
""")
    p.controller_port = port
    p.start()
    wait_until(lambda: _pong(port), 30, "the controller")
    yield p
    p.stop()


def _pong(port: int) -> bool:
    try:
        return request(port, "GET", "/ping", timeout=2) == (200, "pong\r\n")
    except OSError:
        return False


def test_rspamc_symbols_shows_the_scan(proxy):
    message = corpus_files("spam", 0, 1)[0]
    out = rspamc(proxy.controller_port, READ_PASSWORD, "--ip", "192.0.2.1", "--helo", "mx.example",
                 "--from", "a@example.org", "--rcpt", "b@example.net", "symbols", str(message))
    assert out.returncode == 0, out.stderr + out.stdout
    assert re.search(r"^Action: ", out.stdout, re.M)
    assert re.search(r"^Score: [\d.]+ / 15\.00$", out.stdout, re.M)
    assert re.search(r"^Symbol: \w+ \(", out.stdout, re.M)


def test_rspamc_without_password_or_with_the_read_one_cannot_learn(proxy):
    message = str(corpus_files("spam", 0, 1)[0])
    for password in (None, READ_PASSWORD, "wrong"):
        out = rspamc(proxy.controller_port, password, "learn_spam", message)
        assert out.returncode != 0
        assert "HTTP error: 403" in out.stdout


def test_rspamc_learns_directories_and_bayes_classifies_with_it(proxy, tmp_path):
    port = proxy.controller_port
    spam_dir = copy_corpus("spam", 0, LEARN_EACH, tmp_path / "spam")
    ham_dir = copy_corpus("easy_ham", 0, LEARN_EACH, tmp_path / "ham")
    for command, directory in (("learn_spam", spam_dir), ("learn_ham", ham_dir)):
        out = rspamc(port, WRITE_PASSWORD, command, str(directory))
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr
        # A few corpus messages share a body: rspamd's "already learned" answer for those.
        learned = out.stdout.count("success = true;")
        already = len(re.findall(r'error = "<.*> has been already learned as', out.stdout))
        assert learned + already == LEARN_EACH and learned >= LEARN_EACH * 0.9, out.stdout[-2000:]

    again = rspamc(port, WRITE_PASSWORD, "learn_spam", str(spam_dir / sorted(
        p.name for p in spam_dir.iterdir())[0]))
    assert again.returncode == 0 and "has been already learned as spam, ignore it" in again.stdout

    stat = rspamc(port, READ_PASSWORD, "stat")
    assert stat.returncode == 0, stat.stdout + stat.stderr
    learned_spam = int(re.search(r"Statfile: BAYES_SPAM .* learned: (\d+);", stat.stdout).group(1))
    learned_ham = int(re.search(r"Statfile: BAYES_HAM .* learned: (\d+);", stat.stdout).group(1))
    assert learned_spam >= LEARN_EACH * 0.9 and learned_ham >= LEARN_EACH * 0.9
    assert re.search(r"^Messages learned: \d+$", stat.stdout, re.M)

    def classified(kind: str, symbol: str) -> int:
        hits = 0
        for path in corpus_files(kind, 300, 10):  # never learned
            out = rspamc(port, READ_PASSWORD, "symbols", str(path))
            assert out.returncode == 0, out.stdout
            hits += f"Symbol: {symbol} (" in out.stdout
        return hits

    # A classifier seen short of min_learned (the scans above) is asked again
    # after checks/bayes.py's NOT_READY_RECHECK_S: wait for that first.
    probe = str(corpus_files("spam", 300, 1)[0])
    wait_until(lambda: "Symbol: BAYES_" in rspamc(port, READ_PASSWORD, "symbols", probe).stdout,
               45, "Bayes to classify")
    assert classified("spam", "BAYES_SPAM") >= 7
    assert classified("easy_ham", "BAYES_HAM") >= 7


@pytest.mark.parametrize("label, method, path, body, headers, status", [
    ("unknown path", "GET", "/nothing-here", None, {}, 404),
    ("learn by GET", "GET", "/learnspam", None, {"Password": WRITE_PASSWORD}, 405),
    ("scan by GET", "GET", "/checkv2", None, {"Password": READ_PASSWORD}, 405),
    ("reset by GET", "GET", "/historyreset", None, {"Password": WRITE_PASSWORD}, 405),
    ("missing body", "POST", "/learnham", b"", {"Password": WRITE_PASSWORD}, 400),
    ("malformed JSON", "POST", "/history", b"{limit: ", {"Password": READ_PASSWORD}, 400),
    ("JSON not an object", "POST", "/history", b"[1]", {"Password": READ_PASSWORD}, 400),
    ("bad limit", "GET", "/history?limit=lots", None, {"Password": READ_PASSWORD}, 400),
    ("bad graph type", "GET", "/graph?type=yearly", None, {"Password": READ_PASSWORD}, 400),
    ("no password", "GET", "/stat", None, {}, 403),
    ("compressed body", "POST", "/checkv2", b"(\xb5/\xfd", {"Password": READ_PASSWORD,
                                                             "Compression": "zstd"}, 415),
    ("cross-origin learn", "POST", "/learnspam", b"Subject: x\r\n\r\nx\r\n",
     {"Password": WRITE_PASSWORD, "Origin": "https://evil.example"}, 403),
    ("cross-site fetch", "POST", "/learnspam", b"Subject: x\r\n\r\nx\r\n",
     {"Password": WRITE_PASSWORD, "Sec-Fetch-Site": "cross-site"}, 403),
])
def test_bad_requests_get_a_short_json_error(proxy, label, method, path, body, headers, status):
    got, data = request(proxy.controller_port, method, path, body, headers)
    assert got == status, (label, data)
    assert isinstance(data, dict) and set(data) == {"error"} and len(data["error"]) < 120
    assert "Traceback" not in data["error"]


def test_oversize_body_is_refused_before_it_is_read(proxy):
    size = 60 * 1024 * 1024  # over the default limit, proxy.max_message_size_bytes (50 MB)
    with socket.create_connection(("127.0.0.1", proxy.controller_port), timeout=10) as s:
        s.sendall(f"POST /checkv2 HTTP/1.1\r\nHost: x\r\nPassword: {READ_PASSWORD}\r\n"
                  f"Content-Length: {size}\r\n\r\n".encode())
        reply = s.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 413") and '{"error": ' in reply


def test_endpoints_answer_in_rspamd_shapes(proxy):
    port, auth = proxy.controller_port, {"Password": READ_PASSWORD}
    assert request(port, "GET", "/ping") == (200, "pong\r\n")
    status, actions = request(port, "GET", "/actions", headers=auth)
    assert status == 200 and {"action": "reject", "value": 15.0} in actions
    status, groups = request(port, "GET", "/symbols", headers=auth)
    assert status == 200 and any(r["symbol"] == "GTUBE" for g in groups for r in g["rules"])
    status, graph = request(port, "GET", "/graph?type=daily", headers=auth)
    assert status == 200 and len(graph) == 6 and {"x", "y"} <= set(graph[0][0])
    status, stat = request(port, "GET", "/stat", headers=auth)
    assert status == 200 and stat["read_only"] is True and "scanned" in stat
    status, stat = request(port, "GET", "/stat", headers={"Password": WRITE_PASSWORD})
    assert status == 200 and stat["read_only"] is False
    status, history = request(port, "GET", "/history", headers=auth)
    assert status == 200 and history["version"] == 2 and isinstance(history["rows"], list)


def test_wrong_passwords_are_rate_limited_and_never_logged(tmp_path, dns):
    from tests.support.pipeline import ProxyProcess

    port, smtp_port = free_port(), free_port()
    proxy = ProxyProcess(tmp_path, f"""
state_dir = "{tmp_path / 'state'}"
[[proxy.listeners]]
listen = "127.0.0.1:{smtp_port}"
downstream = "127.0.0.1:{free_port()}"
[scan]
enabled = false
{controller_config(port, "auth_failures_max = 3")}
""")
    proxy.start(smtp_port)
    try:
        wait_until(lambda: _pong(port), 30, "the controller")
        guesses = [f"guess-{i}-XYZZY" for i in range(6)]
        statuses = [request(port, "GET", "/stat", headers={"Password": g})[0] for g in guesses]
        assert statuses == [403, 403, 403, 429, 429, 429]
        # The right password too is refused while the address is blocked.
        assert request(port, "GET", "/stat", headers={"Password": READ_PASSWORD})[0] == 429
        log = proxy.log_text()
        assert log.count("controller: wrong password from 127.0.0.1") == 3
        assert "XYZZY" not in log
    finally:
        proxy.stop()


def _hammer(port: int, stop: threading.Event, counts: dict) -> None:
    """Bad requests of every kind, as fast as one client can send them."""
    bad = [
        b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /history HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{bad}",
        b"GET /learnspam HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00garbage that is not HTTP\r\n\r\n",
        b"POST /checkv2 HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n",
        b"GET /stat HTTP/1.1\r\nHost: x\r\nPassword: nope\r\n\r\n",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
    ]
    i = 0
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(bad[i % len(bad)])
                s.recv(4096)
            counts["sent"] = counts.get("sent", 0) + 1
        except OSError:
            counts["errors"] = counts.get("errors", 0) + 1
        i += 1


def test_proxy_keeps_relaying_while_the_controller_is_hammered(proxy):
    stop = threading.Event()
    counts: dict = {}
    threads = [threading.Thread(target=_hammer, args=(proxy.controller_port, stop, counts))
               for _ in range(8)]
    before = len(proxy.sink.files())
    messages = [path.read_bytes() for path in corpus_files("easy_ham", 400, 20)]
    replies = []
    for t in threads:
        t.start()
    try:
        started = time.monotonic()
        for raw in messages:
            with smtplib.SMTP("127.0.0.1", proxy.inbound_port, timeout=60,
                              local_hostname="client.example.org") as s:
                try:
                    s.sendmail("alice@example.org", ["bob@example.net"], raw)
                    replies.append(250)
                except smtplib.SMTPDataError as exc:  # the scan's refusal is an answer too
                    assert b"(ref " in exc.smtp_error, exc
                    replies.append(exc.smtp_code)
        elapsed = time.monotonic() - started
        time.sleep(max(0.0, 3.0 - elapsed))  # hammered for 3 s at least
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert replies.count(250) >= 15, replies
    proxy.wait_delivered(before + replies.count(250))
    assert counts.get("sent", 0) > 50, counts
    assert elapsed < 60
    assert _pong(proxy.controller_port)
    assert "Traceback" not in proxy.proxy.log_text()
