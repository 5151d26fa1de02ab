"""SpamAssassin's relay metadata: the Received chain as X-Spam-Relays-* pseudo-headers.

A port of Mail::SpamAssassin::Message::Metadata::Received (SpamAssassin
4.0): each Received field is parsed into a relay (ip, rdns, helo, by,
ident, envfrom, id, auth), in SpamAssassin's order of special cases, and
the chain is split where trust ends. No trusted_networks are configured
here, so SpamAssassin's inference applies: relays are trusted (and
internal) from the top down while their IP is private or they
authenticated; the first other relay and all after it are untrusted (and
external). The pseudo-headers hold each part as
``[ ip=... rdns=... helo=... by=... ident=... envfrom=... intl=0|1 id=... auth=... msa=0 ]``
joined by spaces, as the rules expect.

Before the queue, Postfix's own Received field may not be there yet: the
client as XFORWARD told it (address, reverse name, HELO) is then the first
relay, as SpamAssassin would read it from that field after the queue. A
client some field already names is not added again.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

_OCT = r"(?:1\d\d|2[0-4]\d|25[0-5]|[1-9]\d|\d)"
_V4 = rf"{_OCT}\.{_OCT}\.{_OCT}\.{_OCT}"
_H = "[a-f0-9]{1,4}"
# Constants.pm's IP_ADDRESS: IPv4, IPv4 mapped in IPv6, IPv6 (non-capturing).
IP = (rf"(?i:\b(?<!:){_V4}\b|(?:IPv6:|(?<![a-f0-9:]))(?:(?:(?:{_H}:){{6}}|::(?:{_H}:){{0,5}}"
      rf"|(?:{_H}:){{1,5}}:|{_H}::(?:{_H}:){{1,4}}|(?:{_H}:){{2}}:(?:{_H}:){{1,3}}"
      rf"|(?:{_H}:){{3}}:(?:{_H}:){{1,2}}|(?:{_H}:){{4}}:{_H}:){_V4}"
      rf"|(?:{_H}:){{7}}{_H}|:(?::{_H}){{1,7}}|(?:{_H}:){{1,7}}:|{_H}:(?::{_H}){{1,6}}"
      rf"|(?:{_H}:){{2}}(?::{_H}){{1,5}}|(?:{_H}:){{3}}(?::{_H}){{1,4}}"
      rf"|(?:{_H}:){{4}}(?::{_H}){{1,3}}|(?:{_H}:){{5}}(?::{_H}){{1,2}}|(?:{_H}:){{6}}:{_H}|::)"
      rf"(?![a-f0-9:]))")
# Constants.pm's LOCALHOST (the IPv6 loopback in its plain and mapped spellings).
LOCALHOST = (r"(?i:localhost(?:\.localdomain)?|\b(?<!:)127\.0\.0\.1\b"
             r"|(?:IPv6:|(?<![a-f0-9:]))(?:(?:0{1,4}:){7}0{0,3}1|:(?::0{1,4}){0,6}:0{0,3}1"
             r"|::(?:0{1,4}:){0,4}ffff:127\.0\.0\.1)(?![a-f0-9:]))")
# Constants.pm's IP_PRIVATE for IPv4 (IPv6: link-local, loopback, mapped; see is_private).
PRIVATE_V4_RE = re.compile(
    r"^(?:10|127|169\.254|172\.(?:1[6-9]|2[0-9]|3[01])|192\.168"
    r"|100\.(?:6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7]))\.")
STRIP_RE = re.compile(r"[\s\x00#\[\]()<>|]")
DATE_TAIL_RE = re.compile(
    r"[\s;]+(?:(?:Mon|T(?:ue|hu)|Wed|Fri|S(?:at|un)), )?\d+ (?:J(?:an|u[nl])|Feb|Ma[ry]|A(?:pr|ug)|Sep"
    r"|Oct|Nov|Dec) \d+ \d+:\d+(?::\d+)? \S+$")
HELO_CHARS = r"[-A-Za-z0-9.^+_&:=?!@%*$\\/]"
MAX_RECEIVED = 100  # a hostile message's thousand Received fields cost no more than this


@functools.lru_cache(maxsize=512)
def _re(pattern: str) -> re.Pattern:
    return re.compile(pattern.replace("{IP}", IP).replace("{LOCALHOST}", LOCALHOST))


def _search(pattern: str, text: str) -> re.Match | None:
    return _re(pattern).search(text)


def is_private(ip: str) -> bool:
    if PRIVATE_V4_RE.match(ip):
        return True
    try:
        addr = ipaddress.IPv6Address(ip)
    except ValueError:
        return False
    if addr.ipv4_mapped is not None:
        return bool(PRIVATE_V4_RE.match(str(addr.ipv4_mapped)))
    return addr.is_loopback or addr.is_link_local


@dataclass
class Relay:
    ip: str
    rdns: str = ""
    helo: str = ""
    by: str = ""
    ident: str = ""
    envfrom: str = ""
    id: str = ""
    auth: str = ""
    internal: int = 0
    no_reverse_dns: bool = False  # the MTA looked the rDNS up and found none

    @property
    def private(self) -> bool:
        return is_private(self.ip)

    def as_string(self) -> str:
        return (f"[ ip={self.ip} rdns={self.rdns} helo={self.helo} by={self.by} ident={self.ident} "
                f"envfrom={self.envfrom} intl={self.internal} id={self.id} auth={self.auth} msa=0 ]")


class _Fields:
    def __init__(self) -> None:
        self.ip = self.helo = self.rdns = self.by = self.id = self.ident = self.auth = ""
        self.envfrom: str | None = None
        self.looked_up = False  # the MTA looked up the rDNS (an empty one means there is none)


ENOUGH, SKIP, FETCHER = "enough", "skip", "fetcher"


def parse_received(line: str) -> Relay | str | None:
    """One Received field: a Relay, SKIP (not a handover between hosts), FETCHER (a
    POP/IMAP fetch: trust starts again) or None (not parseable)."""
    s = re.sub(r"\s+", " ", line).strip()
    while True:  # an invalid semicolon at the end
        stripped = re.sub(r"\s?;$", "", s)
        if stripped == s:
            break
        s = stripped
    f = _Fields()
    if not re.match(r"\(?from ", s, re.I):
        return SKIP
    if _search(r"\bwith local for\b", s):
        return SKIP
    m = _search(r"(?i)^from (\S+) by [^\s;]+ ?;", s)
    if m and not re.match(r"^\[[\d.]+\]$", m.group(1)):
        return SKIP
    s = DATE_TAIL_RE.sub("", s, count=1)
    s = s.replace(")by ", ") by ", 1)
    m = _search(r" id <?([^\s<>;]{3,})", s)
    if m:
        f.id = m.group(1)
    m = _search(rf"\bhelo=({HELO_CHARS}+)(?:[^-A-Za-z0-9.^+_&:=?!@%*$\\/]|$)", s) or \
        _search(rf"\b(?:HELO|EHLO) ({HELO_CHARS}+)(?:[^-A-Za-z0-9.^+_&:=?!@%*$\\/]|$)", s)
    if m:
        f.helo = m.group(1)
    m = _search(r" by (\S+)(?:[^-A-Za-z0-9;.]|$)", s)
    if m:
        f.by = m.group(1)
    f.auth = _auth(s)
    outcome = None
    if s.startswith("from "):
        s = s[5:]
        m = _search(r"(?i)(?:return-path:? |envelope-(?:sender|from)[ =])(\S+)\b", s)
        if m:
            f.envfrom = m.group(1)
        outcome = _from(s, f)
    elif s.startswith("FROM "):
        s = s[5:]
        m = _search(r"^(\S+) \((\S+) \[({IP})\]\) BY (\S+) (?:\([^)]+\) WITH SMTP )?ID <?(\S+?)>?"
                    r"(?: FOR <[^>]+>)?$", s)
        if m:
            f.looked_up = True
            f.helo, f.rdns, f.ip, f.by, f.id = m.groups()
            if f.rdns == "unverified":
                f.rdns = ""
            outcome = ENOUGH
    elif s.startswith("(from "):
        s = s[6:]
        m = _search(r"^(\S*) \[({IP})\]\) by (\S+) \(NAVGW .*?\) with ", s)
        if m:
            f.helo, f.ip, f.by = m.groups()
            outcome = ENOUGH
        elif _search(r"^\S+@localhost\) by \S+ ", s) or \
                _search(r"^[^\s@]+@[^)]+\) by \S+\(jqueuemail\) id [^\s;]+", s):
            return SKIP
    if outcome in (SKIP, FETCHER):
        return outcome
    if outcome is None:
        if not f.ip:
            m = _search(r"\[({IP})\]", s)
            if m:
                f.ip = m.group(1)
        if not (f.ip and f.by):
            return None
    return _relay(f)


def _auth(s: str) -> str:
    """How the sender authenticated, if the field says so. Each pattern runs only
    where a substring it needs is present (same answers, a tenth of the searches)."""
    low = s.lower()
    if " by " in s and " with " in low:
        m = _search(r"(?i) with ((?:ES|L|UTF8S|UTF8L)MTPS?A|ASMTP|HTTP[SU]?)(?: |;|$)", s)
        if m:
            return m.group(1)
    if "by mx.google.com with ESMTPS id " in s and _search(
            r" by mx\.google\.com with ESMTPS id [a-z0-9]{1,4}sm[0-9]{2,9}[a-z]{3}\.[0-9]{1,3}"
            r"\.[0-9]{4}\.(?:[0-6][0-9]\.){4}[0-6][0-9]", s):
        m = _search(r"\(version=([^ ]+) cipher=([^)]+)\)", s)
        if m:
            return f"GMail - transport={m.group(1)} cipher={m.group(2)}"
    if "(AUTH: " in s:
        m = _search(r"^from .*?(?:\]\)|\)\]) \(AUTH: (LOGIN|PLAIN|DIGEST-MD5|CRAM-MD5) \S+(?:, .*?)?\) by ", s)
        if m:
            return m.group(1)
    if "authenticated" in s and _search(
            r"^from .*?(?:\](?: \([^)]*\))?\)|\)\]) .*?\(.*?authenticated.*?\).*? by", s):
        return "Sendmail"
    if "mail.gmx." in s:
        m = _search(r"from \S* \((?:HELO|EHLO) (\S*)\) \[({IP})\] by (mail\.gmx\.(?:net|com)) \([^)]+\) "
                    r"with ((?:ESMTP|SMTP))", s)
        if m:
            return f"GMX ({m.group(4)} / {m.group(3)})"
    if " (authenticated as " in s and _search(
            r"\) by .+ \(\d{1,2}\.\d\.\d{3}(?:\.\d{1,3})?\) \(authenticated as .+\) id ", s):
        return "CriticalPath"
    if "(Authenticated sender: " in s:
        m = _search(r"\) \(Authenticated sender: \S+\) by \S+ \(([^)]+)\) with ", s)
        if m:
            return "Postfix" if m.group(1) == "Postfix" else f"Postfix ({m.group(1)})"
    if "CommuniGate Pro " in s and " (account " in s and _search(r"CommuniGate Pro (HTTP|SMTP|XIMSS|IMAP)", s):
        return "Communigate"
    if "HTTP-DAV" in s and _search(r" with Microsoft Exchange Server HTTP-DAV\b", s):
        return "HTTP-DAV"
    if " by " in s and "(via http" in low:
        m = _search(r"(?i) \(via (HTTP.?)\)(?: |;|$)", s)
        if m:
            return m.group(1)
    return ""


def _sub_helo_ident(sub: str, f: _Fields) -> None:
    m = re.search(r"helo=(\S+)", sub)
    if m:
        f.helo = m.group(1)
        sub = sub[:m.start()] + sub[m.end():]
    m = re.search(r"ident=(\S*)", sub)
    if m:
        f.ident = m.group(1)


def _from(s: str, f: _Fields) -> str | None:  # noqa: C901 - one case per MTA, in SpamAssassin's order
    """The part after "from ": ENOUGH (fields set), SKIP, FETCHER, or None (go on guessing)."""
    def hit(pattern: str) -> re.Match | None:
        return _search(pattern, s)

    if hit(r" \((?:SquirrelMail|NaSMail) authenticated user "):
        m = hit(r"({IP})\b(?![.-]).{10,80}by (\S+) with HTTP")
        if m:
            f.ip, f.by = m.groups()
            return ENOUGH
    if "aol.com" in s and "with HTTP (WebMailUI)" in s:
        m = hit(r"({IP}) by (\S+) \({IP}\) with HTTP \(WebMailUI\)")
        if m:
            f.ip, f.by = m.groups()
            return ENOUGH
    if " SMTPSVC" in s:
        m = hit(r"^(\S*) \(\[({IP})\][^)]{0,40}\) by (\S+) with Microsoft SMTPSVC")
        if m:
            f.helo, f.ip, f.by = m.groups()
            return ENOUGH
        if hit(r"^mail pickup service by (\S+) with Microsoft SMTPSVC$"):
            return SKIP
    elif hit(r" with (?:Microsoft SMTP Server|mapi id) (?:\([^)]+\) )?\d+\.\d+\.\d+\.\d+(?:$| )"):
        m = hit(r"^(\S+) \(\[?({IP})(?:%[A-Z0-9._~-]*)?\]?\) by (\S+) ")
        if m:
            f.helo, f.ip, f.by = m.groups()
            f.id = ""
            return ENOUGH
    elif "[XMail " in s:
        m = hit(r"^(\S+) \((\[?{IP}\]?)(?::\d+)\) by (\S+)(?: \(\S+\))? with \[XMail")
        if m:
            f.helo, f.ip, f.by = m.groups()
            m2 = hit(r" id <(\S+)>")
            if m2:
                f.id = m2.group(1)
            m2 = hit(r" from <(\S+)>")
            if m2:
                f.envfrom = m2.group(1)
            return ENOUGH
    elif hit(r"\(ecelerity\b"):
        m = hit(r"^\(\[({IP}):\d+\] helo=(\S+)\) by (\S+) ")
        if m:
            f.ip, f.helo, f.by = m.groups()
            return ENOUGH
        m = hit(r"^\S+ \(\[({IP}):\d+\]\) by (\S+) ")
        if m:
            f.ip, f.by = m.groups()
            return ENOUGH
    elif "Exim" in s:
        if hit(r"\bwith local(?:-\S+)? "):
            return SKIP
        m = hit(r"^\[({IP})\] \((.*?)\) by (\S+) ")
        if m:
            f.ip, sub, f.by = m.groups()
            _sub_helo_ident(sub, f)
            return ENOUGH
        m = hit(r"^(\S+) \(\[({IP})\](.*?)\) by (\S+) ")
        if m:
            f.rdns, f.ip, sub, f.by = m.groups()
            f.helo = f.rdns  # SpamAssassin bug 5112
            _sub_helo_ident(sub, f)
            return ENOUGH
        m = hit(r"^(\S+) \[({IP})\](:\d+)? by (\S+) ")
        if m:
            f.rdns, f.ip, f.helo, f.by = m.group(1), m.group(2), m.group(1), m.group(4)
            return ENOUGH
        m = hit(r"^(\S+) ")
        if m:
            f.rdns = m.group(1)
        m = hit(r" \((\S+)\) ")
        if m:
            f.helo = m.group(1)
        m = hit(r" \[({IP})(?:\.\d+)?\] ")
        if m:
            f.ip = m.group(1)
        m = hit(r"by (\S+) ")
        if m:
            f.by = m.group(1)
            if f.ip:
                return ENOUGH
    elif " (Postfix) with" in s:
        m = hit(r"^(\S+) \((\S+) \[({IP})\]\) by (\S+) ") or hit(r"^(\S+) \((\S+)\[({IP})\]\) by (\S+) ")
        if m:
            f.looked_up = True
            f.helo, f.rdns, f.ip, f.by = m.groups()
            if f.rdns == "unknown":
                f.rdns = ""
            return ENOUGH
    elif "(Scalix SMTP Relay" in s:
        m = hit(r"^(\S+) \( ?({IP})\) by (\S+)")
        if m:
            f.helo, f.ip, f.by = m.groups()
            return ENOUGH
    elif " (Lotus Domino " in s:
        m = hit(r"^(\S+) \(\[({IP})\]\) by (\S+) \(Lotus")
        if m:
            f.helo, f.ip, f.by = m.groups()
            return ENOUGH

    if hit(r"\bwith HTTP\b"):
        m = hit(r"^({IP}) \(\[{IP}\]\) by (\S+)")
        if m:
            f.ip, f.by = m.groups()
            return ENOUGH
    if not hit(r" by \S+ \(qmail-\S+\) with "):
        m = hit(r"^(\S+) \((\S+) \[({IP})\].*\) by (\S+) \(")
        if m:
            f.looked_up = True
            f.helo, f.rdns, f.ip, f.by = m.groups()
            m2 = re.match(r"IDENT:([^@]*)@", f.rdns)
            if m2:
                f.ident, f.rdns = m2.group(1), f.rdns[m2.end():]
            m2 = re.match(r"([^@]*)@", f.rdns)
            if m2:
                f.ident, f.rdns = m2.group(1), f.rdns[m2.end():]
            return ENOUGH
    m = hit(r"^(\S+) \((\S+) \[({IP})\]\) by (\S+) with \S+ \(")
    if m:
        f.looked_up = True
        f.helo, f.rdns, f.ip, f.by = m.groups()
        return ENOUGH
    m = hit(r"^(\S+) \(\[({IP})\] helo=(\S+)\) by (\S+) with ")
    if m:
        f.rdns, f.ip, f.helo, f.by = m.groups()
        return ENOUGH
    m = hit(r"^(\S+) \(<unknown\S*>\[({IP})\]\) by (\S+) ")
    if m:
        f.helo, f.ip, f.by = m.groups()
        return ENOUGH
    m = hit(r"^(\S+) \((\S+\.\S+)\[({IP})\]\) by (\S+) ")
    if m:
        f.looked_up = True
        f.helo, f.rdns, f.ip, f.by = m.groups()
        return ENOUGH
    m = hit(r"^(\S+) \((\S*)@\[({IP})\].*\) by (\S+) \(")
    if m:
        f.looked_up = True
        f.helo, f.ident, f.ip, f.by = m.groups()
        return ENOUGH
    m = hit(r"by (\S+\.hotmail\.msn\.com) ")
    if m:
        f.by = m.group(1)
        m = hit(r"^({IP}) ")
        if m:
            f.ip = m.group(1)
        return ENOUGH
    for pattern in (r"^(\S+) \((?:HELO|EHLO) (\S*)\) \(({IP})\) by (\S+) \(qpsmtpd/\S+\) with (?:ESMTP|SMTP)",
                    r"^(\S+) \(LHLO (\S*)\) \(({IP})\) by (\S+) with LMTP",
                    r"^(\S+) \((?:HELO|EHLO) (\S*)\) \[({IP})\] by (\S+) \([^)]+\) with (?:ESMTP|SMTP)"):
        m = hit(pattern)
        if m:
            f.rdns, f.helo, f.ip, f.by = m.groups()
            return ENOUGH
    m = hit(r"^(\S+) \(\[({IP})\]\) by (\S+) via smtpd \(for \S+\) with SMTP\(")
    if m:
        f.helo, f.ip, f.by = m.groups()
        return ENOUGH
    if hit(r"^\S+( \((?:HELO|EHLO) \S*\))? \((\S+@)?\[?{IP}\]?\)( \(envelope-sender <\S+>\))? by \S+"
           r"( \(.+\))* with (.* )?(SMTP|QMQP)(?! id )"):
        m = hit(r"^(\S+) \((?:HELO|EHLO) ([^ ()]*)\) \((\S*)@\[?({IP})\]?\)( \(envelope-sender <\S+>\))? by (\S+)")
        if m:
            f.rdns, f.helo, f.ident, f.ip, f.by = m.group(1), m.group(2), m.group(3), m.group(4), m.group(6)
        elif m := hit(r"^(\S+) \((?:HELO|EHLO) ([^ ()]*)\) \(\[?({IP})\]?\)( \(envelope-sender <\S+>\))? by (\S+)"):
            f.rdns, f.helo, f.ip, f.by = m.group(1), m.group(2), m.group(3), m.group(5)
        elif m := hit(r"^(\S+) \((\S*)@\[?({IP})\]?\)( \(envelope-sender <\S+>\))? by (\S+)"):
            f.helo = f.rdns = m.group(1)
            f.ident, f.ip, f.by = m.group(2), m.group(3), m.group(5)
        elif m := hit(r"^(\S+) \(\[?({IP})\]?\)( \(envelope-sender <\S+>\))? by (\S+)"):
            f.helo = f.rdns = m.group(1)
            f.ip, f.by = m.group(2), m.group(4)
        if f.rdns != "unknown":
            f.looked_up = True
        else:
            f.rdns = ""
        return ENOUGH
    if s.endswith(" via HTTP"):
        m = hit(r"^\[({IP})\] by (\S+) via HTTP$")
        if m:
            f.ip, f.by = m.groups()
            return ENOUGH
    m = hit(r"^(\S+) \( \[({IP})\]\).*? by (\S+) ")
    if m:
        f.ip, f.by = m.group(2), m.group(3)
        return ENOUGH
    m = hit(r"^\((\S+) \[({IP})\]\) by (\S+) ")
    if m:
        f.helo, f.ip, f.by = m.groups()
        return ENOUGH
    for pattern in (r"^\[({IP})\] by (\S+) ", r"^\(\[?({IP})\]?\) by (\S+) "):
        m = hit(pattern)
        if m:
            f.ip, f.by = m.groups()
            return ENOUGH
    m = hit(r"^(\S+) \[({IP})\] by (\S+) \[{IP}\] with ")
    if m:
        f.looked_up = True
        f.helo, f.ip, f.by = m.groups()
        return ENOUGH
    m = hit(r"^(\S+) \[\(({IP})\)\] by (\S+) \({IP}\) ")
    if m:
        f.helo, f.ip, f.by = m.groups()
        return ENOUGH
    m = hit(r"^(\S+) \(\[({IP})\]\) by (\S+) \(")  # sendmail
    if m:
        f.looked_up = True
        f.helo, f.ip, f.by = m.groups()
        return ENOUGH
    m = hit(r"^(\S+) \((\S+) \[({IP})\]\).*? by (\S+)\b")  # sendmail
    if m:
        if m.group(2) != "softdnserr":  # couriertcpd: no lookup
            f.looked_up = True
            f.rdns = m.group(2)
        f.helo, f.ip, f.by = m.group(1), m.group(3), m.group(4)
        return ENOUGH
    m = hit(r"^(\S+) \(\[({IP})(?:[.:]\d+)?\]\).*? by (\S+) ")
    if m:
        f.looked_up = True
        f.helo, f.ip, f.by = m.groups()
        return ENOUGH
    m = hit(r"^(\S+) \((\S+) \[({IP})\]\)(?: \(authenticated bits=\d+\))? by (\S+) \(")
    if m:
        f.looked_up = True
        f.helo, f.rdns, f.ip, f.by = m.groups()
        return ENOUGH
    if hit(r"with (?:POP3|IMAP)"):
        return FETCHER
    m = hit(r"^(\S+) \((?:HELO|EHLO) ([^)]*)\) \((\S*@)?\[?({IP})\]?\).* by (\S+) ")
    if m:
        f.looked_up = True
        f.rdns, f.helo, f.ip, f.by = m.group(1), m.group(2), m.group(4), m.group(5)
        f.ident = (m.group(3) or "").removesuffix("@")
        return ENOUGH
    m = hit(r"^(\S+) \((\S*@)?\[?({IP})\]?\).* by (\S+) ")
    if m:
        f.looked_up = True
        f.rdns = f.helo = m.group(1)
        f.ident = (m.group(2) or "").removesuffix("@")
        f.ip, f.by = m.group(3), m.group(4)
        return ENOUGH
    if " with http for " in s:
        m = hit(r"^\[({IP})\] by (\S+) with http for ")
        if m:
            f.ip, f.by = m.groups()
            return ENOUGH
    if " via smap " in s:
        m = hit(r"^(\S+)\(({IP})\) by (\S+) via smap ")
        if m:
            f.looked_up = True
            f.rdns, f.ip, f.by = m.groups()
            return ENOUGH
    m = hit(r"^(\S+)\(({IP}), (?:HELO|EHLO) (\S*)\) by (\S+) via smap ")
    if m:
        f.looked_up = True
        f.rdns, f.ip, f.helo, f.by = m.groups()
        return ENOUGH
    if " (Post" in s:
        m = hit(r"^\[({IP})\] by (\S+) \(Post")
        if m:
            f.ip, f.by = m.groups()
            return ENOUGH
    if " (ArGoSoft" in s:
        m = hit(r"^\[({IP})\] by (\S+) \(ArGoSoft")
        if m:
            f.ip, f.by = m.groups()
            return ENOUGH
    m = hit(r"^({IP}) by (\S+) \((?:SMTPL|InterScan)\b")
    if m:
        f.ip, f.by = m.groups()
        return ENOUGH
    if " with BSMTP" in s and hit(r"^\S+ by \S+ with BSMTP"):
        return SKIP  # not a TCP/IP handover
    m = hit(r"^(\S+) \((\S+) \[({IP})\]\) by (\S+) with ")
    if m:
        f.looked_up = True
        f.helo, f.rdns, f.ip, f.by = m.groups()
        return ENOUGH
    m = hit(r"^(\S+) \((?:HELO|EHLO) (\S*)\) \((?:(\S+)@)?({IP}).*?\) by (\S+) with ")
    if m:
        f.looked_up = True
        f.rdns, f.helo, f.ip, f.by = m.group(1), m.group(2), m.group(4), m.group(5)
        if m.group(3) is not None:
            f.ident = m.group(3)
        return ENOUGH
    m = hit(r"^\[({IP})\] \((?:account \S+ )?(?:HELO|EHLO) (\S*)\) by (\S+) \(")
    if m:
        f.ip, f.helo, f.by = m.groups()
        return ENOUGH
    if " (CommuniGate Pro" in s:
        m = hit(r"^(\S+) \(\[({IP})\] verified\) by (\S+) \(")
        if m:
            f.looked_up = True
            f.rdns = f.helo = m.group(1)
            f.ip, f.by = m.group(2), m.group(3)
            return ENOUGH
    m = hit(r"^\(\[({IP})\]\) by (\S+) with ")
    if m:
        f.ip, f.by = m.groups()
        return ENOUGH
    m = hit(r"^([^\d]\S+) \(({IP})\) by (\S+) ")
    if m:
        f.helo, f.ip, f.by = m.groups()
        return ENOUGH
    if hit(r"^\S+ \(\S+\) by \S+ \(Content Technologies "):
        return SKIP
    m = hit(r"^(\S+) \(\[({IP})\] \[(\S+)\]\) by (\S+) with ")
    if m:
        f.helo, f.ip, f.by = m.group(1), m.group(2), m.group(4)
        return ENOUGH
    m = hit(r"^({IP}) by (\S+) with ")
    if m:
        f.ip, f.by = m.groups()
        return ENOUGH
    m = hit(r"^(\S+) \((\S+)\[({IP})\]\) by (\S+) ")
    if m:
        f.looked_up = True
        f.helo, f.rdns, f.ip, f.by = m.groups()
        return ENOUGH
    for pattern in (r"^\[({IP})\]\S+ \((?:HELO|EHLO) (\S*)\) by (\S+) ",
                    r"^({IP}) \((?:HELO|EHLO) (\S*)\) by (\S+) "):
        m = hit(pattern)
        if m:
            f.ip, f.helo, f.by = m.groups()
            return ENOUGH
    m = hit(r"^(\S+) \[({IP})\] by (\S+) ")
    if m:
        f.helo, f.ip, f.by = m.groups()
        return ENOUGH
    m = hit(r"^(\S+)\(({IP})\) by (\S+) ")
    if m:
        f.rdns, f.ip, f.by = m.groups()
        return ENOUGH
    m = hit(r"^\[({IP})\] by (\S+) \(MailGate ")
    if m:
        f.ip, f.by = m.groups()
        return ENOUGH
    m = hit(r"^(\S+) \(unverified \[({IP})\]\) by (\S+) ")
    if m:
        f.helo, f.ip, f.by = m.groups()
        return ENOUGH
    m = hit(r"^({IP}) \([A-Za-z][^)]+\) by (\S+) with ")
    if m:
        f.ip, f.by = m.groups()
        return ENOUGH
    m = hit(r"^\[({IP})\] \(([^)]+)\) by (\S+) ")
    if m:
        f.ip, sub, f.by = m.groups()
        _sub_helo_ident(sub, f)
        return ENOUGH
    m = hit(r"^(\S+) \((?:\S+@)?({IP})\) by (\S+) with ")
    if m:
        f.rdns, f.ip, f.by = m.groups()
        return ENOUGH
    m = hit(r'^(\S+)\(({IP})\)(?:, claiming to be "(\S+)")? via \S+ by (\S+),')
    if m:
        f.rdns, f.ip, f.helo, f.by = m.group(1), m.group(2), m.group(3) or "", m.group(4)
        if m.group(1) != "UNKNOWN":
            f.looked_up = True
        return ENOUGH
    m = hit(r"^(\S+) \((\S+)@({IP}) with login\) by (\S+\.yahoo\.com) with SMTP")
    if m:
        f.helo, f.ip, f.by = m.group(1), m.group(3), m.group(4)
        return ENOUGH
    m = hit(r"^X-Originating-IP: ({IP})$")  # the pseudo-fields relays() makes
    if m:
        f.ip, f.by = m.group(1), ""
        return ENOUGH
    for pattern in (r"^\S+ \([^\s@]+@{LOCALHOST}\) by \S+ \(", r"^\S+ \S+ by \S+ with local-e?smtp ",
                    r"^127\.0\.0\.1 \(AVG SMTP \S+ \[\S+\]\)", r"^\S+@\S+ by \S+ by uid \S+ ",
                    r"^\S+@\S+ by \S+ ", r"^Unknown/Local \(", r"^{LOCALHOST} \((?:\S+@)?{LOCALHOST}[)\[]",
                    r"^\S+ \((?:\S+@)?{LOCALHOST}\) ", r"^\S+ \(\S+@\S+ \[{LOCALHOST}\]\) ",
                    r"^\(AUTH: \S+\) by \S+ with ", r"^localhost \(localhost \[\[UNIX: localhost\]\]\) by ",
                    r"^\S+\.amazon\.com by \S+\.amazon\.com with ESMTP \(peer crosscheck: ",
                    r"^[^.]+ by \S+ with Novell_GroupWise", r"^no\.name\.available by \S+ via smtpd \(for "):
        if hit(pattern):
            return SKIP
    if hit(r"^\S+ by \S+ \(.{0,100}\) with qmail-scanner"):
        return SKIP  # its envelope sender belongs to the next field (not kept here)
    for pattern in (r"^\S+ by \S+ with local",
                    r"^\S+ \(\[unix socket\]\) by \S+ \(Cyrus v[0-9]*?\.[0-9]*?\.[0-9]*?\) with LMTPA",
                    r"^\S+ by \S+ (?:with|via|for|\()", r"^\S+ (?:(?:with|via|for) \S+|\(unverified\)) by\b",
                    r"^\S+ \(unknown\) by \S+ \(SG\) with \b", r"^\S+ \(\S+ \[local\]\) by \S+ \(OpenSMTPD\) with \b",
                    r"\(LSMTP for", r"^\(\[{LOCALHOST}\]\) with MailEnable ",
                    r"^facebook\.com \([^)]+\) by facebook\.com with Thrift id \S+$",
                    r"^\S+ named \S+ by gmailapi\.google\.com with HTTPREST$", r"^\S+ id \S+$",
                    r"^\[<.*? \(Jetsend"):
        if hit(pattern):
            return SKIP
    if not f.helo:
        m = hit(r"^(\S+)[^-A-Za-z0-9.]")
        if m:
            f.helo = m.group(1)
    return None


def _relay(f: _Fields) -> Relay:
    rdns = f.rdns.rstrip(".")
    if re.match(r"(?i)unknown$", rdns) or rdns.startswith("["):
        rdns = ""
    ip = re.sub(r"(?i)^ipv6:", "", f.ip)
    ip = ip.removeprefix("[").removesuffix("]")
    ip = re.sub(r"(?is)%[A-Z0-9._~-]*\Z", "", ip)
    ip = re.sub(r"(?i)^0*:0*:(?:0*:)*ffff:(\d+\.\d+\.\d+\.\d+)$", r"\1", ip)
    envfrom = ""
    if f.envfrom is not None:
        envfrom = re.sub(r">*\s*$", "", re.sub(r"^\s*<*", "", f.envfrom))
    return Relay(ip=STRIP_RE.sub("!", ip), rdns=STRIP_RE.sub("!", rdns), helo=STRIP_RE.sub("!", f.helo),
                 by=STRIP_RE.sub("!", f.by.removesuffix(";")), ident=STRIP_RE.sub("!", f.ident),
                 envfrom=STRIP_RE.sub("!", envfrom), id=f.id, auth=f.auth,
                 no_reverse_dns=not rdns and f.looked_up)


@dataclass
class Relays:
    trusted: list[Relay]
    untrusted: list[Relay]
    internal: list[Relay]
    external: list[Relay]
    unparseable: int = 0

    def header(self, name: str) -> str:
        """The pseudo-header ``name`` (X-Spam-Relays-Untrusted, ...): the relays' strings."""
        part = {"x-spam-relays-trusted": self.trusted, "x-spam-relays-untrusted": self.untrusted,
                "x-spam-relays-internal": self.internal, "x-spam-relays-external": self.external}
        return " ".join(r.as_string() for r in part[name.lower()])


