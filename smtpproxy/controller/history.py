"""History: one row per scanned message, in the common store, bounded by count and age.

A row (``make_row``) holds what an administrator asks about one message:
time, the MX host, listener and profile, client address, name and HELO,
envelope sender and recipients, From, Subject, Message-ID, size, score,
action, every symbol with its options, scan time, the reply the client
got, the re-injection listener's queue id (from its ``250 ... queued as
QID``) and the short reference a refusal carried (``new_ref``); and, where
the policy daemon shares the store, its decisions for the same client and
envelope (``policy``: one entry per recipient it decided something for,
see smtpproxy/common/decisions.py), looked up when the batch is written.
Scans through the controller's /checkv2 get a row too (listener
``controller``, no queue id), as rspamd's history has them.

Writing is off the hot path: the delivery pipeline calls
``HistoryWriter.record`` (a put on a bounded queue, no I/O, no parsing);
a background task builds the rows (the header fields are decoded there)
and writes them in batches. A full queue drops the row and counts it:
history never slows or stops mail. A store in trouble loses rows, logged
once per store.error_log_interval_s.

Rows hold no body. So that the web interface can learn a message from its
row, the writer keeps the newest messages in this process's memory
(``kept``), zlib-compressed (level 1: mail shrinks to about half, at some
70 us for an average message, off the hot path; large ones in a thread),
at most ``history.keep_messages_bytes`` of compressed bytes in all (0:
none). Uncompressed, this was a busy worker's largest growing share of
memory.

Layout in the store (``HistoryStore``; every key under the ``history`` hash tag):

  {history}:seq            the last row number given out (incr: atomic across hosts)
  {history}:row:<slot>     row number N in slot N % max_rows, as JSON, TTL max_age_s
  {history}:ix:<kind>:<v>  N for a reference, queue id or Message-ID, TTL max_age_s

So at most ``max_rows`` rows exist and none older than ``max_age_s``; a
row overwritten in its slot by a newer one no longer matches its index
entries (each row carries its number, and readers check it). Every MX host
that shares a Redis shares one numbering and one history.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.errors
import email.header
import json
import logging
import os
import re
import time
import zlib
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Iterable

from smtpproxy.common import decisions
from smtpproxy.common.config import HistoryConfig
from smtpproxy.common.store import Store, StoreError
from smtpproxy.headers import field_name, split_fields, unfolded_value

logger = logging.getLogger("smtpproxy.history")

TAG = "history"
# Crockford-style: no 0/O, 1/I/L, U; 30 bits, uppercase, easy to read out on the phone.
REF_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
REF_LENGTH = 6
_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")
# Header bytes kept per message for the row (From, Subject, Message-ID are near the top).
HEADER_BYTES = 64 * 1024
BATCH_ROWS = 500
FLUSH_INTERVAL_S = 0.5
# Kept messages up to this size are compressed in the writer's task (well under
# a millisecond); larger ones in a thread, so the event loop never waits on zlib.
INLINE_COMPRESS_BYTES = 256 * 1024
READ_CHUNK = 500
MAX_FIELD_CHARS = 998
SEQ_TTL_S = 10 * 365 * 86400.0
# rspamd's order of actions in /graph and /stat.
ACTIONS = ("reject", "soft reject", "rewrite subject", "add header", "greylist", "no action")


def new_ref() -> str:
    raw = int.from_bytes(os.urandom(4), "big")
    out = []
    for _ in range(REF_LENGTH):
        raw, digit = divmod(raw, len(REF_ALPHABET))
        out.append(REF_ALPHABET[digit])
    return "".join(out)


def with_ref(reply: str, ref: str, fmt: str) -> str:
    """``reply`` ("550 5.7.1 text") with the reference appended as ``fmt`` says."""
    return reply + fmt.format(ref=ref) if fmt else reply


def queue_id(reply_text: str) -> str:
    """The queue id of Postfix's "250 2.0.0 Ok: queued as 4Xyz" ("" when none)."""
    match = _QUEUED_AS.search(reply_text)
    return match.group(1) if match else ""


def _decoded(value: bytes) -> str:
    text = value.decode("utf-8", "replace").strip()
    if "=?" in text:
        try:
            text = str(email.header.make_header(email.header.decode_header(text)))
        except (ValueError, LookupError, email.errors.HeaderParseError):
            pass
    return text[:MAX_FIELD_CHARS]


