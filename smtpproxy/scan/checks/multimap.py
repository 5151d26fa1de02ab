"""Multimap: administrator-defined maps in plain files, each giving one symbol.

Each map (``scan.multimap.maps``) has a type saying what it is matched
against, a file, and the symbol a match gives with its score, description
and optionally a forced action; the engine learns those through
``symbol_defs()``. File formats are in docs/dnsbl-multimap.md; in short,
one entry per line, ``#`` starts a comment line, and:

  ip                      192.0.2.1, 198.51.100.0/24, 2001:db8::/32
  sender, from, rcpt      user@example.com, example.com, .example.com (any
                          subdomain), postmaster@ (that local part), <> (the
                          null sender), /regex/
  helo, url               host.example.com, .example.com, /regex/
  header, body            /regex/ or a plain phrase (a substring)
  attachment              *.exe (a glob), /regex/

Everything is case-insensitive. A map that cannot be compiled line by line
keeps the lines that can (the rest are logged).

Reloading never stops the event loop: the files' stat() and any re-read run
in a worker thread, at most every ``map_check_interval_s``; a message scanned
meanwhile uses the maps as they were. Only before a map's first load does a
message wait (in the event loop's sense: it awaits, nothing blocks) for it,
so a map is never taken as empty because it was not read yet. A missing or
unreadable file keeps the previous contents (none at first) and is logged
once; a file over ``max_file_bytes`` is refused the same way.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field

from smtpproxy.common.config import Config, MultimapMap
from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.engine import SymbolDef
from smtpproxy.scan.message import MAX_TEXT_CHARS

logger = logging.getLogger("smtpproxy.scan")

# Evidence per hit: a few matched values, each shortened.
MAX_OPTIONS = 5
MAX_OPTION_CHARS = 60

ADDRESS_TYPES = ("sender", "from", "rcpt")
NAME_TYPES = ("helo", "url")
TEXT_TYPES = ("header", "body")


@dataclass
class Compiled:
    """What one map file says, in the form its type is matched with."""

    nets: dict[int, dict[int, set[int]]] = field(default_factory=lambda: {4: {}, 6: {}})
    exact: set[str] = field(default_factory=set)
    # ".example.com" kept as "example.com": a name matches when a parent is here.
    suffixes: set[str] = field(default_factory=set)
    local_parts: set[str] = field(default_factory=set)
    null_sender: bool = False
    regexes: list[re.Pattern] = field(default_factory=list)

    def add_network(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        self.nets[net.version].setdefault(net.prefixlen, set()).add(int(net.network_address))

    def has_ip(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        value, bits = int(ip), ip.max_prefixlen
        return any((value >> (bits - length)) << (bits - length) in networks
                   for length, networks in self.nets[ip.version].items())


def _regex(text: str) -> re.Pattern:
    return re.compile(text, re.IGNORECASE)


def _entries(text: str, whole_line: bool) -> list[tuple[int, str]]:
    """(line number, entry): the first word, or the whole line for text and file-name maps."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("/"):
            end = line.rfind("/")  # a regex runs to the last '/': it may hold spaces or '#'
            if end > 0:
                out.append((number, line[: end + 1]))
                continue
        out.append((number, line if whole_line else line.split()[0]))
    return out


def compile_map(text: str, kind: str, path: str = "") -> Compiled:
    """Compile a map file's text for a map of type ``kind``; bad lines are logged and skipped."""
    c = Compiled()
    for number, entry in _entries(text, whole_line=kind in (*TEXT_TYPES, "attachment")):
        try:
            if entry.startswith("/") and len(entry) > 2 and entry.endswith("/"):
                c.regexes.append(_regex(entry[1:-1]))
            elif kind == "ip":
                c.add_network(ipaddress.ip_network(entry.removeprefix("IPv6:"), strict=False))
            elif kind in TEXT_TYPES:
                c.regexes.append(_regex(re.escape(entry)))
            elif kind == "attachment":
                c.regexes.append(_regex(r"\A" + fnmatch.translate(entry)))  # the whole name
            elif kind in ADDRESS_TYPES and entry == "<>":
                c.null_sender = True
            elif kind in ADDRESS_TYPES and entry.endswith("@"):
                c.local_parts.add(entry[:-1].lower())
            elif entry.startswith("."):
                c.suffixes.add(entry[1:].lower().rstrip("."))
            else:
                c.exact.add(entry.lower().rstrip("."))
        except (ValueError, re.error) as exc:
            logger.warning("%s:%d: entry %r ignored: %s", path, number, entry, exc)
    return c


def _parents(name: str):
    """'a.b.example.com' -> 'b.example.com', 'example.com', 'com'."""
    labels = name.split(".")
    for i in range(1, len(labels)):
        yield ".".join(labels[i:])


def name_matches(c: Compiled, name: str) -> bool:
    name = name.lower().rstrip(".")
    return (name in c.exact or any(p in c.suffixes for p in _parents(name))
            or any(r.search(name) for r in c.regexes))


