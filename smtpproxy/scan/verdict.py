"""From a scan result to what the proxy does with the message, and the headers it gets.

Actions, as the proxy applies them:

  reject           550 5.7.1 (scan.reject_reply); nothing is queued
  soft reject      451 4.7.1 (scan.soft_reject_reply); the sender retries
  greylist         451 4.7.1 on first sight; the retry is accepted after
                   scan.greylist_delay_s. Keyed on the body hash and the
                   envelope, not the client address, so a pool that retries
                   from another IP still passes.
  rewrite subject  accepted, Subject rewritten (scan.rewrite_subject_pattern)
  add header       accepted with "X-Spam: Yes"
  no action        accepted

Every accepted message gets the result headers: X-Spamd-Result (every symbol
with score and options), X-Spam-Status, X-Spam-Level, X-Spam-Action and
Authentication-Results (authres) under our authserv-id. Incoming copies of
all of them, and any Authentication-Results claiming our authserv-id, are
removed first: a sender cannot forge our verdict.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time

import authres
import authres.arc
import authres.dmarc

from smtpproxy.common.config import Config
from smtpproxy.common.store import Store, StoreError
from smtpproxy.scan.bayes.autolearn import autolearn
from smtpproxy.scan.checks.base import CheckContext
from smtpproxy.scan.engine import Engine, ScanResult
from smtpproxy.scan.headers import header_block_end
from smtpproxy.scan.hook import Transaction, Verdict
from smtpproxy.scan.message import parse

logger = logging.getLogger("smtpproxy.scan")

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


def body_hash(content: bytes) -> str:
    return hashlib.sha256(content[header_block_end(content):]).hexdigest()


class EngineHook:
    """The scan hook the proxy calls at end-of-data when scanning is enabled."""

    def __init__(self, cfg: Config, engine: Engine, store: Store | None, resolver, authserv_id: str):
        self.cfg = cfg
        self.engine = engine
        self.store = store
        self.resolver = resolver
        self.authserv_id = authserv_id
        self._own_ar = re.compile(rb"^\s*" + re.escape(authserv_id.encode()) + rb"\s*(;|$)", re.I)

    async def scan(self, txn: Transaction) -> Verdict:
        ctx = CheckContext(
            message=parse(txn.content), client=txn.client, mail_from=txn.mail_from,
            rcpt_tos=txn.rcpt_tos, profile=txn.profile, resolver=self.resolver, store=self.store,
        )
        result = await self.engine.scan(ctx)
        if self.store is not None and self.cfg.scan.bayes.autolearn:
            learned = await autolearn(self.store, self.cfg.scan.bayes, ctx.message, result, txn.profile)
            if learned:
                logger.info("bayes autolearn: %s", learned)
        verdict = await self.verdict(result, txn)
        verdict.scan_action = result.action
        verdict.symbols = tuple(result.symbols)
        verdict.scan_seconds = result.elapsed_s
        return verdict

    async def verdict(self, result: ScanResult, txn: Transaction) -> Verdict:
        scan = self.cfg.scan
        action = result.action
        summary = result.summary()
        if action == "reject":
            return Verdict("reject", scan.reject_reply, summary=summary)
        if action == "soft reject":
            return Verdict("tempfail", scan.soft_reject_reply, summary=summary)
        if action == "greylist":
            waited = await self._greylist(txn)
            if waited is None:
                return Verdict("tempfail", scan.greylist_reply, summary=summary + " greylist=deferred")
            summary += f" greylist=passed after {waited:.0f}s"
        headers = [
            ("X-Spamd-Result", spamd_result(result)),
            ("X-Spam-Status", f"{'Yes' if action in ('add header', 'rewrite subject') else 'No'}, "
                              f"score={result.score:.2f} required={result.required_score:.2f}"),
            ("X-Spam-Level", "*" * max(0, min(MAX_LEVEL_STARS, int(result.score)))),
            ("X-Spam-Action", action),
        ]
        if action in ("add header", "rewrite subject"):
            headers.append(("X-Spam", "Yes"))
        headers.append(("Authentication-Results",
                        authentication_results(self.authserv_id, result.facts)))
        remove = list(RESULT_HEADERS)
        if action == "rewrite subject":
            subject = parse_subject(txn.content)
            headers.append(("Subject", scan.rewrite_subject_pattern.format(subject=subject)))
            remove.append("Subject")
        return Verdict(
            "accept", add_headers=headers, remove_headers=remove,
            remove_matching=[("Authentication-Results", self._own_ar)], summary=summary,
        )

    async def _greylist(self, txn: Transaction) -> float | None:
        """Seconds the sender waited when the retry is let through; None to defer."""
        if self.store is None:
            return 0.0
        scan = self.cfg.scan
        identity = "\0".join([txn.mail_from, *sorted(txn.rcpt_tos), body_hash(txn.content)])
        key = self.store.key("scangl", hashlib.sha256(identity.encode()).hexdigest())
        now = time.time()
        try:
            first = await self.store.get(key)
            if first is None:
                await self.store.set(key, repr(now).encode(), scan.greylist_window_s)
                return None
            waited = now - float(first)
        except (StoreError, ValueError) as exc:
            logger.warning("greylisting skipped, store unusable: %s", exc)
            return 0.0
        return waited if waited >= scan.greylist_delay_s else None


def parse_subject(content: bytes) -> str:
    """The raw Subject value (unfolded) for rewriting; empty when absent."""
    head = content[: header_block_end(content)].decode("utf-8", "replace")
    match = re.search(r"(?im)^subject:[ \t]*(.*(?:\r\n[ \t].*)*)", head)
    return re.sub(r"\r\n[ \t]+", " ", match.group(1)).strip() if match else ""
