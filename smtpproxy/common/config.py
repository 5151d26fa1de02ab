"""Configuration: the schema with every default, TOML loading and validation.

Every key either daemon reads is declared here once, as a field of a frozen
dataclass whose default is the default; `conf/smtpproxy.toml` lists the same
keys with comments. Loading rejects unknown keys, wrong types and bad values
with a ConfigError that names the key (``proxy.listeners[1].downstream``), so
an administrator is never left guessing which line is wrong.

Units are in the names (``_s`` seconds, ``_bytes``). A loaded Config is
immutable: a reload builds a new one and swaps it in whole, or keeps the old
one when the new file is invalid.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any


class ConfigError(Exception):
    """A bad configuration value; ``key`` is the dotted path to it."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


# ---------------------------------------------------------------- value parsers


def parse_hostport(value: str, key: str = "") -> tuple[str, int]:
    """'127.0.0.1:10025', '[::1]:10025' or 'localhost:25' -> (host, port)."""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(key, f"expected [IPV6]:PORT, got {value!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ConfigError(key, f"expected HOST:PORT, got {value!r}")
        if ":" in host:
            raise ConfigError(key, f"write IPv6 addresses as [ADDR]:PORT, got {value!r}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(key, f"bad port in {value!r}")
    return host, int(port_text)


def parse_networks(values: tuple[str, ...], key: str) -> tuple:
    nets = []
    for i, text in enumerate(values):
        try:
            nets.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ConfigError(f"{key}[{i}]", f"not an IP network: {text!r}") from None
    return tuple(nets)


def parse_socket_mode(value: str, key: str = "socket_mode") -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise ConfigError(key, f"expected an octal mode such as 0660, got {value!r}") from None
    if not 0 <= mode <= 0o777:
        raise ConfigError(key, f"mode out of range: {value!r}")
    return mode


def _check_positive(obj: Any, path: str, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(path + name, "must be greater than 0")


# More worker processes than this is a typo, not a machine.
MAX_WORKERS = 256


def check_workers(value: int | str, key: str) -> None:
    """``workers``: a count of 1..MAX_WORKERS, or "auto" (one per usable CPU)."""
    if value == "auto":
        return
    if isinstance(value, str) or not 1 <= value <= MAX_WORKERS:
        raise ConfigError(key, f'expected a number of processes (1 to {MAX_WORKERS}) or "auto", '
                               f"got {value!r}")


def worker_count(value: int | str) -> int:
    """The number of worker processes ``workers`` (checked) asks for."""
    if value != "auto":
        return int(value)
    try:
        usable = len(os.sched_getaffinity(0))  # the CPUs this process may run on
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return max(1, min(usable, MAX_WORKERS))


def _check_choice(obj: Any, path: str, name: str, choices: tuple[str, ...]) -> None:
    if getattr(obj, name) not in choices:
        raise ConfigError(path + name, f"must be one of {', '.join(choices)}")


# ---------------------------------------------------------------- the schema

LOG_LEVELS = ("debug", "info", "warning", "error")
PROFILES = ("inbound", "outbound")


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    # stderr (journald picks it up under systemd) or syslog (the mail log).
    destination: str = "stderr"
    syslog_socket: str = "/dev/log"
    syslog_facility: str = "mail"

    def check(self, path: str) -> None:
        _check_choice(self, path, "level", LOG_LEVELS)
        _check_choice(self, path, "destination", ("stderr", "syslog"))


@dataclass(frozen=True)
class ListenerConfig:
    name: str = "inbound"
    # HOST:PORT, or unix:/path for a UNIX-domain socket (Postfix:
    # smtpd_proxy_filter = unix:/path; cheaper than TCP, and reachable from a
    # chrooted smtpd when the path is inside the Postfix queue directory).
    listen: str = "127.0.0.1:10025"
    # Mode of a unix: socket; Postfix's smtpd runs as user postfix.
    socket_mode: str = "0666"
    profile: str = "inbound"
    downstream: str = "127.0.0.1:10026"
    # Empty: use proxy.client_networks.
    client_networks: tuple[str, ...] = ()

    def check(self, path: str) -> None:
        if not self.name:
            raise ConfigError(path + "name", "must not be empty")
        if self.listen.startswith("unix:"):
            if not self.listen[5:].startswith("/"):
                raise ConfigError(path + "listen", "unix: needs an absolute path")
        else:
            parse_hostport(self.listen, path + "listen")
        parse_socket_mode(self.socket_mode, path + "socket_mode")
        parse_hostport(self.downstream, path + "downstream")
        _check_choice(self, path, "profile", PROFILES)
        parse_networks(self.client_networks, path + "client_networks")


BARE_NEWLINE_ACTIONS = ("normalize", "reject")


@dataclass(frozen=True)
class ProxyConfig:
    # Name in the greeting and EHLO, and in the trace header; empty: the host's FQDN.
    hostname: str = ""
    # Clients outside these networks get 554 at connect (Postfix talks from loopback).
    client_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # Concurrent client sessions over all listeners; beyond it: 421 4.3.2.
    max_sessions: int = 200
    # Advertised in EHLO SIZE; larger messages get 552 5.3.4.
    max_message_size_bytes: int = 52_428_800
    # Message bytes all sessions together may hold at once, counted as DATA is
    # read and held until the message is answered (scanning and signing make
    # several copies: the process needs a few times this much memory). A
    # message that would go beyond it gets 452 4.3.1 and is retried later.
    # At least max_message_size_bytes.
    max_inflight_bytes: int = 268_435_456
    # A message line ended by a bare LF or bare CR (RFC 5321 allows CRLF only;
    # a downstream may read "<LF>.<LF>" as the end of DATA: SMTP smuggling).
    # "normalize": such line ends become CRLF before the scan, as Postfix 3.9's
    # smtpd_forbid_bare_newline = normalize does for LF, so the scan and the
    # re-injection listener see the same lines; only CRLF.CRLF ends DATA.
    # "reject": 521 5.5.2 and the connection is closed.
    bare_newline: str = "normalize"
    max_recipients: int = 1000
    # Idle time allowed between client commands.
    command_timeout_s: float = 300.0
    # Time allowed to receive the whole message after 354.
    data_timeout_s: float = 300.0
    downstream_connect_timeout_s: float = 10.0
    # Per downstream reply. With scan_timeout_s this must stay under Postfix's
    # smtpd_proxy_timeout (100 s), or Postfix gives up before we answer.
    downstream_reply_timeout_s: float = 50.0
    # Idle downstream connections kept for the next session (0: connect per
    # session). Each is closed after downstream_idle_timeout_s unused, which
    # must stay below the re-injection smtpd's smtpd_timeout (300 s).
    downstream_pool_size: int = 32
    downstream_idle_timeout_s: float = 30.0
    # Budget for the end-of-data scan hook; beyond it the message is tempfailed.
    scan_timeout_s: float = 40.0
    # On SIGTERM: how long in-flight transactions may take to finish.
    drain_timeout_s: float = 30.0
    # Add "X-Smtpproxy: host; id=SESSION; profile=NAME" so a delivered message
    # can be tied to the proxy's log line.
    trace_header: bool = True
    # HOST:PORT for Prometheus metrics (GET /metrics); empty: off. Keep it on
    # loopback or a management network.
    metrics_listen: str = ""
    # Worker processes serving every listener (the SMTP listeners, the
    # controller, metrics_listen): one Python process uses one core. 1: one
    # process, no supervisor; "auto": one per CPU. With more than one, a
    # supervising parent binds the sockets, forks the workers and passes
    # SIGHUP and SIGTERM on to them (docs/operations.md, "Worker processes").
    workers: int | str = 1
    listeners: tuple[ListenerConfig, ...] = (ListenerConfig(),)

    def check(self, path: str) -> None:
        parse_networks(self.client_networks, path + "client_networks")
        _check_positive(
            self, path, "max_sessions", "max_message_size_bytes", "max_recipients",
            "command_timeout_s", "data_timeout_s", "downstream_connect_timeout_s",
            "downstream_reply_timeout_s", "scan_timeout_s", "drain_timeout_s",
            "downstream_idle_timeout_s", "max_inflight_bytes",
        )
        if self.max_inflight_bytes < self.max_message_size_bytes:
            raise ConfigError(path + "max_inflight_bytes",
                              f"must be at least max_message_size_bytes ({self.max_message_size_bytes})")
        _check_choice(self, path, "bare_newline", BARE_NEWLINE_ACTIONS)
        check_workers(self.workers, path + "workers")
        if self.downstream_pool_size < 0:
            raise ConfigError(path + "downstream_pool_size", "must be 0 or more")
        if self.metrics_listen:
            parse_hostport(self.metrics_listen, path + "metrics_listen")
        if not self.listeners:
            raise ConfigError(path + "listeners", "at least one listener is needed")
        names, addresses = set(), set()
        for i, listener in enumerate(self.listeners):
            key = f"{path}listeners[{i}]."
            if listener.name in names:
                raise ConfigError(key + "name", f"duplicate listener name {listener.name!r}")
            if listener.listen in addresses:
                raise ConfigError(key + "listen", f"address {listener.listen} used twice")
            names.add(listener.name)
            addresses.add(listener.listen)


STORE_SCHEMES = ("sqlite", "redis", "rediss", "unix", "redis+sentinel", "redis+cluster")


@dataclass(frozen=True)
class StoreConfig:
    # sqlite:///path/to/file.db, redis://host:port/db, rediss://...,
    # redis+sentinel://host:port,host:port/service, redis+cluster://host:port,...
    # Empty: an SQLite file in state_dir.
    url: str = ""
    # Prepended to every key written, so several deployments can share a Redis.
    key_prefix: str = "sp:"
    # Per store operation (connect included); a slower store counts as down.
    timeout_s: float = 1.0
    # Store unreachable: the first retry waits this long, doubling up to the max;
    # until then callers get an immediate error (and answer their default).
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    # "store unreachable" is logged at most once per interval.
    error_log_interval_s: float = 60.0
    redis_max_connections: int = 64
    # SQLite: expired rows are deleted in the background this often.
    sqlite_purge_interval_s: float = 300.0
    # SQLite: wait this long for another process holding the write lock.
    sqlite_busy_timeout_s: float = 5.0

    def check(self, path: str) -> None:
        if self.url:
            scheme = self.url.partition("://")[0]
            if "://" not in self.url or scheme not in STORE_SCHEMES:
                raise ConfigError(path + "url", f"scheme must be one of {', '.join(STORE_SCHEMES)}")
        _check_positive(
            self, path, "timeout_s", "backoff_s", "backoff_max_s", "error_log_interval_s",
            "redis_max_connections", "sqlite_purge_interval_s", "sqlite_busy_timeout_s",
        )


POLICY_DEFAULT_ACTIONS = ("DUNNO", "DEFER_IF_PERMIT")
# Postfix protocol_state values a check may be bound to.
POLICY_STATES = ("CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE", "VRFY", "ETRN")
RATE_KEY_PARTS = (
    "sasl_username", "sender", "sender_domain", "client_address", "client_network",
    "recipient", "recipient_domain",
)
RATE_ACTIONS = ("DEFER", "REJECT", "HOLD")
RATE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(text: str, key: str = "") -> tuple[int, float]:
    """'20/1m' -> (20, 60.0): at most 20 per minute (see docs/policy.md for bursts)."""
    count_text, sep, period_text = text.replace(" ", "").partition("/")
    number, unit = period_text[:-1] or "1", period_text[-1:]
    if (not sep or not count_text.isdigit() or int(count_text) <= 0 or unit not in RATE_UNITS
            or not number.isdigit() or int(number) <= 0):
        raise ConfigError(key, f"expected COUNT/PERIOD such as 20/1m, 300/1h, 1000/1d; got {text!r}")
    return int(count_text), float(int(number) * RATE_UNITS[unit])


@dataclass(frozen=True)
class GreylistConfig:
    enabled: bool = True
    # Protocol stages and policy_context values (check_policy_service
    # { inet:..., policy_context=NAME }) it applies to; "" = no policy_context.
    protocol_states: tuple[str, ...] = ("RCPT",)
    policy_contexts: tuple[str, ...] = ("",)
    # A new triplet is deferred until delay_s has passed, and forgotten if the
    # client has not retried within retry_window_s after that.
    delay_s: float = 300.0
    retry_window_s: float = 172_800.0
    # A triplet that passed lives this long, refreshed on every use.
    pass_ttl_s: float = 3_024_000.0
    # Triplets are keyed on the client's network, not its address: pools retry from neighbours.
    client_prefix_v4: int = 24
    client_prefix_v6: int = 64
    # A client network is whitelisted after this many successful deliveries
    # (0: never), counting at most one per interval; kept awl_ttl_s after its last.
    awl_deliveries: int = 5
    awl_count_interval_s: float = 3600.0
    awl_ttl_s: float = 3_024_000.0
    # Never greylisted (SASL-authenticated clients never are either).
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # Plain map files, reloaded when they change; see conf/policy/.
    whitelist_client_maps: tuple[str, ...] = ("/etc/smtpproxy/policy/whitelist_clients",)
    whitelist_sender_maps: tuple[str, ...] = ()
    whitelist_recipient_maps: tuple[str, ...] = ()
    # PREPEND "X-Greylist: delayed N seconds ..." to a message that waited.
    add_header: bool = True
    # Wording of the 4.7.1 deferral; {seconds} is the wait still needed.
    defer_text: str = "Greylisted, please try again in {seconds} seconds"

    def check(self, path: str) -> None:
        _check_positive(self, path, "delay_s", "retry_window_s", "pass_ttl_s",
                        "awl_count_interval_s", "awl_ttl_s")
        if not 0 <= self.client_prefix_v4 <= 32:
            raise ConfigError(path + "client_prefix_v4", "must be 0..32")
        if not 0 <= self.client_prefix_v6 <= 128:
            raise ConfigError(path + "client_prefix_v6", "must be 0..128")
        if self.awl_deliveries < 0:
            raise ConfigError(path + "awl_deliveries", "must be 0 or more")
        for i, state in enumerate(self.protocol_states):
            if state not in POLICY_STATES:
                raise ConfigError(f"{path}protocol_states[{i}]", f"unknown protocol_state {state!r}")
        parse_networks(self.trusted_networks, path + "trusted_networks")
        try:
            self.defer_text.format(seconds=0)
        except (KeyError, IndexError, ValueError):
            raise ConfigError(path + "defer_text", "only {seconds} may be substituted") from None


@dataclass(frozen=True)
class RateLimitRule:
    name: str = ""
    # Attributes the bucket is keyed on, joined; a request lacking one is not counted.
    key: tuple[str, ...] = ("sasl_username",)
    # Every limit must hold; "20/1m, 300/1h" style, one per item.
    limits: tuple[str, ...] = ("20/1m",)
    # recipients: one per RCPT request; messages: one per END-OF-MESSAGE
    # request (where "recipient" is absent when there were several).
    count: str = "recipients"
    # DEFER (4.7.1, retry hint), REJECT (5.7.1) or HOLD (accept into the hold queue).
    action: str = "DEFER"
    policy_contexts: tuple[str, ...] = ("",)
    # Key values never limited (e.g. a monitoring login).
    exempt: tuple[str, ...] = ()
    # Map file: "KEY LIMIT[, LIMIT...]" or "KEY none" per line; overrides limits.
    overrides_map: str = ""

    def check(self, path: str) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(path + "name", "must be a non-empty word (letters, digits, - and _)")
        if not self.key:
            raise ConfigError(path + "key", "at least one attribute is needed")
        for i, part in enumerate(self.key):
            if part not in RATE_KEY_PARTS:
                raise ConfigError(f"{path}key[{i}]", f"must be one of {', '.join(RATE_KEY_PARTS)}")
        if not self.limits:
            raise ConfigError(path + "limits", "at least one limit is needed")
        for i, text in enumerate(self.limits):
            parse_rate(text, f"{path}limits[{i}]")
        _check_choice(self, path, "count", ("recipients", "messages"))
        _check_choice(self, path, "action", RATE_ACTIONS)
        if self.count == "messages":
            for i, part in enumerate(self.key):
                if part in ("recipient", "recipient_domain"):
                    raise ConfigError(
                        f"{path}key[{i}]",
                        "recipient is absent at END-OF-MESSAGE when there are several; "
                        "count recipients to key on it",
                    )

    @property
    def protocol_state(self) -> str:
        return "RCPT" if self.count == "recipients" else "END-OF-MESSAGE"

    @property
    def parsed_limits(self) -> tuple[tuple[int, float], ...]:
        return tuple(parse_rate(text) for text in self.limits)


@dataclass(frozen=True)
class PolicyConfig:
    # HOST:PORT or unix:/path/to/socket.
    listen: str = "127.0.0.1:10040"
    # Mode of a unix: socket.
    socket_mode: str = "0666"
    # Answered when the daemon itself is in trouble (store down, bug).
    default_action: str = "DUNNO"
    # Name in the X-Greylist header; empty: the host's FQDN.
    hostname: str = ""
    # Postfix closes idle policy connections after smtpd_policy_service_max_idle
    # (300 s); we wait a little longer so it is always Postfix that closes.
    idle_timeout_s: float = 330.0
    # Time to read one request once it has started.
    request_timeout_s: float = 10.0
    # Budget for one decision (store round trips included); beyond it the
    # default action. Must stay well under smtpd_policy_service_timeout (100 s).
    decision_timeout_s: float = 3.0
    # A longer line or more attributes: the request is malformed, the connection closed.
    max_line_bytes: int = 4096
    max_attributes: int = 100
    max_connections: int = 2000
    # On SIGTERM: how long in-flight requests may take.
    drain_timeout_s: float = 5.0
    # How often map files are checked for changes.
    map_check_interval_s: float = 5.0
    # HOST:PORT for Prometheus metrics (GET /metrics); empty: off. Keep it on
    # loopback or a management network.
    metrics_listen: str = ""
    # Each decision that is not a plain DUNNO (greylist result, rate-limit
    # refusal, whitelisting) is kept this long in the store for the proxy's
    # history rows (smtpproxy/common/decisions.py); 0: not recorded.
    decisions_ttl_s: float = 3600.0
    # Worker processes answering on listen (and metrics_listen): 1, a count
    # or "auto" (one per CPU), as proxy.workers.
    workers: int | str = 1
    greylist: GreylistConfig = field(default_factory=GreylistConfig)
    rate_limits: tuple[RateLimitRule, ...] = ()

    def check(self, path: str) -> None:
        if not self.listen.startswith("unix:"):
            parse_hostport(self.listen, path + "listen")
        elif len(self.listen) <= len("unix:"):
            raise ConfigError(path + "listen", "unix: needs a path")
        try:
            mode = int(self.socket_mode, 8)
        except ValueError:
            mode = -1
        if not 0 <= mode <= 0o777:
            raise ConfigError(path + "socket_mode", f"expected an octal mode such as 0660, got {self.socket_mode!r}")
        _check_choice(self, path, "default_action", POLICY_DEFAULT_ACTIONS)
        check_workers(self.workers, path + "workers")
        if self.metrics_listen:
            parse_hostport(self.metrics_listen, path + "metrics_listen")
        _check_positive(
            self, path, "idle_timeout_s", "request_timeout_s", "decision_timeout_s",
            "max_line_bytes", "max_attributes", "max_connections", "drain_timeout_s",
            "map_check_interval_s",
        )
        if self.decisions_ttl_s < 0:
            raise ConfigError(path + "decisions_ttl_s", "must be 0 (off) or more")
        names = set()
        for i, rule in enumerate(self.rate_limits):
            if rule.name in names:
                raise ConfigError(f"{path}rate_limits[{i}].name", f"duplicate rule name {rule.name!r}")
            names.add(rule.name)


SCAN_ACTIONS = ("no action", "greylist", "add header", "rewrite subject", "soft reject", "reject")


@dataclass(frozen=True)
class ActionsConfig:
    """Score thresholds, as in rspamd; 0 turns an action off."""

    greylist: float = 4.0
    add_header: float = 6.0
    rewrite_subject: float = 0.0
    reject: float = 15.0

    def check(self, path: str) -> None:
        for name in ("greylist", "add_header", "rewrite_subject", "reject"):
            if getattr(self, name) < 0:
                raise ConfigError(path + name, "must be 0 (off) or a positive score")


@dataclass(frozen=True)
class DkimVerifyConfig:
    """DKIM verification (scan/checks/dkim.py)."""

    # RSA keys shorter than this are refused (permerror); RFC 8301 forbids
    # accepting anything under 1024, so that is the floor.
    min_rsa_key_bits: int = 1024
    # Signatures verified per message (topmost first); the rest are ignored,
    # so a message stuffed with signatures cannot cost unbounded lookups.
    max_signatures: int = 10

    def check(self, path: str) -> None:
        if self.min_rsa_key_bits < 1024:
            raise ConfigError(path + "min_rsa_key_bits", "must be at least 1024 (RFC 8301)")
        _check_positive(self, path, "max_signatures")


@dataclass(frozen=True)
class ArcVerifyConfig:
    """ARC verification (scan/checks/arc.py)."""

    # RSA keys of ARC-Seal / ARC-Message-Signature shorter than this fail the chain.
    min_rsa_key_bits: int = 1024

    def check(self, path: str) -> None:
        if self.min_rsa_key_bits < 1024:
            raise ConfigError(path + "min_rsa_key_bits", "must be at least 1024 (RFC 8301)")


@dataclass(frozen=True)
class DmarcConfig:
    """DMARC (scan/checks/dmarc.py)."""

    # The public suffix list, for organisational domains: Debian's package
    # "publicsuffix" keeps this file current.
    public_suffix_list: str = "/usr/share/publicsuffix/public_suffix_list.dat"
    # Forwarders (mailing lists, ...) whose ARC seal we trust: when the chain
    # passes and its newest ARC-Seal has d= one of these (or a subdomain), a
    # DMARC failure is not enforced (RFC 7489 6.7 local policy, RFC 8617 7.2).
    trusted_arc_sealers: tuple[str, ...] = ()
    # RFC 9091: with no record at the organisational domain, use the public
    # suffix's record if it says psd=y.
    psd: bool = True

    def check(self, path: str) -> None:
        if not self.public_suffix_list:
            raise ConfigError(path + "public_suffix_list", "must name the public suffix list file")
        for i, domain in enumerate(self.trusted_arc_sealers):
            if not domain.strip(".") or any(c in domain for c in " @/;,"):
                raise ConfigError(f"{path}trusted_arc_sealers[{i}]", f"not a domain name: {domain!r}")


DNSBL_KINDS = ("ip", "domain")
_SYMBOL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _check_symbol(name: str, key: str) -> None:
    if not name or not set(name) <= _SYMBOL_CHARS or not name[0].isalpha():
        raise ConfigError(key, f"a symbol is a word of capitals, digits and _, got {name!r}")


def _check_ipv4(text: str, key: str) -> None:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        raise ConfigError(key, f"expected an IPv4 address such as 127.0.0.2, got {text!r}") from None


@dataclass(frozen=True)
class DnsblZone:
    """One DNS list: where to ask, what to ask about, what its answers mean."""

    # The list's DNS zone, e.g. "zen.spamhaus.org".
    zone: str = ""
    # "ip": the client address (reversed octets; IPv6 reversed nibbles).
    # "domain": domains of the message's URLs, the envelope sender and From.
    kind: str = "ip"
    # ip lists: which address families the list serves.
    ipv4: bool = True
    ipv6: bool = False
    # domain lists: which domains to ask about.
    urls: bool = True
    envelope_sender: bool = True
    header_from: bool = True
    # domain lists: also ask about URLs written with an IPv4 address (reversed octets).
    url_ips: bool = False
    # domain lists: ask for the registrable domain (public suffix + one label,
    # www.shop.example.co.uk -> example.co.uk) rather than the full host name.
    registrable_domain: bool = True
    # Answer -> symbol: { SYMBOL = ["127.0.0.2", ...] } ...
    returncodes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # ... and/or bitmask lists (URIBL, SURBL): { SYMBOL = 2 } when the last
    # octet of the answer has that bit set.
    bits: dict[str, int] = field(default_factory=dict)
    # Answers meaning "query refused" (besides 127.255.255.0/24, always so):
    # reported as RBL_BLOCKED / URIBL_BLOCKED, never as a listing.
    blocked_codes: tuple[str, ...] = ()
    # Scores of this zone's symbols that are not in the symbols table (a list
    # you add): { MY_RBL = 3.0 }.
    scores: dict[str, float] = field(default_factory=dict)

    def check(self, path: str) -> None:
        labels = self.zone.rstrip(".").split(".")
        if len(labels) < 2 or not all(labels):
            raise ConfigError(path + "zone", f"expected a DNS zone such as zen.spamhaus.org, got {self.zone!r}")
        _check_choice(self, path, "kind", DNSBL_KINDS)
        if not self.returncodes and not self.bits:
            raise ConfigError(path + "returncodes", "returncodes or bits must map answers to symbols")
        for symbol, codes in self.returncodes.items():
            _check_symbol(symbol, f"{path}returncodes.{symbol}")
            for i, code in enumerate(codes):
                _check_ipv4(code, f"{path}returncodes.{symbol}[{i}]")
        for symbol, bit in self.bits.items():
            _check_symbol(symbol, f"{path}bits.{symbol}")
            if not 0 < bit < 256:
                raise ConfigError(f"{path}bits.{symbol}", "must be a bit value of the last octet (1..255)")
        for i, code in enumerate(self.blocked_codes):
            _check_ipv4(code, f"{path}blocked_codes[{i}]")
        for symbol in self.scores:
            if symbol not in self.returncodes and symbol not in self.bits:
                raise ConfigError(f"{path}scores.{symbol}", "not a symbol of this zone")

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.returncodes, *self.bits)))


