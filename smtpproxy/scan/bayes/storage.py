"""Bayes state on the common store (SQLite or Redis): token counts, message counts, learned ids.

Keys (all under the ``bayes`` hash tag, after ``store.key_prefix``):

  {bayes}:s:<token hash>   spam messages learned with this token (an integer)
  {bayes}:h:<token hash>   ham messages learned with this token
  {bayes}:nspam, :nham     messages learned of each class
  {bayes}:m:<body hash>    a learned message: "S" or "H"

A classifier of one user or domain (``scan.bayes.per_user``) has the same
keys under its own hash tag, ``{bayes:<owner>}`` (see ``owner_of``), so on
a Redis Cluster each one's keys sit together and different ones spread
over the nodes.

A token is stored as 16 hex digits of its BLAKE2b hash, so keys have one
length whatever the text. Classifying one message is one ``mget`` (one
round trip); learning is one ``mget`` of the ids, one ``incr_many`` and one
``set`` per message, for a whole batch of messages at once. Learning a message twice as the same class does nothing; learning
it as the other class moves it (its tokens and the counts go down on one
side and up on the other).

Bound: every key written by a learn gets ``token_ttl_s`` again, so a token
that no learned message has carried for that long expires (rare, old
tokens go; tokens that keep appearing stay). The store therefore holds at
most ``2 * max_tokens`` token keys plus one id per message learned within
the last ``token_ttl_s`` (in practice far fewer: most tokens are shared).
The message counts expire with them when learning stops altogether, so
counts and tokens never drift apart by more than one window.

Two processes learning the same message at the same instant may both count
it (the id check and the increments are separate calls); learning is an
admin or autolearn action where that is harmless.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from smtpproxy.common.store import Store
from smtpproxy.scan.bayes.classifier import Classification, classify
from smtpproxy.scan.bayes.tokenizer import is_form

TAG = "bayes"
SPAM, HAM = "spam", "ham"
_CLASS_CODE = {SPAM: b"S", HAM: b"H"}
_CODE_CLASS = {b"S": SPAM, b"H": HAM}
_HEADER_END = re.compile(rb"\r?\n\r?\n")
# Owners that may stand in a key as they are; others are hashed (a "}" or
# ":" would break the hash tag or the key's layout).
_PLAIN_OWNER = re.compile(r"[a-z0-9._%+=@-]{1,200}")

# Keys per incr_many call when learning: a batch of messages can carry tens of
# thousands, more than one store call should take (store.timeout_s).
INCR_CHUNK = 2000

# Learn outcomes.
LEARNED = "learned"
ALREADY = "already learned"
MOVED = "moved"


def token_hash(token: str) -> str:
    return hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def message_id(raw: bytes) -> str:
    """The learned-message id: a hash of the body (headers change in transit, the body does not)."""
    match = _HEADER_END.search(raw)
    body = raw[match.end():] if match else raw
    return hashlib.sha256(body).hexdigest()


def owner_of(address: str, per_user: str) -> str:
    """The classifier an address belongs to under ``per_user``: "" for the site's."""
    address = address.strip().strip("<>").lower()
    if per_user == "domain":
        address = address.rpartition("@")[2].rstrip(".")
    if per_user not in ("user", "domain") or not address:
        return ""
    if _PLAIN_OWNER.fullmatch(address):
        return address
    return "h-" + hashlib.blake2b(address.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()


def recipients_owner(rcpt_tos: Iterable[str], per_user: str) -> str:
    """The classifier every recipient shares, "" when they do not share one."""
    owners = {owner_of(rcpt, per_user) for rcpt in rcpt_tos}
    return owners.pop() if len(owners) == 1 else ""


def tag_of(owner: str) -> str:
    return f"{TAG}:{owner}" if owner else TAG


@dataclass(frozen=True)
class Counts:
    nspam: int
    nham: int


def _int(value: bytes | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


class BayesStore:
    """The Bayes view of a Store: counts in, counts out."""

    def __init__(self, store: Store, token_ttl_s: float, owner: str = ""):
        """``owner``: a user's or domain's classifier (from ``owner_of``); "" the site's."""
        self.store = store
        self.ttl_s = token_ttl_s
        self.owner = owner
        self.tag = tag_of(owner)
        self.nspam_key = store.key(self.tag, "nspam")
        self.nham_key = store.key(self.tag, "nham")
        # Token keys are built per token, hundreds per message: prefix + hash.
        self._token_prefix = {SPAM: store.key(self.tag, "s", ""), HAM: store.key(self.tag, "h", "")}

    def _count_key(self, cls: str) -> str:
        return self.nspam_key if cls == SPAM else self.nham_key

    def _token_key(self, cls: str, hashed: str) -> str:
        return self._token_prefix[cls] + hashed

    def _message_key(self, msg_id: str) -> str:
        return self.store.key(self.tag, "m", msg_id)

    async def counts(self) -> Counts:
        nspam, nham = await self.store.mget([self.nspam_key, self.nham_key])
        return Counts(max(0, _int(nspam)), max(0, _int(nham)))

    async def learned_as(self, msg_id: str) -> str | None:
        return _CODE_CLASS.get(await self.store.get(self._message_key(msg_id)) or b"")

    async def learn(self, msg_id: str, tokens: Iterable[str], cls: str) -> str:
        """Learn one message as ``cls``; LEARNED, ALREADY or MOVED."""
        return (await self.learn_many([(msg_id, tokens)], cls))[0]

    async def learn_many(self, items: list[tuple[str, Iterable[str]]], cls: str) -> list[str]:
        """Learn several messages (distinct ids) as ``cls``: one mget of their
        ids, incr_many in chunks of INCR_CHUNK keys, one set per learned id.

        The increments of all of them are summed first, so a token common to
        the batch is one write, not one per message: written keys are what
        bulk learning costs (on SQLite most of all).
        """
        previous = await self.store.mget([self._message_key(msg_id) for msg_id, _ in items])
        amounts: Counter[str] = Counter()
        outcomes = []
        learned = []
        for (msg_id, tokens), code in zip(items, previous, strict=True):
            was = _CODE_CLASS.get(code or b"")
            if was == cls:
                outcomes.append(ALREADY)
                continue
            hashes = {token_hash(t) for t in tokens}
            prefix = self._token_prefix[cls]
            amounts.update([prefix + h for h in hashes])
            amounts[self._count_key(cls)] += 1
            if was is not None:
                prefix = self._token_prefix[was]
                amounts.subtract([prefix + h for h in hashes])
                amounts[self._count_key(was)] -= 1
            outcomes.append(MOVED if was is not None else LEARNED)
            learned.append(msg_id)
        if amounts:
            # In chunks, each well within the store's timeout; the message
            # counts go last, so they never run ahead of the tokens.
            counts = {k: amounts.pop(k) for k in (self.nspam_key, self.nham_key) if k in amounts}
            pending = [*amounts.items(), *counts.items()]
            for i in range(0, len(pending), INCR_CHUNK):
                await self.store.incr_many(dict(pending[i:i + INCR_CHUNK]), self.ttl_s)
            await asyncio.gather(*(self.store.set(self._message_key(msg_id), _CLASS_CODE[cls],
                                                  self.ttl_s) for msg_id in learned))
        return outcomes

    async def forget(self, msg_id: str, tokens: Iterable[str]) -> bool:
        """Unlearn a message; False when it was not learned."""
        previous = await self.learned_as(msg_id)
        if previous is None:
            return False
        amounts = {self._token_key(previous, token_hash(t)): -1 for t in set(tokens)}
        amounts[self._count_key(previous)] = -1
        await self.store.incr_many(amounts, self.ttl_s)
        await self.store.delete(self._message_key(msg_id))
        return True

    async def token_counts(self, tokens: list[str]) -> tuple[Counts, dict[str, tuple[int, int]]]:
        """The class totals and (spam, ham) per token, in one mget."""
        hashes = [token_hash(t) for t in tokens]
        keys = [self.nspam_key, self.nham_key]
        spam_prefix, ham_prefix = self._token_prefix[SPAM], self._token_prefix[HAM]
        for h in hashes:
            keys += (spam_prefix + h, ham_prefix + h)
        values = await self.store.mget(keys)
        totals = Counts(max(0, _int(values[0])), max(0, _int(values[1])))
        counts = {}
        for i, token in enumerate(tokens):
            spam, ham = _int(values[2 + 2 * i]), _int(values[3 + 2 * i])
            if spam > 0 or ham > 0:
                counts[token] = (spam, ham)
        return totals, counts

    async def classify(self, tokens: list[str]) -> tuple[Counts, Classification]:
        totals, counts = await self.token_counts(tokens)
        content = len({t for t in tokens if not is_form(t)})
        return totals, classify(counts, totals.nspam, totals.nham, n_tokens=content)
