"""Shared state for both daemons: one small async interface, two backends.

A Store keeps short-lived facts (greylist triplets, rate-limit buckets, Bayes
tokens, reply Message-IDs) under string keys, each with a time to live, so
nothing grows without bound. Backends:

- ``sqlite.py``: a file on this host, the embedded default; every call runs
  in one dedicated thread; each decision atomic (a savepoint), decisions of
  one event-loop iteration committed together.
- ``redis.py``: standalone, Sentinel or Cluster, for several MX hosts; the
  decisions that read and write (greylist, rate limit) are Lua scripts, one
  round trip each, their keys sharing a hash tag so Cluster accepts them.

The contract every backend keeps (``tests/store/test_store_contract.py``):

- generic values: ``get``/``set``/``incr``/``delete``/``ttl``, and the batch
  forms ``mget``/``incr_many`` for callers with many keys (Bayes tokens); a
  key past its TTL reads as absent;
- ``greylist()`` and ``rate_limit()`` are atomic: concurrent callers, from
  this process or another host, never both see a fresh bucket;
- time is passed in by the caller (``now``, Unix seconds), so every host and
  every test decides on the same clock;
- a backend in trouble raises StoreError promptly (after at most the
  configured timeout, or at once while it is backing off); callers answer
  their own default and carry on.

Keys are built with ``key(tag, *parts)``: ``tag`` is the Cluster hash tag,
everything one atomic operation touches shares it.
"""

from __future__ import annotations

import os

from smtpproxy.common.config import StoreConfig
from smtpproxy.common.store.base import (
    GL_AWL,
    GL_EARLY,
    GL_KNOWN,
    GL_NEW,
    GL_PASSED,
    GreylistParams,
    GreylistResult,
    RateResult,
    Store,
    StoreError,
    gcra,
)


def open_store(cfg: StoreConfig, state_dir: str) -> Store:
    """The backend for ``cfg.url`` (not yet opened); empty url: SQLite in state_dir."""
    url = cfg.url or "sqlite://" + os.path.abspath(os.path.join(state_dir, "smtpproxy.db"))
    if url.startswith("sqlite://"):
        from smtpproxy.common.store.sqlite import SQLiteStore

        # sqlite:///var/lib/x.db -> /var/lib/x.db; sqlite://relative.db -> relative.db
        path = url[len("sqlite://"):]
        return SQLiteStore(cfg, path)
    from smtpproxy.common.store.redis import RedisStore

    return RedisStore(cfg, url)


__all__ = [
    "GL_AWL", "GL_EARLY", "GL_KNOWN", "GL_NEW", "GL_PASSED", "GreylistParams", "GreylistResult",
    "RateResult", "Store", "StoreError", "gcra", "open_store",
]
