"""The key table and the signing table: which From domains we sign, with which keys.

Key table, one key per line (OpenDKIM's KeyTable syntax)::

    NAME  DOMAIN:SELECTOR:/path/to/keyfile

Signing table, one From domain per line::

    example.org        rsa2026,ed2026     # exactly this domain; two signatures
    .example.org       rsa2026            # any subdomain of it

Blank lines and ``#`` comments are ignored. A name used in the signing
table must be in the key table, and a key may only sign for its own domain
or a subdomain of it (d= must align with From, RFC 7489 3.1.1), so a table
can never make us sign for a domain that is not ours. There is no catch-all.

``TableSource`` holds the loaded tables. ``current()`` re-checks the two files
and every key file (size, mtime, inode) at most every ``interval_s`` and
reloads them as a whole: the new tables replace the old ones in one
assignment only when every line and every key loaded, so a half-written key
during rotation never signs anything; otherwise the previous tables stay and
the error is logged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from smtpproxy.sign.keys import KeyError_, PrivateKey, load_key

logger = logging.getLogger("smtpproxy.sign")


class TableError(Exception):
    """A bad table line or key; ``which`` is "key_table" or "signing_table"."""

    def __init__(self, which: str, message: str):
        super().__init__(message)
        self.which = which


@dataclass(frozen=True)
class SigningKey:
    name: str
    domain: str      # d=, lower case A-labels
    selector: str    # s=
    path: str
    key: PrivateKey


@dataclass(frozen=True)
class Tables:
    keys: dict[str, SigningKey]
    exact: dict[str, tuple[SigningKey, ...]]
    subdomains: dict[str, tuple[SigningKey, ...]]

    def lookup(self, domain: str) -> tuple[SigningKey, ...]:
        """The keys for From domain ``domain`` (lower case A-labels); () when not ours."""
        domain = domain.rstrip(".").lower()
        if domain in self.exact:
            return self.exact[domain]
        labels = domain.split(".")
        for i in range(1, len(labels)):
            parent = ".".join(labels[i:])
            if parent in self.subdomains:
                return self.subdomains[parent]
        return ()


def _domain(text: str) -> str:
    domain = text.strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        raise ValueError(f"not a domain name: {text!r}") from None


def _lines(path: str, which: str):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise TableError(which, f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TableError(which, f"{path}: not UTF-8 text") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            yield number, line


def _valid_domain(domain: str) -> bool:
    labels = domain.split(".")
    return len(labels) >= 2 and all(
        0 < len(label) < 64 and all(c.isalnum() or c in "-_" for c in label) for label in labels)


def load_tables(key_table: str, signing_table: str) -> Tables:
    """Both tables and every key they name; raises TableError naming file and line."""
    keys: dict[str, SigningKey] = {}
    for number, line in _lines(key_table, "key_table"):
        where = f"{key_table}:{number}"
        parts = line.split(None, 1)
        spec = parts[1].split(":", 2) if len(parts) == 2 else []
        if len(spec) != 3 or not all(s.strip() for s in spec):
            raise TableError("key_table", f"{where}: expected NAME DOMAIN:SELECTOR:/path/to/key")
        name, (domain_text, selector, path) = parts[0], (s.strip() for s in spec)
        try:
            domain = _domain(domain_text)
        except ValueError as exc:
            raise TableError("key_table", f"{where}: {exc}") from None
        if not _valid_domain(domain):
            raise TableError("key_table", f"{where}: not a domain name: {domain_text!r}")
        if not all(_valid_domain(label + ".x") for label in selector.split(".")):
            raise TableError("key_table", f"{where}: not a selector: {selector!r}")
        if name in keys:
            raise TableError("key_table", f"{where}: key name {name} defined twice")
        try:
            key = load_key(path)
        except KeyError_ as exc:
            raise TableError("key_table", f"{where}: key {name}: {exc}") from None
        keys[name] = SigningKey(name, domain, selector.lower(), path, key)
    exact: dict[str, tuple[SigningKey, ...]] = {}
    subdomains: dict[str, tuple[SigningKey, ...]] = {}
    for number, line in _lines(signing_table, "signing_table"):
        where = f"{signing_table}:{number}"
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise TableError("signing_table", f"{where}: expected DOMAIN NAME[,NAME...]")
        pattern, names = parts[0], [n.strip() for n in parts[1].split(",") if n.strip()]
        target = subdomains if pattern.startswith(".") else exact
        try:
            domain = _domain(pattern.lstrip("."))
        except ValueError as exc:
            raise TableError("signing_table", f"{where}: {exc}") from None
        if not _valid_domain(domain):
            raise TableError("signing_table", f"{where}: not a domain or .domain: {pattern!r}")
        if domain in target:
            raise TableError("signing_table", f"{where}: {pattern} listed twice")
        chosen = []
        for name in names:
            if name not in keys:
                raise TableError("signing_table", f"{where}: key {name} is not in the key table")
            key = keys[name]
            if not (domain == key.domain or domain.endswith("." + key.domain)):
                raise TableError("signing_table", f"{where}: key {name} signs for {key.domain}, "
                                 f"which does not align with {pattern}")
            chosen.append(key)
        if not chosen:
            raise TableError("signing_table", f"{where}: no key names")
        target[domain] = tuple(chosen)
    return Tables(keys, exact, subdomains)


def _stamp(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (path, st.st_ino, st.st_size, st.st_mtime_ns)


class TableSource:
    """The current tables, reloaded when a file changes; see the module docstring."""

    def __init__(self, key_table: str, signing_table: str, interval_s: float,
                 clock=time.monotonic):
        self.key_table = key_table
        self.signing_table = signing_table
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self.tables = load_tables(key_table, signing_table)  # TableError at start-up
        self._stamps = self._all_stamps(self.tables)
        self._checked = clock()

    def _all_stamps(self, tables: Tables) -> tuple:
        paths = [self.key_table, self.signing_table, *(k.path for k in tables.keys.values())]
        return tuple(_stamp(p) for p in paths)

    def current(self) -> Tables:
        """The tables, reloading first when due (call from a worker thread: it reads files)."""
        now = self._clock()
        if now - self._checked < self.interval_s:
            return self.tables
        with self._lock:
            if now - self._checked < self.interval_s:
                return self.tables
            self._checked = now
            stamps = self._all_stamps(self.tables)
            if stamps == self._stamps:
                return self.tables
            try:
                tables = load_tables(self.key_table, self.signing_table)
            except TableError as exc:
                logger.error("signing tables not reloaded, the previous ones stay: %s", exc)
                self._stamps = stamps  # log once per change, not on every check
                return self.tables
            self.tables, self._stamps = tables, self._all_stamps(tables)
            logger.info("signing tables reloaded: %d keys, %d domains", len(tables.keys),
                        len(tables.exact) + len(tables.subdomains))
            return self.tables
