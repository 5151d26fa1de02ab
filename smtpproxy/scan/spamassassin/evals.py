"""SpamAssassin ``eval:`` tests computed here, as SpamAssassin's plugins compute them.

Each function reads one message through ``EvalInput`` (the parsed message
model and the header views the header rules use; nothing is parsed again)
and returns whether the test fires. The arguments are the rule's, as
strings (``'undef'`` included, as SpamAssassin passes them). Ported from
SpamAssassin 4.0's HeaderEval, MIMEEval, RelayEval, FreeMail and HTMLEval
plugins and Util's date parser, quirks included where a rule's hit rate
depends on them; the relays come from relays.py, the HTML statistics from
evals_html.py. An ``eval:`` test ``supported`` does not accept stays
skipped (rules.py counts it per function).
"""

from __future__ import annotations

import calendar
import functools
import re
import time
from collections.abc import Callable

from smtpproxy.scan.message import Message
from smtpproxy.scan.spamassassin import relays as relay_chain
from smtpproxy.scan.spamassassin.evals_html import HtmlStats, html_stats

# Util.pm's %TZ: the zone names its date parser knows (others count as -0000).
TZ = {
    "UT": "+0000", "UTC": "+0000", "NDT": "-0230", "AST": "-0400", "ADT": "-0300",
    "NST": "-0330", "EST": "-0500", "EDT": "-0400", "CST": "-0600", "CDT": "-0500",
    "MST": "-0700", "MDT": "-0600", "PST": "-0800", "PDT": "-0700", "HST": "-1000",
    "AKST": "-0900", "AKDT": "-0800", "HADT": "-0900", "HAST": "-1000", "GMT": "+0000",
    "BST": "+0100", "IST": "+0100", "WET": "+0000", "WEST": "+0100", "CET": "+0100",
    "CEST": "+0200", "EET": "+0200", "EEST": "+0300", "MSK": "+0300", "MSD": "+0400",
    "MET": "+0100", "MEZ": "+0100", "MEST": "+0200", "MESZ": "+0200", "BRST": "-0200",
    "BRT": "-0300", "AEST": "+1000", "AEDT": "+1100", "ACST": "+0930", "ACDT": "+1030",
    "AWST": "+0800", "NZST": "+1200", "NZDT": "+1300", "JST": "+0900", "KST": "+0900",
    "HKT": "+0800", "SGT": "+0800", "PHT": "+0800", "IDT": "+0300",
}
FOLD_RE = re.compile(r"\r?\n\s+")
COMMA_RE = re.compile(r", *")
SPACES_RE = re.compile(r"\s+")
MONTHS = "jan feb mar apr may jun jul aug sep oct nov dec".split()
_MON = "(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
DATE_DMY_RE = re.compile(r" (\d+) " + _MON + r" (\d{4}) ", re.I | re.A)
DATE_MDTY_RE = re.compile(r" " + _MON + r" +(\d+) \d+:\d+:\d+ (\d{4}) ", re.I | re.A)
DATE_DMYY_RE = re.compile(r" (\d+) " + _MON + r" (\d{2,3}) ", re.I | re.A)
TIME_RE = re.compile(r" (\d?\d):(\d\d)(:(\d\d))? ", re.A)
NUMERIC_TZ_RE = re.compile(r" ([-+]\d{4}) ", re.A)
NAMED_TZ_RE = re.compile(r"\b([A-Z]{2,4}(?:-DST)?)\b", re.A)
# A date in a Received field, as HeaderEval finds it.
RECEIVED_DATE_RE = re.compile(r"(\s.?\d+ \S\S\S \d+ \d+:\d+:\d+ \S+)", re.A)
OUTLOOK_MSGID_RE = re.compile(r"<[0-9a-f]{4}([0-9a-f]{8})\$[0-9a-f]{8}\$[0-9a-f]{8}@")
# Constants.pm's CHARSETS_LIKELY_TO_FP_AS_CAPS, in an encoded word.
CAPS_FP_CHARSET_RE = re.compile(
    r"=\?[-_a-z0-9]*(?:koi|jp|jis|euc|gb|big5|isoir|cp1251|windows-1251|georgianps|pt154|tis)"
    r"[-_a-z0-9]*\?", re.I | re.A)
SUBJECT_PREFIX_RE = re.compile(r"^(?:(?:Re|Fwd|Fw|Aw|Antwort|WG|SV|VB|VS|VL):\s*)+", re.I)
NOT_LETTER_RE = re.compile(r"[^a-zA-Z]")
# HeaderEval's _check_recipients constants ("best experimentally derived values").
TOCC_SORTED_COUNT = 7
TOCC_SIMILAR_COUNT = 5
TOCC_SIMILAR_LENGTH = 2


