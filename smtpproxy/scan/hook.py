"""The end-of-data scan hook: the contract between the proxy and the checks.

At end-of-data the proxy hands the hook a Transaction (who sent what to whom,
and the message bytes) and gets back a Verdict: accept (optionally with
headers added or removed), reject, or tempfail. The proxy applies it: an
accepted message goes downstream, a rejected or tempfailed one never does and
the downstream transaction is abandoned.

NoScan is the hook in place until the scoring engine plugs in: it accepts
everything unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Protocol


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
    reply: str = ""
    add_headers: list[tuple[str, str]] = field(default_factory=list)
    remove_headers: list[str] = field(default_factory=list)
    # (header name, pattern on its unfolded value): removed when it matches.
    remove_matching: list[tuple[str, re.Pattern[bytes]]] = field(default_factory=list)
    # One short phrase for the proxy's log line (score, action, symbols).
    summary: str = ""
    # For the metrics: the scoring action, the symbols found, the scan time.
    scan_action: str = ""
    symbols: tuple[str, ...] = ()
    scan_seconds: float = 0.0


class ScanHook(Protocol):
    async def scan(self, txn: Transaction) -> Verdict: ...


class NoScan:
    """Accepts every message unchanged."""

    async def scan(self, txn: Transaction) -> Verdict:
        return Verdict()