def header_facts(header: bytes) -> dict[str, str]:
    """From, Subject and Message-ID of a header block (the first of each)."""
    wanted = {b"from": "from", b"subject": "subject", b"message-id": "message-id"}
    facts: dict[str, str] = {}
    for field in split_fields(header)[0]:
        key = wanted.get(field_name(field))
        if key and key not in facts:
            facts[key] = _decoded(unfolded_value(field))
    return facts


def _text(value: str) -> str:
    """Envelope text as JSON takes it (surrogate escapes of non-UTF-8 bytes replaced)."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def make_row(pending: Pending, hostname: str) -> dict:
    txn, verdict, outcome = pending.txn, pending.verdict, pending.outcome
    result = getattr(verdict, "scan_result", None)
    facts = header_facts(pending.header)
    symbols = {}
    if result is not None:
        for sym in sorted(result.symbols.values(), key=lambda s: (-abs(s.score), s.name)):
            symbols[sym.name] = {"score": round(sym.score, 3), "options": list(sym.options)}
    return {
        "unix_time": round(pending.time, 3),
        "host": hostname,
        "listener": txn.listener,
        "profile": txn.profile,
        "session": txn.session_id,
        "ip": txn.client.addr or "",
        "client_name": txn.client.name or "",
        "helo": _text(txn.client.helo or ""),
        "sender_smtp": _text(txn.mail_from),
        "rcpt_smtp": [_text(r) for r in txn.rcpt_tos],
        "sender_mime": facts.get("from", ""),
        "subject": facts.get("subject", ""),
        "message-id": facts.get("message-id", "").strip("<>"),
        "size": pending.size,
        "score": round(result.score, 2) if result is not None else 0.0,
        "required_score": round(result.required_score, 2) if result is not None else 0.0,
        "action": verdict.scan_action or verdict.action,
        "verdict": outcome.verdict,
        "reply": str(outcome.reply),
        "symbols": symbols,
        "time_real": round(verdict.scan_seconds, 4),
        "qid": queue_id(outcome.reply.text) if outcome.reply.ok else "",
        "ref": pending.ref,
    }


class Pending:
    """What the hot path hands over: references and a copy of the header bytes, no work.

    The body is not kept: the message's bytes may be freed as soon as it is answered."""

    __slots__ = ("txn", "verdict", "outcome", "ref", "header", "size", "time", "content")

    def __init__(self, txn, verdict, outcome, ref: str, keep_bytes: int = 0):
        content = txn.content
        # Kept only for HistoryWriter.kept (learning from the web interface).
        self.content = content if 0 < len(content) <= keep_bytes else None
        end = content.find(b"\r\n\r\n", 0, HEADER_BYTES)
        self.header = content[:end + 4 if end >= 0 else HEADER_BYTES]
        self.size = len(content)
        self.txn = dataclasses.replace(txn, content=b"")
        self.verdict, self.outcome, self.ref = verdict, outcome, ref
        self.time = time.time()