def parse_rfc822_date(text: str) -> int | None:
    """Util.pm's parse_rfc822_date: seconds since the epoch, or None. Lenient the
    same way: the first day-month-year anywhere, invalid fields forced into range."""
    s = " " + text + " "
    if "," in s:
        s = COMMA_RE.sub(" ", s)
    s = SPACES_RE.sub(" ", s)
    m = DATE_DMY_RE.search(s)
    if m:
        dd, mon, yyyy = m.group(1), m.group(2), m.group(3)
    else:
        m = DATE_MDTY_RE.search(s)
        if m:
            dd, mon, yyyy = m.group(2), m.group(1), m.group(3)
        else:
            m = DATE_DMYY_RE.search(s)
            if not m:
                return None
            dd, mon, yyyy = m.group(1), m.group(2), m.group(3)
    s = s[:m.start()] + " " + s[m.end():]
    year = int(yyyy)
    if len(yyyy) == 2 and year < 50:
        year += 2000
    elif len(yyyy) != 4:
        year += 1900
    hh = mm = ss = 0
    m = TIME_RE.search(s)
    if m:
        hh, mm, ss = int(m.group(1)), int(m.group(2)), int(m.group(4) or 0)
        s = s[:m.start()] + " " + s[m.end():]
    tzoff = None
    m = NUMERIC_TZ_RE.search(s)
    if m:
        tzoff = m.group(1)
    else:
        m = NAMED_TZ_RE.search(s)
        if m:
            tzoff = TZ.get(m.group(1))
    tzoff = tzoff or "-0000"
    month = MONTHS.index(mon.lower()) + 1
    day = int(dd)
    ss, mm, hh = min(ss, 59), min(mm, 59), min(hh, 23)
    max_dd = 31
    if month in (4, 6, 9, 11):
        max_dd = 30
    elif month == 2:
        max_dd = 29 if calendar.isleap(year) else 28
    if day > max_dd:
        day = 1
        month += 1
        if month > 12:
            month, year = 1, year + 1
    year = min(max(year, 1970), 2037)
    if day < 1:  # Time::Local croaks on day 0
        return None
    seconds = calendar.timegm((year, month, day, hh, mm, ss))
    offset = (int(tzoff[1:3]) * 60 + int(tzoff[3:5])) * 60
    if tzoff[0] == "-":
        return seconds + offset
    return 0 if seconds < offset else seconds - offset


class Freemail:
    """The FreeMail plugin's lists, from the rule files' freemail_domains lines, and
    RegistryBoundaries' (util_rb_tld, util_rb_2tld, util_rb_3tld) its tests need."""

    # FreeMail.pm's $email_welcomelist: role and machine addresses are never "freemail".
    ROLE_RE = re.compile(
        r"^(?:abuse|support|sales|info|helpdesk|contact|kontakt|(?:post|host|domain)master"
        r"|undisclosed.*|request-[a-f0-9]{16}|bounced?-"
        r"|[a-f0-9]{8}(?:\.[a-f0-9]{8}|-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12})"
        r"|.+=.+=.+)@", re.I)

    # FreeMail.pm's email_regex, its valid-TLD ending checked apart (tld_ok).
    EMAIL_RE = re.compile(
        r"(?=.{0,64}@)(?<![a-z0-9!#$%&'*+/=?^_`{|}~-])([a-z0-9!#$%&'*+/=?^_`{|}~-]+"
        r"(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:[a-z0-9](?:[a-z0-9-]{0,59}[a-z0-9])?\.){1,4}"
        r"([a-z0-9-]+))(?![a-z0-9-]|\.[a-z0-9])", re.I | re.A)
    # Body addresses that are not someone to write to: in a URL, or a header-like "x@y>" / "x@y word:".
    BODY_URL_RE = re.compile(r"(?i)<?https?://\S{0,255}(?:@|%40)\S{0,255}")
    # skip_replyto_envfrom: bulk and bounce senders, whose Reply-To is not a sign.
    BULK_ENVFROM_RE = re.compile(
        r"(?:^(?:post|host|domain)master|^double-bounce|^(?:sentto|owner|return|(?:gr)?bounced?)-.+"
        r"|-(?:request|bounces?|admin|owner)|\b(?:do[._-t]?)?no[._-t]?repl(?:y|ies)|.+=.+)@", re.I)
    HEADERLIKE_RE = re.compile(r"<?(?<!mailto:)" + EMAIL_RE.pattern + r"(?:>|\s{1,10}(?!(?:fa(?:x|csi)|tel"
                               r"|phone|e?-?mail))[a-z]{2,11}:)", re.I | re.A)
    MAILTO_RE = re.compile(r"""(?i)<a\s[^>]*?\bhref\s*=\s*["']?\s*mailto:([^"'\s>?]+)""")
    MAX_BODY_EMAILS = 5  # freemail_max_body_emails
    MAX_BODY_FREEMAILS = 3  # freemail_max_body_freemails

    def __init__(self, domains: set[str], wildcards: set[str], welcomelist: set[str],
                 valid_tlds: set[str] = frozenset(),  # type: ignore[assignment]
                 two_level: set[str] = frozenset(), three_level: set[str] = frozenset()):  # type: ignore[assignment]
        self.valid_tlds = frozenset(valid_tlds)
        self.two_level, self.three_level = frozenset(two_level), frozenset(three_level)
        self.domains = frozenset(domains)
        self.welcomelist = frozenset(welcomelist)
        self.wildcard_re = None
        if wildcards:
            alternatives = "|".join(sorted(
                re.escape(w).replace("\\?", ".").replace("\\*", "[^.]*") for w in wildcards))
            self.wildcard_re = re.compile(r"@(?:" + alternatives + r")$")

    @property
    def available(self) -> bool:
        return bool(self.domains or self.wildcard_re)

    def is_freemail(self, email: str) -> bool:
        if not email or email in self.welcomelist:
            return False
        domain = email.rpartition("@")[2]
        if domain in self.welcomelist or self.ROLE_RE.search(email):
            return False
        return domain in self.domains or bool(self.wildcard_re and self.wildcard_re.search(email))


