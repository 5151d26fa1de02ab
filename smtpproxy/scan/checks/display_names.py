"""Display names that pretend: an address in the From name, titles, odd To names (rspamd's names).

From rspamd's rules/misc.lua: SPOOF_DISPLAY_NAME (the From name shows an
address of the recipient's own domain while the mail comes from another)
and FROM_NEQ_DISPLAY_NAME (the name shows an address of another domain
than the sender's). Unlike rspamd, a subdomain of the sender's domain (or
the other way round) is the same sender, and "alice@example.org via List"
is a mailing list's rewritten From, not FROM_NEQ_DISPLAY_NAME. From rules/headers_checks.lua: FROM_DN_EQ_ADDR,
FROM_NAME_HAS_TITLE (Mr/Mrs/Dr), FROM_NAME_EXCESS_SPACE, and the To/Cc
display-name facts TO_DN_RECIPIENTS, TO_DN_NONE/SOME/ALL and
TO_DN_EQ_ADDR_SOME/ALL.

Header values are cut to MAX_FIELD_CHARS before parsing (the address
parser recurses per token).
"""

from __future__ import annotations

import email.utils
import re
from typing import ClassVar

from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.urls import is_subdomain_or_same

MAX_FIELD_CHARS = 2048
MAX_RECIPIENTS = 100
# An address written inside a display name; its domain must have a dot.
NAME_ADDRESS_RE = re.compile(r"[\w.+'&-]+@((?:[\w-]+\.)+[\w-]+)")
TITLE_RE = re.compile(r"^(mrs?|dr)[.\s]")
EXCESS_SPACE_RE = re.compile(r"\s\s")
# "alice@example.org via Some List": a mailing list (Google Groups, Mailman's
# DMARC mitigation) rewrote From and kept the author's address in the name.
VIA_RE = re.compile(r"(?i)\bvia\b")


def _parse_one(value: str) -> tuple[str, str]:
    try:
        return email.utils.parseaddr(value[:MAX_FIELD_CHARS])
    except Exception:  # a hostile field must not cost the scan
        return "", ""


def _parse_all(values: list[str]) -> list[tuple[str, str]]:
    try:
        pairs = email.utils.getaddresses([v[:MAX_FIELD_CHARS] for v in values])
    except Exception:
        return []
    return [(name, addr) for name, addr in pairs if addr][:MAX_RECIPIENTS]


def _domain(address: str) -> str:
    return address.rpartition("@")[2].strip().rstrip(".").lower() if "@" in address else ""


class DisplayNamesCheck:
    name: ClassVar[str] = "display_names"
    symbols: ClassVar[tuple[str, ...]] = (
        "SPOOF_DISPLAY_NAME", "FROM_NEQ_DISPLAY_NAME", "FROM_DN_EQ_ADDR", "FROM_NAME_HAS_TITLE",
        "FROM_NAME_EXCESS_SPACE", "TO_DN_RECIPIENTS", "TO_DN_NONE", "TO_DN_SOME", "TO_DN_ALL",
        "TO_DN_EQ_ADDR_SOME", "TO_DN_EQ_ADDR_ALL",
    )
    after: ClassVar[tuple[str, ...]] = ()
    # Runs in the engine's task until it has to wait (checks/base.py).
    inline: ClassVar[bool] = True

    async def run(self, ctx: CheckContext) -> list[Hit]:
        msg = ctx.message
        recipients = _parse_all(msg.header_all("To") + msg.header_all("Cc"))
        hits = self._from(msg.header("From") or "", ctx.rcpt_tos, recipients)
        hits.extend(self._to(recipients))
        return hits

    def _from(self, value: str, rcpt_tos: list[str], recipients: list[tuple[str, str]]) -> list[Hit]:
        name, addr = _parse_one(value)
        name = name.strip()
        if not addr or not name:
            return []
        if name.lower() == addr.lower():
            return [Hit("FROM_DN_EQ_ADDR")]
        hits: list[Hit] = []
        lowered = name.lower()
        title = TITLE_RE.match(lowered)
        if title:
            hits.append(Hit("FROM_NAME_HAS_TITLE", (title.group(1),)))
        if EXCESS_SPACE_RE.search(name):
            hits.append(Hit("FROM_NAME_EXCESS_SPACE"))
        shown = NAME_ADDRESS_RE.search(name)
        sender = _domain(addr)
        if shown is not None and sender:
            shown_domain = shown.group(1).lower().rstrip(".")
            if not is_subdomain_or_same(shown_domain, sender):
                ours = {_domain(a) for a in rcpt_tos} | {_domain(a) for _, a in recipients}
                if shown_domain in ours:
                    hits.append(Hit("SPOOF_DISPLAY_NAME", (sender, shown_domain)))
                elif not VIA_RE.search(name, shown.end()):
                    hits.append(Hit("FROM_NEQ_DISPLAY_NAME", (sender, shown_domain)))
        return hits

    def _to(self, recipients: list[tuple[str, str]]) -> list[Hit]:
        if not recipients:
            return []
        hits: list[Hit] = []
        named = same = 0
        for name, addr in recipients:
            name = name.strip()
            if name.lower() in ("recipient", "recipients"):
                if not any(h.symbol == "TO_DN_RECIPIENTS" for h in hits):
                    hits.append(Hit("TO_DN_RECIPIENTS"))
            if name and name.lower() == addr.lower():
                same += 1
            elif name:
                named += 1
        count = len(recipients)
        if named == 0 and same == 0:
            hits.append(Hit("TO_DN_NONE"))
        elif named == count:
            hits.append(Hit("TO_DN_ALL"))
        elif named:
            hits.append(Hit("TO_DN_SOME"))
        if same == count:
            hits.append(Hit("TO_DN_EQ_ADDR_ALL"))
        elif same:
            hits.append(Hit("TO_DN_EQ_ADDR_SOME"))
        return hits
