"""DKIM verification (RFC 6376, RFC 8463, RFC 8301) of every signature of a message.

Contract: ``DkimCheck(cfg).run(ctx)`` verifies each DKIM-Signature field
(up to ``scan.dkim.max_signatures``, topmost first) and returns one hit per
result kind, each option naming one signature::

    R_DKIM_ALLOW     pass                    "d=example.com s=sel"
    R_DKIM_REJECT    fail: the signature or body hash does not verify
                                             "d=example.com s=sel: body hash mismatch"
    R_DKIM_TEMPFAIL  temperror: the key lookup failed for now (DNS timeout,
                     SERVFAIL); the engine's dns_failure_action applies
    R_DKIM_PERMFAIL  permerror: the signature or key can never verify
                     (syntax, missing or revoked key, unknown algorithm,
                     expired, rsa-sha1, RSA key under 1024 bits)
    R_DKIM_NA        no signature (or no resolver to fetch keys)

and leaves ``ctx.facts["dkim"] = {"signatures": [{"result", "domain",
"selector", "algorithm", "reason"}, ...]}`` for DMARC and
Authentication-Results (result: pass, fail, temperror, permerror).

RFC 8301: rsa-sha1 signatures and RSA keys under 1024 bits (under
``min_rsa_key_bits``) are permerror, whatever older corpora say; ed25519-sha256
(RFC 8463) needs PyNaCl, which dkimpy imports when present. A signature whose
a= names one key type while the key record holds another is permerror
(RFC 6376 3.6.1: k= must match the algorithm).

Design: the key records the signatures name are fetched first, together,
on the event loop. dkimpy then does the canonicalisation and the
arithmetic: on the loop while the message's size times its signatures
stays under INLINE_VERIFY_MAX_BYTES (its key lookups answered from those
records), in a worker thread for larger work or when dkimpy asks for a name
not fetched (its lookups then come back to the event loop's Resolver,
smtpproxy/mailauth/bridge.py). The steps of dkimpy's own ``DKIM.verify`` are
called one by one so that each failure keeps its kind: dkimpy's ``verify``
folds every problem into False.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from typing import ClassVar

import dkim
import dkim.util

from smtpproxy.common.config import Config
from smtpproxy.common.dns import DnsTempError
from smtpproxy.mailauth.bridge import (
    AtHandTxt,
    DnsTemporary,
    NotAtHand,
    TxtBridge,
    reason_text,
    run_in_pool,
    shared_pool,
    strip_mbox_line,
)
from smtpproxy.scan.checks.base import CheckContext, Hit

RESULT_SYMBOLS = {
    "pass": "R_DKIM_ALLOW",
    "fail": "R_DKIM_REJECT",
    "temperror": "R_DKIM_TEMPFAIL",
    "permerror": "R_DKIM_PERMFAIL",
}
# Hit order: the verdict first, trouble after.
_ORDER = ("pass", "fail", "temperror", "permerror")

# dkimpy logs every failure at error level; the check reports them as symbols.
_quiet = logging.getLogger("smtpproxy.scan.dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False

# Verified on the event loop once the keys are fetched while the message's
# size times its signatures stays under this (dkimpy hashes each signature's
# view of the message anew: about 3 ms for 48 KB here); larger work goes to a
# worker thread, where the loop keeps serving.
INLINE_VERIFY_MAX_BYTES = 48 * 1024

# a= -> the key type it needs (k= in the key record).
_KEY_TYPES = {b"rsa-sha256": b"rsa", b"rsa-sha1": b"rsa", b"ed25519-sha256": b"ed25519"}


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value else ""


def _tags(value: bytes) -> dict[bytes, bytes]:
    """The signature's tags, best effort, for the evidence of a broken one."""
    try:
        return dkim.util.parse_tag_value(value)
    except Exception:
        return {}


def verify_signature(d: dkim.DKIM, idx: int, bridge: TxtBridge, min_rsa_key_bits: int) -> dict:
    """One signature: {"result", "domain", "selector", "algorithm", "reason"}. Never raises."""
    sigheaders = [v for k, v in d.headers if k.lower() == b"dkim-signature"]
    tags = _tags(sigheaders[idx])
    out = {"result": "permerror", "domain": _text(tags.get(b"d")),
           "selector": _text(tags.get(b"s")), "algorithm": _text(tags.get(b"a")), "reason": ""}

    def done(result: str, reason: str = "") -> dict:
        out["result"], out["reason"] = result, reason_text(reason)
        return out

    try:
        prep = d.verify_headerprep(idx)
    except dkim.DKIMException as exc:
        return done("permerror", f"bad signature: {exc}")
    except Exception as exc:  # dkimpy trips over some malformed values
        return done("permerror", f"bad signature: {type(exc).__name__}")
    sig, include_headers, all_sigs = prep
    algorithm = sig[b"a"].lower()
    if algorithm == b"rsa-sha1":
        return done("permerror", "rsa-sha1 refused (RFC 8301)")
    name = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
    try:
        pk, keysize, ktag, seqtlsrpt = dkim.load_pk_from_dns(name, bridge.dnsfunc)
    except DnsTemporary as exc:
        return done("temperror", f"key lookup: {exc.reason}")
    except (dkim.DKIMException, binascii.Error, ValueError) as exc:
        return done("permerror", f"key: {exc}")
    if pk is None:
        return done("permerror", "key record is not for email (s= service type)")
    if ktag != _KEY_TYPES.get(algorithm):
        return done("permerror", f"key type {_text(ktag) or 'unknown'} does not match a={_text(algorithm)}")
    if ktag == b"rsa" and keysize < min_rsa_key_bits:
        return done("permerror", f"RSA key of {keysize} bits, under {min_rsa_key_bits} (RFC 8301)")
    d.pk, d.keysize, d.ktag, d.seqtlsrpt = pk, keysize, ktag, seqtlsrpt
    try:
        valid = d.verify_sig_process(sig, include_headers, all_sigs[idx], bridge.dnsfunc)
    except dkim.ValidationError as exc:
        if "body hash mismatch" in str(exc):
            return done("fail", "body hash mismatch")
        return done("permerror", str(exc))
    except dkim.DKIMException as exc:
        return done("permerror", str(exc))
    except Exception as exc:
        return done("permerror", f"unverifiable: {type(exc).__name__}")
    return done("pass") if valid else done("fail", "signature does not verify")