class EvalInput:
    """One message as the eval tests read it; values they share are computed once."""

    def __init__(self, msg: Message, header_values: Callable[[str], list[str]],
                 freemail: Freemail | None = None,
                 relays: Callable[[], relay_chain.Relays] | None = None,
                 body_lines: Callable[[], list[str]] | None = None,
                 facts: dict | None = None):
        self.msg = msg
        # What our SPF, DKIM and DMARC checks found (their ctx.facts), for the
        # SPF, DKIM and DMARC plugins' tests; absent: those tests do not fire.
        self.facts = facts or {}
        self._header_values = header_values  # check.py's header view: "To:addr", "ToCc", ...
        self._values: dict[str, list[str]] = {}
        # The body as the body rules read it (Subject first, HTML rendered), as text.
        self.body_lines = body_lines or (lambda: [msg.subject, *msg.text_parts, *msg.html_texts])
        self.freemail = freemail
        self._relays = relays
        self._memo: dict[str, object] = {}

    def header_values(self, spec: str) -> list[str]:
        """The values of ``spec`` as the header rules read them (several tests ask the same)."""
        values = self._values.get(spec)
        if values is None:
            values = self._values[spec] = self._header_values(spec)
        return values

    @property
    def relays(self) -> relay_chain.Relays:
        """The relay chain (check.py builds it once per message for the header rules too)."""
        if self._relays is None:
            chain = relay_chain.relays(self.header_values("Received:raw"))
            self._relays = lambda: chain
        return self._relays()

    def fields(self, spec: str) -> list[str]:
        """The values of ``spec``. Received is read raw and unfolded as SpamAssassin
        unfolds (a line end and the white space after it become one space), so the
        dates in it read as they do there; it carries no encoded words."""
        if spec.lower() == "received":
            return [FOLD_RE.sub(" ", v) for v in self.header_values("Received:raw")]
        return self.header_values(spec)

    def get(self, spec: str) -> str | None:
        """SpamAssassin's $pms->get(spec, undef): the values joined by newlines, None if absent."""
        values = self.fields(spec)
        if not values:
            return None
        return "\n".join(values)

    def text(self, spec: str) -> str:
        """$pms->get(spec): "" when absent."""
        return self.get(spec) or ""

    def memo(self, key: str, compute: Callable[[], object]) -> object:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]


def _undef_or(value: str) -> float | None:
    return None if value == "undef" else float(value)


# ---------------------------------------------------------------- dates (HeaderEval)

def _date_header_time(ev: EvalInput) -> int | None:
    for name in ("Resent-Date", "Date"):
        for value in ev.fields(name):
            if value:
                parsed = parse_rfc822_date(value)
                if parsed is not None:
                    return parsed
    return None


def _received_times(ev: EvalInput) -> tuple[list[int], int | None]:
    """HeaderEval's _get_received_header_times: the Received dates, top first, and
    the time a fetchmail-style local hop gives (None)."""
    received = [r for r in ev.fields("Received") if r.strip()]
    if not received:
        return [], None
    local = []
    if re.search(r"\bfrom (?:localhost\s|(?:\S+ ){1,2}\S*\b127\.0\.0\.1\b)", received[0]) \
            or re.search(r"qmail \d+ invoked by uid \d+", received[0]):
        local.append(received.pop(0))
    if received and re.search(r"\bby localhost with \w+ \(fetchmail-[\d.]+", received[0]):
        local.append(received.pop(0))
    elif local:
        received.insert(0, local.pop(0))
    fetchmail = []
    now = time.time()
    for line in local:
        m = RECEIVED_DATE_RE.search(line)
        if m:
            parsed = parse_rfc822_date(m.group(1))
            if parsed is not None and now >= parsed:
                fetchmail.append(parsed)
    times = []
    for line in received:
        m = RECEIVED_DATE_RE.search(line)
        if m:
            parsed = parse_rfc822_date(m.group(1))
            if parsed is not None:
                times.append(parsed)
    return times, (max(fetchmail) if fetchmail else None)


