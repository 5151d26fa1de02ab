"""The canary: proof that mail really passes through the filter.

The most common failure of a before-queue filter is not a wrong score but a
filter that is silently not in the path (a second smtpd without
``smtpd_proxy_filter``, a reload that lost the override). So every
``canary.interval_s`` the proxy daemon sends a small message through the
real front door (``canary.target``, the public Postfix smtpd). It carries
an ``X-Smtpproxy-Canary`` header with an HMAC token over a timestamp, a
nonce and the recipient, keyed by ``canary.secret`` (or ``secret_file``):
nobody without the key can make a message that the proxy takes for a
canary, and a token is good once, for a limited time.

When the proxy sees a valid token at end-of-data (delivery.py, the one
hook point after the scan and the signer), the message has been scanned
and, where configured, signed. Instead of relaying it, the proxy abandons
the downstream transaction (RSET, exactly as for a reject) and answers the
canary's end-of-data itself with ``250 2.0.0 smtpproxy canary n=NONCE
passed ...``; Postfix passes that reply to the sender, which recognises its
nonce. Why answer it here rather than discard it downstream: nothing of a
canary ever reaches a queue, there is no Postfix-side discard rule to keep
in step (a missing one would deliver canaries to a mailbox), and the
re-injection listener is still exercised up to RCPT, because MAIL and RCPT
are relayed in lockstep. A message with a canary header whose token is bad,
stale or replayed is an ordinary message: it is scanned and relayed like
any other, so a 250 of ours without the downstream's 250 is given only to a
message made with the key.

A canary that has not passed for ``alert_after_s`` is logged as an error and
turns ``smtpproxy_canary_ok`` to 0 in /metrics. ``smtpproxy canary --once``
sends one and exits with Nagios' codes (0 OK, 1 WARNING: a temporary
refusal, 2 CRITICAL: refused, unreachable, or accepted without passing the
filter, 3 UNKNOWN: configuration).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import email.utils
import hashlib
import hmac
import logging
import re
import secrets
import sys
import time
from dataclasses import dataclass

import aiosmtplib

from smtpproxy.common.config import CanaryConfig, Config, ConfigError, parse_hostport
from smtpproxy.transaction import Transaction, Verdict

logger = logging.getLogger("smtpproxy")

HEADER = "X-Smtpproxy-Canary"
KEY_MIN_BYTES = 16
# Clock difference tolerated between the sender and the proxy of a token.
CLOCK_SKEW_S = 60.0
# Nonces remembered against replay (a token is good once).
SEEN_NONCES_MAX = 4096

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


def load_key(cfg: CanaryConfig, path: str = "canary.") -> bytes:
    """The HMAC key from ``secret`` (a `smtpproxy pw` hash) or ``secret_file``."""
    if cfg.secret_file:
        try:
            with open(cfg.secret_file, "rb") as f:
                raw = f.read().strip()
        except OSError as exc:
            raise ConfigError(path + "secret_file",
                              f"cannot read {cfg.secret_file}: {exc.strerror}") from None
        if len(raw) < KEY_MIN_BYTES:
            raise ConfigError(path + "secret_file",
                              f"{cfg.secret_file}: a key of at least {KEY_MIN_BYTES} bytes "
                              "is needed (head -c 32 /dev/urandom | base64)")
    elif cfg.secret:
        raw = cfg.secret.encode()
    else:
        raise ConfigError(path + "secret", "required for the canary (or secret_file)")
    return hashlib.sha256(b"smtpproxy canary key\0" + raw).digest()


def _mac(key: bytes, stamp: int, nonce: str, recipient: str) -> str:
    data = f"{stamp}\0{nonce}\0{recipient.lower()}".encode()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def make_token(key: bytes, recipient: str, stamp: int, nonce: str) -> str:
    return f"t={stamp}; n={nonce}; mac={_mac(key, stamp, nonce, recipient)}"


_TOKEN = re.compile(r"^\s*t=(\d{1,12});\s*n=([0-9a-f]{8,64});\s*mac=([0-9a-f]{64})\s*$")


def verify_token(key: bytes, value: str, recipient: str, now: float, max_age_s: float) -> str | None:
    """The token's nonce when ``value`` is a valid, fresh token for ``recipient``; else None."""
    m = _TOKEN.match(value)
    if m is None:
        return None
    stamp, nonce, mac = int(m.group(1)), m.group(2), m.group(3)
    if not hmac.compare_digest(mac, _mac(key, stamp, nonce, recipient)):
        return None
    if not now - max_age_s - CLOCK_SKEW_S <= stamp <= now + CLOCK_SKEW_S:
        return None
    return nonce


