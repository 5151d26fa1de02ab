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
chains. pyspf is synchronous and does its own DNS through its module-level
``DNSLookup``, replaced once by a dispatcher that uses the lookup bound to
the current thread and falls back to pyspf's own for any other caller. One
resolver and one cache serve SPF, DKIM, DMARC and DNSBL alike, and the event
loop never blocks:

- Inline, on the event loop's thread (the usual case): pyspf runs with a
  lookup that only answers what is at hand, from the answers already fetched
  for this evaluation or the resolver's cache (``Resolver.cached``). When it
  asks for anything else, that evaluation is abandoned, the answer (or the
  temporary error) is fetched asynchronously, and pyspf runs again from the
  start. An evaluation costs tens of microseconds and depends only on the
  answers, so re-running it is cheaper than a thread hop; a sender whose
  answers are cached costs no wait at all. pyspf swallows any exception
  while fetching an ``exp=`` explanation, so "asked for something not at
  hand" is recorded on the lookup, not just raised. Each SPF record (and MX
  answer) fetched that way also starts, at once, the lookups it shows pyspf
  will make next (``look_ahead``: include and redirect records, a, mx and
  exists names without macros, the MX exchanges' addresses; at most 10), so
  a record's includes arrive together instead of one round trip after
  another; pyspf still asks in its own order and decides alone.
- In a worker thread (smtpproxy/mailauth/bridge.py, shared with DKIM and ARC), after
  MAX_INLINE_LOOKUPS answers fetched that way (a record with many includes):
  pyspf runs once more, with the answers so far, and every other lookup is
  sent back to the event loop (``asyncio.run_coroutine_threadsafe``) and
  answered by the Resolver under its timeout. When the check is cancelled
  (its timeout), the worker's pending and later lookups fail at once, so the
  thread is free again within one lookup.

Pre-resolving the names up front was rejected: which names SPF needs
depends on the answers (include, redirect, exists, macros over the client
address and the validated PTR name), so it would mean re-implementing the
evaluation; re-running pyspf on the answers so far does not.

Symbols and options: R_SPF_ALLOW / FAIL / SOFTFAIL / NEUTRAL carry the
domain and the matching mechanism ("default" when none matched);
R_SPF_NA the domain or the reason; R_SPF_DNSFAIL (temperror) and
R_SPF_PERMFAIL (permerror) the domain and pyspf's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import TYPE_CHECKING, ClassVar

import spf

from smtpproxy.common.dns import DnsTempError
from smtpproxy.mailauth.bridge import LookupAbandoned, LoopBridge, run_in_pool, shared_pool
from smtpproxy.scan.checks.base import CheckContext, Hit

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

# Answers fetched for one evaluation: (name, qtype) -> values, or the temporary error.
Answers = dict[tuple[str, str], "list | DnsTempError"]
# Answers an evaluation may fetch on the event loop before the rest goes to a thread.
MAX_INLINE_LOOKUPS = 10
# The types pyspf asks for; anything else gets no records.
_QTYPES = ("A", "AAAA", "MX", "PTR", "TXT", "SPF")


def _shape(qtype: str, rdatas: list) -> list:
    """The value shapes pyspf's own dnspython driver produces."""
    if qtype in ("A", "AAAA"):
        return [r.address for r in rdatas]
    if qtype == "MX":
        return sorted((r.preference, r.exchange.to_text(omit_final_dot=True)) for r in rdatas)
    if qtype == "PTR":
        return [t.target.to_text(omit_final_dot=True) for t in rdatas]
    return [tuple(t.strings) for t in rdatas]  # TXT, SPF


async def _fetch(resolver: Resolver, name: str, qtype: str) -> list:
    if qtype not in _QTYPES:
        return []
    return _shape(qtype, await resolver.query(name, qtype))


def _records(name: str, qtype: str, values: list | DnsTempError) -> list:
    """pyspf's DNSLookup contract: [((name, qtype), value), ...], TempError on trouble."""
    if isinstance(values, DnsTempError):
        raise spf.TempError(f"DNS {values.reason} for {values.name}/{values.rdtype}")
    return [((name, qtype), v) for v in values]


# Look-ahead: names an SPF record (or an MX answer) shows will be asked for
# next, fetched at once rather than one round trip after another.
MAX_LOOK_AHEAD = 10
# Lookups started ahead, kept referenced until done (asyncio holds tasks weakly).
_AHEAD_TASKS: set[asyncio.Future] = set()


def look_ahead(name: str, qtype: str, values: list, ipv6: bool) -> list[tuple[str, str]]:
    """The lookups pyspf will make next, from an answer just fetched for ``name``:
    the include/redirect records and the a/mx/exists names of an SPF record
    (in its order, macros left out: they expand per message), or the
    addresses of an MX answer's exchanges. Only a head start for the cache:
    pyspf still evaluates in its order and asks for what it needs."""
    addr = "AAAA" if ipv6 else "A"
    if qtype == "MX":
        return [(host, addr) for _pref, host in values[:MAX_LOOK_AHEAD] if host]
    if qtype != "TXT":
        return []
    records = [b"".join(v).decode("latin-1") for v in values if isinstance(v, tuple)]
    records = [r for r in records if r.lower().startswith("v=spf1 ") or r.lower() == "v=spf1"]
    if len(records) != 1:
        return []  # none, or several: pyspf's permerror, nothing more is asked
    out: list[tuple[str, str]] = []
    for term in records[0].split()[1:]:
        term = term[1:] if term[:1] in "+-~?" else term
        low = term.lower()
        key: tuple[str, str] | None = None
        if low.startswith(("include:", "redirect=")):
            key = (term.split(":", 1)[1] if low.startswith("include:") else term.split("=", 1)[1], "TXT")
        elif low.startswith("exists:"):
            key = (term[7:], "A")
        elif low in ("a", "mx") or low.startswith(("a:", "a/", "mx:", "mx/")):
            mech, _, rest = term.partition(":") if ":" in term.split("/", 1)[0] else \
                (term.split("/", 1)[0], "", "")
            key = (rest.split("/", 1)[0] or name, "MX" if mech.lower() == "mx" else addr)
        if key is None or not key[0] or "%" in key[0]:
            continue
        out.append(key)
        if len(out) >= MAX_LOOK_AHEAD:
            break
    return out


async def _quietly(resolver: Resolver, name: str, qtype: str) -> None:
    with contextlib.suppress(Exception):  # a head start only: the real lookup reports
        await resolver.query(name, qtype)


class _NotAtHand(Exception):
    """An inline evaluation asked for an answer it does not have (not an SPF error)."""


class _AtHand:
    """pyspf's DNSLookup on the event loop's thread: only answers already at hand."""

    def __init__(self, resolver: Resolver, answers: Answers):
        self.resolver = resolver
        self.answers = answers
        self.missing: tuple[str, str] | None = None  # the first answer it lacked

    def lookup(self, name: str, qtype: str) -> list:
        key = (name, qtype)
        values = self.answers.get(key)
        if values is None:
            if qtype not in _QTYPES:
                values = []
            else:
                cached = getattr(self.resolver, "cached", None)
                rdatas = cached(name, qtype) if cached is not None else None
                if rdatas is None:
                    if self.missing is None:
                        self.missing = key
                    raise _NotAtHand(f"{name}/{qtype}")
                values = _shape(qtype, rdatas)
            # Kept, so a later run of this evaluation sees the same answer.
            self.answers[key] = values
        return _records(name, qtype, values)


class _Bridge(LoopBridge):
    """pyspf's DNSLookup in a worker thread: lookups go to the loop's Resolver."""

    def __init__(self, resolver: Resolver, loop: asyncio.AbstractEventLoop, answers: Answers):
        super().__init__(resolver, loop)
        self.answers = answers  # fetched before the hand-over; read-only here

    def lookup(self, name: str, qtype: str) -> list:
        values = self.answers.get((name, qtype))
        if values is None:
            try:
                values = self.call(lambda: _fetch(self.resolver, name, qtype))
            except DnsTempError as exc:
                values = exc
            except LookupAbandoned as exc:
                raise spf.TempError(f"DNS lookup of {name}/{qtype} abandoned: {exc}") from None
        return _records(name, qtype, values)


_local = threading.local()
_pyspf_lookup = spf.DNSLookup


def _dispatch(name: str, qtype: str, strict: object = True, timeout: object = None) -> list:
    bridge: _Bridge | _AtHand | None = getattr(_local, "bridge", None)
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


def _evaluate(bridge: _Bridge | _AtHand, ip: str, sender: str, helo: str) -> dict:
    """One pyspf evaluation, DNS through ``bridge`` (a worker thread's, or the loop's answers at hand)."""
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

    def __init__(self, max_threads: int = 8, on_loop: bool = True):
        # pyspf blocks its thread while a lookup is answered on the loop; the
        # pool bounds how many evaluations run at once (the rest queue).
        self._pool = shared_pool("spf", max_threads)
        # False: pyspf always in a worker thread, never on the loop (tests of that path).
        self.on_loop = on_loop

    async def run(self, ctx: CheckContext) -> list[Hit]:
        ip = str(ctx.client.ip) if ctx.client.ip is not None else None
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
        answers: Answers = {}
        ahead: dict[tuple[str, str], asyncio.Future] = {}  # look-ahead lookups under way
        try:
            for fetched in range(MAX_INLINE_LOOKUPS + 1 if self.on_loop else 0):
                at_hand = _AtHand(resolver, answers)
                try:
                    outcome = _evaluate(at_hand, ip, sender, helo)
                except _NotAtHand:
                    pass
                if at_hand.missing is None:
                    return outcome
                if fetched == MAX_INLINE_LOOKUPS:
                    break
                name, qtype = at_hand.missing
                try:
                    answers[at_hand.missing] = values = await _fetch(resolver, name, qtype)
                except DnsTempError as exc:
                    answers[at_hand.missing] = exc
                else:
                    for key in look_ahead(name, qtype, values, ":" in ip):
                        if key not in answers and key not in ahead and len(ahead) < MAX_LOOK_AHEAD:
                            ahead[key] = task = asyncio.ensure_future(_quietly(resolver, *key))
                            _AHEAD_TASKS.add(task)
                            task.add_done_callback(_AHEAD_TASKS.discard)
            bridge = _Bridge(resolver, asyncio.get_running_loop(), answers)
            return await run_in_pool(self._pool, bridge, _evaluate, ip, sender, helo)
        except Exception as exc:  # a pyspf bug on odd input must not fail the scan
            return {"result": "permerror", "domain": sender.rpartition("@")[2] or helo,
                    "identity": "mailfrom" if sender else "helo",
                    "explanation": f"SPF evaluation failed: {type(exc).__name__}",
                    "mechanism": "", "problem": f"internal error: {type(exc).__name__}: {exc}"}

def _hit(outcome: dict) -> Hit:
    result = outcome["result"]
    symbol = RESULT_SYMBOLS.get(result, "R_SPF_PERMFAIL")
    domain = outcome["domain"]
    if result in ("pass", "fail", "softfail", "neutral"):
        return Hit(symbol, (domain, outcome["mechanism"]))
    if result in ("temperror", "permerror"):
        return Hit(symbol, (domain, outcome["problem"] or outcome["explanation"]))
    return Hit(symbol, (domain,) if domain else ())
