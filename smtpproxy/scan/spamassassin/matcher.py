"""Which regex rules match: one Hyperscan pass per rule type, Python ``re`` to confirm.

As rspamd does, the rules of one type (header, body, rawbody, full, uri)
form one Hyperscan database, so a thousand regexes cost one pass over the
text. Header rules form one database per field that many rules read (as
rspamd's per-header classes do), so the Subject's rules scan the Subject
only, and one for the rest. The pass runs over the type's texts joined by newlines, with each
pattern in its superset form (regex.py): it may report a rule that does
not really match, never miss one. Every rule it reports is then run
with its exact ``re`` pattern on its own texts (per line for body rules, on
its header for header rules), which also counts ``tflags multiple`` hits.
So the hits are exactly those of ``re`` alone, only found sooner.

A pattern with back-references or look-around goes in relaxed (regex.py).
One Hyperscan refuses (too long, too large, embedded anchors) is replaced
in the database by a superset Hyperscan takes (literals.py): the literals
one of which every match contains (as SpamAssassin's Rule2XSBody does), or
Hyperscan's own prefilter approximation of the pattern; only a pattern
with neither runs with ``re`` on every message ("always" rules). Without
the ``hyperscan`` module every rule is such a rule.

Compiling takes minutes for SpamAssassin's full rule set, so the databases
are serialised to ``<state_dir>/spamassassin/hs-<key>.db``, ``key`` being a
hash of the patterns and flags (so of the rule files' content): a restart
or reload with unchanged rules loads them in milliseconds. The file holds
one pickle per database after a header, so loading holds one serialised
database at a time besides the loaded ones (a peak of the largest, about
25 MB, not of all 36). A compile runs in a worker thread; until it is
done the rules run with ``re`` alone. A lock
file beside the cache makes several processes sharing it (proxy.workers)
compile once: the first compiles, the others wait and load its result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import pickle
import re
import tempfile
import threading
from collections.abc import Iterable

from smtpproxy.scan.spamassassin.literals import hyperscan_literal, required_literals
from smtpproxy.scan.spamassassin.re2filter import release_cache, superset
from smtpproxy.scan.spamassassin.regex import Translated, compile_source, relax_for_hyperscan

try:  # optional: without it every rule runs with re
    import hyperscan
except ImportError:  # pragma: no cover - depends on the installation
    hyperscan = None

logger = logging.getLogger("smtpproxy.scan")

# The rule types. Header rules form several databases (check.py's header_group):
# "header:NAME" for the rules on one field, "header" for the rest.
KINDS = ("header", "body", "rawbody", "full", "uri")
# Longer patterns (ReplaceTags expansions) cost Hyperscan more to compile than they save:
# they go in as their required literals or prefilter approximation.
MAX_HS_PATTERN_BYTES = 8000
# Hyperscan's own limit on a pattern's length (prefilter mode included).
HS_LENGTH_LIMIT = 65535
# Required literals at least this long are preferred to Hyperscan's prefilter approximation.
GOOD_LITERAL = 4
CACHE_VERSION = 3
PREFILTER_RE = re.compile(rb"\\[1-9]|\(\?P=|\(\?<?[=!]")

# Compilations done by this process (tests assert that a cache hit compiles nothing).
compile_count = 0
_compile_lock = threading.Lock()


def _hs_flags(t: Translated, prefilter: bool) -> int:
    flags = hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_ALLOWEMPTY | hyperscan.HS_FLAG_MULTILINE
    if prefilter:
        flags |= hyperscan.HS_FLAG_PREFILTER
    if t.caseless:
        flags |= hyperscan.HS_FLAG_CASELESS
    if t.dotall:
        flags |= hyperscan.HS_FLAG_DOTALL
    return flags


def _compile_db(patterns: list[tuple[bytes, int]], ids: list[int] | None = None) -> object:
    db = hyperscan.Database()
    db.compile(expressions=[p for p, _ in patterns],
               ids=ids if ids is not None else list(range(len(patterns))),
               elements=len(patterns), flags=[f for _, f in patterns])
    return db


def _compiles(patterns: list[tuple[bytes, int]]) -> bool:
    try:
        _compile_db(patterns)
    except Exception:
        return False
    return True


class Matcher:
    """Candidate rules per text, then exact matching with ``re``.

    ``rules``: {kind: [(name, Translated)]}. ``cache_dir``: where compiled
    databases are kept ("" : nowhere). ``use_hyperscan=False`` is the pure
    ``re`` path (and what runs while a compile is under way). The keys of
    ``rules`` name the databases: a rule type, or a group of header rules.
    """

    def __init__(self, rules: dict[str, list[tuple[str, Translated]]], cache_dir: str = "",
                 use_hyperscan: bool = True, background: bool = True):
        self.regex = Regexes()
        self.kinds = tuple(rules)
        self.names: dict[str, list[str]] = {k: [] for k in self.kinds}  # HS id -> rule name
        self.always: dict[str, list[str]] = {k: [] for k in self.kinds}  # run with re every time
        self.all: dict[str, list[str]] = {k: [] for k in self.kinds}
        self._patterns: dict[str, list[tuple[bytes, int]]] = {k: [] for k in self.kinds}
        self._translated: dict[str, Translated] = {}
        self._oversize: dict[str, list[str]] = {k: [] for k in self.kinds}
        self.substituted: dict[str, str] = {}  # name -> what stands for it in the database
        # name -> (literals, caseless): a text without one of them cannot match (literals.py).
        self.literals: dict[str, tuple[tuple[bytes, ...], bool]] = {}
        # name -> an RE2 superset (re2filter.py): the texts it rejects need no re.
        self.filters: dict[str, object] = {}
        self.dbs: dict[str, object] = {}
        self.scratch: dict[str, object] = {}
        self.ready = False  # Hyperscan databases in use
        self.hs_refused: dict[str, str] = {}  # name -> why it is an "always" rule
        self.compiled_here = False
        self._done = threading.Event()
        self.use_hyperscan = use_hyperscan and hyperscan is not None
        for kind, items in rules.items():
            for name, t in items:
                self.regex.add(name, t)
                self.all[kind].append(name)
                if self.use_hyperscan:
                    self._translated[name] = t
        if not self.use_hyperscan:
            self._compile_every_pattern()
            self._done.set()
            return
        for kind, items in rules.items():
            for name, t in items:
                if len(t.hyperscan) > MAX_HS_PATTERN_BYTES:
                    self._oversize[kind].append(name)
                    continue
                pattern = t.hyperscan
                if PREFILTER_RE.search(pattern):
                    # Hyperscan has neither back-references nor look-around (its
                    # prefilter mode has, but compiles some of these for minutes):
                    # it gets a superset without them; re confirms as always.
                    pattern = relax_for_hyperscan(pattern)
                self.names[kind].append(name)
                self._patterns[kind].append((pattern, _hs_flags(t, False)))
        digest = hashlib.sha256(repr((CACHE_VERSION, hyperscan.__version__ if hasattr(
            hyperscan, "__version__") else "", sorted(self._patterns.items()),
            sorted(self._oversize.items()))).encode())
        self.key = digest.hexdigest()[:24]
        self.cache_path = os.path.join(cache_dir, f"hs-{self.key}.db") if cache_dir else ""
        if self._load_cache():
            self._forget_sources()
            self._done.set()
            return
        if background:
            threading.Thread(target=self._build, name="sa-hyperscan", daemon=True).start()
        else:
            self._build()

    # ------------------------------------------------------------ databases

    def _load_cache(self) -> bool:
        if not self.cache_path:
            return False
        try:
            with open(self.cache_path, "rb") as f:
                data = pickle.load(f)
                if data["key"] != self.key:
                    return False
                if "dbs" in data:  # the older layout: every database in the one pickle
                    dbs = {kind: hyperscan.loadb(blob, hyperscan.HS_MODE_BLOCK)
                           for kind, blob in data.pop("dbs").items()}
                else:
                    # One serialised database in memory at a time: the process's peak
                    # RSS holds the largest one twice (serialised and loaded), not all.
                    dbs = {}
                    for kind in data["kinds"]:
                        blob = pickle.load(f)
                        dbs[kind] = hyperscan.loadb(blob, hyperscan.HS_MODE_BLOCK)
                        del blob
        except FileNotFoundError:
            return False
        except Exception as exc:  # a damaged cache is rebuilt
            logger.warning("spamassassin: Hyperscan cache %s unusable (%s); recompiling",
                           self.cache_path, exc)
            return False
        self._install(dbs, data["refused"], data["names"], data["substituted"])
        return True

    def _build(self) -> None:
        try:
            self._compile()
        except Exception:  # never fatal: the rules keep running with re
            logger.exception("spamassassin: compiling the Hyperscan databases failed")
            self._compile_every_pattern()
        finally:
            self._forget_sources()
            self._done.set()

    def _compile_every_pattern(self) -> None:
        """Without Hyperscan every rule runs on every message: its ``re`` pattern
        is compiled now (start-up, or this thread), not by the first message."""
        for name in self.regex.sources:
            self.regex[name]  # noqa: B018 - compiles it

    def _forget_sources(self) -> None:
        """Drop what only compiling needs (every pattern's Hyperscan form): MBs kept for nothing."""
        self._patterns = {k: [] for k in self.kinds}
        self._translated = {}
        self._oversize = {k: [] for k in self.kinds}

    def _compile(self) -> None:
        global compile_count
        with _compile_lock, self._cache_lock():
            if self._load_cache():  # another build (a reload, a worker) finished meanwhile
                return
            compile_count += 1
            self.compiled_here = True
            dbs, refused, names, substituted = {}, {}, {}, {}
            for kind in self.kinds:
                entries = list(zip(self.names[kind], self._patterns[kind], strict=True))
                bad = [(n, "pattern too long for Hyperscan") for n in self._oversize[kind]]
                if entries and not _compiles([p for _, p in entries]):
                    # Find the patterns Hyperscan refuses one by one; the rest go in one database.
                    good = []
                    for name, pattern in entries:
                        try:
                            _compile_db([pattern])
                            good.append((name, pattern))
                        except Exception as exc:
                            bad.append((name, f"Hyperscan: {exc}"))
                    entries = good
                for name, why in bad:
                    subs, how = self._substitute(name)
                    if subs:
                        entries.extend((name, p) for p in subs)
                        substituted[name] = f"{how} ({why})"
                    else:
                        refused[name] = why
                order: dict[str, int] = {}
                for name, _ in entries:
                    order.setdefault(name, len(order))
                names[kind] = list(order)
                dbs[kind] = _compile_db([p for _, p in entries], [order[n] for n, _ in entries]) \
                    if entries else None
            self._save(dbs, refused, names, substituted)
            self._install(dbs, refused, names, substituted)
            logger.info("spamassassin: Hyperscan databases compiled (%d rules as a prefilter "
                        "superset, %d run with re alone)", len(substituted),
                        sum(len(v) for v in self.always.values()))

    def _substitute(self, name: str) -> tuple[list[tuple[bytes, int]], str]:
        """Patterns Hyperscan takes that stand for rule ``name``'s (a superset), and how."""
        t = self._translated[name]
        found = required_literals(self.regex[name])
        literal_patterns: list[tuple[bytes, int]] = []
        if found is not None:
            literals, caseless = found
            flags = hyperscan.HS_FLAG_SINGLEMATCH | (hyperscan.HS_FLAG_CASELESS if caseless else 0)
            literal_patterns = [(hyperscan_literal(lit), flags) for lit in literals]
            if min(len(lit) for lit in literals) >= GOOD_LITERAL and _compiles(literal_patterns):
                return literal_patterns, f"{len(literals)} required literals"
        pattern = t.hyperscan
        if PREFILTER_RE.search(pattern):
            pattern = relax_for_hyperscan(pattern)
        if len(pattern) < HS_LENGTH_LIMIT and _compiles([(pattern, _hs_flags(t, True))]):
            return [(pattern, _hs_flags(t, True))], "Hyperscan prefilter mode"
        if literal_patterns and _compiles(literal_patterns):
            return literal_patterns, f"{len(literal_patterns)} required literals"
        return [], ""

    @contextlib.contextmanager
    def _cache_lock(self):
        """Held while compiling: of several worker processes (proxy.workers) one
        compiles, the others wait for it and then load its databases from the cache."""
        if not self.cache_path:
            yield
            return
        try:
            os.makedirs(os.path.dirname(self.cache_path), exist_ok=True)
            fd = os.open(os.path.join(os.path.dirname(self.cache_path), ".compile.lock"),
                         os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # compiling without the lock beats not compiling
            logger.warning("spamassassin: no compile lock in %s: %s",
                           os.path.dirname(self.cache_path), exc)
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _save(self, dbs: dict, refused: dict[str, str], names: dict[str, list[str]],
              substituted: dict[str, str]) -> None:
        if not self.cache_path:
            return
        try:
            os.makedirs(os.path.dirname(self.cache_path), exist_ok=True)
            kinds = [k for k, db in dbs.items() if db is not None]
            data = {"key": self.key, "refused": refused, "names": names, "substituted": substituted,
                    "kinds": kinds}
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.cache_path), prefix=".hs-")
            with os.fdopen(fd, "wb") as f:
                pickle.dump(data, f)
                for kind in kinds:  # each database its own pickle, read back one at a time
                    pickle.dump(hyperscan.dumpb(dbs[kind]), f)
            os.replace(tmp, self.cache_path)
            # Older databases of other rule versions are of no use any more.
            for entry in os.scandir(os.path.dirname(self.cache_path)):
                if entry.name.startswith("hs-") and entry.path != self.cache_path:
                    os.unlink(entry.path)
        except OSError as exc:
            logger.warning("spamassassin: cannot keep the Hyperscan cache in %s: %s",
                           self.cache_path, exc)

    def _install(self, dbs: dict, refused: dict[str, str], names: dict[str, list[str]],
                 substituted: dict[str, str]) -> None:
        for kind in self.kinds:
            self.names[kind] = list(names.get(kind, ()))
            in_db = set(self.names[kind])
            self.always[kind] = [n for n in self.all[kind] if n not in in_db]
            if dbs.get(kind) is not None:
                self.scratch[kind] = hyperscan.Scratch(dbs[kind])
        self.hs_refused.update(refused)
        self.substituted.update(substituted)
        # The costly rules also get their texts narrowed to those holding a required literal.
        for name in (*substituted, *refused):
            found = required_literals(self.regex[name])
            if found is not None:
                self.literals[name] = (tuple(found[0]), found[1])
            filt = superset(self.regex[name])
            if filt is not None:
                self.filters[name] = filt
        release_cache()
        self.dbs = {k: v for k, v in dbs.items() if v is not None}
        self.ready = True

    @property
    def compiling(self) -> bool:
        """A compile is under way (until it is done the rules run with re alone)."""
        return self.use_hyperscan and not self._done.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until a compile under way is done (tests, benchmarks)."""
        self._done.wait(timeout_s)
        return self.ready

    # ------------------------------------------------------------ matching

    def candidates(self, kind: str, texts: Iterable[bytes], hyperscan: bool = True) -> list[str]:
        """Rules of ``kind`` that may match one of ``texts`` (all of them without Hyperscan,
        or with ``hyperscan=False``)."""
        if not (self.ready and hyperscan):
            return self.all[kind]
        db = self.dbs.get(kind)
        found = list(self.always[kind])
        if db is None:
            return found
        names = self.names[kind]
        ids: list[int] = []
        db.scan(b"\n".join(texts), match_event_handler=_collect, context=ids,
                scratch=self.scratch[kind])
        found.extend(names[i] for i in ids)
        return found


class Regexes(dict):
    """Rule name -> its compiled ``re`` pattern, compiled on first use.

    With Hyperscan most rules are never candidates on a given host's mail;
    their patterns stay source bytes (a compiled pattern takes several times
    its source) until one is, and then costs a millisecond or so once.
    Without the module every rule is compiled at once (each message needs
    all); while the databases compile, the first message checked with ``re``
    alone compiles them, on the thread that checks it (check.py). A race
    between threads compiles one pattern twice, harmlessly.
    """

    __slots__ = ("sources",)

    def __init__(self) -> None:
        super().__init__()
        self.sources: dict[str, tuple[bytes, int]] = {}

    def add(self, name: str, t: Translated) -> None:
        self.sources[name] = (t.python, t.flags)
        self.pop(name, None)

    def __missing__(self, name: str) -> re.Pattern[bytes]:
        python, flags = self.sources[name]
        pattern = self[name] = compile_source(python, flags)
        return pattern


def sift(filt, units: list[bytes]) -> list[bytes]:
    """The ``units`` RE2 superset ``filt`` matches: the others cannot match its rule."""
    return [u for u in units if filt.search(u)]


def narrow(literals: tuple[bytes, ...], units: list[bytes], lowered: list[bytes]) -> list[bytes]:
    """The ``units`` holding one of ``literals`` (looked up in ``lowered``: the units,
    lower-cased when the literals are caseless). The others cannot match."""
    return [u for u, low in zip(units, lowered, strict=True) if any(lit in low for lit in literals)]


def _collect(rule_id: int, _from: int, _to: int, _flags: int, ids: list[int]) -> None:
    ids.append(rule_id)


def count(pattern: re.Pattern[bytes], texts: Iterable[bytes], limit: int) -> int:
    """Matches of ``pattern`` over ``texts``, at most ``limit`` (1: does it match at all)."""
    hits = 0
    for text in texts:
        if limit == 1:
            if pattern.search(text):
                return 1
            continue
        for _ in pattern.finditer(text):
            hits += 1
            if hits >= limit:
                return hits
    return hits