def header_values(content: bytes, name: str) -> list[str]:
    """The values of header field ``name`` (unfolded) in the message's header block."""
    head = re.split(rb"\r?\n\r?\n", content, maxsplit=1)[0]
    values: list[str] = []
    current: list[str] | None = None
    prefix = name.lower().encode() + b":"
    for line in re.split(rb"\r?\n", head):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line.decode("utf-8", "replace").strip())
            continue
        if current is not None:
            values.append(" ".join(current))
            current = None
        if line.lower().startswith(prefix):
            current = [line[len(prefix):].decode("utf-8", "replace").strip()]
    if current is not None:
        values.append(" ".join(current))
    return values


def build_message(cfg: CanaryConfig, key: bytes, hostname: str, now: float) -> tuple[bytes, str]:
    """A canary message and its nonce."""
    nonce = secrets.token_hex(12)
    stamp = int(now)
    lines = [
        f"From: <{cfg.sender}>",
        f"To: <{cfg.recipient}>",
        f"Subject: smtpproxy canary {nonce}",
        f"Date: {email.utils.formatdate(now)}",
        f"Message-ID: <canary.{nonce}@{hostname}>",
        f"{HEADER}: {make_token(key, cfg.recipient, stamp, nonce)}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "A test message of smtpproxy: the filter answers it and delivers it nowhere.",
        "",
    ]
    return "\r\n".join(lines).encode(), nonce


# ---------------------------------------------------------------- sending


@dataclass
class SendResult:
    status: int  # OK, WARNING, CRITICAL
    text: str  # one line
    seconds: float = 0.0


async def send_canary(cfg: CanaryConfig, key: bytes, hostname: str) -> SendResult:
    """Send one canary to ``cfg.target`` and say what became of it."""
    host, port = parse_hostport(cfg.target, "canary.target")
    message, nonce = build_message(cfg, key, hostname, time.time())
    started = time.monotonic()
    stage = "connect"
    try:
        async with asyncio.timeout(cfg.timeout_s):
            # Plain SMTP: the front door is expected on loopback or a local network.
            smtp = aiosmtplib.SMTP(hostname=host, port=port, local_hostname=hostname,
                                   timeout=cfg.timeout_s, start_tls=False)
            await smtp.connect()
            try:
                stage = "EHLO"
                await smtp.ehlo()
                stage = "MAIL"
                await smtp.mail(cfg.sender)
                stage = "RCPT"
                await smtp.rcpt(cfg.recipient)
                stage = "DATA"
                reply = await smtp.data(message)
            finally:
                try:
                    await smtp.quit()
                except (aiosmtplib.SMTPException, OSError):
                    smtp.close()
    except aiosmtplib.SMTPResponseException as exc:
        status = WARNING if 400 <= exc.code < 500 else CRITICAL
        return SendResult(status, f"{cfg.target} refused at {stage}: {exc.code} "
                          f"{_one_line(exc.message)}", time.monotonic() - started)
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return SendResult(CRITICAL, f"{cfg.target} at {stage}: {_one_line(str(exc)) or 'timeout'}",
                          time.monotonic() - started)
    seconds = time.monotonic() - started
    text = _one_line(reply.message)
    if f"n={nonce} " in text + " " and "smtpproxy canary" in text:
        return SendResult(OK, f"passed the filter in {seconds:.2f}s: {text}", seconds)
    # Accepted, but not by the proxy: the message went around the filter.
    return SendResult(CRITICAL, f"{cfg.target} accepted the canary without the filter "
                      f"(smtpd_proxy_filter missing?): {reply.code} {text}", seconds)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------- the daemon's side


