"""SPF (RFC 7208) for the envelope sender, or the HELO name for the null sender.

Contract: ``SpfCheck().run(ctx)`` returns exactly one hit (or none when it
has nothing to check against, see below) and leaves
``ctx.facts["spf"] = {"result", "domain", "identity", "explanation"}`` for
DMARC and Authentication-Results; ``result`` is one of pass, fail, softfail,
neutral, none, temperror, permerror and ``identity`` is mailfrom or helo.
It never raises for DNS or record problems: those are results.

Identity (RFC 7208 2.3, 2.4): the MAIL FROM domain; for the null sender
``<>`` the HELO name, checked as ``postmaster@HELO`` exactly as pyspf does
(a HELO that is an address literal or not a FQDN gives none). Without a
client address or a resolver there is nothing to check: R_SPF_NA with the
reason, result none.

Evaluation is pyspf's (``spf.query``), so the RFC 7208 processing limits
hold: 10 DNS-querying mechanisms, 2 void lookups, 10 MX/PTR names, CNAME
chains. pyspf is synchronous, so:

Design (worker.py, shared with DKIM and ARC): pyspf runs in a small thread
pool, and every DNS lookup it makes is sent back to the event loop
(``asyncio.run_coroutine_threadsafe``) and answered by the one async
``Resolver``, under the resolver's timeout.
One resolver and one cache serve SPF, DKIM, DMARC and DNSBL alike, and the
event loop never blocks. Pre-resolving was rejected: which names SPF needs
depends on the answers (include, redirect, exists, macros over the client
address and the validated PTR name), so pre-resolving means re-implementing
the evaluation. The hook is pyspf's module-level ``DNSLookup``, replaced once
by a dispatcher that uses the lookup bound to the current worker thread and
falls back to pyspf's own for any other caller. When the check is cancelled
(its timeout), the worker's pending and later lookups fail at once, so the
thread is free again within one lookup.

Symbols and options: R_SPF_ALLOW / FAIL / SOFTFAIL / NEUTRAL carry the
domain and the matching mechanism ("default" when none matched);
R_SPF_NA the domain or the reason; R_SPF_DNSFAIL (temperror) and
R_SPF_PERMFAIL (permerror) the domain and pyspf's reason.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from typing import TYPE_CHECKING, ClassVar

import spf

from smtpproxy.common.dns import DnsTempError
from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.checks.worker import LookupAbandoned, LoopBridge, run_in_pool, shared_pool

if TYPE_CHECKING:
    from smtpproxy.common.dns import Resolver

RESULT_SYMBOLS = {
    "pass": "R_SPF_ALLOW",
    "fail": "R_SPF_FAIL",
    "softfail": "R_SPF_SOFTFAIL",
    "neutral": "R_SPF_NEUTRAL",
    "none": "R_SPF_NA",
    "temperror": "R_SPF_DNSFAIL",
    "permerror": "R_SPF_PERMFAIL",
}

# Postfix puts these in XFORWARD when it does not know the value.
_UNKNOWN = ("[UNAVAILABLE]", "[TEMPUNAVAIL]", "")

class _Bridge(LoopBridge):
    """pyspf's DNSLookup for one evaluation: lookups go to the loop's Resolver."""

    def lookup(self, name: str, qtype: str) -> list:
        """pyspf's DNSLookup contract: [((name, qtype), value), ...], TempError on trouble."""
        try:
            values = self.call(lambda: self._values(name, qtype))
        except DnsTempError as exc:
            raise spf.TempError(f"DNS {exc.reason} for {exc.name}/{exc.rdtype}") from None
        except LookupAbandoned as exc:
            raise spf.TempError(f"DNS lookup of {name}/{qtype} abandoned: {exc}") from None
        return [((name, qtype), v) for v in values]

    async def _values(self, name: str, qtype: str) -> list:
        # The value shapes pyspf's own dnspython driver produces.
        r = self.resolver
        if qtype == "A":
            return await r.a(name)
        if qtype == "AAAA":
            return await r.aaaa(name)
        if qtype == "MX":
            return await r.mx(name)
        if qtype == "PTR":
            return [t.target.to_text(omit_final_dot=True) for t in await r.query(name, "PTR")]
        if qtype in ("TXT", "SPF"):
            return [tuple(t.strings) for t in await r.query(name, qtype)]
        return []  # pyspf asks for nothing else


_local = threading.local()
_pyspf_lookup = spf.DNSLookup


def _dispatch(name: str, qtype: str, strict: object = True, timeout: object = None) -> list:
    bridge: _Bridge | None = getattr(_local, "bridge", None)
    if bridge is None:  # someone else's pyspf call in this process: pyspf's own resolver
        return _pyspf_lookup(name, qtype, strict, timeout)
    return bridge.lookup(name, qtype)


spf.DNSLookup = _dispatch