class HistoryStore:
    """Rows in a Store: write, read newest first, find by reference, queue id or Message-ID."""

    def __init__(self, store: Store, cfg: HistoryConfig):
        self.store, self.cfg = store, cfg
        self.seq_key = store.key(TAG, "seq")

    def _row_key(self, seq: int) -> str:
        return self.store.key(TAG, "row", str(seq % self.cfg.max_rows))

    def _index_key(self, kind: str, value: str) -> str:
        return self.store.key(TAG, "ix", kind, value.replace("*", "_"))

    async def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        last = await self.store.incr(self.seq_key, len(rows), SEQ_TTL_S)
        values: dict[str, bytes] = {}
        for seq, row in enumerate(rows, last - len(rows) + 1):
            row["seq"] = seq
            values[self._row_key(seq)] = json.dumps(row).encode()
            marker = str(seq).encode()
            for kind, field in (("ref", "ref"), ("qid", "qid"), ("mid", "message-id")):
                if row.get(field):
                    values[self._index_key(kind, row[field][:200])] = marker
        await self.store.set_many(values, self.cfg.max_age_s)

    async def last_seq(self) -> int:
        value = await self.store.get(self.seq_key)
        try:
            return int(value) if value else 0
        except ValueError:
            return 0

    async def _rows(self, seqs: list[int]) -> list[dict]:
        values = await self.store.mget([self._row_key(s) for s in seqs])
        rows = []
        for seq, value in zip(seqs, values, strict=True):
            if value is None:
                continue
            try:
                row = json.loads(value)
            except ValueError:
                continue
            if row.get("seq") == seq:  # not overwritten by a newer row in the slot
                rows.append(row)
        return rows

    async def newest(self) -> AsyncIterator[dict]:
        """Every row, newest first (at most max_rows)."""
        last = await self.last_seq()
        low = max(0, last - self.cfg.max_rows)
        seq = last
        while seq > low:
            chunk = list(range(seq, max(low, seq - READ_CHUNK), -1))
            seq = chunk[-1] - 1
            rows = await self._rows(chunk)
            if not rows:
                return  # a whole chunk expired or overwritten: older ones are too
            for row in rows:
                yield row

    async def find(self, token: str) -> dict | None:
        """The row a reference, queue id or Message-ID names; None when none (any more)."""
        token = token.strip().strip("<>")
        for kind, value in (("ref", token.upper()), ("qid", token), ("mid", token)):
            marker = await self.store.get(self._index_key(kind, value[:200]))
            if marker is None:
                continue
            try:
                seq = int(marker)
            except ValueError:
                continue
            rows = await self._rows([seq])
            if rows:
                return rows[0]
        return None

    async def reset(self) -> int:
        """Delete every row (index entries then point at nothing); how many were deleted."""
        n = 0
        async for key in self.store.scan(self.store.key(TAG, "row", "*"),
                                         count=self.cfg.max_rows + READ_CHUNK):
            n += bool(await self.store.delete(key))
        return n


def matches(row: dict, since: float = 0.0, action: str = "", sender: str = "",
            rcpt: str = "", text: str = "") -> bool:
    """A row filter for ``smtpproxy history`` and GET /history (substring, no case)."""
    if since and row.get("unix_time", 0) < since:
        return False
    if action and row.get("action") != action and row.get("verdict") != action:
        return False
    if sender:
        s = sender.lower()
        if s not in row.get("sender_smtp", "").lower() and s not in row.get("sender_mime", "").lower():
            return False
    if rcpt and not any(rcpt.lower() in r.lower() for r in row.get("rcpt_smtp", [])):
        return False
    if text:
        hay = " ".join(str(row.get(k, "")) for k in (
            "sender_smtp", "sender_mime", "subject", "message-id", "qid", "ref", "ip",
            "rcpt_smtp")).lower()
        if text.lower() not in hay:
            return False
    return True