class CanaryMonitor:
    """The daemon's canary: when one last passed, the sending loop, the alert.

    Lives as long as the process (daemon.py); each configuration gives it a
    CanaryCheck for the Delivery (``check_for``) and its settings.
    """

    def __init__(self, stats=None):
        self.cfg = CanaryConfig()
        self.key = b""
        self.hostname = "localhost"
        self.since = time.time()  # the grace period before the first canary
        self.last_pass: float | None = None
        self.last_problem = ""
        self.alerted = False
        # Tokens already used (a token is good once), kept across reloads.
        self.seen_nonces: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._next_send = 0.0
        self._task: asyncio.Task | None = None
        if stats is not None:
            r = stats.registry
            r.gauge("smtpproxy_canary_ok",
                    "1: a canary passed the filter within canary.alert_after_s; 0: missing",
                    self.ok_value, aggregate="max")  # any worker's pass counts
            r.gauge("smtpproxy_canary_last_pass_timestamp_seconds",
                    "When a canary last passed the filter (Unix time; 0: never)",
                    lambda: (self.last_pass or 0.0) if self.cfg.enabled else None,
                    aggregate="max")
            self.sent = r.counter("smtpproxy_canary_sent_total",
                                  "Canaries sent by the daemon, by result", ("result",))
        else:
            self.sent = None

    def check_for(self, cfg: Config) -> CanaryCheck | None:
        """What the Delivery of ``cfg`` recognises; None when the canary is off.
        Raises ConfigError for an unreadable key (a reload keeps the old one)."""
        if not cfg.canary.enabled:
            return None
        return CanaryCheck(cfg.canary, load_key(cfg.canary), self)

    def configure(self, cfg: Config, check: CanaryCheck | None, hostname: str) -> None:
        if check is not None and not self.cfg.enabled:
            self.since = time.time()  # turned on: a fresh grace period
            self.alerted = False
        self.cfg = cfg.canary
        self.key = check.key if check is not None else b""
        self.hostname = hostname

    def ok(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return now - max(self.last_pass or 0.0, self.since) < self.cfg.alert_after_s

    def ok_value(self) -> float | None:
        if not self.cfg.enabled:
            return None  # no sample: nothing to alert on
        return 1.0 if self.ok() else 0.0

    def record_pass(self, detail: str) -> None:
        if self.alerted:
            logger.warning("canary: passing the filter again (%s)", detail)
        self.last_pass = time.time()
        self.alerted = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if not self.cfg.enabled:
                continue
            try:
                await self.tick()
            except Exception:
                logger.exception("canary")

    async def tick(self) -> None:
        cfg, now = self.cfg, time.monotonic()
        if cfg.interval_s > 0 and now >= self._next_send:
            self._next_send = now + cfg.interval_s
            result = await send_canary(cfg, self.key, self.hostname)
            if self.sent is not None:
                self.sent.inc(STATUS_NAMES[result.status].lower())
            if result.status == OK:
                self.record_pass(result.text)
            else:
                self.last_problem = result.text
                logger.warning("canary: %s %s", STATUS_NAMES[result.status], result.text)
        if not self.ok() and not self.alerted:
            self.alerted = True
            last = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.last_pass))
                    if self.last_pass else "never")
            logger.error("canary: no canary passed the filter for %.0fs (canary.alert_after_s); "
                         "last pass %s; last problem: %s", cfg.alert_after_s, last,
                         self.last_problem or "none seen by this daemon")


class CanaryCheck:
    """The Delivery's side: recognise a canary, answer it (delivery.py)."""

    def __init__(self, cfg: CanaryConfig, key: bytes, monitor: CanaryMonitor):
        self.cfg = cfg
        self.key = key
        self.monitor = monitor

    def recognise(self, txn: Transaction) -> str | None:
        """The nonce of a genuine canary (valid, fresh, unused token for the
        configured recipient, alone); None for every other message."""
        values = header_values(txn.content, HEADER)
        if not values:
            return None
        nonce = None
        if len(values) == 1 and [r.lower() for r in txn.rcpt_tos] == [self.cfg.recipient.lower()]:
            nonce = verify_token(self.key, values[0], self.cfg.recipient, time.time(),
                                 max(self.cfg.alert_after_s, self.cfg.timeout_s))
        seen = self.monitor.seen_nonces
        if nonce is None or nonce in seen:
            logger.warning("%s: %s header that is not a valid canary token: an ordinary message",
                           txn.session_id, HEADER)
            return None
        seen[nonce] = None
        while len(seen) > SEEN_NONCES_MAX:
            seen.popitem(last=False)
        return nonce

    def passed(self, txn: Transaction, nonce: str, final: bytes, verdict: Verdict) -> str:
        """Record the pass of the canary ``txn`` (``final``: as it would have
        been relayed); the reply for its end-of-data."""
        signed = any(len(header_values(final, h)) > len(header_values(txn.content, h))
                     for h in ("DKIM-Signature", "ARC-Seal"))
        signing = "signed" if signed else "not signed"
        logger.info("%s: canary n=%s passed: scanned (%s), %s; not delivered", txn.session_id,
                    nonce, verdict.summary or "scan off", signing)
        self.monitor.record_pass(f"n={nonce}")
        return (f"250 2.0.0 smtpproxy canary n={nonce} passed: scanned "
                f"({verdict.scan_action or 'scan off'}), {signing}; not delivered")


# ---------------------------------------------------------------- smtpproxy canary


def cmd_canary(args: argparse.Namespace) -> int:
    from smtpproxy.cliconfig import config_path
    from smtpproxy.common import config as config_mod

    try:
        cfg = config_mod.load(config_path(args.config))
        if not cfg.canary.enabled:
            raise ConfigError("canary.enabled", "the canary is off (the proxy would "
                              "deliver it as an ordinary message)")
        key = load_key(cfg.canary)
    except ConfigError as exc:
        print(f"CANARY UNKNOWN - configuration: {exc}")
        return UNKNOWN
    hostname = cfg.proxy.hostname or "localhost"
    result = asyncio.run(send_canary(cfg.canary, key, hostname))
    print(f"CANARY {STATUS_NAMES[result.status]} - {result.text} | time={result.seconds:.3f}s")
    sys.stdout.flush()
    return result.status


def add_parsers(sub, with_config) -> None:
    p = with_config(sub.add_parser(
        "canary", help="send one canary through the front door (Nagios exit codes)"))
    p.add_argument("--once", action="store_true", required=True,
                   help="send one canary, print one status line, exit 0/1/2 (3: configuration)")
    p.set_defaults(func=cmd_canary)
