"""Header heuristics worth their CPU: missing or odd headers, dates, HELO, capitals.

Each symbol is cheap (no DNS) and explains itself through its options.
"""

from __future__ import annotations

import email.utils
import ipaddress
import time
from typing import ClassVar

from smtpproxy.scan.checks.base import CheckContext, Hit

FUTURE_S = 2 * 3600
PAST_S = 7 * 86400
MANY_RECEIVED = 12


def _is_ip(text: str) -> bool:
    text = text.strip("[]").removeprefix("IPv6:").removeprefix("ipv6:")
    # An address starts with a digit (IPv4) or has a colon (IPv6): names
    # skip the (costly) failed parse.
    if not text or not (text[0].isdigit() or ":" in text):
        return False
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _letters_all_caps(subject: str) -> bool:
    letters = [c for c in subject if c.isalpha()]
    return len(letters) >= 10 and all(c.isupper() for c in letters)


class HeadersCheck:
    name: ClassVar[str] = "headers"
    symbols: ClassVar[tuple[str, ...]] = (
        "MISSING_MID", "MISSING_DATE", "INVALID_DATE", "DATE_IN_FUTURE", "DATE_IN_PAST",
        "MISSING_FROM", "MULTIPLE_FROM", "MISSING_TO", "MISSING_SUBJECT", "FORGED_SENDER",
        "SUBJ_ALL_CAPS", "HELO_BAREIP", "HELO_NOT_FQDN", "RCVD_COUNT_ZERO", "RCVD_COUNT_MANY",
    )
    after: ClassVar[tuple[str, ...]] = ()
    # Runs in the engine's task until it has to wait (checks/base.py).
    inline: ClassVar[bool] = True

    def __init__(self, clock=time.time):
        self.clock = clock

    async def run(self, ctx: CheckContext) -> list[Hit]:
        msg = ctx.message
        hits: list[Hit] = []
        if not msg.header("Message-ID"):
            hits.append(Hit("MISSING_MID"))
        hits.extend(self._date(msg.header("Date"), self._received_at(msg)))
        froms = msg.header_all("From")
        if not froms:
            hits.append(Hit("MISSING_FROM"))
        elif len(froms) > 1:
            hits.append(Hit("MULTIPLE_FROM", (str(len(froms)),)))
        elif len(set(msg.from_addresses)) > 1:  # one field holding a list (rspamd's MULTIPLE_FROM)
            hits.append(Hit("MULTIPLE_FROM", tuple(dict.fromkeys(msg.from_addresses))[:5]))
        if not msg.header("To"):
            hits.append(Hit("MISSING_TO"))
        if msg.header("Subject") is None:
            hits.append(Hit("MISSING_SUBJECT"))
        elif _letters_all_caps(msg.subject):
            hits.append(Hit("SUBJ_ALL_CAPS"))
        envelope = ctx.mail_from.lower()
        if envelope and msg.from_address and envelope != msg.from_address:
            hits.append(Hit("FORGED_SENDER", (msg.from_address, envelope)))
        helo = (ctx.client.helo or "").strip()
        if helo:
            if _is_ip(helo):
                hits.append(Hit("HELO_BAREIP", (helo,)))
            elif "." not in helo.strip("."):
                hits.append(Hit("HELO_NOT_FQDN", (helo,)))
        received = len(msg.header_all("Received"))
        if received == 0:
            hits.append(Hit("RCVD_COUNT_ZERO"))
        elif received >= MANY_RECEIVED:
            hits.append(Hit("RCVD_COUNT_MANY", (str(received),)))
        return hits

    def _received_at(self, msg) -> float:
        """When the message arrived: the topmost Received field's date (in live
        traffic our own Postfix's, a moment ago; for mail scanned later, the
        receiving MX's), never later than now; now when it has none."""
        now = self.clock()
        received = msg.header_all("Received")
        if not received:
            return now
        _, sep, stamp = received[0].rpartition(";")
        if not sep:
            return now
        try:
            parsed = email.utils.parsedate_to_datetime(stamp.strip())
            return min(now, parsed.timestamp()) if parsed is not None else now
        except (TypeError, ValueError, IndexError, OverflowError, OSError):
            return now

    def _date(self, value: str | None, reference: float) -> list[Hit]:
        if value is None:
            return [Hit("MISSING_DATE")]
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return [Hit("INVALID_DATE")]
        if parsed is None:
            return [Hit("INVALID_DATE")]
        try:
            when = parsed.timestamp()
        except (OverflowError, OSError, ValueError):
            return [Hit("INVALID_DATE")]
        delta = when - reference
        if delta > FUTURE_S:
            return [Hit("DATE_IN_FUTURE", (f"{delta / 3600:.0f}h",))]
        if delta < -PAST_S:
            return [Hit("DATE_IN_PAST", (f"{-delta / 86400:.0f}d",))]
        return []
