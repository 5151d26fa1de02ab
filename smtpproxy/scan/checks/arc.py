"""ARC chain verification (RFC 8617) with dkimpy's ``ARC.verify``.

Contract: ``ArcCheck(cfg).run(ctx)`` returns exactly one hit and leaves
``ctx.facts["arc"] = {"result", "reason", "sealers", "instances",
"ams_domain", "ams_selector", "as_domain", "as_selector"}`` for DMARC (a
trusted sealer may override a DMARC failure) and Authentication-Results;
``result`` is pass, fail, none or temperror, ``sealers`` the ARC-Seal d=
domains newest first. It never raises for DNS or content problems.

    ARC_ALLOW    the chain validates (cv=pass): options the sealers, newest first
    ARC_REJECT   a seal or the newest ARC-Message-Signature does not verify,
                 its key is missing or unusable, or a sealer recorded cv=fail
                 (the chain has failed, RFC 8617 5.2)
    ARC_INVALID  the chain is malformed: incomplete or duplicate sets, bad
                 instance numbers, missing or bad tags, a wrong cv= for its
                 position
    ARC_NA       no ARC header fields
    ARC_DNSFAIL  a key lookup failed for now (DNS timeout, SERVFAIL)

dkimpy folds every failure into (cv=fail, reason text); the split between
REJECT (cryptographic: the signatures or keys) and INVALID (structure) is
made on that text, see ``_REJECT_REASONS``. RSA keys under
``scan.arc.min_rsa_key_bits`` (never less than 1024, RFC 8301) fail the chain.

The verification itself is smtpproxy/mailauth/arc.py (the sealer records
the same result): dkimpy in a worker thread, its key lookups answered by the
event loop's Resolver.
"""

from __future__ import annotations

from typing import ClassVar

import dkim.util

from smtpproxy.common.config import Config
from smtpproxy.mailauth.arc import verify_chain
from smtpproxy.mailauth.bridge import strip_mbox_line
from smtpproxy.scan.checks.base import CheckContext, Hit

_ARC_FIELDS = ("arc-seal", "arc-message-signature", "arc-authentication-results")

# dkimpy's reasons that mean "a signature or key does not verify" (ARC_REJECT);
# anything else it reports is a structural problem (ARC_INVALID).
_REJECT_REASONS = (
    "did not validate",           # an ARC-Seal, or the newest ARC-Message-Signature
    "reported failure",           # a sealer recorded cv=fail: the chain has failed
    "body hash mismatch",
    "missing public key",
    "could not parse",            # the key
    "public key too small",
    "incomplete rsa public key",
    "unknown algorithm in k=",
    "digest too large",
    "key record",
)


def _seal_domains(headers: list[tuple[str, str]]) -> list[tuple[int, str, str]]:
    """(instance, d=, s=) of every ARC-Seal, newest first, best effort (for the evidence).

    Read from the message model's header fields: the message is not parsed again."""
    seals = []
    for name, value in headers:
        if name.lower() != "arc-seal":
            continue
        try:
            tags = dkim.util.parse_tag_value(value.encode("utf-8", "replace"))
            seals.append((int(tags.get(b"i", b"0")), _text(tags.get(b"d")), _text(tags.get(b"s"))))
        except Exception:
            continue
    return sorted(seals, reverse=True)


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value else ""


class ArcCheck:
    name: ClassVar[str] = "arc"
    # Scores and descriptions: smtpproxy/scan/symbols.toml.
    symbols: ClassVar[tuple[str, ...]] = (
        "ARC_ALLOW", "ARC_REJECT", "ARC_INVALID", "ARC_NA", "ARC_DNSFAIL",
    )
    after: ClassVar[tuple[str, ...]] = ()
    # Runs in the engine's task until it has to wait (checks/base.py).
    inline: ClassVar[bool] = True

    def __init__(self, cfg: Config | None = None):
        self.cfg = (cfg or Config()).scan.arc

    async def run(self, ctx: CheckContext) -> list[Hit]:
        if not any(k.lower() in _ARC_FIELDS for k, _ in ctx.message.headers):
            ctx.facts["arc"] = {"result": "none", "reason": "no ARC header fields", "sealers": []}
            return [Hit("ARC_NA")]
        if ctx.resolver is None:
            ctx.facts["arc"] = {"result": "none", "reason": "no resolver", "sealers": []}
            return [Hit("ARC_NA", ("no resolver",))]
        out = await verify_chain(ctx.resolver, strip_mbox_line(ctx.message.raw),
                                 self.cfg.min_rsa_key_bits)
        seals = _seal_domains(ctx.message.headers)
        facts = {"result": out["result"], "reason": out["reason"],
                 "sealers": [d for _, d, _ in seals], "instances": len(out["results"])}
        if seals:
            facts["as_domain"], facts["as_selector"] = seals[0][1], seals[0][2]
        newest = next((r for r in out["results"] if r["instance"] == max(
            (x["instance"] for x in out["results"]), default=None)), None)
        if newest:
            facts["ams_domain"], facts["ams_selector"] = newest["ams_domain"], newest["ams_selector"]
        ctx.facts["arc"] = facts
        return [self._hit(out, facts)]

    @staticmethod
    def _hit(out: dict, facts: dict) -> Hit:
        result, reason = out["result"], out["reason"]
        if result == "pass":
            return Hit("ARC_ALLOW", tuple(f"{d}:i={n}" for n, d in zip(
                range(len(facts["sealers"]), 0, -1), facts["sealers"], strict=False)))
        if result == "temperror":
            return Hit("ARC_DNSFAIL", (reason,))
        if result == "none":
            # ARC header fields present but no instance found: no usable chain.
            return Hit("ARC_INVALID", (reason or "no ARC set",))
        if any(r in reason.lower() for r in _REJECT_REASONS):
            return Hit("ARC_REJECT", (reason,))
        return Hit("ARC_INVALID", (reason,))
