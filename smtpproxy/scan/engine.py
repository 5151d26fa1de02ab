"""The scoring engine: run the checks, score their symbols, pick the action.

Model (rspamd's, see DESIGN.md "Scoring"): checks report symbols with
options; scores come from the symbols table (symbols.toml plus
``[scan] scores`` overrides); the sum picks an action by threshold
(no action < greylist < add header < rewrite subject < reject), unless a
symbol forces one (GTUBE forces reject). Temporary DNS trouble
(``*_DNSFAIL``/``*_TEMPFAIL``) leads to soft reject when
``scan.dns_failure_action`` says so. A symbol marked ``skip_greylist``
(REPLY) keeps its message from the greylist action. Composite symbols
(``[scan.composites]``, composites.py) are evaluated over the found symbols
before the sum, and may take the score or the place of the symbols they match.

Each listener profile has its settings (``[scan.profiles.NAME]``, rspamd's
"settings"): which checks run, its thresholds or none at all (the outbound
profile acts only on forcing symbols), greylisting on or off. The engine
resolves them once per configuration (``ProfileSettings``) and scans a
message with those of ``ctx.profile``.

Checks run concurrently, each under ``scan.check_timeout_s`` and all within
``scan.budget_s``; a check that names others in ``after`` starts when they
are done. A check that times out or raises yields CHECK_TIMEOUT or
CHECK_ERROR (with its name as option) and the scan goes on: one broken
check never loses a message or crashes the proxy.

Cost: most checks answer without waiting for anything (no I/O, or answers
the resolver has cached), and a task plus a timer per check and message is
then most of their cost. A check marked ``inline`` (see checks/base.py) is
started in the engine's own task; only if it has to wait does the rest of it
become a task. The engine keeps one deadline per running task (its start
plus check_timeout_s) and waits for all of them at once, instead of a timer
inside every check.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import tomllib
from collections.abc import Coroutine, Generator, Mapping
from dataclasses import dataclass, field
from importlib import resources

from smtpproxy.common.config import (
    SCAN_ACTIONS,
    ActionsConfig,
    ConfigError,
    ScanConfig,
    ScanProfile,
)
from smtpproxy.scan.checks.base import Check, CheckContext, Hit
from smtpproxy.scan.composites import REMOVE_SYMBOL, REMOVE_WEIGHT, Composites, effective_rules

logger = logging.getLogger("smtpproxy.scan")

ENGINE_SYMBOLS = ("CHECK_TIMEOUT", "CHECK_ERROR")


@dataclass(frozen=True)
class SymbolDef:
    score: float
    description: str
    force_action: str | None = None
    # Never greylisted at end-of-data when this symbol is found (REPLY).
    skip_greylist: bool = False


def load_symbols(cfg: ScanConfig, defined: Mapping[str, SymbolDef] | None = None) -> dict[str, SymbolDef]:
    """The symbols table: the file (shipped or configured), the symbols checks
    define from their own configuration (``defined``, see check_symbol_defs),
    then the score overrides."""
    try:
        if cfg.symbols_file:
            with open(cfg.symbols_file, "rb") as f:
                data = tomllib.load(f)
        else:
            data = tomllib.loads(
                resources.files("smtpproxy.scan").joinpath("symbols.toml").read_text()
            )
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("scan.symbols_file", f"cannot load the symbols table: {exc}") from None
    table: dict[str, SymbolDef] = {}
    for name, entry in data.items():
        key = f"{cfg.symbols_file or 'symbols.toml'}: {name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("score"), int | float):
            raise ConfigError(key, "needs a numeric score")
        force = entry.get("force_action")
        if force is not None and force not in SCAN_ACTIONS:
            raise ConfigError(key, f"force_action must be one of {', '.join(SCAN_ACTIONS)}")
        skip_greylist = entry.get("skip_greylist", False)
        if not isinstance(skip_greylist, bool):
            raise ConfigError(key, "skip_greylist must be true or false")
        table[name] = SymbolDef(float(entry["score"]), str(entry.get("description", "")), force,
                                skip_greylist)
    for name, definition in (defined or {}).items():
        if name in table:
            raise ConfigError(f"{cfg.symbols_file or 'symbols.toml'}: {name}",
                              "also defined in the configuration (a composite, a multimap map, "
                              "a DNSBL zone's scores): keep one definition")
        table[name] = definition
    for name, score in cfg.scores.items():
        if name not in table:
            raise ConfigError(f"scan.scores.{name}", "no such symbol")
        table[name] = dataclasses.replace(table[name], score=score)
    return table


def check_symbol_defs(checks: list[Check]) -> dict[str, SymbolDef]:
    """Symbols whose score comes with a check's own configuration.

    A check may have an optional ``symbol_defs()`` returning {name:
    SymbolDef}: administrator-named symbols (multimap maps, added DNSBL
    zones) carry their score, description and forced action in the check's
    config section rather than in the symbols table.
    """
    defined: dict[str, SymbolDef] = {}
    owner: dict[str, str] = {}
    for check in checks:
        symbol_defs = getattr(check, "symbol_defs", None)
        if symbol_defs is None:
            continue
        for name, definition in symbol_defs().items():
            if name in defined:
                raise ConfigError(f"scan.{check.name}", f"symbol {name} is also defined by {owner[name]}")
            if definition.force_action is not None and definition.force_action not in SCAN_ACTIONS:
                raise ConfigError(f"scan.{check.name}", f"{name}: force_action must be one of "
                                  f"{', '.join(SCAN_ACTIONS)}")
            defined[name] = definition
            owner[name] = check.name
    return defined


@dataclass(frozen=True)
class ProfileSettings:
    """One profile's scan settings, resolved against the checks and [scan.actions]."""

    name: str
    checks: tuple[Check, ...]
    # Names of the checks left out: one that waits for such a check sees no hits from it.
    skipped: frozenset[str]
    thresholds: ActionsConfig
    score_actions: bool
    greylist: bool
    result_headers: bool