class Throughput:
    """Messages per minute by action over the last day, in this process (GET /graph)."""

    MINUTES = 24 * 60

    def __init__(self) -> None:
        self.minutes: deque[tuple[int, Counter]] = deque(maxlen=self.MINUTES)

    def count(self, action: str, now: float) -> None:
        minute = int(now // 60)
        if not self.minutes or self.minutes[-1][0] != minute:
            self.minutes.append((minute, Counter()))
        self.minutes[-1][1][action] += 1

    def series(self, now: float, minutes: int = MINUTES, step: int = 1) -> dict[str, list]:
        """{action: [(unix time, messages per minute), ...]} for the last ``minutes``, every ``step``."""
        last = int(now // 60)
        by_minute = dict(self.minutes)
        out: dict[str, list] = {a: [] for a in ACTIONS}
        for start in range(last - minutes + 1, last + 1, step):
            total: Counter = Counter()
            for m in range(start, min(start + step, last + 1)):
                total.update(by_minute.get(m, {}))
            for action in ACTIONS:
                out[action].append((start * 60, total[action] / step))
        return out

    def totals(self, now: float, minutes: int = MINUTES) -> dict[str, int]:
        """{action: messages} over the last ``minutes``."""
        first = int(now // 60) - minutes + 1
        total: Counter = Counter()
        for minute, counts in self.minutes:
            if minute >= first:
                total.update(counts)
        return {action: total[action] for action in ACTIONS}


class HistoryWriter:
    """The daemon's writer: ``record`` on the hot path, a task that writes in batches."""

    def __init__(self, cfg: HistoryConfig, hostname: str):
        self.cfg = cfg
        self.hostname = hostname
        self.store: HistoryStore | None = None
        self.throughput = Throughput()
        # The last scan times, for GET /stat (rspamd keeps 31 too).
        self.scan_times: deque[float] = deque(maxlen=31)
        self.dropped = 0
        self.written = 0
        self._queue: deque[Pending] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._last_error_log = 0.0
        self._kept: OrderedDict[int, bytes] = OrderedDict()  # row number -> message, compressed
        self._kept_bytes = 0

    def kept(self, seq: int) -> bytes | None:
        """The message of row ``seq`` if this process still keeps it."""
        stored = self._kept.get(seq)
        return zlib.decompress(stored) if stored is not None else None

    async def _keep(self, seq: int, content: bytes) -> None:
        if len(content) <= INLINE_COMPRESS_BYTES:
            stored = zlib.compress(content, 1)
        else:
            stored = await asyncio.get_running_loop().run_in_executor(None, zlib.compress, content, 1)
        self._kept[seq] = stored
        self._kept_bytes += len(stored)
        while self._kept and self._kept_bytes > self.cfg.keep_messages_bytes:
            self._kept_bytes -= len(self._kept.popitem(last=False)[1])

    def configure(self, cfg: HistoryConfig, store: Store | None, hostname: str) -> None:
        self.cfg, self.hostname = cfg, hostname
        self.store = HistoryStore(store, cfg) if store is not None and cfg.enabled else None
        if self.store is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def active(self) -> bool:
        """Whether rows are being written (history on, and a store)."""
        return self.store is not None

    def record(self, txn, verdict, outcome) -> None:
        """Called by the delivery pipeline for every answered message; never blocks, never raises."""
        action = verdict.scan_action
        if action:
            self.throughput.count(action, time.time())
            self.scan_times.append(round(verdict.scan_seconds, 4))
        if self.store is None or not action:
            return
        if len(self._queue) >= self.cfg.queue_max_rows:
            self.dropped += 1
            return
        try:
            self._queue.append(Pending(txn, verdict, outcome, outcome.ref,
                                       self.cfg.keep_messages_bytes))
        except Exception:  # a bug here must not fail a delivered message
            logger.exception("history: cannot record %s", txn.session_id)
            return
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            # Rows gather for a moment and are written together: one store
            # round of many writes (one SQLite commit, one burst of Redis
            # commands) costs the loop far less than a round per message.
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self._wake.clear()
            while self._queue and self.store is not None:
                batch = [self._queue.popleft() for _ in range(min(BATCH_ROWS, len(self._queue)))]
                await self._write(batch)

    async def _write(self, batch: Iterable[Pending]) -> None:
        rows, contents = [], []
        for pending in batch:
            try:
                rows.append(make_row(pending, self.hostname))
                contents.append(pending.content)
                pending.content = None
            except Exception:
                logger.exception("history: cannot build the row of %s", pending.txn.session_id)
            await asyncio.sleep(0)  # a row per loop turn: sessions come first
        try:
            await self._add_policy(rows)
            await self.store.write(rows)
            self.written += len(rows)
            for row, content in zip(rows, contents, strict=True):
                if content is not None:
                    await self._keep(row["seq"], content)
        except StoreError as exc:
            now = time.monotonic()
            if now - self._last_error_log > self.store.store.cfg.error_log_interval_s:
                self._last_error_log = now
                logger.warning("history: %d rows lost, store unusable: %s", len(rows), exc)
        except Exception:
            logger.exception("history: %d rows lost", len(rows))

    async def _add_policy(self, rows: list[dict]) -> None:
        """The policy daemon's decisions for each row's recipients: one ``mget`` a batch."""
        store = self.store.store
        wanted = [(row, rcpt, decisions.decision_key(store, row["ip"], row["sender_smtp"], rcpt))
                  for row in rows if row.get("ip") for rcpt in row["rcpt_smtp"]]
        if not wanted:
            return
        try:
            values = await store.mget([key for _, _, key in wanted])
        except StoreError as exc:
            logger.debug("history: policy decisions not read: %s", exc)
            return
        for (row, rcpt, _), value in zip(wanted, values, strict=True):
            record = decisions.decode(value)
            if record is not None:
                record.pop("t", None)
                row.setdefault("policy", []).append({"rcpt": rcpt, **record})

    async def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (for at most ``timeout_s``), then stop."""
        if self._task is None:
            return
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._queue and asyncio.get_running_loop().time() < deadline:
            self._wake.set()
            await asyncio.sleep(0.02)
        self._task.cancel()
        self._task = None
