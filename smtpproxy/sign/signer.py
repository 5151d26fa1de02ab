"""The proxy's signer: DKIM signatures and ARC seals on accepted mail.

Contract (smtpproxy/sign/__init__.py): ``await signer.sign(txn)`` returns
the bytes to send downstream. What happens, in order:

1. ARC, when the listener's profile is in ``sign.arc.profiles``: the
   chain status is the one the scan's ARC check verified on the message as
   received (``arc_result``); only when the scan did not verify it is it
   verified here (smtpproxy/mailauth/arc.py, the same code). Every
   Authentication-Results field claiming the sealer's authserv-id is
   replaced by one holding what we verified: the scan's results
   (``auth_results``; none when the scan is off) and ``arc=`` with the chain
   status. A sender's results are never sealed.
2. DKIM, when the profile is in ``sign.profiles`` or the client is in
   ``sign.trusted_networks``, the From header names exactly one domain set
   and each of its domains is in the signing table (never mail whose From is
   not ours), one signature per key of that entry (plus the envelope
   sender domain's entry with ``sign.envelope_sender``), skipping keys that
   already signed it (same d= and s=).
3. The ARC set is added on top of all that.

Nothing to do: the content comes back unchanged. Trouble (an exception in
dkimpy, a DNS failure while verifying the chain): per ``sign.on_failure``,
the message goes on unsigned (what was done so far is kept) with an error
logged, or ``SignTempfail`` is raised and the client gets 451 4.7.0. ARC
and the DKIM signing of big messages run in a small thread pool, so the event
loop stays free; a message up to ``INLINE_SIGN_MAX_BYTES`` is DKIM-signed on
the loop (see there).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass

from smtpproxy.common.config import ArcSealConfig, SignConfig
from smtpproxy.mailauth.arc import verify_chain
from smtpproxy.sign import SignTempfail
from smtpproxy.sign import arc as arcseal
from smtpproxy.sign import dkim as dkimsign
from smtpproxy.sign.keys import PrivateKey
from smtpproxy.sign.tables import TableSource
from smtpproxy.transaction import Transaction

logger = logging.getLogger("smtpproxy.sign")

# DKIM-signing a typical message costs ~0.3 ms of CPU, most of it the RSA
# signature. Under load every core is busy with Postfix and the proxy, so a
# worker thread gains nothing, while the hand-off there and back costs
# CPU of its own (~0.04 ms idle, more when busy): up to this size a message
# is signed on the event loop, like the parsing already done there (at worst
# ~2.5 ms for 256 KiB of whitespace-heavy text). Bigger ones go to the pool.
INLINE_SIGN_MAX_BYTES = 256 * 1024


class SignError(Exception):
    """Signing or sealing failed; the text is for the log."""


@dataclass
class ArcSealer:
    cfg: ArcSealConfig
    authserv_id: str
    key: PrivateKey
    resolver: object  # smtpproxy.common.dns.Resolver
    min_rsa_key_bits: int = 1024


class ProxySigner:
    def __init__(self, cfg: SignConfig, tables: TableSource | None, sealer: ArcSealer | None,
                 pool):
        self.cfg = cfg
        self.tables = tables
        self.sealer = sealer
        self.pool = pool
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in cfg.trusted_networks)

    def _dkim_applies(self, txn: Transaction) -> bool:
        if self.tables is None:
            return False
        if txn.profile in self.cfg.profiles:
            return True
        addr = txn.client.ip
        return addr is not None and any(addr in net for net in self.networks)

    async def sign(self, txn: Transaction, arc_result: str | None = None,
                   auth_results: str = "") -> bytes:
        do_dkim = self._dkim_applies(txn)
        do_arc = self.sealer is not None and txn.profile in self.sealer.cfg.profiles
        if not (do_dkim or do_arc):
            return txn.content
        content = txn.content
        loop = asyncio.get_running_loop()
        try:
            cv = await self._chain_status(content, arc_result) if do_arc else ""
            if do_dkim and len(content) <= INLINE_SIGN_MAX_BYTES:
                content = self._dkim(txn.session_id, content, txn.mail_from)
            elif do_dkim:
                content = await loop.run_in_executor(self.pool, self._dkim, txn.session_id, content,
                                                     txn.mail_from)
            if do_arc:
                content = await loop.run_in_executor(self.pool, self._seal, txn.session_id,
                                                     content, cv, auth_results)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, SignError) else f"{type(exc).__name__}: {exc}"
            if self.cfg.on_failure == "tempfail":
                raise SignTempfail(reason) from None
            logger.error("%s: passed %s: %s", txn.session_id,
                         "without all signatures" if content is not txn.content else "unsigned",
                         reason)
        return content

    def _dkim(self, session_id: str, content: bytes, mail_from: str = "") -> bytes:
        assert self.tables is not None
        tables = self.tables.current()
        message = dkimsign.parse(content)
        domains = dkimsign.from_domains(message)
        if not domains:
            logger.info("%s: not DKIM signed: no single From with domains", session_id)
            return content
        keys = []
        for domain in sorted(domains):
            found = tables.lookup(domain)
            if not found:
                logger.info("%s: not DKIM signed: From domain %s is not in the signing table",
                            session_id, domain)
                return content
            keys += [k for k in found if k not in keys]
        sender_domain = mail_from.rpartition("@")[2].rstrip(".").lower()
        if self.cfg.envelope_sender and "@" in mail_from and sender_domain not in domains:
            keys += [k for k in tables.lookup(sender_domain) if k not in keys]
        todo = [k for k in keys if not dkimsign.already_signed(message, k)]
        if not todo:
            logger.info("%s: not DKIM signed again: already signed by us", session_id)
            return content
        include = dkimsign.header_list(message, self.cfg.headers, self.cfg.oversign_headers)
        try:
            fields = dkimsign.sign_message(message, todo, include, self.cfg.expire_s)
        except Exception as exc:
            raise SignError(f"DKIM signing failed: {type(exc).__name__}: {exc}") from None
        logger.info("%s: DKIM signed %s", session_id, ", ".join(
            f"d={k.domain} s={k.selector} a={k.key.algorithm.decode()}" for k in todo))
        return b"".join(fields) + content

    async def _chain_status(self, content: bytes, scanned: str | None) -> str:
        """pass, fail or none: what the scan verified, else verified here the same way."""
        assert self.sealer is not None
        if scanned is None:
            if self.sealer.resolver is None:
                raise SignError("ARC chain not verified: no resolver")
            out = await verify_chain(self.sealer.resolver, content, self.sealer.min_rsa_key_bits)
            scanned, reason = out["result"], out["reason"]
        else:
            reason = "the scan's key lookups failed"
        if scanned not in ("pass", "fail", "none"):
            raise SignError(f"ARC chain not verified: {reason}")
        return scanned

    def _seal(self, session_id: str, content: bytes, cv: str, auth_results: str = "") -> bytes:
        assert self.sealer is not None
        s = self.sealer
        content = arcseal.with_arc_result(content, s.authserv_id, cv, auth_results)
        try:
            fields = arcseal.seal_set(content, s.cfg.domain, s.cfg.selector, s.key,
                                      s.authserv_id, s.cfg.headers)
        except Exception as exc:
            raise SignError(f"ARC sealing failed: {type(exc).__name__}: {exc}") from None
        if not fields:
            logger.info("%s: not ARC sealed: the chain has ended (cv=%s)", session_id, cv)
            return content
        logger.info("%s: ARC sealed d=%s s=%s cv=%s", session_id, s.cfg.domain, s.cfg.selector, cv)
        return b"".join(fields) + content
