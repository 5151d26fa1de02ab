"""Whitelists as plain map files, reloaded when they change.

One entry per line, ``#`` starts a comment, only the first word counts (so a
Postfix-style ``key OK`` line works too).

Client maps (matched against ``client_address`` and ``client_name``):
  192.0.2.1, 198.51.100.0/24, 2001:db8::/32   an address or network
  mail.example.com                             that hostname exactly
  .outbound.protection.outlook.com             any name ending in it
  /^mail-[a-z]+-f\\d+\\.google\\.com$/          a regular expression (searched, case-insensitive)
Only ``client_name`` is used, the name Postfix verified forward and back:
``reverse_client_name`` is whatever the client's PTR owner chose to say.

Sender and recipient maps:
  user@example.com   that address           example.com    that domain
  .example.com       any subdomain of it    postmaster@    that local part, any domain
  /regex/            searched in the whole address

Reading a file is blocking I/O: ``refresh()`` runs in an executor; a file
that cannot be read keeps its previous contents and is logged.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass, field

from policy.net import NetworkSet

logger = logging.getLogger(__name__)


def _words(text: str) -> list[tuple[int, str]]:
    """(line number, entry) for every entry in a map file."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line.startswith("/"):
            # A regex may contain spaces or '#': it runs to the last '/'.
            end = line.rfind("/")
            if end > 0:
                out.append((number, line[: end + 1]))
            continue
        line = line.split("#", 1)[0].strip()
        if line:
            out.append((number, line.split()[0]))
    return out


@dataclass
class _Compiled:
    nets: NetworkSet = field(default_factory=NetworkSet)
    exact: set[str] = field(default_factory=set)
    # ".example.com" entries, kept as "example.com": a name matches when one of
    # its parent domains is in the set (one lookup per label, not per entry).
    suffixes: set[str] = field(default_factory=set)
    local_parts: set[str] = field(default_factory=set)
    regexes: list[re.Pattern] = field(default_factory=list)


def compile_entries(entries: list[tuple[int, str]], path: str, kind: str) -> _Compiled:
    c = _Compiled()
    for number, word in entries:
        if word.startswith("/") and len(word) > 1:
            try:
                c.regexes.append(re.compile(word[1:-1], re.IGNORECASE))
            except re.error as exc:
                logger.warning("%s:%d: bad regular expression ignored: %s", path, number, exc)
            continue
        if kind == "client":
            try:
                net = ipaddress.ip_network(word, strict=False)
            except ValueError:
                pass
            else:
                c.nets.add(net)
                continue
        word = word.lower()
        if word.startswith("."):
            c.suffixes.add(word[1:])
        elif word.endswith("@"):
            c.local_parts.add(word[:-1])
        else:
            c.exact.add(word)
    return c


class MapFile:
    """One map file and what was compiled from it; ``refresh()`` re-reads on change."""

    def __init__(self, path: str, kind: str):
        self.path = path
        self.kind = kind
        self.compiled = _Compiled()
        self._stamp: tuple | None = None
        self._missing_logged = False

    def refresh(self) -> bool:
        """Reload if the file changed; True when it did. Blocking: run in an executor."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if not self._missing_logged:
                logger.warning("map %s unreadable (%s); keeping %s entries",
                               self.path, exc.strerror, "previous" if self._stamp else "no")
                self._missing_logged = True
            return False
        self._missing_logged = False
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return False
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as exc:
            logger.warning("map %s unreadable (%s); keeping previous entries", self.path, exc.strerror)
            return False
        self.compiled = compile_entries(_words(text), self.path, self.kind)
        self._stamp = stamp
        logger.info("map %s loaded", self.path)
        return True


def _parents(name: str):
    """'a.b.example.com' -> 'b.example.com', 'example.com', 'com'."""
    dot = name.find(".")
    while dot >= 0:
        name = name[dot + 1:]
        yield name
        dot = name.find(".")


def _name_matches(name: str, c: _Compiled) -> bool:
    name = name.lower().rstrip(".")
    if name in c.exact:
        return True
    if c.suffixes and any(parent in c.suffixes for parent in _parents(name)):
        return True
    return any(r.search(name) for r in c.regexes)


def _address_matches(address: str, c: _Compiled) -> bool:
    address = address.lower()
    local, _, domain = address.rpartition("@")
    if address in c.exact or (domain and domain in c.exact):
        return True
    if local and local in c.local_parts:
        return True
    if c.suffixes and any(parent in c.suffixes for parent in _parents(domain)):
        return True
    return any(r.search(address) for r in c.regexes)


class Whitelist:
    """Client, sender and recipient maps together."""

    def __init__(self, clients: tuple[str, ...] = (), senders: tuple[str, ...] = (),
                 recipients: tuple[str, ...] = ()):
        self.clients = [MapFile(p, "client") for p in clients]
        self.senders = [MapFile(p, "address") for p in senders]
        self.recipients = [MapFile(p, "address") for p in recipients]

    def maps(self) -> list[MapFile]:
        return self.clients + self.senders + self.recipients

    def refresh(self) -> None:
        for m in self.maps():
            m.refresh()

    def client(self, address: str | None, name: str | None) -> bool:
        for m in self.clients:
            if address and address in m.compiled.nets:
                return True
            if name and name != "unknown" and _name_matches(name, m.compiled):
                return True
        return False

    def sender(self, address: str | None) -> bool:
        return bool(address) and any(_address_matches(address, m.compiled) for m in self.senders)

    def recipient(self, address: str | None) -> bool:
        return bool(address) and any(_address_matches(address, m.compiled) for m in self.recipients)