def _date_diff(ev: EvalInput) -> int:
    """Date: minus the closest Received date (0 when either is missing)."""
    date = _date_header_time(ev)
    if date is None:
        return 0
    times, _ = _received_times(ev)
    if not times:
        return 0
    diffs = [date - t for t in times]
    if len(diffs) > 1 and diffs[-1] == 0:  # the last Received without difference does not count
        diffs.pop()
    return min(diffs, key=abs)  # Perl's sort is stable: the first of equal distances


def check_for_shifted_date(ev: EvalInput, low: str = "undef", high: str = "undef") -> bool:
    diff = ev.memo("date_diff", lambda: _date_diff(ev))
    lo, hi = _undef_or(low), _undef_or(high)
    return (lo is None or diff >= 3600 * lo) and (hi is None or diff < 3600 * hi)  # type: ignore[operator]


# ---------------------------------------------------------------- Message-ID (HeaderEval)

def check_outlook_message_id(ev: EvalInput) -> bool:
    """An Outlook-style Message-ID whose time token is far from both the Date
    and the Received date (Outlook derives it from the sending time)."""
    m = OUTLOOK_MSGID_RE.match(ev.text("MESSAGEID"))
    if m is None:
        return False
    token = int(m.group(1), 16)
    x, y, fudge = 0.0023283064365387, 27111902.8329849, 250
    date = parse_rfc822_date(ev.text("Date")) or 0
    if abs(token - int(date * x + y)) < fudge:
        return False
    # As written in HeaderEval, the whole Received text is parsed: its first date counts.
    received = parse_rfc822_date(ev.text("Received")) or 0
    return abs(token - int(received * x + y)) >= fudge


def gated_through_received_hdr_remover(ev: EvalInput) -> bool:
    """Mail through a list manager that drops Received fields (ezmlm, MSN groups)."""
    listing = ev.get("Mailing-List")
    if listing is not None and re.search(r"^contact \S+@\S+; run by ezmlm$", listing, re.M):
        if re.search(r"^mailing list \S+@\S+", ev.text("Delivered-To"), re.M) and re.search(
                r"qmail \d+ invoked (?:from network|by .{3,20})\); \d+ ... \d+", ev.text("Received")):
            return True
    received = ev.get("Received")
    if received is None:
        return True  # no Received fields: the tests reading them cannot run
    return bool(re.search(r"from groups\.msn\.com \(\S+\.msn\.com ", received))


def check_messageid_not_usable(ev: EvalInput) -> bool:
    if re.search(r"<mailto:(?:leave-\S+|\S+-unsubscribe)@\S+>$", ev.text("List-Unsubscribe"), re.I):
        return True
    if gated_through_received_hdr_remover(ev):
        return True
    received = ev.text("Received")
    return "/CWT/DCE)" in received or "iPlanet Messaging Server" in received


# ---------------------------------------------------------------- recipients (HeaderEval)

def _recipients(ev: EvalInput) -> tuple[bool, float]:
    inputs: list[str] = []
    for spec in ("ToCc:addr", "Bcc:addr"):
        inputs += ev.header_values(spec)
        if len(inputs) >= TOCC_SIMILAR_COUNT:
            break
    address: list[str] = []
    previous = ""
    for current in inputs:  # neighbouring duplicates go; Perl's loop ends at a false value
        if current in ("", "0"):
            break
        if current.lower() != previous.lower():
            address.append(current)
            previous = current
        if len(address) == 256:
            break
    is_sorted = len(address) >= TOCC_SORTED_COUNT and address == sorted(address)
    similar = 0.0
    if len(address) >= TOCC_SIMILAR_COUNT:
        user = [a[:TOCC_SIMILAR_LENGTH] for a in address]
        # A map over m/\@(.*)/ drops addresses without "@": the lists can shift, as in Perl.
        fqhn = [m.group(1) for a in address if (m := re.search(r"@(.*)", a))]
        host = [h[:TOCC_SIMILAR_LENGTH] for h in fqhn]
        hits = combinations = 0
        for i in range(len(address)):
            for j in range(i + 1, len(address)):
                hits += user[i] == user[j]
                hi_, hj = (host[i] if i < len(host) else ""), (host[j] if j < len(host) else "")
                fi, fj = (fqhn[i] if i < len(fqhn) else ""), (fqhn[j] if j < len(fqhn) else "")
                hits += hi_ == hj and fi != fj
                combinations += 1
        similar = hits / combinations
    return is_sorted, similar


def sorted_recipients(ev: EvalInput) -> bool:
    return ev.memo("recipients", lambda: _recipients(ev))[0]  # type: ignore[index]


