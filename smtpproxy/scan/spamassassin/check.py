"""The SpamAssassin check: the system's SpamAssassin rules as symbols of our engine.

Each rule that scores is a symbol of its own name; its score is the rule's
SpamAssassin score (score set 0: no Bayes, no network tests, as neither
runs inside these rules here) times ``scan.spamassassin.score_scale``, and
reaches the engine through ``symbol_defs()``. Sub-rules (``__NAME``) and
rules scored 0 run when a meta needs them but are never emitted. A rule
whose name is one of our own symbols (GTUBE, MISSING_MID...) runs for the
metas but is not emitted: the native check owns that name.

What each rule type reads, as SpamAssassin presents it:

  mimeheader  the named field of every MIME entity (``:raw`` undecoded)
  header   the named field(s), decoded, values joined by newlines
           (``:raw`` undecoded; ``:addr``/``:name`` the addresses or names;
           ALL every field as "Name: value"; ToCc; MESSAGEID; EnvelopeFrom);
           an absent field is "" or the rule's ``[if-unset: ...]``
  body     the Subject, then the text parts and the rendered HTML,
           white space collapsed, one paragraph per line
  rawbody  the text parts decoded from their transfer encoding, not rendered
  full     the raw message
  uri      the message's URLs
  eval     the ``eval:`` tests evals.py implements, on the same views

A meta whose inputs include rules not run here (``eval:`` tests, network
tests, ...) fires only if it fires both with all of those off and with all
of them on: an input we cannot compute never makes a meta fire.

The rule files are read and compiled when the check is built (start-up and
reload), never per message; see matcher.py for the Hyperscan cache.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import logging
import os
import re
import tomllib
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources

from smtpproxy.common.config import Config
from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.engine import ENGINE_SYMBOLS, SymbolDef
from smtpproxy.scan.message import Message
from smtpproxy.scan.spamassassin import evals, relays
from smtpproxy.scan.spamassassin import meta as meta_expr
from smtpproxy.scan.spamassassin.matcher import KINDS, Matcher, count, narrow, sift
from smtpproxy.scan.spamassassin.regex import compile_python
from smtpproxy.scan.spamassassin.rules import RuleSet, load_files, rule_files
from smtpproxy.transaction import ClientInfo

logger = logging.getLogger("smtpproxy.scan")

DEBIAN_RULES_DIR = "/usr/share/spamassassin"
SA_UPDATE_DIR = "/var/lib/spamassassin"
DEFAULT_LOCAL_CF = "/etc/spamassassin/local.cf"
# Emitted while the Hyperscan databases compile: "re" (the rules ran with re
# alone) or "skipped" (another message was being checked that way).
RULES_COMPILING = "SPAMASSASSIN_COMPILING"
# Stock rules re-scored by our measurement (bench/rules_bench.py), shipped with the package.
MEASURED_SCORES = str(resources.files("smtpproxy.scan.spamassassin").joinpath("data", "measured_scores.cf"))
# SpamAssassin's MAX_BODY_LINE_LENGTH: longer body lines are split at a space.
MAX_LINE = 2048
HEADER_MODIFIERS = {"raw", "addr", "name", "first", "last"}
# SpamAssassin's trust-path pseudo-headers, built from the Received chain (relays.py).
RELAY_HEADERS = ("x-spam-relays-trusted", "x-spam-relays-untrusted", "x-spam-relays-internal",
                 "x-spam-relays-external")
NO_NEWLINE_HEADERS = (*RELAY_HEADERS, "envelopefrom")
PARAGRAPH_RE = re.compile(r"\n+\s*\n+")
SPACE_RE = re.compile(r"\s+")
# A field read by this many header rules gets a database of its own (a scan
# costs about 1 µs of its own; scanning a field with rules that never read it
# costs more).
OWN_DATABASE_RULES = 10
LONG_HEADERS = ("all", "received", *RELAY_HEADERS)
# Address fields (:addr, :name) are read this far; hostile ones are longer.
MAX_ADDRESS_FIELD = 16_384
BARE_ADDRESS_RE = re.compile(r"[^\s<>()\[\],;:\"@]+@[A-Za-z0-9.\-]+")
# A rule with an RE2 filter is narrowed by its required literals first only when
# they are this few: looking for hundreds of literals in Python costs more.
FEW_LITERALS = 16


def header_name(spec: str) -> str:
    """The field a header rule reads: "from" for From:addr, "all" for ALL:raw."""
    return spec.split(":", 1)[0].lower()


def header_groups(specs: list[str]) -> dict[str, str]:
    """The Hyperscan database of each header rule's ``spec``: "header:NAME" for a
    field read by many rules or a long one (the whole header block, the Received
    chain and the relay pseudo-headers), "header" for the rest. So each text is
    scanned by the rules that read it, not by every header rule."""
    counts = defaultdict(int)
    for spec in specs:
        counts[header_name(spec)] += 1
    groups = {}
    for spec in specs:
        name = header_name(spec)
        own = counts[name] >= OWN_DATABASE_RULES or name in LONG_HEADERS
        groups[spec] = f"header:{name}" if own else "header"
    return groups


def default_rules_dirs() -> tuple[str, ...]:
    """Debian's rules, then sa-update's newest for this SpamAssassin version when present."""
    dirs = [DEBIAN_RULES_DIR] if os.path.isdir(DEBIAN_RULES_DIR) else []
    try:
        versions = sorted(e.path for e in os.scandir(SA_UPDATE_DIR) if e.is_dir())
    except OSError:
        versions = []
    for version in versions[-1:]:
        updates = os.path.join(version, "updates_spamassassin_org")
        if os.path.isdir(updates):
            dirs.append(updates)
    return tuple(dirs)


def native_symbols(cfg: Config) -> set[str]:
    """Names in our symbols table (a SpamAssassin rule of such a name is not emitted)."""
    try:
        if cfg.scan.symbols_file:
            with open(cfg.scan.symbols_file, "rb") as f:
                return set(tomllib.load(f))
        return set(tomllib.loads(resources.files("smtpproxy.scan").joinpath("symbols.toml").read_text()))
    except (OSError, tomllib.TOMLDecodeError):
        return set()  # the engine reports the broken table itself


# The last rule set loaded in this process, by its files' stamps and settings.
_LOADED: dict[tuple, dict] = {}


def _stamp(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (path, st.st_mtime_ns, st.st_size)


@dataclass
class _Meta:
    name: str
    fn: object  # compiled meta expression
    partial: bool  # reads a rule not run here


class SpamAssassinCheck:
    name = "spamassassin"
    # The SPF, DKIM and DMARC plugins' tests read these checks' results (evals.py).
    after: tuple[str, ...] = ("spf", "dkim", "dmarc")
    # No I/O: runs in the engine's own task (checks/base.py).
    inline = True
    # The thread for checking with re alone while the databases compile (run()).
    _slow: concurrent.futures.ThreadPoolExecutor | None = None
    _slow_busy = False

    def __init__(self, cfg: Config | None = None, background_compile: bool = True,
                 use_hyperscan: bool = True):
        cfg = cfg if cfg is not None else Config()
        sc = cfg.scan.spamassassin
        self.scale = sc.score_scale
        self.max_bytes = sc.max_scan_bytes
        dirs = sc.rules_dirs or default_rules_dirs()
        local_cf = sc.local_cf or (DEFAULT_LOCAL_CF if os.path.isfile(DEFAULT_LOCAL_CF) else "")
        files = rule_files(dirs, local_cf) if sc.enabled else []
        if files:
            # Our measured scores go after the stock files, before local.cf (which wins).
            at = len(files) - 1 if local_cf else len(files)
            files.insert(at, MEASURED_SCORES)
        taken = native_symbols(cfg) | set(ENGINE_SYMBOLS)
        # A reload with unchanged files (and every engine a test builds) reuses
        # what was loaded: parsing and compiling take seconds.
        key = (tuple(_stamp(p) for p in files), self.scale, self.max_bytes, frozenset(taken),
               use_hyperscan)
        if key in _LOADED:
            self.__dict__.update(_LOADED[key])
            return
        self.rules: RuleSet = load_files(files) if files else RuleSet()
        self.not_emitted: dict[str, str] = {}
        self._build(taken)
        # No rules (off, or none found): nothing to compile, and nothing written to state_dir.
        self.matcher = Matcher(self._patterns,
                               os.path.join(cfg.state_dir, "spamassassin") if files else "",
                               use_hyperscan=use_hyperscan and bool(files),
                               background=background_compile)
        del self._patterns  # the matcher has them now
        self.rules.forget_sources()
        for problem in self.rules.errors:
            logger.warning("spamassassin: %s", problem)
        _LOADED.clear()  # only the latest rule set is kept
        _LOADED[key] = dict(self.__dict__)

    # ------------------------------------------------------------ set-up

    def _build(self, taken: set[str]) -> None:
        rs = self.rules
        metas = {n: r for n, r in rs.rules.items() if r.kind == "meta"}
        deps = {n: meta_expr.names(r.meta) for n, r in metas.items()}  # type: ignore[arg-type]
        # Header rules with modifiers we do not compute are skipped, visibly.
        for name, rule in list(rs.rules.items()):
            if rule.kind == "header":
                mods = set(rule.header.split(":")[1:])
                if mods - HEADER_MODIFIERS:
                    del rs.rules[name]
                    rs.skipped[name] = f"header modifier :{sorted(mods - HEADER_MODIFIERS)[0]} not implemented"
        # Metas in dependency order; a loop is skipped.
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(name: str, trail: tuple[str, ...]) -> bool:
            if state.get(name) == 2:
                return True
            if state.get(name) == 1:
                return False
            state[name] = 1
            ok = all(visit(d, trail + (name,)) for d in deps[name] if d in metas)
            state[name] = 2
            if ok:
                order.append(name)
            return ok

        for name in sorted(metas):
            if not visit(name, ()):
                rs.skipped[name] = "meta: dependency loop"
                del rs.rules[name]
        order = [n for n in order if n in rs.rules]
        unknown = set(rs.skipped)
        partial: set[str] = set()
        for name in order:
            if deps[name] & (unknown | partial):
                partial.add(name)
        self.partial_metas = partial
        self.metas = [_Meta(n, meta_expr.compile_node(rs.rules[n].meta), n in partial)  # type: ignore[arg-type]
                      for n in order]
        # Which metas each rule feeds, directly: a message's hits re-evaluate only those.
        self.readers: dict[str, list[str]] = defaultdict(list)
        for name in order:
            for d in deps[name]:
                self.readers[d].append(name)
        self.meta_index = {m.name: i for i, m in enumerate(self.metas)}
        needed = {d for name in order for d in deps[name]}
        # Emitted: scored, not a sub-rule, not a name of ours.
        self.defs: dict[str, SymbolDef] = {}
        for name in rs.rules:
            score = rs.score(name)
            if name.startswith("__") or score == 0:
                continue
            if name in taken:
                self.not_emitted[name] = "name of a native symbol"
                continue
            if rs.rules[name].kind == "eval" and rs.rules[name].text in evals.AUTH_EVALS:
                # SPF_FAIL, DKIM_VALID, DMARC_REJECT...: our own SPF, DKIM and DMARC
                # symbols score these results already; the metas still read them.
                self.not_emitted[name] = "scored by our SPF, DKIM or DMARC check"
                continue
            self.defs[name] = SymbolDef(round(score * self.scale, 3),
                                        rs.descriptions.get(name, f"SpamAssassin rule {name}"))
        self.symbols = {name: d.description for name, d in self.defs.items()}
        self.symbols[RULES_COMPILING] = "SpamAssassin rules: databases still compiling"
        self.tflags = rs.tflags
        self.limit = {n: (rs.maxhits.get(n, 1_000_000) if "multiple" in rs.tflags.get(n, ()) else 1)
                      for n in rs.rules}
        # What runs: every emitted rule and every rule a meta reads.
        run = set(self.defs) | needed | set(self.not_emitted)
        self._patterns: dict[str, list] = {k: [] for k in KINDS}
        self.header_group = header_groups([r.header for n, r in rs.rules.items()
                                           if r.kind == "header" and n in run and not r.exists])
        self.header_rules: dict[str, object] = {}
        self.exists_rules = []
        self.eval_rules = []
        self.mime_rules = []
        self.regex_of: dict[str, re.Pattern[bytes]] = {}  # the rules run with re alone
        self.freemail = evals.Freemail(rs.freemail_domains, rs.freemail_wildcards,
                                       rs.freemail_welcomelist, rs.valid_tlds,
                                       rs.two_level_domains, rs.three_level_domains)
        for name, rule in rs.rules.items():
            if rule.kind == "meta" or name not in run:
                continue
            if rule.kind == "eval":
                self.eval_rules.append(rule)
                continue
            if rule.exists:
                self.exists_rules.append(rule)
                continue
            if rule.kind == "mimeheader":
                # A few rules on a few short fields each: re alone, no database.
                self.mime_rules.append(rule)
                self.regex_of[name] = compile_python(rule.pattern)
                continue
            if rule.kind == "header":
                self.header_rules[name] = rule
                self._patterns.setdefault(self.header_group[rule.header], []).append((name, rule.pattern))
            else:
                self._patterns[rule.kind].append((name, rule.pattern))
        # Base values: every meta with no regex rule hit, in both worlds; "hi"
        # also starts a message with every rule not run here on.
        self.base_lo, self.base_hi = self._evaluate({}, None)
        self._hi_start = {**self.base_hi, **dict.fromkeys(self.rules.skipped, 1)}

    def _evaluate(self, hits: dict[str, int], dirty: set[str] | None) -> tuple[dict, dict]:
        """Meta values with ``hits``; unknown rules 0 ("lo") or 1 ("hi"). ``dirty``: the
        metas to compute (None: all), the others keep their base values."""
        if dirty is None:
            lo = dict(hits)
            hi = dict(hits)
            for name in self.rules.skipped:
                hi[name] = 1
            metas = self.metas
        else:
            lo = {**self.base_lo, **hits}
            hi = {**self._hi_start, **hits}
            metas = [self.metas[i] for i in sorted(self.meta_index[n] for n in dirty)]
        for m in metas:
            lo[m.name] = 1 if m.fn(lo) else 0  # type: ignore[operator]
            hi[m.name] = (1 if m.fn(hi) else 0) if m.partial else lo[m.name]  # type: ignore[operator]
        if dirty is None:
            return ({m.name: lo[m.name] for m in self.metas},
                    {m.name: hi[m.name] for m in self.metas})
        return lo, hi

    def symbol_defs(self) -> dict[str, SymbolDef]:
        return dict(self.defs)

    # ------------------------------------------------------------ per message

    async def run(self, ctx: CheckContext) -> list[Hit]:
        if not self.rules.rules:
            return []
        if not self.matcher.compiling:
            return self.scan(ctx.message, ctx.mail_from, ctx.client, facts=ctx.facts)
        # The Hyperscan databases are still compiling (minutes, at the first
        # start or after a rule update): every rule runs with re, 20-100 ms a
        # message. That runs on a thread of its own, one message at a time,
        # so the event loop keeps serving; a message arriving meanwhile goes
        # without the rules, visibly, rather than queueing behind it.
        if self._slow_busy:
            return [Hit(RULES_COMPILING, ("skipped",))]
        self._slow_busy = True
        if self._slow is None:
            self._slow = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sa-re")
        return await asyncio.get_running_loop().run_in_executor(
            self._slow, self._scan_slowly, ctx.message, ctx.mail_from, ctx.client, dict(ctx.facts))

    def _scan_slowly(self, msg: Message, mail_from: str, client: ClientInfo | None, facts: dict) -> list[Hit]:
        try:
            return [*self.scan(msg, mail_from, client, hyperscan=False, facts=facts),
                    Hit(RULES_COMPILING, ("re",))]
        finally:
            self._slow_busy = False  # here, not in run(): a timed-out run leaves this thread busy

    def scan(self, msg: Message, mail_from: str = "", client: ClientInfo | None = None,
             hyperscan: bool = True, facts: dict | None = None) -> list[Hit]:
        """The rules' hits on one message; ``hyperscan=False``: with re alone (a
        thread other than the event loop's must not share its Hyperscan scratch);
        ``facts``: the SPF, DKIM and DMARC checks' results (ctx.facts)."""
        hits = self.match(msg, mail_from, client, hyperscan, facts)
        dirty: set[str] = set()
        todo = list(hits)
        while todo:
            for reader in self.readers.get(todo.pop(), ()):
                if reader not in dirty:
                    dirty.add(reader)
                    todo.append(reader)
        if dirty:
            lo, hi = self._evaluate(hits, dirty)
        else:
            lo, hi = self.base_lo, self.base_hi
        out = []
        for name, value in hits.items():
            if name in self.defs:
                out.append(Hit(name, (f"x{value}",) if value > 1 else ()))
        for m in self.metas:
            if lo.get(m.name) and hi.get(m.name) and m.name in self.defs:
                out.append(Hit(m.name))
        return out

    def match(self, msg: Message, mail_from: str = "", client: ClientInfo | None = None,
              hyperscan: bool = True, facts: dict | None = None) -> dict[str, int]:
        """Regex and exists rules that hit: {name: hit count}."""
        hits: dict[str, int] = {}
        texts = _Texts(msg, mail_from, self.max_bytes, client)
        for rule in self.exists_rules:
            if texts.header_values(rule.header):
                hits[rule.name] = 1
        if self.eval_rules:
            ev = evals.EvalInput(msg, texts.header_values, self.freemail, texts.relays,
                                 lambda: [line.decode("utf-8", "replace") for line in texts.body_lines()],
                                 facts)
            for rule in self.eval_rules:
                if evals.run(ev, rule.text, rule.args):
                    hits[rule.name] = 1
        # mimeheader: the field of every MIME entity; a hit in any of them counts.
        for rule in self.mime_rules:
            matched = count(self.regex_of[rule.name], texts.mime_values(rule.header), self.limit[rule.name])
            if rule.negate:
                matched = 0 if matched else 1
            if matched:
                hits[rule.name] = matched
        # header: the fields each rule names, one prefilter pass per group of them.
        targets = {}
        grouped: dict[str, list[bytes]] = defaultdict(list)
        for rule in self.header_rules.values():
            key = (rule.header, rule.if_unset)
            if key not in targets:
                targets[key] = text = texts.header_text(rule.header, rule.if_unset)
                grouped[self.header_group[rule.header]].append(text)
        candidates: set[str] = set()
        for group, group_texts in grouped.items():
            candidates.update(self.matcher.candidates(group, group_texts, hyperscan))
        for name, rule in self.header_rules.items():
            matched = 0
            if name in candidates:
                units = [targets[(rule.header, rule.if_unset)]]
                filt = self.matcher.filters.get(name)
                if filt is not None:
                    units = sift(filt, units)
                matched = count(self.matcher.regex[name], units, self.limit[name]) if units else 0
            if rule.negate:
                matched = 0 if matched else 1
            if matched:
                hits[name] = matched
        for kind, units in (("body", texts.body_lines), ("rawbody", texts.rawbody_chunks),
                            ("full", texts.full), ("uri", texts.uris)):
            if not self.matcher.all.get(kind):
                continue
            unit_list = units()
            if not unit_list:
                continue
            lowered: list[bytes] | None = None
            for name in self.matcher.candidates(kind, unit_list, hyperscan):
                units_of = unit_list
                filt = self.matcher.filters.get(name)
                literals = self.matcher.literals.get(name)
                if filt is not None and literals is not None and len(literals[0]) > FEW_LITERALS:
                    literals = None  # RE2 sifts faster than Python looks for each literal
                if literals is not None and len(unit_list) > 1:
                    if literals[1]:
                        if lowered is None:
                            lowered = [u.lower() for u in unit_list]
                        units_of = narrow(literals[0], unit_list, lowered)
                    else:
                        units_of = narrow(literals[0], unit_list, unit_list)
                if filt is not None:
                    units_of = sift(filt, units_of)
                matched = count(self.matcher.regex[name], units_of, self.limit[name]) if units_of else 0
                if matched:
                    hits[name] = matched
        return hits

    # ------------------------------------------------------------ configtest

    def report(self) -> list[str]:
        """Lines for ``smtpproxy configtest``: counts, then every skipped rule and why."""
        rs = self.rules
        kinds = defaultdict(int)
        for r in rs.rules.values():
            kinds[r.kind] += 1
        lines = [
            f"spamassassin: {len(rs.files)} rule files, {len(rs.rules)} rules loaded ("
            + ", ".join(f"{k} {kinds[k]}" for k in ("header", "mimeheader", "body", "rawbody", "full", "uri", "meta",
                                                    "eval"))
            + f"), {len(self.defs)} scored symbols, {len(rs.skipped)} skipped, "
            f"{rs.inactive} in inactive if/ifplugin blocks",
            f"spamassassin: {len(self.partial_metas)} metas read rules not run here "
            "(they fire only when those could not change the outcome)",
            "spamassassin: skipped by reason: " + ", ".join(
                f"{reason} {n}" for reason, n in rs.skip_reasons().most_common()),
            "spamassassin: eval tests run by function: " + ", ".join(
                f"{fn} {n}" for fn, n in rs.evals_run.most_common()),
            "spamassassin: eval tests skipped by function: " + ", ".join(
                f"{fn} {n}" for fn, n in rs.evals.most_common()),
            "spamassassin: ignored directives: " + ", ".join(
                f"{d} {n}" for d, n in rs.ignored.most_common()),
        ]
        lines += [f"spamassassin: error: {e}" for e in rs.errors]
        lines += [f"spamassassin: skipped {name}: {reason}" for name, reason in sorted(rs.skipped.items())]
        lines += [f"spamassassin: not emitted {name}: {reason}"
                  for name, reason in sorted(self.not_emitted.items())]
        return lines


