"""The result headers: what an accepted message says about its scan, written in one place.

Every accepted message gets X-Spamd-Result (every symbol with score and
options), X-Spam-Status, X-Spam-Level, X-Spam-Action, "X-Spam: Yes" for add
header and rewrite subject, and Authentication-Results (authres) under our
authserv-id; rewrite subject also replaces the Subject
(scan.rewrite_subject_pattern). Incoming copies of all of them, and any
Authentication-Results whose authserv-id is ours (``is_own_authres``: as
authres parses it, so comments and a version number do not hide it), are
removed first: a sender cannot forge our verdict. The delivery pipeline applies these edits
(smtpproxy/delivery.py); the hook (hook.py) decides whether they apply.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import authres
import authres.arc
import authres.dmarc

from smtpproxy.common.config import ScanConfig
from smtpproxy.headers import EOL, field_name, split_fields
from smtpproxy.scan.engine import ScanResult

RESULT_HEADERS = ["X-Spamd-Result", "X-Spam-Status", "X-Spam-Level", "X-Spam-Action", "X-Spam"]
MAX_OPTION_CHARS = 100
MAX_LEVEL_STARS = 50
_UNSAFE = re.compile(r"[^\x21-\x7e ]")


def _option(text: str) -> str:
    """An option as header-safe ASCII: the evidence must not break the header."""
    text = _UNSAFE.sub("?", text.replace(",", ";"))
    return text[:MAX_OPTION_CHARS]


def spamd_result(result: ScanResult) -> str:
    """rspamd's X-Spamd-Result: verdict, score / required, then one symbol per folded line."""
    spam = result.action in ("reject", "rewrite subject", "add header")
    lines = [f"default: {spam} [{result.score:.2f} / {result.required_score:.2f}]"]
    for sym in sorted(result.symbols.values(), key=lambda s: (-abs(s.score), s.name)):
        lines.append(f"{sym.name}({sym.score:.2f})[{', '.join(_option(o) for o in sym.options)}]")
    return ";\r\n\t".join(lines)


def authentication_results(authserv_id: str, facts: dict[str, dict]) -> str:
    """The Authentication-Results value (without the field name), built with authres."""
    results = []
    spf = facts.get("spf")
    if spf:
        identity = {"helo": "smtp_helo"}.get(spf.get("identity", ""), "smtp_mailfrom")
        results.append(authres.SPFAuthenticationResult(
            result=spf["result"], **{identity: spf.get("domain") or None}))
    if "dkim" in facts and not facts["dkim"].get("signatures"):
        results.append(authres.DKIMAuthenticationResult(result="none"))
    for dkim in facts.get("dkim", {}).get("signatures", []):
        results.append(authres.DKIMAuthenticationResult(
            result=dkim["result"], header_d=dkim.get("domain"), header_s=dkim.get("selector"),
            header_a=dkim.get("algorithm") or None))
    dmarc = facts.get("dmarc")
    if dmarc:
        # policy.dmarc: the policy the domain asked for (p=, sp= or np=).
        results.append(authres.dmarc.DMARCAuthenticationResult(
            result=dmarc["result"], header_from=dmarc.get("domain") or None,
            policy=dmarc.get("policy") or None))
    arc = facts.get("arc")
    if arc:
        # RFC 8617 10.1: header.oldest-pass is not computed; the newest seal and signature are named.
        results.append(authres.arc.ARCAuthenticationResult(
            result=arc["result"], header_as_d=arc.get("as_domain") or None,
            header_as_s=arc.get("as_selector") or None,
            header_ams_d=arc.get("ams_domain") or None,
            header_ams_s=arc.get("ams_selector") or None))
    header = authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=results)
    return str(header).split(":", 1)[1].strip()


def result_headers(result: ScanResult, authserv_id: str, scan: ScanConfig,
                   content: bytes) -> tuple[list[tuple[str, str]], list[str]]:
    """(fields to add on top, names of fields to remove first) for an accepted message."""
    action = result.action
    headers = [
        ("X-Spamd-Result", spamd_result(result)),
        ("X-Spam-Status", f"{'Yes' if action in ('add header', 'rewrite subject') else 'No'}, "
                          f"score={result.score:.2f} required={result.required_score:.2f}"),
        ("X-Spam-Level", "*" * max(0, min(MAX_LEVEL_STARS, int(result.score)))),
        ("X-Spam-Action", action),
    ]
    if action in ("add header", "rewrite subject"):
        headers.append(("X-Spam", "Yes"))
    headers.append(("Authentication-Results", authentication_results(authserv_id, result.facts)))
    remove = list(RESULT_HEADERS)
    if action == "rewrite subject":
        headers.append(("Subject", scan.rewrite_subject_pattern.format(subject=parse_subject(content))))
        remove.append("Subject")
    return headers, remove


def is_own_authres(value: bytes, authserv_id: str) -> bool:
    """Whether an Authentication-Results value (folded or not) claims ``authserv_id``.

    The authserv-id is the one authres parses (RFC 8601: comments anywhere,
    an optional version after it), compared without case and without a
    trailing dot. A value authres cannot parse is ours when it names our
    authserv-id anywhere: no verifier can read it as anything, and a sender
    has no reason to write our name into it but to pass as us.
    """
    text = EOL.sub(b" ", value).decode("utf-8", "replace").strip()
    ours = authserv_id.rstrip(".").lower()
    try:
        parsed = authres.AuthenticationResultsHeader.parse_value(text).authserv_id
    except Exception:  # authres raises its own SyntaxError and, on odd input, others
        return ours in text.lower()
    return str(parsed).rstrip(".").lower() == ours


def own_authres(authserv_id: str) -> tuple[str, Callable[[bytes], bool]]:
    """The Verdict's ``remove_matching`` rule for Authentication-Results claiming ``authserv_id``."""
    return ("Authentication-Results", lambda value: is_own_authres(value, authserv_id))


def parse_subject(content: bytes) -> str:
    """The raw Subject value (unfolded) for rewriting; empty when absent."""
    for field in split_fields(content)[0]:
        if field_name(field) == b"subject":
            value = field.partition(b":")[2].decode("utf-8", "replace")
            return re.sub(r"(?:\r\n|\n|\r)[ \t]*", " ", value).strip()
    return ""