# Well-known public lists. Their free use is for low volumes: Spamhaus's
# public mirrors answer only non-commercial sites under its usage limits and
# refuse queries that come through large public resolvers (8.8.8.8 and the
# like: the answer is 127.255.255.254, reported as RBL_BLOCKED); URIBL and
# SURBL likewise. Large sites need their own access (a data feed or a paid
# DQS key: replace the zone names).
DEFAULT_DNSBL_ZONES = (
    DnsblZone(zone="zen.spamhaus.org", kind="ip", ipv6=True, returncodes={
        "RBL_SPAMHAUS_SBL": ("127.0.0.2",),
        "RBL_SPAMHAUS_CSS": ("127.0.0.3",),
        "RBL_SPAMHAUS_XBL": ("127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7"),
        "RBL_SPAMHAUS_DROP": ("127.0.0.9",),
        "RBL_SPAMHAUS_PBL": ("127.0.0.10", "127.0.0.11"),
    }),
    DnsblZone(zone="bl.spamcop.net", kind="ip", returncodes={"RBL_SPAMCOP": ("127.0.0.2",)}),
    # The DBL answers 127.0.1.255 to a query for an IP address.
    DnsblZone(zone="dbl.spamhaus.org", kind="domain", blocked_codes=("127.0.1.255",), returncodes={
        "DBL_SPAM": ("127.0.1.2",),
        "DBL_PHISH": ("127.0.1.4",),
        "DBL_MALWARE": ("127.0.1.5",),
        "DBL_BOTNET": ("127.0.1.6",),
        "DBL_ABUSE": ("127.0.1.102",),
        "DBL_ABUSE_REDIR": ("127.0.1.103",),
        "DBL_ABUSE_PHISH": ("127.0.1.104",),
        "DBL_ABUSE_MALWARE": ("127.0.1.105",),
        "DBL_ABUSE_BOTNET": ("127.0.1.106",),
    }),
    # URIBL answers 127.0.0.1 when it refuses the query.
    DnsblZone(zone="multi.uribl.com", kind="domain", blocked_codes=("127.0.0.1",), bits={
        "URIBL_BLACK": 2, "URIBL_GREY": 4, "URIBL_RED": 8,
    }),
    DnsblZone(zone="multi.surbl.org", kind="domain", url_ips=True, bits={
        "PH_SURBL_MULTI": 8, "MW_SURBL_MULTI": 16, "ABUSE_SURBL": 64, "CRACKED_SURBL": 128,
    }),
)