def check_profile_names(cfg: ScanConfig, checks: list[Check]) -> None:
    """A check name in a profile that is none of ``checks`` (every check the
    program has) is a ConfigError naming the key."""
    names = [check.name for check in checks]
    for field_ in dataclasses.fields(cfg.profiles):
        profile: ScanProfile = getattr(cfg.profiles, field_.name)
        for key in ("checks_enabled", "checks_disabled"):
            for i, name in enumerate(getattr(profile, key)):
                if name not in names:
                    raise ConfigError(f"scan.profiles.{field_.name}.{key}[{i}]",
                                      f"no check named {name!r} (checks: {', '.join(names)})")


def profile_settings(cfg: ScanConfig, checks: list[Check]) -> dict[str, ProfileSettings]:
    """Every profile's settings over ``checks`` (names of other checks are ignored
    here: an engine may run a few checks only; see check_profile_names)."""
    names = [check.name for check in checks]
    settings = {}
    for field_ in dataclasses.fields(cfg.profiles):
        profile: ScanProfile = getattr(cfg.profiles, field_.name)
        chosen = tuple(check for check in checks
                       if (not profile.checks_enabled or check.name in profile.checks_enabled)
                       and check.name not in profile.checks_disabled)
        thresholds = dataclasses.replace(cfg.actions, **profile.actions)
        settings[field_.name] = ProfileSettings(
            field_.name, chosen, frozenset(names) - {c.name for c in chosen}, thresholds,
            profile.score_actions, profile.greylist, profile.result_headers)
    return settings


@dataclass
class SymbolResult:
    name: str
    score: float
    options: tuple[str, ...]


@dataclass
class ScanResult:
    score: float
    required_score: float  # the reject threshold, as rspamd reports it
    action: str
    symbols: dict[str, SymbolResult]
    forced_by: str | None = None
    facts: dict[str, dict] = field(default_factory=dict)
    elapsed_s: float = 0.0
    # The listener profile whose settings scored it.
    profile: str = "inbound"

    def summary(self) -> str:
        """One line for the log: score, action and every symbol with its options."""
        parts = [f"profile={self.profile}", f"score={self.score:.2f}/{self.required_score:.2f}",
                 f"action={self.action}"]
        if self.forced_by:
            parts.append(f"forced_by={self.forced_by}")
        parts.append("symbols=" + ",".join(
            f"{s.name}({s.score:.2f})" + (f"[{';'.join(s.options)}]" if s.options else "")
            for s in sorted(self.symbols.values(), key=lambda s: s.name)
        ))
        return " ".join(parts)


def _severity(action: str | None) -> int:
    return SCAN_ACTIONS.index(action) if action in SCAN_ACTIONS else -1