def _verify_all(bridge: TxtBridge, raw: bytes, max_signatures: int, min_rsa_key_bits: int) -> list[dict]:
    """Runs in a worker thread."""
    try:
        d = dkim.DKIM(raw, logger=_quiet, minkey=min_rsa_key_bits)
    except Exception as exc:  # a message dkimpy cannot even split into fields
        return [{"result": "permerror", "domain": "", "selector": "", "algorithm": "",
                 "reason": f"unparseable message: {type(exc).__name__}"}]
    count = sum(1 for k, _ in d.headers if k.lower() == b"dkim-signature")
    return [verify_signature(d, idx, bridge, min_rsa_key_bits)
            for idx in range(min(count, max_signatures))]


async def _fetch_keys(resolver, message, max_signatures: int) -> dict[str, list[bytes] | DnsTempError]:
    """The key records (``s._domainkey.d`` TXT) the first ``max_signatures``
    signatures name, fetched at once, by lower-case name."""
    names = []
    for field, value in message.headers:
        if field.lower() != "dkim-signature":
            continue
        if len(names) >= max_signatures:
            break
        tags = _tags(value.encode("utf-8", "replace"))  # dkimpy's own tag parser
        d, sel = tags.get(b"d", b"").decode("ascii", "replace"), tags.get(b"s", b"").decode("ascii", "replace")
        if d and sel:
            names.append(f"{sel}._domainkey.{d}".rstrip(".").lower())
    names = list(dict.fromkeys(names))
    found = await asyncio.gather(*(resolver.txt(n) for n in names), return_exceptions=True)
    answers: dict[str, list[bytes] | DnsTempError] = {}
    for name, result in zip(names, found, strict=True):
        if isinstance(result, (list, DnsTempError)):
            answers[name] = result
        # Anything else (a name DNS cannot hold): not kept, asked again the usual way.
    return answers


def option(sig: dict) -> str:
    text = f"d={sig['domain']} s={sig['selector']}"
    return f"{text}: {sig['reason']}" if sig["reason"] else text


def hits_for(signatures: list[dict]) -> list[Hit]:
    hits = []
    for result in _ORDER:
        options = tuple(option(s) for s in signatures if s["result"] == result)
        if options:
            hits.append(Hit(RESULT_SYMBOLS[result], options))
    return hits


class DkimCheck:
    name: ClassVar[str] = "dkim"
    # Scores and descriptions: smtpproxy/scan/symbols.toml.
    symbols: ClassVar[tuple[str, ...]] = (
        "R_DKIM_ALLOW", "R_DKIM_REJECT", "R_DKIM_TEMPFAIL", "R_DKIM_PERMFAIL", "R_DKIM_NA",
    )
    after: ClassVar[tuple[str, ...]] = ()
    # Runs in the engine's task until it has to wait (checks/base.py).
    inline: ClassVar[bool] = True

    def __init__(self, cfg: Config | None = None):
        self.cfg = (cfg or Config()).scan.dkim
        self._pool = shared_pool("dkim")

    async def run(self, ctx: CheckContext) -> list[Hit]:
        raw = strip_mbox_line(ctx.message.raw)
        if not any(k.lower() == "dkim-signature" for k, _ in ctx.message.headers):
            ctx.facts["dkim"] = {"signatures": []}
            return [Hit("R_DKIM_NA")]
        if ctx.resolver is None:
            ctx.facts["dkim"] = {"signatures": []}
            return [Hit("R_DKIM_NA", ("no resolver",))]
        # The keys the signatures name, fetched together first; then a message
        # of common size is verified right here (hashing it costs less than
        # handing it to a thread and back), a large one in a worker thread.
        answers = await _fetch_keys(ctx.resolver, ctx.message, self.cfg.max_signatures)
        signatures = None
        if len(raw) * max(1, len(answers)) <= INLINE_VERIFY_MAX_BYTES:
            try:
                signatures = _verify_all(AtHandTxt(answers), raw, self.cfg.max_signatures,
                                         self.cfg.min_rsa_key_bits)
            except NotAtHand:  # dkimpy read a key name differently: ask it in the thread
                signatures = None
        if signatures is None:
            signatures = await run_in_pool(self._pool, TxtBridge(ctx.resolver, answers=answers), _verify_all,
                                           raw, self.cfg.max_signatures, self.cfg.min_rsa_key_bits)
        ctx.facts["dkim"] = {"signatures": signatures}
        return hits_for(signatures) or [Hit("R_DKIM_NA")]
