"""DMARC (RFC 7489, with RFC 9091's np= and PSD records) for the From domain.

Contract: ``DmarcCheck(cfg).run(ctx)`` runs after spf, dkim and arc, reads
their facts (``ctx.facts["spf"]``, ``["dkim"]["signatures"]``, ``["arc"]``),
returns exactly one hit and leaves ``ctx.facts["dmarc"] = {"result",
"domain", "policy", "reason", ...}`` for Authentication-Results; result is
pass, fail, none, temperror or permerror (RFC 7489 11.2).
It never raises for DNS or record problems.

    DMARC_POLICY_ALLOW       aligned SPF or DKIM pass (options: domain, how);
                             also a failure a trusted ARC sealer vouches for
    DMARC_POLICY_REJECT      fail, policy reject
    DMARC_POLICY_QUARANTINE  fail, policy quarantine (or reject sampled down by pct)
    DMARC_POLICY_SOFTFAIL    fail, policy none (or quarantine sampled down by pct)
    DMARC_NA                 no record, a record without a valid p= and no
                             rua= (RFC 7489 6.6.3: no DMARC processing), or no
                             From domain to check
    DMARC_BAD_POLICY         the record is broken (permerror)
    DMARC_DNSFAIL            DNS failed for now (temperror)

Evaluation:

- Author domains: every address of every From field. A message with
  several From domains is evaluated for each and the worst result counts
  (RFC 7489 6.6.1). No From domain at all: permerror, DMARC_NA.
- Policy discovery (RFC 7489 6.6.3): ``_dmarc.<From domain>``, else
  ``_dmarc.<organisational domain>`` (public suffix list), else with
  ``scan.dmarc.psd`` the public suffix's own record when it has ``psd=y``
  (RFC 9091). Several v=DMARC1 records at one name: no policy.
- Which tag applies: the From domain itself is the record's domain (or, for
  a PSD record, the organisational domain right below it): ``p``. Otherwise
  ``sp`` (default ``p``), and ``np`` (default ``sp``) when the From domain
  does not exist: NXDOMAIN or NODATA for A, AAAA and MX (RFC 9091 2.1).
- Alignment: a DKIM signature that passed with d= equal to the From domain
  (adkim=s) or with the same organisational domain (adkim=r, the default);
  SPF passed for a domain aligned the same way under aspf.
- No aligned pass, but an aligned DKIM signature or SPF result is
  temperror, or the DKIM check did not run on a signed message (its
  timeout): temperror, DMARC_DNSFAIL, so the engine's DNS-failure policy
  (soft reject) applies instead of enforcing a failure that may not be one.
- pct (RFC 7489 6.6.4): a failing message outside the sample gets the next
  milder policy (reject -> quarantine -> none).
- A trusted ARC sealer (``scan.dmarc.trusted_arc_sealers``): on a failure,
  when the ARC chain passed and its newest seal's d= is one of them (or a
  subdomain), the failure is not enforced (RFC 7489 6.7, RFC 8617 7.2): the
  result stays "fail" (with the override in the facts) and the hit is
  DMARC_POLICY_ALLOW with option ``arc=<sealer>``.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
from typing import TYPE_CHECKING, ClassVar

from smtpproxy.common.config import Config, ConfigError
from smtpproxy.common.dns import DnsTempError
from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.message import SIMPLE_ADDRESS_RE, Message, parse
from smtpproxy.scan.psl import PublicSuffixList

if TYPE_CHECKING:
    from smtpproxy.common.dns import Resolver

POLICIES = ("none", "quarantine", "reject")
POLICY_SYMBOLS = {"reject": "DMARC_POLICY_REJECT", "quarantine": "DMARC_POLICY_QUARANTINE",
                  "none": "DMARC_POLICY_SOFTFAIL"}
# Worst first: what a message with several From domains gets.
_SEVERITY = {"temperror": 0, "fail": 1, "permerror": 2, "none": 3, "pass": 4}


class RecordError(Exception):
    """A DMARC record that is broken: permerror."""


class NoPolicy(Exception):
    """A record without a usable p= and without rua=: no DMARC processing."""


def parse_record(text: str) -> dict[str, str]:
    """The tags of a v=DMARC1 record, validated (RFC 7489 6.3, RFC 9091 np, DMARCbis psd).

    Raises RecordError for a syntax error or a bad value of a known tag and
    NoPolicy for a record with no valid p= and no rua=. Unknown tags are
    ignored. A p= that is missing or invalid, with rua= present, reads as
    p=none (RFC 7489 6.6.3).
    """
    tags: dict[str, str] = {}
    parts = [p.strip() for p in text.split(";") if p.strip()]
    if not parts:
        raise RecordError("empty record")
    for i, part in enumerate(parts):
        name, sep, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or not name:
            raise RecordError(f"missing tag or value: {part!r}")
        if i == 0 and (name != "v" or value != "DMARC1"):
            raise RecordError("v=DMARC1 must come first")
        tags.setdefault(name, value)
    for name in ("sp", "np"):
        if name in tags and tags[name].lower() not in POLICIES:
            raise RecordError(f"bad {name}={tags[name]}")
    for name in ("adkim", "aspf"):
        if name in tags and tags[name].lower() not in ("r", "s"):
            raise RecordError(f"bad {name}={tags[name]}")
    if "pct" in tags:
        if not tags["pct"].isdigit() or int(tags["pct"]) > 100:
            raise RecordError(f"bad pct={tags['pct']}")
    if "ri" in tags and not tags["ri"].isdigit():
        raise RecordError(f"bad ri={tags['ri']}")
    if "psd" in tags and tags["psd"].lower() not in ("y", "n", "u"):
        raise RecordError(f"bad psd={tags['psd']}")
    if tags.get("p", "").lower() not in POLICIES:
        if not tags.get("rua"):
            raise NoPolicy("no valid p= and no rua=" if "p" in tags else "no p= tag")
        tags["p"] = "none"
    return {k: (v.lower() if k in ("p", "sp", "np", "adkim", "aspf", "psd") else v)
            for k, v in tags.items()}


def _a_label(domain: str) -> str:
    """An internationalised domain (SMTPUTF8) in the A-label form DNS and the PSL rules use."""
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


# From domains whose policy is looked up ahead (a From listing hundreds of
# domains must not start hundreds of lookups at once; the rest go in turn).
PREFETCH_DOMAINS = 4


def _consume(future: asyncio.Future) -> None:
    """Done callback: a prefetch nobody awaited (the check timed out) logs no
    "exception never retrieved"."""
    if not future.cancelled():
        future.exception()


def author_domains(message: Message | bytes) -> list[str]:
    """The domains of every address in every From field, in order, without repeats.

    From the message model's From fields as written: raw UTF-8 (SMTPUTF8,
    RFC 6532) read as such, encoded words left encoded, so a comma inside one
    cannot split an address. Bytes are parsed first (tests, tools).
    """
    if isinstance(message, bytes):
        message = parse(message)
    simple = [SIMPLE_ADDRESS_RE.match(value) for value in message.from_fields]
    try:
        if all(simple):  # one plain address per field: what getaddresses finds, without it
            addresses = [("", m.group(1) or m.group(2)) for m in simple if m]
        else:
            addresses = email.utils.getaddresses(message.from_fields)
    except Exception:
        return []
    domains: list[str] = []
    for _name, addr in addresses:
        domain = addr.rpartition("@")[2].strip().strip(".").lower() if "@" in addr else ""
        domain = _a_label(domain.rstrip(">").strip())
        if domain and domain not in domains:
            domains.append(domain)
    return domains


class DmarcCheck:
    name: ClassVar[str] = "dmarc"
    # Scores and descriptions: smtpproxy/scan/symbols.toml.
    symbols: ClassVar[tuple[str, ...]] = (
        "DMARC_POLICY_ALLOW", "DMARC_POLICY_REJECT", "DMARC_POLICY_QUARANTINE",
        "DMARC_POLICY_SOFTFAIL", "DMARC_NA", "DMARC_BAD_POLICY", "DMARC_DNSFAIL",
    )
    after: ClassVar[tuple[str, ...]] = ("spf", "dkim", "arc")
    # Runs in the engine's task until it has to wait (checks/base.py).
    inline: ClassVar[bool] = True

    def __init__(self, cfg: Config | None = None):
        self.cfg = (cfg or Config()).scan.dmarc
        try:
            self.psl = PublicSuffixList.load(self.cfg.public_suffix_list)
        except OSError as exc:
            raise ConfigError("scan.dmarc.public_suffix_list",
                              f"cannot read {self.cfg.public_suffix_list}: {exc.strerror} "
                              "(install Debian's publicsuffix package)") from None
        self.trusted = tuple(d.lower().strip(".") for d in self.cfg.trusted_arc_sealers)
        # pct sampling; tests replace it to pin the draw.
        self.random = random.random

    def prefetch(self, ctx: CheckContext) -> None:
        """At the start of the scan (the engine calls it): look the policy records
        up while SPF and DKIM run. Which record applies depends only on the
        author domain; ``evaluate`` awaits these instead of asking again."""
        if ctx.resolver is None:
            return
        for domain in author_domains(ctx.message)[:PREFETCH_DOMAINS]:
            future = asyncio.ensure_future(self.discover(ctx.resolver, domain))
            future.add_done_callback(_consume)  # its error is read where it is awaited, or nowhere
            ctx.prefetched[f"dmarc:{domain}"] = future

    async def run(self, ctx: CheckContext) -> list[Hit]:
        domains = author_domains(ctx.message)
        if not domains:
            ctx.facts["dmarc"] = {"result": "permerror", "domain": "", "policy": "",
                                  "reason": "no From domain"}
            return [Hit("DMARC_NA", ("no From domain",))]
        if ctx.resolver is None:
            ctx.facts["dmarc"] = {"result": "none", "domain": domains[0], "policy": "",
                                  "reason": "no resolver"}
            return [Hit("DMARC_NA", (domains[0], "no resolver"))]
        outcomes = [await self.evaluate(ctx, ctx.resolver, d) for d in domains]
        worst = min(outcomes, key=lambda o: _SEVERITY[o["result"]])
        hit = worst.pop("hit")
        ctx.facts["dmarc"] = worst
        return [hit]

    # ------------------------------------------------------------ one domain

    async def evaluate(self, ctx: CheckContext, resolver: Resolver, domain: str) -> dict:
        out = {"result": "none", "domain": domain, "policy": "", "reason": "", "record_domain": ""}
        started = ctx.prefetched.pop(f"dmarc:{domain}", None)
        try:
            found = await (started if started is not None else self.discover(resolver, domain))
        except DnsTempError as exc:
            out.update(result="temperror", reason=f"DNS {exc.reason} for {exc.name}")
            out["hit"] = Hit("DMARC_DNSFAIL", (domain, out["reason"]))
            return out
        except RecordError as exc:
            out.update(result="permerror", reason=str(exc))
            out["hit"] = Hit("DMARC_BAD_POLICY", (domain, str(exc)))
            return out
        except NoPolicy as exc:
            out["reason"] = str(exc)
            out["hit"] = Hit("DMARC_NA", (domain, str(exc)))
            return out
        if found is None:
            out["reason"] = "no DMARC record"
            out["hit"] = Hit("DMARC_NA", (domain,))
            return out
        record_domain, tags, org, is_psd = found
        out["record_domain"] = record_domain
        aligned = self.aligned(ctx, domain, tags)
        if aligned:
            out.update(result="pass", policy=tags["p"], reason=aligned)
            out["hit"] = Hit("DMARC_POLICY_ALLOW", (domain, aligned))
            return out
        unsettled = self.unsettled(ctx, domain, tags)
        if unsettled:
            # An aligned pass may yet come: not a failure to enforce (RFC 7489 6.6.2).
            out.update(result="temperror", policy=tags["p"], reason=unsettled)
            out["hit"] = Hit("DMARC_DNSFAIL", (domain, unsettled))
            return out
        # Which policy the domain asked for.
        own = org if is_psd else record_domain
        try:
            if domain == own:
                policy = tags["p"]
            else:
                policy = tags.get("sp", tags["p"])
                if "np" in tags and not await self.exists(resolver, domain):
                    policy = tags["np"]
        except DnsTempError as exc:
            out.update(result="temperror", reason=f"DNS {exc.reason} for {exc.name}")
            out["hit"] = Hit("DMARC_DNSFAIL", (domain, out["reason"]))
            return out
        out.update(result="fail", policy=policy, reason="no aligned SPF or DKIM pass")
        applied = policy
        pct = int(tags.get("pct", "100"))
        if pct < 100 and self.random() * 100 >= pct:
            applied = POLICIES[max(0, POLICIES.index(policy) - 1)]
            out["sampled_out"] = f"pct={pct}"
        out["applied"] = applied
        sealer = self.trusted_sealer(ctx)
        if sealer:
            out["override"] = f"arc={sealer}"
            out["hit"] = Hit("DMARC_POLICY_ALLOW", (domain, f"arc={sealer}", f"policy={policy}"))
            return out
        options = [domain, f"policy={policy}"]
        if applied != policy:
            options.append(f"applied={applied} (pct={pct})")
        out["hit"] = Hit(POLICY_SYMBOLS[applied], tuple(options))
        return out

    async def discover(self, resolver: Resolver, domain: str):
        """(record domain, tags, organisational domain, is PSD record) or None."""
        org = self.psl.organizational_domain(domain)
        tags = await self._record(resolver, domain)
        if tags is not None:
            return domain, tags, org, False
        if org != domain:
            tags = await self._record(resolver, org)
            if tags is not None:
                return org, tags, org, False
        if self.cfg.psd:
            suffix = self.psl.public_suffix(org)
            if suffix and suffix != org:
                try:
                    tags = await self._record(resolver, suffix)
                except (RecordError, NoPolicy):
                    tags = None  # a PSD's broken record is not the author's problem
                if tags is not None and tags.get("psd") == "y":
                    return suffix, tags, org, True
        return None

    async def _record(self, resolver: Resolver, domain: str) -> dict[str, str] | None:
        texts = []
        for txt in await resolver.txt(f"_dmarc.{domain}"):
            text = txt.decode("utf-8", "replace").strip()
            # Records are selected by their v=DMARC1 start (RFC 7489 6.6.3 step 3).
            if text.replace(" ", "").upper().startswith("V=DMARC1"):
                texts.append(text)
        if len(texts) != 1:
            return None  # none, or several: no policy
        return parse_record(texts[0])

    async def exists(self, resolver: Resolver, domain: str) -> bool:
        """RFC 9091 2.1: a domain exists when it has an A, AAAA or MX record."""
        answers = await asyncio.gather(resolver.query(domain, "A"), resolver.query(domain, "AAAA"),
                                       resolver.query(domain, "MX"))
        return any(answers)

    # ------------------------------------------------------------ alignment

    def _aligned(self, identifier: str, domain: str, mode: str) -> bool:
        identifier = identifier.lower().strip(".")
        if not identifier:
            return False
        if mode == "s":
            return identifier == domain
        return self.psl.organizational_domain(identifier) == self.psl.organizational_domain(domain)

    def aligned(self, ctx: CheckContext, domain: str, tags: dict[str, str]) -> str:
        """How the message aligns ("dkim=d", "spf=d"), or "" when it does not."""
        for sig in ctx.facts.get("dkim", {}).get("signatures", []):
            if sig.get("result") == "pass" and self._aligned(sig.get("domain", ""), domain,
                                                             tags.get("adkim", "r")):
                return f"dkim={sig['domain'].lower()}"
        spf = ctx.facts.get("spf") or {}
        if spf.get("result") == "pass" and self._aligned(spf.get("domain", ""), domain,
                                                         tags.get("aspf", "r")):
            return f"spf={spf['domain'].lower()}"
        return ""

    def unsettled(self, ctx: CheckContext, domain: str, tags: dict[str, str]) -> str:
        """Why an aligned pass is still possible: a temporary error, or DKIM not evaluated."""
        if "dkim" not in ctx.facts and any(k.lower() == "dkim-signature"
                                           for k, _ in ctx.message.headers):
            return "dkim not evaluated"
        for sig in ctx.facts.get("dkim", {}).get("signatures", []):
            if sig.get("result") == "temperror" and self._aligned(
                    sig.get("domain", ""), domain, tags.get("adkim", "r")):
                return f"dkim={sig['domain'].lower()} temperror"
        spf = ctx.facts.get("spf") or {}
        if spf.get("result") == "temperror" and self._aligned(spf.get("domain", ""), domain,
                                                              tags.get("aspf", "r")):
            return f"spf={spf['domain'].lower()} temperror"
        return ""

    def trusted_sealer(self, ctx: CheckContext) -> str:
        arc = ctx.facts.get("arc") or {}
        if arc.get("result") != "pass" or not self.trusted:
            return ""
        sealers = arc.get("sealers") or []
        newest = sealers[0].lower().strip(".") if sealers else ""
        for trusted in self.trusted:
            if newest == trusted or newest.endswith("." + trusted):
                return newest
        return ""