class _Query(spf.query):
    """pyspf's evaluation with RFC 7208 5.5's error handling for "ptr" and %{p}.

    pyspf lets a temporary error of any lookup end the evaluation. For "ptr"
    the RFC says otherwise: "If a DNS error occurs while doing the PTR RR
    lookup, then this mechanism fails to match. If a DNS error occurs while
    doing an A RR lookup, then that domain name is skipped and the search
    continues." (The suite's ptr-cname-loop case: a CNAME loop behind the PTR
    name is a DNS error on real DNS, which pyspf's own test driver hides.)
    """

    def validated_ptrs(self):
        try:
            names = self.dns_ptr(self.i)[:spf.MAX_PTR]
        except spf.TempError:
            return []
        valid = []
        for name in names:
            try:
                if self.cidrmatch(self.dns_a(name, self.A), self.cidrmax):
                    valid.append(name)
            except spf.TempError:
                continue
        return valid


def _evaluate(bridge: _Bridge, ip: str, sender: str, helo: str) -> dict:
    """Runs in a worker thread: one pyspf evaluation, DNS through ``bridge``."""
    _local.bridge = bridge
    try:
        q = _Query(i=ip, s=sender, h=helo, strict=True)
        result, _code, explanation = q.check()
        return {
            "result": result,
            "domain": q.o or "",
            "identity": q.ident,
            "explanation": explanation,
            "mechanism": q.mechanism or "default",
            # For errors pyspf's text is "SPF Permanent Error: REASON: MECHANISM";
            # the part after the prefix is the evidence.
            "problem": explanation.partition("Error: ")[2] if result.endswith("error") else "",
        }
    finally:
        _local.bridge = None


class SpfCheck:
    name: ClassVar[str] = "spf"
    # Scores and descriptions: smtpproxy/scan/symbols.toml.
    symbols: ClassVar[tuple[str, ...]] = (
        "R_SPF_ALLOW", "R_SPF_FAIL", "R_SPF_SOFTFAIL", "R_SPF_NEUTRAL", "R_SPF_NA",
        "R_SPF_DNSFAIL", "R_SPF_PERMFAIL",
    )
    after: ClassVar[tuple[str, ...]] = ()
    # Runs in the engine's task until it has to wait (checks/base.py).
    inline: ClassVar[bool] = True

    def __init__(self, max_threads: int = 8):
        # pyspf blocks its thread while a lookup is answered on the loop; the
        # pool bounds how many evaluations run at once (the rest queue).
        self._pool = shared_pool("spf", max_threads)

    async def run(self, ctx: CheckContext) -> list[Hit]:
        ip = _client_ip(ctx.client.addr)
        helo = (ctx.client.helo or "").strip()
        helo = "" if helo in _UNKNOWN else helo
        sender = ctx.mail_from or ""
        identity = "mailfrom" if sender else "helo"
        domain = sender.rpartition("@")[2] if sender else helo
        reason = ""
        if ip is None:
            reason = "no client address"
        elif not sender and not helo:
            reason = "no sender and no HELO"
        elif ctx.resolver is None:
            reason = "no resolver"
        if reason:
            ctx.facts["spf"] = {"result": "none", "domain": domain, "identity": identity,
                                "explanation": reason}
            return [Hit("R_SPF_NA", (reason,))]
        assert ip is not None and ctx.resolver is not None
        outcome = await self.evaluate(ctx.resolver, ip, sender, helo)
        ctx.facts["spf"] = {k: outcome[k] for k in ("result", "domain", "identity", "explanation")}
        return [_hit(outcome)]

    async def evaluate(self, resolver: Resolver, ip: str, sender: str, helo: str) -> dict:
        """pyspf's verdict as a dict (result, domain, identity, explanation, mechanism, problem)."""
        bridge = _Bridge(resolver, asyncio.get_running_loop())
        try:
            return await run_in_pool(self._pool, bridge, _evaluate, ip, sender, helo)
        except Exception as exc:  # a pyspf bug on odd input must not fail the scan
            return {"result": "permerror", "domain": sender.rpartition("@")[2] or helo,
                    "identity": "mailfrom" if sender else "helo",
                    "explanation": f"SPF evaluation failed: {type(exc).__name__}",
                    "mechanism": "", "problem": f"internal error: {type(exc).__name__}: {exc}"}

def _client_ip(addr: str | None) -> str | None:
    if not addr or addr in _UNKNOWN:
        return None
    # Postfix writes IPv6 client addresses as "IPv6:2001:db8::1" in XFORWARD.
    if addr[:5].lower() == "ipv6:":
        addr = addr[5:]
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        return None


def _hit(outcome: dict) -> Hit:
    result = outcome["result"]
    symbol = RESULT_SYMBOLS.get(result, "R_SPF_PERMFAIL")
    domain = outcome["domain"]
    if result in ("pass", "fail", "softfail", "neutral"):
        return Hit(symbol, (domain, outcome["mechanism"]))
    if result in ("temperror", "permerror"):
        return Hit(symbol, (domain, outcome["problem"] or outcome["explanation"]))
    return Hit(symbol, (domain,) if domain else ())
