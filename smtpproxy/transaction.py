"""The contract between the SMTP side, the scan and the signer.

At end-of-data the proxy builds one Transaction (who sent what to whom, and
the message bytes) and hands it to the scan hook, which answers with a
Verdict: accept (optionally with header edits), reject, or tempfail. The
delivery pipeline (delivery.py) applies it: an accepted message is edited,
signed and sent downstream; a rejected or tempfailed one never goes there and
the downstream transaction is abandoned.

``ClientInfo`` is the real client as XFORWARD told us. Its address is parsed
and normalised once, here (``ClientInfo.ip``), for every check and the signer.

NoScan is the hook in place when scanning is off: it accepts everything
unchanged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_client_address(text: str | None) -> IPAddress | None:
    """A client address as Postfix or the kernel writes it, normalised; None when it is none.

    Accepted: ``192.0.2.1``, ``2001:db8::1``, XFORWARD's ``IPV6:2001:db8::1``
    (any case), ``[...]`` brackets and an IPv6 ``%scope``. An IPv4-mapped IPv6
    address is its IPv4 address. ``[UNAVAILABLE]``, ``unknown`` and the like
    are None.
    """
    if not text:
        return None
    text = text.strip("[]")
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    text = text.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class ClientInfo:
    """The real client, as XFORWARD told us (None: not known)."""

    name: str | None = None
    addr: str | None = None
    port: str | None = None
    proto: str | None = None
    helo: str | None = None
    ident: str | None = None
    source: str | None = None

    @cached_property
    def ip(self) -> IPAddress | None:
        """``addr`` parsed and normalised (parse_client_address); None when unknown."""
        return parse_client_address(self.addr)


@dataclass
class Transaction:
    session_id: str
    listener: str
    profile: str
    client: ClientInfo
    mail_from: str
    mail_options: list[str]
    rcpt_tos: list[str]
    rcpt_options: list[list[str]]
    content: bytes


@dataclass
class Verdict:
    action: Literal["accept", "reject", "tempfail"] = "accept"
    # For reject/tempfail: the full reply, e.g. "550 5.7.1 Message rejected as spam".
    # Empty: the default reply for the action (replies.REJECT, replies.SCAN_TEMPFAIL).
    reply: str = ""
    add_headers: list[tuple[str, str]] = field(default_factory=list)
    remove_headers: list[str] = field(default_factory=list)
    # (header name, predicate on its value): removed when the predicate is true
    # (Authentication-Results of our own authserv-id: scan/results.py).
    remove_matching: list[tuple[str, Callable[[bytes], bool]]] = field(default_factory=list)
    # The Authentication-Results value the scan wrote (authserv-id; results):
    # what we verified, the only results an ARC seal of ours may carry.
    auth_results: str = ""
    # One short phrase for the proxy's log line (score, action, symbols).
    summary: str = ""
    # For the metrics: the scoring action, the symbols found, the scan time.
    scan_action: str = ""
    symbols: tuple[str, ...] = ()
    scan_seconds: float = 0.0
    # The engine's ScanResult (scan/engine.py): every symbol with its score and
    # options, for the history (controller/history.py); None when not scanned.
    scan_result: Any = None
    # The ARC chain status the scan verified on the message as received
    # (pass, fail, none, temperror); None when the scan did not verify it.
    # The signer seals with it instead of verifying the chain again.
    arc_result: str | None = None
    # Run once the downstream listener answered 250 to the message, and only
    # then (the scan remembers the Message-ID of outbound mail for REPLY).
    # It must not raise; the delivery logs it if it does and answers anyway.
    after_accept: Callable[[], Awaitable[None]] | None = None


class ScanHook(Protocol):
    async def scan(self, txn: Transaction) -> Verdict: ...


class NoScan:
    """Accepts every message unchanged."""

    async def scan(self, txn: Transaction) -> Verdict:
        return Verdict()
