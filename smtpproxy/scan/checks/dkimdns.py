"""dkimpy in a worker thread, its key lookups answered by the one async Resolver.

dkimpy (DKIM and ARC verification) is synchronous and asks for keys through
a ``dnsfunc(name, timeout=...)`` callable. This module gives it one that
hands each lookup back to the event loop (``asyncio.run_coroutine_threadsafe``)
and waits for the project's ``Resolver`` (worker.py, shared with SpfCheck):
one resolver, one cache, and the event loop never blocks. The RSA/ed25519 arithmetic and the canonicalisation run in the
worker thread too.

Contract of ``TxtBridge.dnsfunc``: the TXT record's character-strings joined
(RFC 6376 3.6.2.2) as bytes, the first record when there are several; None
when the name has no TXT record (NXDOMAIN/NODATA: dkimpy's "missing public
key", a permanent failure per RFC 6376 6.1.2); ``DnsTemporary`` (deliberately
not a dkimpy exception, so it escapes dkimpy's own handlers) for a timeout,
SERVFAIL or a lookup abandoned because the check was cancelled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from smtpproxy.common.dns import DnsTempError
from smtpproxy.scan.checks import worker
from smtpproxy.scan.checks.worker import LookupAbandoned, LoopBridge

if TYPE_CHECKING:
    from smtpproxy.common.dns import Resolver

# Threads per pool: bounds how many verifications run at once (the rest queue).
POOL_THREADS = 4


class DnsTemporary(Exception):
    """A key lookup failed for now; the verification result is temperror."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class TxtBridge(LoopBridge):
    """dkimpy's dnsfunc for one verification: lookups go to the loop's Resolver."""

    def __init__(self, resolver: Resolver, loop: asyncio.AbstractEventLoop):
        super().__init__(resolver, loop)
        self.names: list[str] = []  # every name asked, for the evidence and tests

    def dnsfunc(self, name: bytes | str, timeout: object = None) -> bytes | None:
        if isinstance(name, bytes):
            try:
                name = name.decode("utf-8")
            except UnicodeDecodeError:
                return None  # not a name DNS can hold: no key
        name = name.rstrip(".")
        self.names.append(name)
        try:
            records = self.call(lambda: self.resolver.txt(name))
        except DnsTempError as exc:
            raise DnsTemporary(name, f"DNS {exc.reason}") from None
        except LookupAbandoned as exc:
            raise DnsTemporary(name, f"lookup abandoned: {exc}") from None
        return records[0] if records else None


async def run_in_pool(pool: concurrent.futures.Executor, resolver: Resolver,
                      func: Callable[..., Any], *args: Any) -> Any:
    """``func(bridge, *args)`` in ``pool``; cancelling the caller frees the thread promptly."""
    bridge = TxtBridge(resolver, asyncio.get_running_loop())
    return await worker.run_in_pool(pool, bridge, func, *args)


def shared_pool(kind: str, size: int = POOL_THREADS) -> concurrent.futures.ThreadPoolExecutor:
    return worker.shared_pool(kind, size)


_BYTES_REPR = re.compile(r"""b'([^']*)'""")


def reason_text(exc: object) -> str:
    """dkimpy's messages quote values as Python bytes (b'rsa-sha1'): plain text for the evidence."""
    return _BYTES_REPR.sub(r"\1", str(exc))


def strip_mbox_line(raw: bytes) -> bytes:
    """An mbox "From " line (corpora, ``smtpproxy scan`` on files) is not a header."""
    return raw[raw.find(b"\n") + 1:] if raw.startswith(b"From ") else raw