@dataclass(frozen=True)
class DnsblConfig:
    """DNSBL for the client address and URIBL/DBL for domains (scan/checks/dnsbl.py)."""

    enabled: bool = True
    # Listener profiles checked: submission clients (outbound) are often on
    # dynamic addresses that policy lists (Spamhaus PBL) name on purpose.
    profiles: tuple[str, ...] = ("inbound",)
    # Client addresses never looked up: no public list knows them, and asking
    # tells the list's operator about internal hosts.
    exclude_networks: tuple[str, ...] = (
        "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
        "100.64.0.0/10", "::1/128", "fc00::/7", "fe80::/10",
    )
    # Domains (and their subdomains) never looked up, e.g. your own.
    exclude_domains: tuple[str, ...] = ()
    # At most this many distinct domains per message are asked about, per domain
    # list (sender and From first, then URLs in order of appearance).
    max_domains: int = 20
    zones: tuple[DnsblZone, ...] = DEFAULT_DNSBL_ZONES

    def check(self, path: str) -> None:
        for i, profile in enumerate(self.profiles):
            if profile not in PROFILES:
                raise ConfigError(f"{path}profiles[{i}]", f"must be one of {', '.join(PROFILES)}")
        parse_networks(self.exclude_networks, path + "exclude_networks")
        _check_positive(self, path, "max_domains")
        zones = set()
        for i, zone in enumerate(self.zones):
            if zone.zone.lower() in zones:
                raise ConfigError(f"{path}zones[{i}].zone", f"zone {zone.zone} listed twice")
            zones.add(zone.zone.lower())