def similar_recipients(ev: EvalInput, low: str = "undef", high: str = "undef") -> bool:
    similar = ev.memo("recipients", lambda: _recipients(ev))[1]  # type: ignore[index]
    lo, hi = _undef_or(low), _undef_or(high)
    return (lo is None or similar >= lo) and (hi is None or similar < hi)


def check_for_missing_to_header(ev: EvalInput) -> bool:
    # A field present but empty is not missing: SpamAssassin's value still holds its line end.
    return ev.get("To") is None and ev.get("Apparently-To") is None


def subject_is_all_caps(ev: EvalInput) -> bool:
    subject = SUBJECT_PREFIX_RE.sub("", ev.text("Subject").strip())
    if not re.search(r"\s", subject) or len(subject) < 10:  # one word, or short
        return False
    letters = NOT_LETTER_RE.sub("", subject)
    if CAPS_FP_CHARSET_RE.search(ev.text("Subject:raw")):
        return False
    return bool(letters) and letters == letters.upper()


# ---------------------------------------------------------------- MIME structure (MIMEEval)

def _mime_counts(ev: EvalInput) -> tuple[int, int]:
    """(text/html parts, other text/* parts), attachments included, as MIMEEval counts."""
    html = sum(1 for p in ev.msg.parts if p.content_type == "text/html")
    text = sum(1 for p in ev.msg.parts if p.content_type.startswith("text") and p.content_type != "text/html")
    return html, text


def check_for_mime_html(ev: EvalInput) -> bool:
    if re.match(r"text/html", ev.text("Content-Type"), re.I):
        return True
    return ev.memo("mime_counts", lambda: _mime_counts(ev))[0] > 0  # type: ignore[index]


def check_for_mime_html_only(ev: EvalInput) -> bool:
    if re.match(r"text/html", ev.text("Content-Type"), re.I):
        return True
    html, text = ev.memo("mime_counts", lambda: _mime_counts(ev))  # type: ignore[misc]
    return html > 0 and text == 0


# ---------------------------------------------------------------- registry domains (RegistryBoundaries)

US_STATES = frozenset(
    "ak al ar az ca co ct dc de fl ga gu hi ia id il in ks ky la ma md me mi mn mo ms mt nc nd ne nh nj "
    "nm nv ny oh ok or pa pr ri sc sd tn tx ut va vi vt wa wi wv wy".split())


def registered_domain(domain: str, two_level: frozenset[str], three_level: frozenset[str]) -> str:
    """RegistryBoundaries' split_domain, the domain half: the name under the public
    suffix the util_rb_2tld/util_rb_3tld lists know (example.co.uk, x.ca.us...)."""
    parts = [p for p in domain.lower().split(".") if p]
    host: list[str] = []
    while len(parts) > 1:
        if len(parts) == 2 and ".".join(parts) in two_level:
            break
        if len(parts) == 3 and (parts[1] in US_STATES if parts[2] == "us" else ".".join(parts) in three_level):
            break
        if len(parts) == 4 and parts[3] == "us" and parts[2] in US_STATES and (
                (parts[0] == "pvt" and parts[1] == "k12") or parts[0] in ("ci", "co")):
            break
        host.append(parts.pop(0))
    if host:
        parts.insert(0, host.pop())
    return ".".join(parts)


def check_mailfrom_matches_rcvd(ev: EvalInput) -> bool:
    """WLBLEval: the envelope sender's domain is the registered domain of the
    first untrusted relay's rDNS (or of a trusted one's when all are trusted)."""
    sender = ev.header_values("EnvelopeFrom:addr")
    m = re.search(r"@([^@]+\.[^@]+)\Z", sender[0]) if sender else None
    if m is None or ev.freemail is None:
        return False
    fm = ev.freemail
    chain = ev.relays
    relays = chain.untrusted[:1] or chain.trusted
    domain = registered_domain(m.group(1), fm.two_level, fm.three_level)
    return any(r.rdns and registered_domain(r.rdns, fm.two_level, fm.three_level) == domain for r in relays)


# ---------------------------------------------------------------- relays (RelayEval)

IPV4_RE = re.compile(r"^" + relay_chain._V4 + r"$")


def check_all_trusted(ev: EvalInput) -> bool:
    r = ev.relays
    return bool(r.trusted) and not r.untrusted and not r.unparseable


def check_no_relays(ev: EvalInput) -> bool:
    r = ev.relays
    return not r.trusted and not r.untrusted and not r.unparseable


def check_relays_unparseable(ev: EvalInput) -> bool:
    return ev.relays.unparseable > 0


def helo_ip_mismatch(ev: EvalInput) -> bool:
    """An untrusted relay that said HELO with a public IPv4 address outside its own /24."""
    for relay in ev.relays.untrusted:
        if not IPV4_RE.match(relay.helo) or relay_chain.is_private(relay.helo):
            continue
        m = re.match(r"(\d+\.\d+\.\d+\.)", relay.helo)
        if IPV4_RE.match(relay.ip) and not relay.private and relay.helo != relay.ip \
                and m and not relay.ip.startswith(m.group(1)):
            return True
    return False


