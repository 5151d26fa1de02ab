"""``smtpproxy learn`` and ``smtpproxy bayes``: train the classifier, inspect and move its state.

    smtpproxy learn spam|ham [-c FILE] [--state-dir DIR] FILE|DIR|- ...
    smtpproxy bayes stats   [-c FILE] [--state-dir DIR]
    smtpproxy bayes dump    [-c FILE] [--state-dir DIR] [-o FILE]
    smtpproxy bayes restore [-c FILE] [--state-dir DIR] FILE|-

``learn`` reads one message per file (an mbox "From " first line is
skipped), every file under a directory, or one message on stdin (``-``,
for Dovecot's imapsieve or an alias pipe). A progress bar goes to stderr
when it is a terminal; a summary line at the end. Exit status: 0, 1 when a
file could not be read, 75 (EX_TEMPFAIL, so a pipe from Postfix or sieve is
retried) when the store is unusable.

``dump`` writes every Bayes key as JSON lines (key without the prefix,
value, seconds to live); ``restore`` writes them into the configured store,
so ``dump`` from SQLite and ``restore`` into Redis (or back) moves the
classifier. Restoring adds to nothing: it overwrites the keys it carries.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable

from smtpproxy.cliconfig import ensure_state_dir, load_with_flags
from smtpproxy.common.config import Config
from smtpproxy.common.store import Store, StoreError, open_store
from smtpproxy.scan.bayes.storage import (
    ALREADY,
    HAM,
    MOVED,
    SPAM,
    TAG,
    BayesStore,
    message_id,
    owner_of,
)
from smtpproxy.scan.bayes.tokenizer import tokenize
from smtpproxy.scan.message import parse

EX_USAGE = 64
EX_TEMPFAIL = 75
# Messages learned together: their token increments are summed into one
# store call (see BayesStore.learn_many).
LEARN_BATCH = 256
PROGRAM = "smtpproxy"
# These commands are batch jobs no SMTP client waits on: a store call may
# wait this long for a busy store (the daemons' store.timeout_s, 1 s by
# default, is a budget for the mail path; a running daemon holding the
# SQLite write lock, or a loaded host, would otherwise stop a bulk learn
# half-way).
BULK_STORE_TIMEOUT_S = 30.0


def _config(args: argparse.Namespace) -> Config:
    cfg = load_with_flags(args)
    if not cfg.store.url:
        ensure_state_dir(cfg)
    return cfg


async def _open(cfg: Config) -> Store:
    patient = dataclasses.replace(
        cfg.store, timeout_s=max(cfg.store.timeout_s, BULK_STORE_TIMEOUT_S),
        sqlite_busy_timeout_s=max(cfg.store.sqlite_busy_timeout_s, BULK_STORE_TIMEOUT_S))
    store = open_store(patient, cfg.state_dir)
    await store.open()
    return store


async def open_existing_store(cfg: Config) -> Store | None:
    """The configured store for ``smtpproxy scan``, so Bayes classifies there
    too; None (Bayes silent) when it is an SQLite file not yet created or the
    store cannot be opened: scanning a file must not create state."""
    if not cfg.store.url and not os.path.exists(os.path.join(cfg.state_dir, "smtpproxy.db")):
        return None
    store = open_store(cfg.store, cfg.state_dir)
    try:
        await store.open()
    except StoreError as exc:
        print(f"{PROGRAM}: store unusable, Bayes off: {exc}", file=sys.stderr)
        await store.close()
        return None
    return store


def _owner(cfg: Config, args: argparse.Namespace) -> str:
    """The classifier ``--user`` names ("" without it: the site's)."""
    user = getattr(args, "user", None)
    if user is None:
        return ""
    if cfg.scan.bayes.per_user == "off":
        raise UsageError("--user needs scan.bayes.per_user = \"user\" or \"domain\"")
    owner = owner_of(user, cfg.scan.bayes.per_user)
    if not owner:
        raise UsageError(f"--user {user!r}: not an address")
    return owner


class UsageError(Exception):
    """A command line that cannot be carried out; exit 64 (EX_USAGE)."""


def _files(targets: list[str]) -> list[str]:
    out: list[str] = []
    for target in targets:
        if target != "-" and os.path.isdir(target):
            out.extend(sorted(os.path.join(root, name)
                              for root, _, names in os.walk(target) for name in names))
        else:
            out.append(target)
    return out


class Progress:
    """A one-line bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, label: str):
        self.total = total
        self.label = label
        self.on = sys.stderr.isatty() and total > 1
        self.last = 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.on or (now - self.last < 0.1 and done < self.total):
            return
        self.last = now
        width = 30
        filled = width * done // max(1, self.total)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done}/{self.total}")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.on:
            sys.stderr.write("\n")


async def learn_files(bayes: BayesStore, cls: str, files: list[str], max_tokens: int,
                      progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Learn every file as ``cls``; counts per outcome (and "unreadable")."""
    summary = {"learned": 0, ALREADY: 0, MOVED: 0, "unreadable": 0}
    batch: dict[str, list[str]] = {}
    # The store writes one batch (on its own thread, or Redis) while the
    # next is read and tokenized here.
    writing: asyncio.Task | None = None
    writing_ids: set[str] = set()
    done = 0

    async def settle() -> None:
        nonlocal writing
        if writing is not None:
            task, writing = writing, None
            for outcome in await task:
                summary["learned" if outcome not in (ALREADY, MOVED) else outcome] += 1

    async def flush() -> None:
        nonlocal writing, writing_ids, batch
        await settle()
        if batch:
            writing = asyncio.ensure_future(bayes.learn_many(list(batch.items()), cls))
            writing_ids, batch = set(batch), {}

    for name in files:
        try:
            if name == "-":
                raw = sys.stdin.buffer.read()
            else:
                with open(name, "rb") as f:
                    raw = f.read()
        except OSError as exc:
            print(f"{PROGRAM}: {name}: {exc.strerror}", file=sys.stderr)
            summary["unreadable"] += 1
            continue
        msg_id = message_id(raw)
        if msg_id in batch or msg_id in writing_ids:  # the same message again: after the first
            await flush()
            await settle()
        batch[msg_id] = tokenize(parse(raw), max_tokens)
        done += 1
        await asyncio.sleep(0)  # let the batch being written move on
        if len(batch) >= LEARN_BATCH:
            await flush()
            if progress:
                progress(done)
    await flush()
    await settle()
    if progress:
        progress(done)
    return summary


def cmd_learn(args: argparse.Namespace) -> int:
    cfg = _config(args)
    cls = args.cls
    files = _files(args.files)

    async def main() -> int:
        owner = _owner(cfg, args)
        store = await _open(cfg)
        try:
            bayes = BayesStore(store, cfg.scan.bayes.token_ttl_s, owner)
            bar = Progress(len(files), f"learning {cls}")
            started = time.monotonic()
            summary = await learn_files(bayes, cls, files, cfg.scan.bayes.max_tokens, bar.update)
            elapsed = time.monotonic() - started
            bar.finish()
            totals = await bayes.counts()
        finally:
            await store.close()
        n = summary["learned"] + summary[ALREADY] + summary[MOVED]
        print(f"{cls}{' for ' + owner if owner else ''}: {summary['learned']} learned, "
              f"{summary[MOVED]} moved from "
              f"{HAM if cls == SPAM else SPAM}, {summary[ALREADY]} already learned, "
              f"{summary['unreadable']} unreadable; {n} in {elapsed:.1f}s "
              f"({n / elapsed if elapsed > 0 else 0:.0f}/s); "
              f"now {totals.nspam} spam and {totals.nham} ham learned")
        return 1 if summary["unreadable"] else 0

    return _guarded(main)


def _guarded(main) -> int:
    try:
        return asyncio.run(main())
    except StoreError as exc:
        print(f"{PROGRAM}: store unusable: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except UsageError as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return EX_USAGE


async def _bayes_keys(store: Store) -> list[str]:
    """The keys of every classifier: {bayes} and each {bayes:<owner>}."""
    return [key async for key in store.scan(store.key(TAG)[:-1] + "*", count=1 << 40)]


def cmd_stats(args: argparse.Namespace) -> int:
    cfg = _config(args)

    async def main() -> int:
        owner = _owner(cfg, args)
        store = await _open(cfg)
        try:
            bayes = BayesStore(store, cfg.scan.bayes.token_ttl_s, owner)
            totals = await bayes.counts()
            every = await _bayes_keys(store)
        finally:
            await store.close()
        base = store.key(bayes.tag)
        keys = [key for key in every if key.startswith(base + ":")]
        # One message count per classifier: "<prefix>{bayes:<owner>}:nspam".
        owners = {key.split("}", 1)[0] for key in every
                  if key.endswith((":nspam", ":nham"))} - {store.key(TAG)[:-1]}
        kinds = {"s": 0, "h": 0, "m": 0}
        for key in keys:
            kind = key[len(base) + 1:].split(":", 1)[0]
            if kind in kinds:
                kinds[kind] += 1
        bcfg = cfg.scan.bayes
        ready = min(totals.nspam, totals.nham) >= bcfg.min_learned
        print(f"store: {cfg.store.url or 'sqlite (' + cfg.state_dir + ')'}")
        print(f"classifier: {owner or 'site'}")
        print(f"spam learned: {totals.nspam}")
        print(f"ham learned: {totals.nham}")
        print(f"token keys: {kinds['s']} spam, {kinds['h']} ham")
        print(f"learned message ids: {kinds['m']}")
        if owners or bcfg.per_user != "off":
            print(f"user and domain classifiers: {len(owners)}")
        print(f"classifying: {'yes' if ready and bcfg.enabled else 'no'} "
              f"(needs {bcfg.min_learned} of each class)")
        return 0

    return _guarded(main)


def cmd_dump(args: argparse.Namespace) -> int:
    cfg = _config(args)

    async def main() -> int:
        store = await _open(cfg)
        out = open(args.output, "w") if args.output else sys.stdout
        n = 0
        try:
            keys = await _bayes_keys(store)
            for i in range(0, len(keys), 1000):
                chunk = keys[i:i + 1000]
                values = await store.mget(chunk)
                ttls = await asyncio.gather(*(store.ttl(k) for k in chunk))
                for key, value, ttl in zip(chunk, values, ttls, strict=True):
                    if value is None or ttl is None:
                        continue  # expired meanwhile
                    out.write(json.dumps({"k": key[len(store.prefix):],
                                          "v": value.decode("latin-1"),
                                          "ttl": round(ttl, 1)}) + "\n")
                    n += 1
        finally:
            await store.close()
            if out is not sys.stdout:
                out.close()
        print(f"{n} keys dumped", file=sys.stderr)
        return 0

    return _guarded(main)


def cmd_restore(args: argparse.Namespace) -> int:
    cfg = _config(args)

    async def main() -> int:
        store = await _open(cfg)
        src = sys.stdin if args.input == "-" else open(args.input)
        n = 0
        try:
            pending = []
            for lineno, line in enumerate(src, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    key, value, ttl = str(entry["k"]), str(entry["v"]), float(entry["ttl"])
                except (ValueError, KeyError, TypeError):
                    print(f"{PROGRAM}: {args.input}:{lineno}: not a dump line", file=sys.stderr)
                    return 1
                if not key.startswith(("{" + TAG + "}", "{" + TAG + ":")):
                    print(f"{PROGRAM}: {args.input}:{lineno}: not a Bayes key", file=sys.stderr)
                    return 1
                pending.append(store.set(store.prefix + key, value.encode("latin-1"), max(1.0, ttl)))
                if len(pending) >= 500:
                    await asyncio.gather(*pending)
                    n += len(pending)
                    pending = []
            await asyncio.gather(*pending)
            n += len(pending)
        finally:
            await store.close()
            if src is not sys.stdin:
                src.close()
        print(f"{n} keys restored", file=sys.stderr)
        return 0

    return _guarded(main)


def add_parsers(sub, with_config) -> None:
    learn = with_config(sub.add_parser("learn", help="teach the Bayes classifier spam or ham"))
    learn.add_argument("cls", choices=(SPAM, HAM), metavar="spam|ham")
    learn.add_argument("--state-dir", metavar="DIR", help="state directory")
    learn.add_argument("--user", metavar="ADDR",
                       help="teach this user's (or its domain's) classifier (scan.bayes.per_user)")
    learn.add_argument("files", nargs="+", metavar="FILE|DIR|-")
    learn.set_defaults(func=cmd_learn)

    bayes = sub.add_parser("bayes", help="Bayes classifier state: stats, dump, restore")
    bsub = bayes.add_subparsers(dest="bayes_command", required=True, metavar="COMMAND")
    stats = with_config(bsub.add_parser("stats", help="learned messages and tokens"))
    stats.add_argument("--state-dir", metavar="DIR", help="state directory")
    stats.add_argument("--user", metavar="ADDR", help="this user's (or its domain's) classifier")
    stats.set_defaults(func=cmd_stats)
    dump = with_config(bsub.add_parser("dump", help="write the Bayes state as JSON lines"))
    dump.add_argument("--state-dir", metavar="DIR", help="state directory")
    dump.add_argument("-o", "--output", metavar="FILE", help="file to write (default stdout)")
    dump.set_defaults(func=cmd_dump)
    restore = with_config(bsub.add_parser("restore", help="load a dump into the configured store"))
    restore.add_argument("--state-dir", metavar="DIR", help="state directory")
    restore.add_argument("input", metavar="FILE|-")
    restore.set_defaults(func=cmd_restore)