def address_matches(c: Compiled, address: str) -> bool:
    if not address:
        return c.null_sender
    address = address.lower()
    local, at, domain = address.rpartition("@")
    if address in c.exact or (at and domain in c.exact) or (at and local in c.local_parts):
        return True
    if at and any(p in c.suffixes for p in _parents(domain)):
        return True
    return any(r.search(address) for r in c.regexes)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_OPTION_CHARS else text[: MAX_OPTION_CHARS - 3] + "..."


class MapFile:
    """One map: its definition, its file, and what was last compiled from it."""

    def __init__(self, definition: MultimapMap, max_bytes: int):
        self.definition = definition
        self.path = definition.file
        self.max_bytes = max_bytes
        self.compiled = Compiled()
        self.tried = False  # the first load was attempted (missing files included)
        self._stamp: tuple | None = None
        self._complained = False

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when it did. Blocking: a worker thread's job."""
        try:
            st = os.stat(self.path)
            if st.st_size > self.max_bytes:
                raise OSError(f"larger than max_file_bytes ({self.max_bytes})")
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp == self._stamp:
                return False
            with open(self.path, encoding="utf-8", errors="replace") as f:
                text = f.read(self.max_bytes + 1)
        except OSError as exc:
            if not self._complained:
                logger.warning("multimap %s: %s unusable (%s); keeping %s entries",
                               self.definition.symbol, self.path, exc.strerror or exc,
                               "the previous" if self._stamp else "no")
                self._complained = True
            return False
        finally:
            self.tried = True
        self.compiled = compile_map(text, self.definition.type, self.path)
        self._stamp = stamp
        self._complained = False
        logger.info("multimap %s: %s loaded", self.definition.symbol, self.path)
        return True

    # ------------------------------------------------------------ matching

    def match(self, ctx: CheckContext) -> list[str]:
        """The matched values (the evidence); empty: no match."""
        c, kind, msg = self.compiled, self.definition.type, ctx.message
        if kind == "ip":
            ip = ctx.client.ip
            return [str(ip)] if ip is not None and c.has_ip(ip) else []
        if kind == "sender":
            return [ctx.mail_from or "<>"] if address_matches(c, ctx.mail_from) else []
        if kind == "rcpt":
            return [r for r in ctx.rcpt_tos if r and address_matches(c, r)]
        if kind == "helo":
            helo = ctx.client.helo
            return [helo] if helo and name_matches(c, helo) else []
        if msg is None:
            return []
        if kind == "from":
            return [msg.from_address] if msg.from_address and address_matches(c, msg.from_address) else []
        if kind == "url":
            return [host for host in msg.url_domains if name_matches(c, host)]
        if kind == "attachment":
            names = [p.filename for p in msg.attachments if p.filename]
            return [n for n in names if any(r.search(n) for r in c.regexes)]
        texts = (msg.header_all(self.definition.header) if kind == "header"
                 else [msg.visible_text[:MAX_TEXT_CHARS]])
        found = []
        for text in texts:
            for regex in c.regexes:
                m = regex.search(text)
                if m:
                    found.append(m.group(0))
        return found


class MultimapCheck:
    name = "multimap"
    after: tuple[str, ...] = ()
    # Runs in the engine's task until it has to wait (checks/base.py).
    inline = True

    def __init__(self, cfg: Config | None = None):
        mc = cfg.scan.multimap if cfg is not None else Config().scan.multimap
        self.interval_s = mc.map_check_interval_s
        self.maps = [MapFile(m, mc.max_file_bytes) for m in mc.maps]
        self.symbols = {m.symbol: m.description for m in mc.maps}
        self._defs = {m.symbol: SymbolDef(m.score, m.description or f"multimap {m.type} map {m.file}",
                                          m.action or None) for m in mc.maps}
        self._next_check = 0.0
        self._refreshing: asyncio.Future | None = None
        self._lock = threading.Lock()  # one refresh at a time, whichever loop asked

    def symbol_defs(self) -> dict[str, SymbolDef]:
        return dict(self._defs)

    async def run(self, ctx: CheckContext) -> list[Hit]:
        if not self.maps:
            return []
        await self._maybe_refresh()
        hits = []
        for m in self.maps:
            found = list(dict.fromkeys(m.match(ctx)))
            if found:
                hits.append(Hit(m.definition.symbol, tuple(_short(v) for v in found[:MAX_OPTIONS])))
        return hits

    # ------------------------------------------------------------ reloading

    def refresh(self) -> None:
        """Check every file and re-read the changed ones. Blocking: runs in a worker thread."""
        with self._lock:
            for m in self.maps:
                try:
                    m.refresh()
                except Exception:  # a bug here must not stop the other maps or the scan
                    logger.exception("multimap %s: reloading %s failed", m.definition.symbol, m.path)
                    m.tried = True

    async def _maybe_refresh(self) -> None:
        loop = asyncio.get_running_loop()
        first_load = not all(m.tried for m in self.maps)
        now = time.monotonic()
        if now < self._next_check and not first_load:
            return
        task = self._refreshing
        # A refresh started on another (since closed) loop cannot be awaited here.
        if task is None or task.done() or task.get_loop() is not loop:
            self._next_check = now + self.interval_s
            task = self._refreshing = loop.run_in_executor(None, self.refresh)
        if first_load:
            # Shielded: this check timing out must not abandon the load for the next message.
            await asyncio.shield(task)
