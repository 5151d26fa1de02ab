"""What a check is: a table of the symbols it may emit, and one coroutine that returns hits.

A check never scores (scores live in config, see smtpproxy/scan/symbols.toml)
and never raises for DNS or content problems: a DNS failure is a symbol of
its own (``*_DNSFAIL`` / ``*_TEMPFAIL``), malformed content is a symbol too.
An exception escaping ``run`` is a bug; the engine logs it and reports
CHECK_ERROR with the check's name as option, without crashing the scan.

Checks run concurrently, each under its own timeout. A check that needs the
results of others (DMARC needs SPF and DKIM) names them in ``after``; the
engine runs it once they are done and hands it their hits in
``ctx.results``. Such a check may also have ``prefetch(ctx)``, called when the scan starts:
it may start lookups that do not depend on the others' results (DMARC's
policy record) as futures in ``ctx.prefetched``, which ``run`` then awaits;
the engine cancels any left when the scan ends.

Optional ``inline = True`` (a class attribute): the check usually answers
without waiting (no I/O, or answers the resolver has cached), so the engine
starts it in its own task instead of creating one per check and message;
only if it does wait does the rest of it become a task, under the same
timeout. Such a check must not use ``asyncio.timeout()`` or
``asyncio.current_task()`` itself (before its first wait they would see the
engine's task); the resolver, ``run_in_executor`` and ``gather`` are fine.

A check that needs settings takes the whole Config as its only constructor
argument (``DkimCheck(cfg)``, reading ``cfg.scan.dkim``); it is built at
start-up and again on reload, so it reads files and compiles patterns there,
never per message.

Symbols an administrator names in a check's config (multimap maps, added
DNSBL zones) carry their score there: such a check has an optional
``symbol_defs()`` returning {name: engine.SymbolDef}, which the engine adds
to the symbols table (a name defined twice is a ConfigError).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    from smtpproxy.common.dns import Resolver
    from smtpproxy.common.store import Store
    from smtpproxy.scan.message import Message
    from smtpproxy.transaction import ClientInfo


@dataclass(frozen=True)
class Hit:
    """A symbol a check found, with the evidence (``options``) for the reader."""

    symbol: str
    options: tuple[str, ...] = ()
    # The share of the symbol's score this hit carries, 0..1: a classifier
    # scales its symbol by its confidence (BAYES_SPAM at 0.95 weighs 0.9).
    weight: float = 1.0


@dataclass
class CheckContext:
    """Everything a check may look at for one message."""

    message: Message
    client: ClientInfo
    mail_from: str  # envelope sender, "" for the null sender
    rcpt_tos: list[str]
    profile: str  # inbound / outbound
    resolver: Resolver | None
    # The shared store (SQLite or Redis), when the daemon has one (Bayes).
    store: Store | None = None
    # Hits of the checks named in ``after``, by check name.
    results: dict[str, list[Hit]] = field(default_factory=dict)
    # Checks may leave structured facts here for later checks and for the
    # Authentication-Results header, e.g. facts["spf"] = {"result": "pass", "domain": ...}.
    facts: dict[str, dict] = field(default_factory=dict)
    # Lookups a check started before it ran (its ``prefetch``), by the check's
    # own key; the engine cancels what is left when the scan ends.
    prefetched: dict[str, asyncio.Future] = field(default_factory=dict)


class Check(Protocol):
    # Short lowercase name: "spf", "dkim", "dmarc", "headers", ...
    name: ClassVar[str]
    # Every symbol this check may emit (iterating gives the names; a dict of
    # name -> note is fine too). Scores and descriptions live in symbols.toml.
    symbols: ClassVar[Collection[str]]
    # Names of checks whose results this one needs.
    after: ClassVar[tuple[str, ...]]

    async def run(self, ctx: CheckContext) -> list[Hit]: ...