def check_for_numeric_helo(ev: EvalInput) -> bool:
    untrusted = ev.relays.header("x-spam-relays-untrusted")
    m = re.search(r"(?i)\bhelo=(" + relay_chain._V4 + r")(?=[\x00-\x20,;\[()<>]|\Z)", untrusted)
    return bool(m) and not relay_chain.is_private(m.group(1))


DOTCOM_HELO_RE = re.compile(r"(?:\.|^)(lycos\.com|lycos\.co\.uk|hotmail\.com|localhost\.com|excite\.com"
                            r"|caramail\.com|cs\.com|aol\.com|msn\.com|yahoo\.com|drizzle\.com)$", re.I)


def check_for_no_rdns_dotcom_helo(ev: EvalInput) -> bool:
    """A big-dotcom HELO from a host without rDNS (RelayEval: the last public untrusted relay decides)."""
    result = False
    for relay in ev.relays.untrusted:
        if relay.private:
            continue
        result = bool(DOTCOM_HELO_RE.search(relay.helo)) and relay.no_reverse_dns
    return result


def check_for_forged_yahoo_received_headers(ev: EvalInput) -> bool:
    """From: a yahoo.com address, but Yahoo's servers did not hand the mail over."""
    if not re.search(r"(?i)\byahoo\.com$", ev.text("From:addr")):
        return False
    rcvd = ev.text("Received")
    if ev.text("Resent-From") and ev.text("Resent-To") and ev.text("X-Received"):
        rcvd = ev.text("X-Received")
    rcvd = re.sub(r"\s+", " ", rcvd)
    if gated_through_received_hdr_remover(ev):
        return False
    chain = ev.relays
    trusted, untrusted = chain.header("x-spam-relays-trusted"), chain.header("x-spam-relays-untrusted")
    if re.search(r" rdns=\S+\.yahoo\.com ", trusted) or re.search(r"^[^\]]+ rdns=\S+\.yahoo\.com ", untrusted):
        return False
    for pattern in (r"by web\S+\.mail\S*\.yahoo\.com via HTTP", r"by sonic\S+\.consmr\.mail\S*\.yahoo\.com with HTTP",
                    r"by smtp\S+\.yahoo\.com with SMTP",
                    r"from \[" + relay_chain.IP + r"\] by \S+\.(?:groups|scd|dcn)\.yahoo\.com with NNFMP",
                    r"by \w+\.\w+\.yahoo\.com \(\d+\.\d+\.\d+/\d+\.\d+\.\d+\)(?: with ESMTP)? id \w+"):
        if re.search(pattern, rcvd):
            return False
    if re.search(r"\bmailer\d+\.bulk\.scd\.yahoo\.com\b", rcvd) and \
            re.search(r"(?i)@reply\.yahoo\.com$", ev.text("From:addr")):
        return False
    return True


# ---------------------------------------------------------------- freemail (FreeMail)

@functools.lru_cache(maxsize=64)
def _regex(text: str) -> re.Pattern:
    """A rule argument's regex (Perl's \\d, \\w are ASCII on these octets)."""
    return re.compile(text, re.A)


def check_freemail_header(ev: EvalInput, header: str = "", regex: str | None = None) -> bool:
    """A freemail address in ``header`` (matching ``regex`` when given)."""
    if ev.freemail is None or not ev.freemail.available or not header:
        return False
    pattern = _regex(regex) if regex is not None else None
    for email in (a.lower() for a in ev.header_values(f"{header}:addr")):
        if ev.freemail.is_freemail(email) and (pattern is None or pattern.search(email)):
            return True
    return False


def _body_freemails(ev: EvalInput, body_lines: list[str]) -> set[str] | None:
    """FreeMail's _parse_body: the freemail addresses written in the body (mailto:
    links, then the text); None when there are so many that the body is not used."""
    fm = ev.freemail
    assert fm is not None
    found: list[str] = []
    for html in ev.msg.html_parts:
        for m in fm.MAILTO_RE.finditer(html):
            email = m.group(1).lower()
            e = fm.EMAIL_RE.match(email)
            if e and e.group(2).lower() in fm.valid_tlds and email not in found:
                found.append(email)
                if len(found) >= 20:
                    break
    for line in body_lines:
        if len(found) >= 40:
            break
        line = fm.BODY_URL_RE.sub(" ", line)
        line = fm.HEADERLIKE_RE.sub(" ", line)
        for m in fm.EMAIL_RE.finditer(line):
            if m.group(2).lower() not in fm.valid_tlds:
                continue
            email = m.group(1).lower()
            if email not in found:
                found.append(email)
                if len(found) >= 40:
                    break
    emails: set[str] = set()
    freemails = 0
    for count, email in enumerate(found, 1):
        if count == fm.MAX_BODY_EMAILS:
            return None
        if fm.is_freemail(email):
            freemails += 1
            if freemails == fm.MAX_BODY_FREEMAILS:
                return None
            emails.add(email)
    return emails


