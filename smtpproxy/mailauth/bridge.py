"""Synchronous mail libraries in worker threads, their DNS answered on the event loop.

Shared by the scan's checks (SPF, DKIM, ARC) and the signer (ARC sealing).
pyspf (SPF) and dkimpy (DKIM, ARC) are synchronous and do their own DNS.
Each runs in a small thread pool; every lookup it makes is handed back to
the event loop (``asyncio.run_coroutine_threadsafe``) and answered by the
project's one async ``Resolver``, under the resolver's timeout. So there is
one resolver and one cache for every check, and the event loop never blocks.

``LoopBridge`` is that hand-back for one evaluation. When the check is
cancelled (its timeout), ``abort()`` makes the pending and every later lookup
fail at once with ``LookupAbandoned``, so the worker thread is free again
within one lookup. Pools are shared per kind and size, not per check
instance: a configuration reload builds new checks, and a pool per instance
would leave idle threads behind.

``TxtBridge`` is dkimpy's ``dnsfunc(name, timeout=...)`` on that hand-back.
Its contract: the TXT record's character-strings joined (RFC 6376 3.6.2.2)
as bytes, the first record when there are several; None when the name has
no TXT record (NXDOMAIN/NODATA: dkimpy's "missing public key", a permanent
failure per RFC 6376 6.1.2); ``DnsTemporary`` (deliberately not a dkimpy
exception, so it escapes dkimpy's own handlers) for a timeout, SERVFAIL or a
lookup abandoned because the check was cancelled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from smtpproxy.common.dns import DnsTempError

if TYPE_CHECKING:
    from smtpproxy.common.dns import Resolver

T = TypeVar("T")

# Slack on top of the resolver's own timeout for the hop back to the loop.
LOOKUP_MARGIN_S = 1.0
# Threads per dkimpy pool: bounds how many verifications run at once (the rest queue).
DKIM_POOL_THREADS = 4


class LookupAbandoned(Exception):
    """The lookup was given up: the check timed out or was cancelled."""


class LoopBridge:
    """Lookups from one worker-thread evaluation, answered by the loop's Resolver."""

    def __init__(self, resolver: Resolver, loop: asyncio.AbstractEventLoop):
        self.resolver = resolver
        self.loop = loop
        self.aborted = False
        self._pending: concurrent.futures.Future | None = None
        self._lock = threading.Lock()

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            if self._pending is not None:
                self._pending.cancel()

    def call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run the coroutine ``make()`` on the loop and wait for it (worker thread only).

        Raises what the coroutine raises (DnsTempError), or LookupAbandoned.
        """
        with self._lock:
            if self.aborted:
                raise LookupAbandoned("the check timed out")
            future = asyncio.run_coroutine_threadsafe(make(), self.loop)
            self._pending = future
        try:
            return future.result(self.resolver.timeout_s + LOOKUP_MARGIN_S)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            future.cancel()
            raise LookupAbandoned("no answer in time") from None
        finally:
            with self._lock:
                self._pending = None


async def run_in_pool(pool: concurrent.futures.Executor, bridge: LoopBridge,
                      func: Callable[..., Any], *args: Any) -> Any:
    """``func(bridge, *args)`` in ``pool``; cancelling the caller frees the thread promptly."""
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, func, bridge, *args)
    except asyncio.CancelledError:
        bridge.abort()
        raise


_pools: dict[tuple[str, int], concurrent.futures.ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def shared_pool(kind: str, size: int = DKIM_POOL_THREADS) -> concurrent.futures.ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get((kind, size))
        if pool is None:
            pool = _pools[(kind, size)] = concurrent.futures.ThreadPoolExecutor(
                size, thread_name_prefix=f"{kind}{size}")
        return pool


class DnsTemporary(Exception):
    """A key lookup failed for now; the verification result is temperror."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class TxtBridge(LoopBridge):
    """dkimpy's dnsfunc for one verification: lookups go to the loop's Resolver
    (``answers``: TXT records already fetched, by lower-case name, answer first)."""

    def __init__(self, resolver: Resolver, loop: asyncio.AbstractEventLoop | None = None,
                 answers: dict[str, list[bytes] | DnsTempError] | None = None):
        super().__init__(resolver, loop or asyncio.get_running_loop())
        self.names: list[str] = []  # every name asked, for the evidence and tests
        self.answers = answers or {}

    def dnsfunc(self, name: bytes | str, timeout: object = None) -> bytes | None:
        if isinstance(name, bytes):
            try:
                name = name.decode("utf-8")
            except UnicodeDecodeError:
                return None  # not a name DNS can hold: no key
        name = name.rstrip(".")
        self.names.append(name)
        known = self.answers.get(name.lower())
        if known is not None:
            return first_txt(name, known)
        try:
            records = self.call(lambda: self.resolver.txt(name))
        except DnsTempError as exc:
            raise DnsTemporary(name, f"DNS {exc.reason}") from None
        except LookupAbandoned as exc:
            raise DnsTemporary(name, f"lookup abandoned: {exc}") from None
        return records[0] if records else None


class NotAtHand(Exception):
    """A verification on the event loop asked for a record not fetched beforehand."""


class AtHandTxt:
    """dkimpy's dnsfunc on the event loop: only the TXT records fetched beforehand."""

    def __init__(self, answers: dict[str, list[bytes] | DnsTempError]):
        self.answers = answers
        self.names: list[str] = []

    def dnsfunc(self, name: bytes | str, timeout: object = None) -> bytes | None:
        if isinstance(name, bytes):
            try:
                name = name.decode("utf-8")
            except UnicodeDecodeError:
                return None
        name = name.rstrip(".")
        self.names.append(name)
        known = self.answers.get(name.lower())
        if known is None:
            raise NotAtHand(name)
        return first_txt(name, known)


def first_txt(name: str, records: list[bytes] | DnsTempError) -> bytes | None:
    """What dkimpy's dnsfunc returns for a fetched answer: the first record, None, or DnsTemporary."""
    if isinstance(records, DnsTempError):
        raise DnsTemporary(name, f"DNS {records.reason}")
    return records[0] if records else None


_BYTES_REPR = re.compile(r"""b'([^']*)'""")


def reason_text(exc: object) -> str:
    """dkimpy's messages quote values as Python bytes (b'rsa-sha1'): plain text for the evidence."""
    return _BYTES_REPR.sub(r"\1", str(exc))


def strip_mbox_line(raw: bytes) -> bytes:
    """An mbox "From " line (corpora, ``smtpproxy scan`` on files) is not a header."""
    return raw[raw.find(b"\n") + 1:] if raw.startswith(b"From ") else raw