# What a multimap map is matched against (docs/dnsbl-multimap.md).
MULTIMAP_TYPES = ("ip", "sender", "from", "rcpt", "helo", "header", "body", "url", "attachment")


@dataclass(frozen=True)
class MultimapMap:
    """One administrator-defined map: a plain file whose entries give one symbol."""

    # ip (client address/CIDR), sender (envelope sender), from (From address),
    # rcpt (any envelope recipient), helo, header (regexes on header `header`),
    # body (regexes on the visible text), url (URL host names), attachment (file names).
    type: str = "ip"
    # The map file; re-read when it changes (at most every map_check_interval_s).
    file: str = ""
    # The symbol a match gives, with its score and description.
    symbol: str = ""
    score: float = 0.0
    description: str = ""
    # Optionally force an action whatever the score: one of the scan actions
    # ("reject", "soft reject", "rewrite subject", "add header", "greylist", "no action").
    action: str = ""
    # type = "header": the header field whose values are searched.
    header: str = ""

    def check(self, path: str) -> None:
        _check_choice(self, path, "type", MULTIMAP_TYPES)
        if not self.file:
            raise ConfigError(path + "file", "a map needs a file")
        _check_symbol(self.symbol, path + "symbol")
        if self.action and self.action not in SCAN_ACTIONS:
            raise ConfigError(path + "action", f"must be empty or one of {', '.join(SCAN_ACTIONS)}")
        if self.type == "header" and not self.header:
            raise ConfigError(path + "header", "a header map names its header field")
        if self.type != "header" and self.header:
            raise ConfigError(path + "header", "only for type = \"header\"")


@dataclass(frozen=True)
class MultimapConfig:
    """Administrator-defined maps (scan/checks/multimap.py)."""

    # How often (at most) the map files are checked for changes, off the hot path.
    map_check_interval_s: float = 5.0
    # A larger map file is refused (the previous contents are kept, and logged).
    max_file_bytes: int = 16_777_216
    maps: tuple[MultimapMap, ...] = ()

    def check(self, path: str) -> None:
        _check_positive(self, path, "map_check_interval_s", "max_file_bytes")
        seen = set()
        for i, m in enumerate(self.maps):
            if m.symbol in seen:
                raise ConfigError(f"{path}maps[{i}].symbol", f"symbol {m.symbol} used by two maps")
            seen.add(m.symbol)