def address_pairs(values: list[str]) -> list[tuple[str, str]]:
    """(name, address) pairs of address fields, as email.utils reads them. Its
    parser recurses on nested comments and quotes: a hostile field can run out
    of stack (RecursionError) or take long, so each field is cut to
    MAX_ADDRESS_FIELD characters and one that still trips it gives its bare
    addresses only."""
    pairs: list[tuple[str, str]] = []
    for value in values:
        value = value[:MAX_ADDRESS_FIELD]
        try:
            pairs += email.utils.getaddresses([value])
        except (RecursionError, ValueError, IndexError):
            pairs += [("", addr) for addr in BARE_ADDRESS_RE.findall(value)]
    return pairs


def client_relay(client: ClientInfo | None) -> relays.Relay | None:
    """The connecting host as XFORWARD told it, as a relay (Postfix says "unknown"
    for a name it could not verify: no rDNS, as in its Received field)."""
    if client is None or client.ip is None:
        return None
    name = client.name or ""
    if name.lower() == "unknown" or name.startswith("["):
        name = ""
    strip = relays.STRIP_RE.sub
    return relays.Relay(ip=str(client.ip), rdns=strip("!", name.rstrip(".")), helo=strip("!", client.helo or ""),
                        no_reverse_dns=not name)


class _Texts:
    """What the rule types read from one message, built on first use."""

    def __init__(self, msg: Message, mail_from: str, max_bytes: int, client: ClientInfo | None = None):
        self.msg, self.mail_from, self.max_bytes = msg, mail_from, max_bytes
        self.client = client
        self._raw_headers: dict[str, list[str]] | None = None
        self._relays: relays.Relays | None = None
        # Exists rules, header rules and eval tests ask for the same fields.
        self._values: dict[str, list[str]] = {}

    def relays(self) -> relays.Relays:
        """The relay chain as SpamAssassin reads it (relays.py), built on first use."""
        if self._relays is None:
            originating = [v for h in relays.ORIGINATING_IP_HEADERS for v in self.msg.header_all(h)]
            self._relays = relays.relays(self.raw_headers().get("received", []), originating,
                                         client_relay(self.client))
        return self._relays

    # headers

    def raw_headers(self) -> dict[str, list[str]]:
        if self._raw_headers is None:
            raw = self.msg.raw
            if raw.startswith(b"From "):
                raw = raw[raw.find(b"\n") + 1:]
            end = raw.find(b"\n\r\n")
            end2 = raw.find(b"\n\n")
            cut = min(e for e in (end, end2, len(raw)) if e >= 0)
            fields: dict[str, list[str]] = {}
            current: list[str] | None = None
            for line in raw[:cut + 1].decode("utf-8", "replace").replace("\r\n", "\n").split("\n"):
                if line[:1] in (" ", "\t") and current is not None:
                    current[-1] += "\n" + line
                elif ":" in line:
                    name, _, value = line.partition(":")
                    current = fields.setdefault(name.strip().lower(), [])
                    current.append(value.lstrip(" \t"))
            self._raw_headers = fields
        return self._raw_headers

    def header_values(self, spec: str) -> list[str]:
        """The values of ``spec`` (shared: the caller does not change the list)."""
        values = self._values.get(spec)
        if values is None:
            values = self._values[spec] = self._header_values(spec)
        return values

    def _header_values(self, spec: str) -> list[str]:
        name, *mods = spec.split(":")
        raw = "raw" in mods or "addr" in mods or "name" in mods
        lower = name.lower()
        if name == "ALL":
            if raw:
                values = [f"{n}: {v}" for n, vs in self.raw_headers().items() for v in vs]
            else:
                values = [f"{n}: {v}" for n, v in self.msg.headers]
        elif lower == "envelopefrom":
            values = [self.mail_from] if self.mail_from else []
        elif lower == "tocc":
            values = self._field("to", raw) + self._field("cc", raw)
        elif lower in RELAY_HEADERS:
            values = [self.relays().header(lower)]
        elif name == "MESSAGEID":
            values = [v for h in ("x-message-id", "resent-message-id", "x-original-message-id",
                                  "message-id") for v in self._field(h, raw)]
        else:
            values = self._field(lower, raw)
        if values and "first" in mods:
            values = values[:1]
        elif values and "last" in mods:
            values = values[-1:]
        if "addr" in mods or "name" in mods:
            pairs = address_pairs(values)
            values = [addr for _, addr in pairs if addr] if "addr" in mods else \
                [name for name, _ in pairs if name]
        return values

    def mime_values(self, spec: str) -> list[bytes]:
        """Field ``spec`` (``Name`` or ``Name:raw``) of every MIME entity, as mimeheader rules read it."""
        key = "mime " + spec
        values = self._values.get(key)
        if values is None:
            name, _, mod = spec.partition(":")
            lower, raw = name.lower(), mod == "raw"
            values = self._values[key] = [(written if raw else decoded).encode("utf-8", "replace")
                                          for field_name, decoded, written in self.msg.mime_headers
                                          if field_name == lower]
        return values

    def _field(self, lower: str, raw: bool) -> list[str]:
        if raw:
            return list(self.raw_headers().get(lower, ()))
        return self.msg.header_all(lower)

    def header_text(self, spec: str, if_unset: str | None) -> bytes:
        values = self.header_values(spec)
        if not values:
            return (if_unset or "").encode("utf-8", "replace")
        name, *mods = spec.split(":")
        if "addr" in mods or "name" in mods or name.lower() in NO_NEWLINE_HEADERS:
            # SpamAssassin's values of these carry no line end: joined by newlines, none after
            # the last (so /\s/ on From:addr does not match every address).
            return "\n".join(values).encode("utf-8", "replace")
        return "".join(v if v.endswith("\n") else v + "\n" for v in values).encode("utf-8", "replace")

    # bodies

    def body_lines(self) -> list[bytes]:
        msg = self.msg
        text = "\n".join([*msg.text_parts, *msg.html_texts])[: self.max_bytes]
        text = PARAGRAPH_RE.sub("\x00", text)
        text = SPACE_RE.sub(" ", text).replace("\x00", "\n")
        subject = msg.header("Subject")
        lines = [(subject + "\n") if subject is not None else "\n"]
        for line in text.splitlines(keepends=True):
            while len(line) > MAX_LINE:
                cut = line.rfind(" ", 0, MAX_LINE) + 1 or MAX_LINE
                lines.append(line[:cut])
                line = line[cut:]
            lines.append(line)
        return [line.encode("utf-8", "replace") for line in lines]

    def rawbody_chunks(self) -> list[bytes]:
        chunks = []
        for part in (*self.msg.text_parts, *self.msg.html_parts):
            data = part[: self.max_bytes].encode("utf-8", "replace")
            while len(data) > 2 * MAX_LINE:
                cut = data.find(b"\n", MAX_LINE, 2 * MAX_LINE)
                cut = cut + 1 if cut >= 0 else 2 * MAX_LINE
                chunks.append(data[:cut])
                data = data[cut:]
            chunks.append(data)
        return chunks

    def full(self) -> list[bytes]:
        return [self.msg.raw[: self.max_bytes]]

    def uris(self) -> list[bytes]:
        out = []
        for url in self.msg.urls:
            if url.lower().startswith("www."):
                url = "http://" + url
            out.append(url.encode("utf-8", "replace"))
        return out