# PerMsgStatus' originating_ip_headers default: webmail senders' addresses, read as relays.
ORIGINATING_IP_HEADERS = ("X-Yahoo-Post-IP", "X-Originating-IP", "X-Apparently-From", "X-SenderIP")


def relays(received: list[str], originating: list[str] = (),  # type: ignore[assignment]
           client: Relay | None = None) -> Relays:
    """The chain, top (newest) first, split where trust ends. ``received``: the
    Received fields, top first; ``originating``: the values of ORIGINATING_IP_HEADERS,
    read as relays after the chain; ``client``: the connecting host, put first when
    no Received field names it (before Postfix's own field is added)."""
    result = Relays([], [], [], [])
    lines = list(received[:MAX_RECEIVED])
    for value in originating:
        m = _re("({IP})").search(value)
        if m:
            lines.append(f"from X-Originating-IP: {m.group(1)}")
    items: list[Relay | str] = []
    for line in lines:
        parsed = parse_received(re.sub(r"\n[ \t]+", " ", line))
        if parsed is None:
            result.unparseable += 1
        elif parsed != SKIP:
            items.append(parsed)
    # The client is first unless a field already names it (Postfix's own, or a hop
    # further down when the chain's top hops are the site's own relays).
    if client is not None and client.ip and not any(
            isinstance(i, Relay) and i.ip == client.ip for i in items):
        items.insert(0, client)
    in_trusted = in_internal = True
    allow_fetch_markers = True
    for item in items:
        if item == FETCHER:
            if allow_fetch_markers:  # a mail fetcher's hop: what came before was local
                result.trusted, result.internal, result.external = [], [], []
            continue
        relay: Relay = item  # type: ignore[assignment]
        if in_trusted and not (relay.private or relay.auth):
            in_trusted = in_internal = False  # no trusted_networks: trust ends at the first public hop
        relay.internal = 1 if in_internal else 0
        if in_trusted:
            result.trusted.append(relay)
            allow_fetch_markers = True
        else:
            result.untrusted.append(relay)
            allow_fetch_markers = False
        (result.internal if in_internal else result.external).append(relay)
    return result