def check_freemail_replyto(ev: EvalInput, what: str = "replyto") -> bool:
    """Reply-To (or, for "reply", From) a freemail address other than From's, or
    other than a freemail address the body asks to write to."""
    fm = ev.freemail
    if fm is None or not fm.available or what not in ("replyto", "reply"):
        return False
    envfrom = ev.header_values("EnvelopeFrom")
    if envfrom and fm.BULK_ENVFROM_RE.search(envfrom[0]):
        return False
    from_addrs = [a.lower() for a in ev.header_values("From:addr")]
    replyto_addrs = [a.lower() for a in ev.header_values("Reply-To:addr")]
    from_is_fm = any(fm.is_freemail(a) for a in from_addrs)
    replyto_is_fm = any(fm.is_freemail(a) for a in replyto_addrs)
    from_not_in_replyto = not any(a in replyto_addrs for a in from_addrs)
    if from_is_fm and replyto_is_fm and from_not_in_replyto:
        return True
    if what == "replyto" and not replyto_is_fm:
        return False
    if what == "reply" and ((replyto_addrs and not replyto_is_fm) or not from_is_fm):
        return False
    body = ev.memo("body_freemails", lambda: _body_freemails(ev, ev.body_lines()))
    if not body:
        return False
    reply_addrs = replyto_addrs if what == "replyto" or replyto_is_fm else from_addrs
    return any(b != r for b in body for r in reply_addrs)  # type: ignore[union-attr]


def _all_from_addrs(ev: EvalInput) -> list[str]:
    """PerMsgStatus' all_from_addrs: Resent-From, else From and the envelope senders."""
    addrs = ev.header_values("Resent-From:first:addr")
    if not addrs:
        addrs = [re.sub(r"\.+", ".", a) for spec in (
            "From:addr", "Envelope-Sender:addr", "Resent-Sender:addr", "X-Envelope-From:addr",
            "EnvelopeFrom:addr") for a in ev.header_values(spec) if a]
    return list(dict.fromkeys(addrs))


def check_freemail_from(ev: EvalInput, regex: str | None = None) -> bool:
    if ev.freemail is None or not ev.freemail.available:
        return False
    pattern = _regex(regex) if regex is not None else None
    for email in dict.fromkeys(a.lower() for a in _all_from_addrs(ev)):
        if email and ev.freemail.is_freemail(email) and (pattern is None or pattern.search(email)):
            return True
    return False


# ---------------------------------------------------------------- HTML (HTMLEval)

# The statistics evals_html.py computes (the others' tests stay skipped).
HTML_TESTS = {"html"}
HTML_RANGES = {"length", "closed_extra_ratio"}
HTML_TEXTS = {"anchor", "comment", "title"}


def _html(ev: EvalInput) -> list[HtmlStats]:
    """One HtmlStats per HTML part SpamAssassin renders (a non-empty text/html part)."""
    return ev.memo("html", lambda: [html_stats(h) for h in ev.msg.html_parts if h])  # type: ignore[return-value]


def html_test(ev: EvalInput, test: str) -> bool:
    return test == "html" and bool(_html(ev))  # HTML_MESSAGE: there is HTML


def html_tag_exists(ev: EvalInput, tag: str) -> bool:
    return any(tag in st.inside for st in _html(ev))


def html_image_only(ev: EvalInput, low: str, high: str) -> bool:
    """An image, and the HTML's length in (low, high]."""
    lo, hi = float(low), float(high)
    return any("img" in st.inside and lo < st.length <= hi for st in _html(ev))


def html_range(ev: EvalInput, test: str, low: str, high: str = "inf") -> bool:
    lo = float(low)
    for st in _html(ev):
        value = getattr(st, test)
        if value is None:
            continue
        if high == "inf":
            if value > lo:
                return True
        elif lo < value <= float(high):
            return True
    return False


def html_text_match(ev: EvalInput, what: str, regex: str) -> bool:
    pattern = _regex(regex)
    return any(pattern.search(text) for st in _html(ev) for text in getattr(st, what))


def supported(fn: str, args: tuple[str, ...]) -> bool:
    """Whether ``fn(*args)`` is computed here (some functions only for some arguments)."""
    if fn not in EVALS:
        return False
    if fn == "html_test":
        return bool(args) and args[0] in HTML_TESTS
    if fn == "html_range":
        return len(args) >= 2 and args[0] in HTML_RANGES
    if fn == "html_text_match":
        return len(args) == 2 and args[0] in HTML_TEXTS
    return True


# ---------------------------------------------------------------- SPF, DKIM, DMARC plugins
# Read from our own checks' results (they run first), never recomputed. The
# rules calling these run for the metas but are not emitted: our SPF, DKIM and
# DMARC symbols already score those results (check.py, AUTH_EVALS).