@dataclass(frozen=True)
class BayesConfig:
    """The Bayes classifier (scan/bayes/, scan/checks/bayes.py, docs/bayes.md)."""

    # Classify (BAYES_SPAM / BAYES_HAM) at all; learning works either way.
    enabled: bool = True
    # Silent until this many messages of EACH class have been learned ...
    min_learned: int = 200
    # ... and for messages with fewer than this many known, telling tokens.
    min_tokens: int = 11
    # Robinson-Fisher chi-square probability at or above which BAYES_SPAM is
    # emitted, at or below which BAYES_HAM; the symbol's score is scaled by
    # the confidence (probability - 0.5) * 2 times the familiarity below
    # (see docs/bayes.md).
    spam_threshold: float = 0.8
    ham_threshold: float = 0.1
    # Familiarity: how much of the message the training knows. Coverage is the
    # share of the message's distinct content tokens (not its form: MIME,
    # markup, header presence) learned in at least two messages; at or above
    # familiar_coverage the verdict counts in full, at or below
    # unfamiliar_coverage not at all (BAYES_UNFAMILIAR), linearly between.
    familiar_coverage: float = 0.6
    unfamiliar_coverage: float = 0.3
    # ... and a verdict resting on fewer known tokens than this counts in
    # proportion (a short or foreign message: a few clues, however extreme).
    familiar_tokens: int = 30
    # ... or, if more, in proportion to the strong clues of the verdict's class
    # (content tokens learned in several messages, 9 to 1 one way), in full
    # from this many: spam padded with one-off words is still known as spam.
    familiar_clues: int = 30
    # Distinct tokens taken from one message (the first ones found; header
    # tokens come first), both to learn and to classify.
    max_tokens: int = 1000
    # Tokens not seen in any learned message for this long expire; so do the
    # ids of learned messages. The store holds at most
    # 2 * max_tokens * (messages learned in this window) token keys.
    token_ttl_s: float = 15_552_000.0  # 180 days
    # Autolearn from the scan result: spam at or above autolearn_spam_score
    # (default: the reject threshold's value), ham at or below autolearn_ham_score.
    autolearn: bool = False
    autolearn_spam_score: float = 15.0
    autolearn_ham_score: float = -1.0
    # Class-balance guard: autolearn does not learn a class that already has
    # more than this many times the learned messages of the other class.
    autolearn_max_ratio: float = 3.0
    # Classifiers of their own: "off" (one for the site), "user" (one per
    # recipient address) or "domain" (one per recipient domain). A message
    # whose recipients all share one is classified by it once it has
    # min_learned of each class, otherwise by the site's; `smtpproxy learn
    # --user ADDR` teaches one. Autolearn teaches the site's.
    per_user: str = "off"

    def check(self, path: str) -> None:
        _check_positive(self, path, "min_learned", "min_tokens", "max_tokens", "token_ttl_s",
                        "autolearn_max_ratio", "familiar_tokens", "familiar_clues")
        if self.per_user not in ("off", "user", "domain"):
            raise ConfigError(path + "per_user", "must be off, user or domain")
        for name in ("spam_threshold", "ham_threshold"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(path + name, "must be between 0 and 1 (exclusive)")
        if self.spam_threshold <= 0.5:
            raise ConfigError(path + "spam_threshold", "must be above 0.5")
        if self.ham_threshold >= 0.5:
            raise ConfigError(path + "ham_threshold", "must be below 0.5")
        for name in ("familiar_coverage", "unfamiliar_coverage"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(path + name, "must be between 0 and 1")
        if self.unfamiliar_coverage >= self.familiar_coverage:
            raise ConfigError(path + "unfamiliar_coverage", "must be below familiar_coverage")
        if self.autolearn_ham_score >= self.autolearn_spam_score:
            raise ConfigError(path + "autolearn_ham_score", "must be below autolearn_spam_score")
        if self.autolearn_max_ratio < 1.0:
            raise ConfigError(path + "autolearn_max_ratio", "must be 1 or more")


ACTION_NAMES = ("greylist", "add_header", "rewrite_subject", "reject")


@dataclass(frozen=True)
class ScanProfile:
    """The scan settings of one listener profile (rspamd's "settings"): [scan.profiles.inbound]."""

    # Checks that run, by name (gtube, headers, mime, spf, dkim, arc, dmarc,
    # dnsbl, multimap, bayes, reply, antivirus, ...); empty: every check ...
    checks_enabled: tuple[str, ...] = ()
    # ... less these. A check that waits for a disabled one (dmarc after spf)
    # sees no results from it.
    checks_disabled: tuple[str, ...] = ()
    # false: neither the score nor DNS trouble picks an action (the score is
    # still computed and logged); only symbols that force one act (GTUBE, CLAM_VIRUS).
    score_actions: bool = True
    # This profile's thresholds over [scan.actions], e.g. { reject = 20.0, greylist = 0.0 }
    # (0 turns one off); empty: [scan.actions] as it is.
    actions: dict[str, float] = field(default_factory=dict)
    # X-Spamd-Result, X-Spam-* and Authentication-Results on accepted mail
    # (incoming copies of them are removed either way).
    result_headers: bool = True
    # The greylist action; false: a message at greylist level is accepted as "no action".
    greylist: bool = True

    def check(self, path: str) -> None:
        for name, value in self.actions.items():
            if name not in ACTION_NAMES:
                raise ConfigError(f"{path}actions.{name}", f"must be one of {', '.join(ACTION_NAMES)}")
            if value < 0:
                raise ConfigError(f"{path}actions.{name}", "must be 0 (off) or a positive score")


@dataclass(frozen=True)
class OutboundScanProfile(ScanProfile):
    """Our own users' mail (submission): scored and logged, acted on only when a symbol forces it."""

    # SPF and DMARC of our own users, DNSBL of their (dynamic) addresses, and
    # REPLY (answers to our own mail arrive inbound) mean nothing here.
    checks_disabled: tuple[str, ...] = ("spf", "dmarc", "dnsbl", "reply")
    score_actions: bool = False
    result_headers: bool = False
    greylist: bool = False


@dataclass(frozen=True)
class ScanProfilesConfig:
    inbound: ScanProfile = field(default_factory=ScanProfile)
    outbound: OutboundScanProfile = field(default_factory=OutboundScanProfile)


@dataclass(frozen=True)
class SpamAssassinConfig:
    """SpamAssassin rule files run as a check (scan/spamassassin/, docs/spamassassin.md)."""

    # Run the rules (a no-op when no rule file is found). Off by default until
    # the scan with every stock rule is fast: today it costs about 12 ms of CPU
    # per message against 0.6 ms without (docs/spamassassin.md).
    enabled: bool = False
    # Directories whose *.cf (and *.pre) files are read in order; empty: Debian's
    # /usr/share/spamassassin, then sa-update's
    # /var/lib/spamassassin/<version>/updates_spamassassin_org when it exists.
    rules_dirs: tuple[str, ...] = ()
    # The site's own rules, read last; empty: /etc/spamassassin/local.cf when it exists.
    local_cf: str = ""
    # SpamAssassin's score times this is ours: its spam threshold (5) becomes
    # our add_header threshold (6), so 6 / 5.
    score_scale: float = 1.2
    # Each text the rules read (the rendered body, each raw text part, the raw
    # message) is cut at this many bytes, as SpamAssassin's body_part_scan_size.
    max_scan_bytes: int = 262_144

    def check(self, path: str) -> None:
        _check_positive(self, path, "score_scale", "max_scan_bytes")


@dataclass(frozen=True)
class ReplyConfig:
    """REPLY: answers to mail we sent (scan/checks/reply.py, docs/profiles.md)."""

    # Remember the Message-ID of mail accepted on these listener profiles ...
    profiles: tuple[str, ...] = ("outbound",)
    # ... for this long (one store key each, a SHA-256 of the id) ...
    ttl_s: float = 2_592_000.0  # 30 days
    # ... and look up at most this many ids of In-Reply-To and References
    # (the last ones: the newest messages of the thread).
    max_ids: int = 10

    def check(self, path: str) -> None:
        for i, profile in enumerate(self.profiles):
            if profile not in PROFILES:
                raise ConfigError(f"{path}profiles[{i}]", f"must be one of {', '.join(PROFILES)}")
        _check_positive(self, path, "ttl_s", "max_ids")


ANTIVIRUS_FAILURE_POLICIES = ("accept", "tempfail")


@dataclass(frozen=True)
class AntivirusConfig:
    """Antivirus through clamd (scan/checks/antivirus.py, docs/antivirus.md)."""

    # clamd's socket: "unix:/run/clamav/clamd.ctl" or "127.0.0.1:3310"; empty: off.
    # ClamAV needs about 1-2 GB of RAM for its signatures (clamd, not this process).
    clamd: str = ""
    # clamd down, slow, or refusing the size (StreamMaxLength): CLAM_VIRUS_FAIL,
    # and then "accept" (the message goes on unscanned) or "tempfail" (451 4.7.1).
    on_failure: str = "tempfail"
    # Connect, stream and verdict; under scan.check_timeout_s.
    timeout_s: float = 8.0
    # Verdicts (clean or the virus) are kept by body hash this long; 0: not cached.
    cache_ttl_s: float = 3600.0

    def check(self, path: str) -> None:
        if self.clamd.startswith("unix:"):
            if not self.clamd[5:].startswith("/"):
                raise ConfigError(path + "clamd", "unix: needs an absolute path")
        elif self.clamd:
            parse_hostport(self.clamd, path + "clamd")
        _check_choice(self, path, "on_failure", ANTIVIRUS_FAILURE_POLICIES)
        _check_positive(self, path, "timeout_s")
        if self.cache_ttl_s < 0:
            raise ConfigError(path + "cache_ttl_s", "must be 0 (no cache) or more")


@dataclass(frozen=True)
class AttachmentsConfig:
    """Attachment names, archive listings and Office macros (scan/checks/attachments.py,
    docs/attachments.md)."""

    # Read the file names inside zip, rar, tar and gzip attachments (never their contents).
    archives: bool = True
    # A larger archive is not opened (its own name is still checked).
    max_archive_bytes: int = 26_214_400
    # Names read from one archive at most (the rest are counted, not read).
    max_archive_entries: int = 1000
    # Look for VBA macros in Office documents with olevba (oletools), in a worker thread.
    macros: bool = True
    # A larger Office document is not analysed (OLETOOLS_FAIL says so).
    max_office_bytes: int = 10_485_760

    def check(self, path: str) -> None:
        _check_positive(self, path, "max_archive_bytes", "max_archive_entries", "max_office_bytes")


# What a composite does to the symbols its expression matched (rspamd's policies;
# an atom's prefix narrows it: ~ keeps the symbol, - keeps symbol and score, ^ forces removal).
COMPOSITE_POLICIES = ("remove_all", "remove_symbol", "remove_weight", "leave")


@dataclass(frozen=True)
class CompositeRule:
    """One composite symbol (scan/composites.py, docs/composites.md)."""

    # Symbols joined with & | ! and parentheses, e.g. "R_SPF_FAIL & RCVD_COUNT_ZERO".
    expression: str = ""
    score: float = 0.0
    description: str = ""
    # remove_all: the matched symbols lose their score and leave the result;
    # remove_weight: they stay with score 0; remove_symbol: hidden, score kept; leave.
    policy: str = "remove_all"
    # false: a shipped composite of that name is switched off.
    enabled: bool = True

    def check(self, path: str) -> None:
        if self.enabled and not self.expression.strip():
            raise ConfigError(path + "expression", "a composite needs an expression")
        _check_choice(self, path, "policy", COMPOSITE_POLICIES)


# The composites shipped on: rspamd's (conf/composites.conf) whose inputs are
# symbols of ours and that hold on any site. [scan.composites.NAME] adds one,
# replaces one of these (same name) or switches it off (enabled = false).
DEFAULT_COMPOSITES: dict[str, CompositeRule] = {
    "VIOLATED_DIRECT_SPF": CompositeRule(
        "(R_SPF_FAIL | R_SPF_SOFTFAIL) & RCVD_COUNT_ZERO", 3.5,
        "SPF fails or soft fails for a client that delivered directly (no Received header)",
        "leave"),
    "DMARC_POLICY_ALLOW_WITH_FAILURES": CompositeRule(
        "DMARC_POLICY_ALLOW & (R_SPF_SOFTFAIL | R_SPF_FAIL | R_DKIM_REJECT)", -0.5,
        "DMARC passed although SPF or one DKIM signature failed (forwarded mail)",
        "remove_weight"),
    "DKIM_MIXED": CompositeRule(
        "-R_DKIM_ALLOW & (R_DKIM_TEMPFAIL | R_DKIM_PERMFAIL | R_DKIM_REJECT)", 0.0,
        "One DKIM signature verified: the failures of the others do not count",
        "remove_weight"),
    # rspamd scores these two 1.0; here 0 (reported, not counted): they fire
    # on every message of the labelled corpus (mail of 2002, before SPF and
    # DKIM) and on every scan without DNS. [scan] scores = { AUTH_NA = 1.0 }.
    "AUTH_NA": CompositeRule(
        "R_DKIM_NA & R_SPF_NA & DMARC_NA & ARC_NA", 0.0,
        "Authenticating the message via SPF/DKIM/DMARC/ARC not available", "remove_weight"),
    "AUTH_NA_OR_FAIL": CompositeRule(
        "!(R_DKIM_NA & R_SPF_NA & DMARC_NA & ARC_NA) & (R_DKIM_NA | R_DKIM_TEMPFAIL | "
        "R_DKIM_PERMFAIL) & (R_SPF_NA | R_SPF_DNSFAIL) & DMARC_NA & (ARC_NA | ARC_DNSFAIL)", 0.0,
        "No authenticating method SPF/DKIM/DMARC/ARC was successful", "remove_weight"),
}


@dataclass(frozen=True)
class ScanConfig:
    # Score every message at end-of-data; false: the proxy passes mail unscanned.
    enabled: bool = True
    # authserv-id of our Authentication-Results; empty: proxy.hostname or the FQDN.
    authserv_id: str = ""
    # Default scores and descriptions of every symbol: empty = the file shipped
    # with the program (smtpproxy/scan/symbols.toml).
    symbols_file: str = ""
    # URL shorteners and redirectors, one domain a line (REDIRECTOR_URL; a link
    # through one is no PHISHING): empty = the list shipped with the program
    # (smtpproxy/scan/data/redirectors.txt).
    redirectors_file: str = ""
    # Per-symbol score overrides, e.g. { MISSING_MID = 1.0 }.
    scores: dict[str, float] = field(default_factory=dict)
    # Each check's own time limit, and the whole scan's (well under
    # proxy.scan_timeout_s, which is under Postfix's smtpd_proxy_timeout).
    check_timeout_s: float = 10.0
    budget_s: float = 20.0
    # What a DNS failure during a check leads to: soft reject (451, the
    # sender retries) or ignore (the *_DNSFAIL symbols only count their score).
    dns_failure_action: str = "soft reject"
    reject_reply: str = "550 5.7.1 Message rejected as spam"
    soft_reject_reply: str = "451 4.7.1 Try again later"
    greylist_reply: str = "451 4.7.1 Greylisted, please try again later"
    # Greylisting by message (body hash + envelope), so a pool that retries
    # from another address passes: the retry is accepted after this delay ...
    greylist_delay_s: float = 300.0
    # ... and only within this window after the first attempt.
    greylist_window_s: float = 86_400.0
    # {subject} is the original subject.
    rewrite_subject_pattern: str = "[SPAM] {subject}"
    actions: ActionsConfig = field(default_factory=ActionsConfig)
    dkim: DkimVerifyConfig = field(default_factory=DkimVerifyConfig)
    arc: ArcVerifyConfig = field(default_factory=ArcVerifyConfig)
    dmarc: DmarcConfig = field(default_factory=DmarcConfig)
    dnsbl: DnsblConfig = field(default_factory=DnsblConfig)
    multimap: MultimapConfig = field(default_factory=MultimapConfig)
    bayes: BayesConfig = field(default_factory=BayesConfig)
    spamassassin: SpamAssassinConfig = field(default_factory=SpamAssassinConfig)
    profiles: ScanProfilesConfig = field(default_factory=ScanProfilesConfig)
    reply: ReplyConfig = field(default_factory=ReplyConfig)
    antivirus: AntivirusConfig = field(default_factory=AntivirusConfig)
    attachments: AttachmentsConfig = field(default_factory=AttachmentsConfig)
    # Composite symbols over the others' results, merged over DEFAULT_COMPOSITES.
    composites: dict[str, CompositeRule] = field(default_factory=dict)

    def check(self, path: str) -> None:
        for name in self.composites:
            _check_symbol(name, f"{path}composites.{name}")
        _check_positive(self, path, "check_timeout_s", "budget_s", "greylist_delay_s",
                        "greylist_window_s")
        _check_choice(self, path, "dns_failure_action", ("soft reject", "ignore"))
        for name in ("reject_reply", "soft_reject_reply", "greylist_reply"):
            reply = getattr(self, name)
            first = {"reject_reply": "5", "soft_reject_reply": "4", "greylist_reply": "4"}[name]
            if not (len(reply) > 4 and reply[:3].isdigit() and reply[0] == first and reply[3] == " "):
                raise ConfigError(path + name, f"expected an SMTP reply such as {first}xx x.y.z text")
        if "{subject}" not in self.rewrite_subject_pattern:
            raise ConfigError(path + "rewrite_subject_pattern", "must contain {subject}")
        if self.antivirus.clamd and self.antivirus.timeout_s >= self.check_timeout_s:
            raise ConfigError(path + "antivirus.timeout_s",
                              f"must be under check_timeout_s ({self.check_timeout_s})")


def parse_nameserver(value: str, key: str = "") -> tuple[str, int]:
    """'192.0.2.53', '192.0.2.53:5353', '::1', '[::1]:5353' -> (address, port).

    An IP address, never a host name: resolving the resolver's own name would
    need a resolver.
    """
    if value.startswith("[") or (value.count(":") == 1):
        host, port = parse_hostport(value, key)
    else:
        host, port = value, 53
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(key, f"expected an IP address, [IPV6]:PORT or IP:PORT, got {value!r}") from None
    return host, port


@dataclass(frozen=True)
class DnsConfig:
    """The one async resolver every check (and one day the policy daemon) uses."""

    # "" = the nameservers of /etc/resolv.conf; else one "IP", "IP:PORT" or "[IPV6]:PORT".
    nameserver: str = ""
    # Per lookup, retries and TCP fallback included; beyond it: a temporary DNS error.
    timeout_s: float = 5.0
    # UDP tries within timeout_s before giving up.
    attempts: int = 2
    # Answers kept (positive and negative), least recently used dropped first; 0: no cache.
    cache_size: int = 10_000
    # Upper bounds on how long an answer is kept, whatever its TTL says. A
    # negative answer (NXDOMAIN/NODATA) lives for its SOA-derived TTL (RFC 2308)
    # up to cache_negative_ttl_s.
    cache_max_ttl_s: float = 86_400.0
    cache_negative_ttl_s: float = 900.0
    # EDNS0 UDP payload size advertised (1232: the DNS flag day 2020 value).
    edns_payload_bytes: int = 1232

    def check(self, path: str) -> None:
        if self.nameserver:
            parse_nameserver(self.nameserver, path + "nameserver")
        _check_positive(self, path, "timeout_s", "attempts")
        for name in ("cache_size", "cache_max_ttl_s", "cache_negative_ttl_s"):
            if getattr(self, name) < 0:
                raise ConfigError(path + name, "must be 0 or more")
        if not 512 <= self.edns_payload_bytes <= 65535:
            raise ConfigError(path + "edns_payload_bytes", "must be 512..65535")


SIGN_FAILURE_POLICIES = ("pass", "tempfail")
# Header fields signed by default (each once per occurrence, plus once more
# for those in oversign_headers, so none can be added later undetected).
DEFAULT_SIGN_HEADERS = (
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
    "mime-version", "content-type", "content-transfer-encoding", "content-id",
    "content-description", "in-reply-to", "references", "list-id", "list-help",
    "list-unsubscribe", "list-unsubscribe-post", "list-subscribe", "list-post",
    "list-owner", "list-archive", "resent-date", "resent-from", "resent-to",
    "resent-cc", "resent-message-id",
)
DEFAULT_OVERSIGN_HEADERS = ("from", "subject", "date", "to", "cc", "reply-to", "message-id")


def _check_header_names(values: tuple[str, ...], key: str) -> None:
    for i, name in enumerate(values):
        if not name or any(c in name for c in " \t:;") or not name.isascii():
            raise ConfigError(f"{key}[{i}]", f"not a header field name: {name!r}")


@dataclass(frozen=True)
class ArcSealConfig:
    """ARC sealing (smtpproxy/sign/arc.py, RFC 8617), for hosts that forward or run lists."""

    # Listener profiles whose accepted mail is sealed; empty: none.
    profiles: tuple[str, ...] = ()
    # The sealing domain (d=) and selector (s=) of ARC-Seal and
    # ARC-Message-Signature, and the RSA private key file (PEM) for them.
    domain: str = ""
    selector: str = ""
    key_file: str = ""
    # authserv-id of our Authentication-Results, copied into
    # ARC-Authentication-Results; empty: scan.authserv_id, proxy.hostname or the FQDN.
    authserv_id: str = ""
    # Header fields the ARC-Message-Signature covers (those present).
    headers: tuple[str, ...] = DEFAULT_SIGN_HEADERS + ("dkim-signature",)

    def check(self, path: str) -> None:
        for i, profile in enumerate(self.profiles):
            if profile not in PROFILES:
                raise ConfigError(f"{path}profiles[{i}]", f"must be one of {', '.join(PROFILES)}")
        if self.profiles:
            for name in ("domain", "selector", "key_file"):
                if not getattr(self, name):
                    raise ConfigError(path + name, "needed when profiles are sealed")
        _check_header_names(self.headers, path + "headers")
        if "from" not in [h.lower() for h in self.headers]:
            raise ConfigError(path + "headers", "must include from (RFC 6376 5.4)")


@dataclass(frozen=True)
class SignConfig:
    """DKIM signing and ARC sealing of outbound mail (smtpproxy/sign/, docs/signing.md)."""

    # Key table: "NAME DOMAIN:SELECTOR:/path/to/key" per line (RSA PEM or an
    # ed25519 key as written by `smtpproxy dkim keygen`). Empty: no DKIM signing.
    key_table: str = ""
    # Signing table: "PATTERN NAME[,NAME...]" per line; PATTERN is a From
    # domain (example.org) or .example.org for its subdomains; several names
    # sign with several keys (RSA + ed25519, or old + new selector).
    signing_table: str = ""
    # Both files are checked for changes this often (at most) and reloaded as a
    # whole: a reload with any bad line or key keeps the previous tables.
    table_check_interval_s: float = 5.0
    # Also sign for the envelope sender's domain when the signing table has an
    # entry for it (a separate bounce domain, say): one more signature. Only
    # ever in addition to the From domain's, which must be ours.
    envelope_sender: bool = False
    # Mail accepted on listeners of these profiles is signed ...
    profiles: tuple[str, ...] = ("outbound",)
    # ... and so is mail from clients (XFORWARD ADDR) in these networks, on any listener.
    trusted_networks: tuple[str, ...] = ()
    headers: tuple[str, ...] = DEFAULT_SIGN_HEADERS
    # Signed once more than they occur (RFC 6376 8.15), so none can be added.
    oversign_headers: tuple[str, ...] = DEFAULT_OVERSIGN_HEADERS
    # x= expiry this long after signing; 0: no x= tag.
    expire_s: int = 0
    # A message that should be signed but cannot be (unusable key, internal
    # error): "pass" sends it unsigned and logs an error; "tempfail" answers
    # 451 4.7.0 so the client retries.
    on_failure: str = "pass"
    # Threads doing the signing arithmetic (shared with nothing else).
    pool_threads: int = 4
    arc: ArcSealConfig = field(default_factory=ArcSealConfig)

    def check(self, path: str) -> None:
        if bool(self.key_table) != bool(self.signing_table):
            raise ConfigError(path + ("signing_table" if self.key_table else "key_table"),
                              "key_table and signing_table go together")
        _check_positive(self, path, "table_check_interval_s", "pool_threads")
        for i, profile in enumerate(self.profiles):
            if profile not in PROFILES:
                raise ConfigError(f"{path}profiles[{i}]", f"must be one of {', '.join(PROFILES)}")
        parse_networks(self.trusted_networks, path + "trusted_networks")
        _check_header_names(self.headers, path + "headers")
        _check_header_names(self.oversign_headers, path + "oversign_headers")
        if "from" not in [h.lower() for h in self.headers]:
            raise ConfigError(path + "headers", "must include from (RFC 6376 5.4)")
        if self.expire_s < 0:
            raise ConfigError(path + "expire_s", "must be 0 (no expiry) or more")
        _check_choice(self, path, "on_failure", SIGN_FAILURE_POLICIES)


# The hash ``smtpproxy pw`` writes (controller/auth.py); configtest refuses anything else.
PASSWORD_HASH_PREFIX = "$scrypt$"


@dataclass(frozen=True)
class ControllerConfig:
    """The HTTP controller (rspamd-compatible API: docs/controller.md)."""

    # Serve it from the proxy daemon; `smtpproxy run --controller HOST:PORT` turns it on too.
    enabled: bool = False
    # HOST:PORT (rspamd's port by default, loopback only) or unix:PATH.
    listen: str = "127.0.0.1:11334"
    # Mode of a unix: socket.
    socket_mode: str = "0660"
    # Hashes made by `smtpproxy pw`, never the passwords themselves. password
    # reads (scan, history, stat); enable_password also writes (learn, reset).
    # Empty password: reads need none. Empty enable_password: password writes
    # too. Both empty: writes only from secure_ip.
    password: str = ""
    enable_password: str = ""
    # Networks that need no password at all (e.g. ["10.1.2.3/32"]).
    secure_ip: tuple[str, ...] = ()
    # Largest request body (a message to scan or learn); 0: proxy.max_message_size_bytes.
    max_body_bytes: int = 0
    # Wrong passwords from one address: after this many within the window,
    # every request from it gets 429 until the window has passed.
    auth_failures_max: int = 5
    auth_failure_window_s: float = 60.0
    # An idle keep-alive connection is closed after this long.
    keepalive_timeout_s: float = 15.0

    def check(self, path: str) -> None:
        if self.listen.startswith("unix:"):
            if len(self.listen) <= 5:
                raise ConfigError(path + "listen", "unix: needs a path")
            parse_socket_mode(self.socket_mode, path + "socket_mode")
        else:
            parse_hostport(self.listen, path + "listen")
        for name in ("password", "enable_password"):
            value = getattr(self, name)
            if value and not value.startswith(PASSWORD_HASH_PREFIX):
                raise ConfigError(path + name, "must be a hash made by `smtpproxy pw`, "
                                  "not the password itself")
        parse_networks(self.secure_ip, path + "secure_ip")
        if self.max_body_bytes < 0:
            raise ConfigError(path + "max_body_bytes", "must be 0 (the message size) or more")
        _check_positive(self, path, "auth_failures_max", "auth_failure_window_s",
                        "keepalive_timeout_s")


@dataclass(frozen=True)
class HistoryConfig:
    """A row per scanned message in the common store (controller/history.py)."""

    enabled: bool = True
    # Bounds: the newest max_rows rows, none older than max_age_s. A row takes
    # about 1-2 KB (docs/controller.md), so the defaults hold a busy host's day
    # in about 100 MB of Redis or SQLite.
    max_rows: int = 100_000
    max_age_s: float = 86_400.0
    # Appended to each refusal the proxy writes (reject, soft reject,
    # greylist); {ref} finds the row with `smtpproxy trace`. Empty: none.
    reference_format: str = " (ref {ref})"
    # Rows waiting to be written; beyond it new rows are dropped (and counted),
    # never mail slowed.
    queue_max_rows: int = 10_000
    # The newest messages kept in the daemon's memory (each process's own),
    # zlib-compressed, at most this many compressed bytes in all, so the web
    # interface can learn one from its history row (rows hold no body); 0:
    # none kept, learning only by pasting or uploading. 8 MB holds about 16 MB
    # of mail (3,500 messages of the corpus's average size).
    keep_messages_bytes: int = 8 * 1024 * 1024

    def check(self, path: str) -> None:
        _check_positive(self, path, "max_rows", "max_age_s", "queue_max_rows")
        if self.keep_messages_bytes < 0:
            raise ConfigError(path + "keep_messages_bytes", "must be 0 or more")
        if self.reference_format and "{ref}" not in self.reference_format:
            raise ConfigError(path + "reference_format", "must contain {ref} (or be empty)")


@dataclass(frozen=True)
class CanaryConfig:
    """A test message through the real front door, recognised by the proxy (canary.py)."""

    # Recognise canaries (and send them every interval_s); off by default.
    enabled: bool = False
    # Seconds between canaries the daemon sends itself; 0: none (a monitoring
    # system drives `smtpproxy canary --once` instead).
    interval_s: float = 60.0
    # No canary passed for this long: an error in the log, smtpproxy_canary_ok 0.
    alert_after_s: float = 300.0
    # The public front door (Postfix smtpd with smtpd_proxy_filter), HOST:PORT.
    target: str = "127.0.0.1:25"
    # Envelope addresses: the recipient must be accepted by the front door
    # (a canary passing the filter is never delivered to it).
    recipient: str = ""
    sender: str = ""
    # The key of the canary's HMAC token: a hash from `smtpproxy pw` (the hash
    # is the key: keep this file private) or secret_file, a file holding it.
    secret: str = ""
    secret_file: str = ""
    # One canary's whole SMTP conversation must end within this.
    timeout_s: float = 30.0

    def check(self, path: str) -> None:
        _check_positive(self, path, "alert_after_s", "timeout_s")
        if self.interval_s < 0:
            raise ConfigError(path + "interval_s", "must be 0 (send none) or more")
        parse_hostport(self.target, path + "target")
        if self.secret and not self.secret.startswith(PASSWORD_HASH_PREFIX):
            raise ConfigError(path + "secret", "must be a hash made by `smtpproxy pw`, "
                              "not the secret itself (or use secret_file)")
        if self.secret and self.secret_file:
            raise ConfigError(path + "secret_file", "set secret or secret_file, not both")
        if self.enabled:
            if not (self.secret or self.secret_file):
                raise ConfigError(path + "secret", "required when the canary is enabled "
                                  "(or secret_file)")
            for name in ("recipient", "sender"):
                if "@" not in getattr(self, name):
                    raise ConfigError(path + name, "an address is required when the canary "
                                      "is enabled")


@dataclass(frozen=True)
class DoctorConfig:
    """What `smtpproxy doctor` takes as deliberate (smtpproxy/doctor/)."""

    # Public smtpd services of master.cf (NAME, or NAME/TYPE as "2525/inet")
    # deliberately left without the proxy: reported OK, not as a bypass.
    # `doctor --ignore-service` adds to these.
    ignore_services: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    # Where state lives (SQLite store, maps we write). systemd's
    # StateDirectory= sets $STATE_DIRECTORY, which wins over this default.
    state_dir: str = "/var/lib/smtpproxy"
    log: LogConfig = field(default_factory=LogConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)
    sign: SignConfig = field(default_factory=SignConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    canary: CanaryConfig = field(default_factory=CanaryConfig)
    doctor: DoctorConfig = field(default_factory=DoctorConfig)

    def check(self, path: str) -> None:
        if not self.state_dir:
            raise ConfigError("state_dir", "must not be empty")


DEFAULT_CONFIG_PATH = "/etc/smtpproxy/smtpproxy.toml"


# ---------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "table"
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "array"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {type(value).__name__}")
        return build(tp, value, key + ".")
    origin = typing.get_origin(tp)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {type(value).__name__}")
        _key_tp, value_tp = typing.get_args(tp)
        return {k: _convert(value_tp, v, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(key, f"expected an array, got {type(value).__name__}")
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    if tp == int | str:  # a count or a word ("auto"); check() says which words
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ConfigError(key, f"expected an integer or a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")  # a schema bug


def build(cls: type, data: dict, path: str = "") -> Any:
    """Build dataclass ``cls`` from a TOML table, naming the key on any error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(path + key, "unknown key")
    kwargs = {name: _convert(hints[name], data[name], path + name) for name in data}
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(path)
    return obj


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[leaf] = value


def load(path: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read the TOML file (None: defaults only) and apply dotted-key overrides."""
    data: dict = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("", f"{path}: TOML syntax error: {exc}") from None
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    cfg = build(Config, data)
    state_env = os.environ.get("STATE_DIRECTORY")
    if state_env and "state_dir" not in data:
        cfg = dataclasses.replace(cfg, state_dir=state_env.split(":")[0])
    return cfg


# ---------------------------------------------------------------- dumping


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def _is_table_array(value: Any) -> bool:
    return isinstance(value, tuple) and bool(value) and dataclasses.is_dataclass(value[0])


def dump(obj: Any, prefix: str = "") -> str:
    """The effective configuration as TOML, every key written out."""
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    arrays: list[tuple[str, Any]] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            tables.append((f.name, value))
        elif isinstance(value, dict) and value and all(dataclasses.is_dataclass(v) for v in value.values()):
            # A table of named tables ([scan.composites.NAME]).
            tables.extend((f"{f.name}.{key}", item) for key, item in value.items())
        elif _is_table_array(value):
            arrays.append((f.name, value))
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    out = "\n".join(lines)
    for name, table in tables:
        out += f"\n\n[{prefix}{name}]\n" + dump(table, f"{prefix}{name}.")
    for name, items in arrays:
        for item in items:
            out += f"\n\n[[{prefix}{name}]]\n" + dump(item, f"{prefix}{name}.")
    return out.strip("\n") + ("\n" if not prefix else "")


__all__ = [
    "Config", "ConfigError", "ListenerConfig", "LogConfig", "PolicyConfig", "ProxyConfig",
    "StoreConfig", "build", "dump", "load", "parse_hostport", "parse_networks",
]