class Engine:
    def __init__(self, cfg: ScanConfig, checks: list[Check], symbols: dict[str, SymbolDef] | None = None):
        self.cfg = cfg
        self.checks = checks
        defined = check_symbol_defs(checks)
        rules = effective_rules(cfg.composites)
        for name, (rule, _shipped) in rules.items():
            if name in defined:
                raise ConfigError(f"scan.composites.{name}", f"a check also defines symbol {name}")
            defined[name] = SymbolDef(rule.score, rule.description)
        # An explicit table (tests) is completed with the checks' own definitions.
        self.symbols = load_symbols(cfg, defined) if symbols is None else {**defined, **symbols}
        self.composites = Composites(rules, self.symbols)
        for name in set(rules) - set(self.composites.names):  # shipped, inputs missing
            del self.symbols[name]
        # A check whose configuration decides what one of its symbols forces
        # (antivirus: on_failure) says so in ``force_actions``.
        for check in checks:
            for name, action in getattr(check, "force_actions", {}).items():
                if name in self.symbols:
                    self.symbols[name] = dataclasses.replace(self.symbols[name], force_action=action)
        emitted = {name for check in checks for name in check.symbols} | set(ENGINE_SYMBOLS)
        missing = sorted(emitted - set(self.symbols))
        if missing:
            raise ConfigError("scan.symbols_file", f"no score for symbols {', '.join(missing)}")
        names = {c.name for c in checks}
        for check in checks:
            unknown = set(check.after) - names
            if unknown:
                raise ConfigError("scan", f"check {check.name} waits for unknown {sorted(unknown)}")
        self.settings = profile_settings(cfg, checks)

    def settings_for(self, profile: str) -> ProfileSettings:
        """The settings of ``profile`` (an unknown name: the inbound profile's)."""
        return self.settings.get(profile) or self.settings["inbound"]

    async def scan(self, ctx: CheckContext) -> ScanResult:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        settings = self.settings_for(ctx.profile)
        checks = settings.checks
        timeout_s = self.cfg.check_timeout_s
        budget_end = loop.time() + self.cfg.budget_s
        # A check left out by the profile counts as done with no hits, for those that wait for it.
        found: dict[str, list[Hit]] = {name: [] for name in settings.skipped}
        running: dict[asyncio.Future, tuple[Check, float]] = {}  # task -> (check, deadline)
        waiting = [check for check in checks if check.after]

        def start(check: Check) -> None:
            for name in check.after:
                ctx.results[name] = found[name]
            coro = check.run(ctx)
            if getattr(check, "inline", False):
                try:
                    step = coro.send(None)
                except StopIteration as stop:
                    found[check.name] = stop.value
                    return
                except TimeoutError:
                    found[check.name] = [Hit("CHECK_TIMEOUT", (check.name,))]
                    return
                except Exception:
                    logger.exception("check %s failed", check.name)
                    found[check.name] = [Hit("CHECK_ERROR", (check.name,))]
                    return
                task = loop.create_task(_go_on(coro, step))
            else:
                task = loop.create_task(coro)
            running[task] = (check, loop.time() + timeout_s)

        def start_ready() -> None:
            while True:
                ready = [c for c in waiting if all(name in found for name in c.after)]
                if not ready:
                    return
                for check in ready:
                    waiting.remove(check)
                    start(check)

        # A check that waits for others may start its own lookups now (DMARC's
        # policy record does not depend on SPF and DKIM): a round trip less.
        for check in waiting:
            prefetch = getattr(check, "prefetch", None)
            if prefetch is not None:
                try:
                    prefetch(ctx)
                except Exception:  # the check itself will run and say what is wrong
                    logger.exception("check %s: prefetch failed", check.name)
        try:
            for check in checks:
                if not check.after:
                    start(check)
            start_ready()
            while running:
                deadline = min(budget_end, *(d for _, d in running.values()))
                delay = deadline - loop.time()
                if delay > 0:
                    done, _ = await asyncio.wait(running, timeout=delay,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        check, _ = running.pop(task)
                        found[check.name] = _outcome(check, task)
                now = loop.time()
                over_budget = now >= budget_end
                for task, (check, deadline) in list(running.items()):
                    if over_budget or deadline <= now:
                        task.cancel()
                        del running[task]
                        found[check.name] = [Hit("CHECK_TIMEOUT", (check.name, "budget")
                                                 if over_budget else (check.name,))]
                if over_budget:
                    break
                start_ready()
        finally:
            for task in running:  # the scan itself was cancelled
                task.cancel()
            for future in ctx.prefetched.values():  # lookups no check came to read
                future.cancel()
        for check in waiting:  # never started: out of budget (or waiting in a circle)
            found[check.name] = [Hit("CHECK_TIMEOUT", (check.name, "budget"))]
        hits = [hit for check in checks for hit in found[check.name]]
        result = self._score(hits, settings)
        result.facts = ctx.facts
        result.elapsed_s = time.monotonic() - started
        return result

    def _score(self, hits: list[Hit], settings: ProfileSettings | None = None) -> ScanResult:
        settings = settings or self.settings["inbound"]
        symbols: dict[str, SymbolResult] = {}
        for hit in hits:
            definition = self.symbols[hit.symbol]  # checked at start-up
            if hit.symbol in symbols:  # a symbol found twice keeps all evidence, counts once
                symbols[hit.symbol].options += hit.options
                continue
            # A hit may carry a share of the score (a classifier's confidence).
            weight = min(1.0, max(0.0, hit.weight))
            symbols[hit.symbol] = SymbolResult(hit.symbol, definition.score * weight, hit.options)
        hidden_score = self._composites(symbols)
        forced = None
        for name in symbols:
            definition = self.symbols[name]
            # Several forcing symbols: the most severe action wins, whatever
            # order the checks finished in (a "no action" whitelist map never
            # overrides GTUBE or a blacklist map forcing reject).
            if definition.force_action and (forced is None or _severity(definition.force_action)
                                            > _severity(self.symbols[forced].force_action)):
                forced = name
        score = round(sum(s.score for s in symbols.values()) + hidden_score, 2)
        thresholds = settings.thresholds
        if forced:
            action = self.symbols[forced].force_action or "reject"
        elif not settings.score_actions:
            action = "no action"
        elif thresholds.reject and score >= thresholds.reject:
            action = "reject"
        elif self.cfg.dns_failure_action == "soft reject" and any(
            name.endswith(("_DNSFAIL", "_TEMPFAIL")) for name in symbols
        ):
            action = "soft reject"
        elif thresholds.rewrite_subject and score >= thresholds.rewrite_subject:
            action = "rewrite subject"
        elif thresholds.add_header and score >= thresholds.add_header:
            action = "add header"
        elif thresholds.greylist and score >= thresholds.greylist:
            action = "greylist"
        else:
            action = "no action"
        if action == "greylist" and (not settings.greylist or any(
                self.symbols[name].skip_greylist for name in symbols)):
            # Greylisting is the lowest action: without it there is none.
            action = "no action"
        required = thresholds.reject if settings.score_actions else 0.0
        return ScanResult(score, required, action, symbols, forced, profile=settings.name)

    def _composites(self, symbols: dict[str, SymbolResult]) -> float:
        """Add the composites that fire to ``symbols`` and take from the symbols
        they matched what their policy says (composites.py); the score of the
        symbols removed from view whose score still counts."""
        if not self.composites.order:
            return 0.0
        outcome = self.composites.apply({name: s.options for name, s in symbols.items()})
        for name, matched in outcome.fired.items():
            symbols[name] = SymbolResult(name, self.symbols[name].score, matched)
        hidden = 0.0
        for name, bits in outcome.removals.items():
            if bits & REMOVE_WEIGHT:
                symbols[name].score = 0.0
            if bits & REMOVE_SYMBOL:
                hidden += symbols.pop(name).score
        return hidden


def _outcome(check: Check, task: asyncio.Future) -> list[Hit]:
    """A finished check task's hits, or the engine's symbol for how it failed."""
    if task.cancelled():
        return [Hit("CHECK_TIMEOUT", (check.name,))]
    exc = task.exception()
    if exc is None:
        return task.result()
    if isinstance(exc, TimeoutError):
        return [Hit("CHECK_TIMEOUT", (check.name,))]
    logger.error("check %s failed", check.name, exc_info=exc)
    return [Hit("CHECK_ERROR", (check.name,))]


class _GoOn:
    """Drives a check coroutine the engine has already stepped once (see ``_go_on``)."""

    def __init__(self, coro: Coroutine, step: object):
        self.coro, self.step = coro, step

    def __await__(self) -> Generator:
        # Hands the task what the coroutine yielded (the future it waits for),
        # and forwards what the task sends or throws (wake-up, cancellation)
        # back to it: ``yield from`` on a coroutine that has already started.
        coro, step = self.coro, self.step
        while True:
            try:
                sent = yield step
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation: the check's to handle
                try:
                    step = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    step = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _go_on(coro: Coroutine, step: object):
    """The rest of an inline check that had to wait, as a task of its own."""
    return await _GoOn(coro, step)