def _spf_is(result: str) -> Callable[[EvalInput], bool]:
    def test(ev: EvalInput) -> bool:
        return ev.facts.get("spf", {}).get("result") == result
    test.__name__ = f"check_for_spf_{result}"
    return test


SPF_EVALS = [_spf_is(r) for r in ("pass", "neutral", "none", "fail", "softfail", "permerror", "temperror")]


def _dkim_signatures(ev: EvalInput) -> list[dict]:
    return ev.facts.get("dkim", {}).get("signatures", [])


def _domain_listed(domain: str, domains: tuple[str, ...]) -> bool:
    """No list: any domain; else the domain or a ``*.parent`` wildcard of it, as the DKIM plugin matches."""
    if not domains:
        return True
    domain = domain.lower()
    for listed in domains:
        listed = listed.strip("'\"").lower()
        if listed.startswith("*.") and (domain == listed[2:] or domain.endswith(listed[1:])):
            return True
        if domain == listed:
            return True
    return False


def check_dkim_signed(ev: EvalInput, *domains: str) -> bool:
    return any(_domain_listed(s.get("domain", ""), domains) for s in _dkim_signatures(ev))


def check_dkim_valid(ev: EvalInput, *domains: str) -> bool:
    return any(s.get("result") == "pass" and _domain_listed(s.get("domain", ""), domains)
               for s in _dkim_signatures(ev))


def _valid_for(ev: EvalInput, author: str, domains: tuple[str, ...]) -> bool:
    """A valid signature whose d= is ``author``'s domain or a parent of it."""
    author = author.lower()
    for sig in _dkim_signatures(ev):
        d = sig.get("domain", "").lower()
        if sig.get("result") == "pass" and d and (author == d or author.endswith("." + d)) \
                and _domain_listed(d, domains):
            return True
    return False


def check_dkim_valid_author_sig(ev: EvalInput, *domains: str) -> bool:
    return bool(ev.msg.from_domain) and _valid_for(ev, ev.msg.from_domain, domains)


def check_dkim_valid_envelopefrom(ev: EvalInput, *domains: str) -> bool:
    sender = (ev.header_values("EnvelopeFrom") or [""])[0]
    return "@" in sender and _valid_for(ev, sender.rpartition("@")[2], domains)


def check_dmarc_pass(ev: EvalInput) -> bool:
    return ev.facts.get("dmarc", {}).get("result") == "pass"


def _dmarc_fail_with(policy: str) -> Callable[[EvalInput], bool]:
    def test(ev: EvalInput) -> bool:
        dmarc = ev.facts.get("dmarc", {})
        return dmarc.get("result") == "fail" and dmarc.get("policy") == policy
    test.__name__ = f"check_dmarc_{policy}"
    return test


DMARC_FAIL_EVALS = [_dmarc_fail_with(p) for p in ("reject", "quarantine", "none")]


def check_dmarc_missing(ev: EvalInput) -> bool:
    """The author domain publishes no DMARC record (a temporary error is not "missing")."""
    dmarc = ev.facts.get("dmarc")
    return dmarc is not None and dmarc.get("result") == "none" and bool(dmarc.get("domain")) \
        and dmarc.get("reason") != "no resolver"


AUTH_EVAL_FUNCTIONS = [
    *SPF_EVALS, check_dkim_signed, check_dkim_valid, check_dkim_valid_author_sig,
    check_dkim_valid_envelopefrom, check_dmarc_pass, *DMARC_FAIL_EVALS, check_dmarc_missing]
AUTH_EVALS = frozenset(fn.__name__ for fn in AUTH_EVAL_FUNCTIONS)


EVALS: dict[str, Callable[..., bool]] = {fn.__name__: fn for fn in (
    check_for_shifted_date, check_outlook_message_id, gated_through_received_hdr_remover,
    check_messageid_not_usable, sorted_recipients, similar_recipients,
    check_for_missing_to_header, subject_is_all_caps, check_for_mime_html,
    check_for_mime_html_only, check_freemail_header, check_freemail_from, check_freemail_replyto,
    check_all_trusted, check_no_relays, check_relays_unparseable, helo_ip_mismatch,
    check_for_numeric_helo, check_for_no_rdns_dotcom_helo, check_for_forged_yahoo_received_headers,
    html_test, html_tag_exists, html_image_only, html_range, html_text_match, check_mailfrom_matches_rcvd,
    *AUTH_EVAL_FUNCTIONS,
)}


def run(ev: EvalInput, fn: str, args: tuple[str, ...]) -> bool:
    """One test; a message that trips the port (hostile input) makes it not fire."""
    try:
        return bool(EVALS[fn](ev, *args))
    except (ValueError, TypeError, IndexError, OverflowError, RecursionError, re.error):
        return False
