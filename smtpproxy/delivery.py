"""The end-of-data pipeline: scan -> decide -> edit headers -> sign -> relay -> outcome.

``Delivery.deliver(txn, downstream)`` takes a complete message whose MAIL
and RCPTs the downstream listener has already accepted, and returns the
Outcome the client's end-of-data gets. In order:

1. scan: the hook (transaction.py's ScanHook) under ``proxy.scan_timeout_s``;
   a timeout or a bug of the scan is a tempfail, never an accept;
2. decide: reject or tempfail abandons the downstream transaction and
   answers the verdict's reply (replies.REJECT / SCAN_TEMPFAIL by default);
3. edit headers: remove the verdict's fields (forged results among them),
   then add its result headers and the trace header, in one pass;
4. sign: DKIM and ARC (sign/), sealing with the ARC status and the
   Authentication-Results the scan verified (never a sender's);
   a signer that must not pass the message unsigned answers SIGN_TEMPFAIL;
5. relay: the message downstream (except a canary of ours, canary.py:
   answered here after 1-4, the downstream transaction abandoned);
   its reply is the client's reply (after a
   250, the verdict's ``after_accept``: the scan remembers outbound
   Message-IDs for REPLY). A
   downstream that fails, or answers what cannot be relayed, is an Outcome
   with ``failure`` set: the session maps it to its 451 in the one place
   every verb uses (server.py, ``ProxySMTP._downstream_failed``).

One Delivery is built per configuration (daemon.py), so a reload swaps the
hook, the signer and their settings together.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass

from smtpproxy import replies
from smtpproxy.common.config import Config
from smtpproxy.controller.history import new_ref, with_ref
from smtpproxy.headers import prepend_headers, remove_headers
from smtpproxy.relay import Downstream, DownstreamError, Reply
from smtpproxy.sign import Signer, SignTempfail
from smtpproxy.transaction import ScanHook, Transaction, Verdict

logger = logging.getLogger("smtpproxy")

INLINE_EDIT_MAX_BYTES = 256 * 1024


@dataclass
class Outcome:
    """What the client's end-of-data gets, and what the session's log line says."""

    reply: Reply
    verdict: str  # the log line's verdict=: accept, reject, tempfail, downstream-refused
    detail: str  # the log line's reply=: the reply, or why it was chosen
    summary: str = ""  # the scan's phrase
    # The downstream failed at end of data: the session drops the connection
    # and answers its generic 451 (``reply`` is then that 451).
    failure: DownstreamError | None = None
    # The reference a refusal carries ("" for none): controller/history.py.
    ref: str = ""


class Delivery:
    def __init__(self, cfg: Config, hook: ScanHook, signer: Signer, stats, hostname: str):
        self.cfg = cfg
        self.hook = hook
        self.signer = signer
        self.stats = stats  # daemon.ProxyStats
        self.hostname = hostname
        # controller/history.HistoryWriter, set by the daemon; None: no history.
        self.history = None
        # canary.CanaryCheck, set by the daemon when canary.enabled; None: no canary.
        self.canary = None

    async def deliver(self, txn: Transaction, downstream: Downstream) -> Outcome:
        verdict = await self._scan(txn)
        self._count(verdict)
        outcome = await self._apply(txn, downstream, verdict)
        if self.history is not None:
            self.history.record(txn, verdict, outcome)  # queued: written off the hot path
        return outcome

    async def _apply(self, txn: Transaction, downstream: Downstream, verdict: Verdict) -> Outcome:
        if verdict.action != "accept":
            await _abandon(txn.session_id, downstream)
            default = replies.SCAN_TEMPFAIL if verdict.action == "tempfail" else replies.REJECT
            # A refusal carries a reference to its history row (history.reference_format).
            active = self.history is not None and self.history.active
            ref_format = self.cfg.history.reference_format if active else ""
            ref = new_ref() if ref_format else ""
            reply = Reply.parse(with_ref(verdict.reply or default, ref, ref_format))
            return Outcome(reply, verdict.action, str(reply), verdict.summary, ref=ref)
        content = await self.edited(txn, verdict)
        try:
            content = await self.signer.sign(dataclasses.replace(txn, content=content),
                                             verdict.arc_result, verdict.auth_results)
        except SignTempfail as exc:
            logger.warning("%s: not signed, deferred: %s", txn.session_id, exc)
            await _abandon(txn.session_id, downstream)
            return Outcome(Reply.parse(replies.SIGN_TEMPFAIL), "tempfail",
                           f"signing failed: {exc}", verdict.summary)
        # A canary (canary.py) made with our key, scanned and signed: answered
        # here, never relayed; any other message needs the downstream's 250.
        nonce = self.canary.recognise(txn) if self.canary else None
        if nonce is not None:
            await _abandon(txn.session_id, downstream)
            reply = Reply.parse(self.canary.passed(txn, nonce, content, verdict))
            return Outcome(reply, "canary", str(reply), verdict.summary)
        try:
            reply = await downstream.send_message(content)
        except DownstreamError as exc:
            return Outcome(Reply.parse(replies.TEMPFAIL), "tempfail", str(exc), verdict.summary,
                           failure=exc)
        if not reply.relayable:
            exc = DownstreamError(f"bad downstream reply {reply}")
            return Outcome(Reply.parse(replies.TEMPFAIL), "tempfail", str(exc), verdict.summary,
                           failure=exc)
        if reply.ok and verdict.after_accept is not None:
            try:
                await verdict.after_accept()
            except Exception:
                logger.exception("%s: after accepting", txn.session_id)
        return Outcome(reply, "accept" if reply.ok else "downstream-refused", str(reply),
                       verdict.summary)

    async def _scan(self, txn: Transaction) -> Verdict:
        timeout = self.cfg.proxy.scan_timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await self.hook.scan(txn)
        except TimeoutError:
            logger.warning("%s: scan exceeded %ss", txn.session_id, timeout)
            return Verdict(action="tempfail", summary="scan timeout")
        except Exception:
            logger.exception("%s: scan failed", txn.session_id)
            return Verdict(action="tempfail", summary="scan error")

    def _count(self, verdict: Verdict) -> None:
        if verdict.scan_action:
            self.stats.actions.inc(verdict.scan_action)
            self.stats.scan_seconds.observe(verdict.scan_seconds)
            for symbol in verdict.symbols:
                self.stats.symbols.inc(symbol)

    async def edited(self, txn: Transaction, verdict: Verdict) -> bytes:
        """The message with the verdict's header edits; a big one edited in a
        worker thread (a header of a million fields to look through must not
        hold the event loop, see scan/hook.py's INLINE_PARSE_MAX_BYTES)."""
        if len(txn.content) <= INLINE_EDIT_MAX_BYTES:
            return self._edit_headers(txn, verdict)
        return await asyncio.to_thread(self._edit_headers, txn, verdict)

    def _edit_headers(self, txn: Transaction, verdict: Verdict) -> bytes:
        added = list(verdict.add_headers)
        if self.cfg.proxy.trace_header:
            added.insert(0, ("X-Smtpproxy", f"{self.hostname}; id={txn.session_id}; "
                                            f"profile={txn.profile}"))
        kept = remove_headers(txn.content, verdict.remove_headers, verdict.remove_matching)
        return prepend_headers(kept, added)


async def _abandon(session_id: str, downstream: Downstream) -> None:
    """Nothing of this transaction may be queued: RSET downstream (a failed RSET closes it)."""
    problem = await downstream.abandon()
    if problem:
        logger.warning("%s: abandoning downstream transaction: %s", session_id, problem)
