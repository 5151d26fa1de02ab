"""Counters and a Prometheus text endpoint, shared by both daemons.

Deliberately small: labelled counters, gauges read at scrape time and one
fixed-bucket histogram type, rendered in the Prometheus text exposition
format by a tiny asyncio HTTP server (``GET /metrics``). Off unless a
``metrics_listen`` address is configured; it should listen on loopback or
a management network only.

With several worker processes (supervisor.py) the one endpoint shows the
totals of all of them, as one process would: each worker writes a snapshot
of its figures to the shared runtime directory every SNAPSHOT_INTERVAL_S,
and whichever worker answers a scrape adds the others' snapshots to its own
live figures (see ``render_all``). Counters and histograms are summed;
gauges are summed (open sessions, bytes in flight) unless declared
otherwise (``aggregate="max"``). The figures of the other workers are up to
SNAPSHOT_INTERVAL_S old. A
worker that dies leaves its counters in the totals (the parent keeps them
as ``retired.json``), so they never go backwards.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import os
from collections.abc import Callable

from smtpproxy.common import workers
from smtpproxy.common.config import parse_hostport

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8192
SNAPSHOT_INTERVAL_S = 1.0
RETIRED = "retired.json"


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    inner = ",".join(
        f'{n}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34)).replace(chr(10), " ")}"'
        for n, v in zip(names, values, strict=True))
    return "{" + inner + "}"


class Counter:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.labels = name, help_text, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        self.values[label_values] = self.values.get(label_values, 0.0) + amount

    def snapshot(self) -> dict:
        return {"kind": "counter", "values": [[list(k), v] for k, v in self.values.items()]}

    def render(self, merged: dict | None = None) -> list[str]:
        values = self.values if merged is None else {tuple(k): v for k, v in merged["values"]}
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        lines += [f"{self.name}{_labels(self.labels, k)} {v:g}" for k, v in sorted(values.items())]
        return lines


class Gauge:
    """A value read when scraped (e.g. the number of open sessions); a read
    that returns None leaves the sample out (a feature that is off)."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float | None],
                 aggregate: str = "sum"):
        self.name, self.help, self.read = name, help_text, read
        # Over several workers: "sum" (a count of things held) or "max" (a state, a time).
        self.aggregate = aggregate

    def snapshot(self) -> dict:
        return {"kind": "gauge", "value": self.read(), "aggregate": self.aggregate}

    def render(self, merged: dict | None = None) -> list[str]:
        value = self.read() if merged is None else merged["value"]
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        return lines if value is None else [*lines, f"{self.name} {value:g}"]


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = name, help_text, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def snapshot(self) -> dict:
        return {"kind": "histogram", "counts": list(self.counts), "total": self.total}

    def render(self, merged: dict | None = None) -> list[str]:
        counts, total = (self.counts, self.total) if merged is None else \
            (merged["counts"], merged["total"])
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, count in zip(self.buckets, counts, strict=False):
            running += count
            lines.append(f'{self.name}_bucket{{le="{bound:g}"}} {running}')
        running += counts[-1]
        lines += [f'{self.name}_bucket{{le="+Inf"}} {running}',
                  f"{self.name}_sum {total:g}", f"{self.name}_count {running}"]
        return lines


class Registry:
    def __init__(self) -> None:
        self.metrics: list[Counter | Gauge | Histogram] = []

    def counter(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Counter:
        metric = Counter(name, help_text, labels)
        self.metrics.append(metric)
        return metric

    def gauge(self, name: str, help_text: str, read: Callable[[], float | None],
              aggregate: str = "sum") -> Gauge:
        metric = Gauge(name, help_text, read, aggregate)
        self.metrics.append(metric)
        return metric

    def histogram(self, name: str, help_text: str, buckets: tuple[float, ...]) -> Histogram:
        metric = Histogram(name, help_text, buckets)
        self.metrics.append(metric)
        return metric

    def snapshot(self) -> dict[str, dict]:
        """Every figure now, as JSON-able data (another worker adds it to its own)."""
        return {metric.name: metric.snapshot() for metric in self.metrics}

    def render(self, snapshots: list[dict[str, dict]] | None = None) -> str:
        """The text exposition of this registry's figures, or of the sum of
        ``snapshots`` (several workers' figures, this one's among them)."""
        if snapshots is None:
            return "\n".join(line for metric in self.metrics for line in metric.render()) + "\n"
        merged = merge_snapshots(snapshots or [self.snapshot()])
        return "\n".join(line for metric in self.metrics if metric.name in merged
                         for line in metric.render(merged[metric.name])) + "\n"


def merge_snapshots(snapshots: list[dict[str, dict]]) -> dict[str, dict]:
    """The figures of several processes as those of one (see the module docstring)."""
    merged: dict[str, dict] = {}
    for snap in snapshots:
        for name, entry in snap.items():
            into = merged.get(name)
            if into is None:
                merged[name] = json.loads(json.dumps(entry))  # a copy to add into
                continue
            if entry["kind"] != into["kind"]:
                continue  # a worker of another version during an upgrade: skip
            if entry["kind"] == "counter":
                values = {tuple(k): v for k, v in into["values"]}
                for k, v in entry["values"]:
                    values[tuple(k)] = values.get(tuple(k), 0.0) + v
                into["values"] = [[list(k), v] for k, v in values.items()]
            elif entry["kind"] == "histogram":
                if len(entry["counts"]) == len(into["counts"]):
                    into["counts"] = [a + b for a, b in zip(into["counts"], entry["counts"],
                                                            strict=True)]
                    into["total"] += entry["total"]
            elif entry["value"] is not None:
                if into["value"] is None:
                    into["value"] = entry["value"]
                elif into.get("aggregate") == "max":
                    into["value"] = max(into["value"], entry["value"])
                else:
                    into["value"] += entry["value"]
    return merged


def _snapshot_path(runtime_dir: str, index: int) -> str:
    return os.path.join(runtime_dir, f"metrics-{index}.json")


def _write_json(path: str, data: object) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    os.replace(tmp, path)  # a reader sees the old file or the new one, whole


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def retire_snapshot(runtime_dir: str, index: int) -> None:
    """The parent, when worker ``index`` has exited: its counters and histograms
    join ``retired.json`` (its gauges, figures of a process gone, do not), so
    the totals do not go backwards when a new worker starts from zero."""
    path = _snapshot_path(runtime_dir, index)
    snap = _read_json(path)
    if snap is None:
        return
    kept = {name: e for name, e in snap.items() if e.get("kind") != "gauge"}
    retired_path = os.path.join(runtime_dir, RETIRED)
    retired = _read_json(retired_path) or {}
    with contextlib.suppress(OSError):
        _write_json(retired_path, merge_snapshots([retired, kept]))
        os.unlink(path)


def write_snapshot(registry: Registry) -> None:
    """In a worker: this worker's figures now, for the others (and for a scrape)."""
    ctx = workers.current()
    if ctx is None:
        return
    try:
        _write_json(_snapshot_path(ctx.runtime_dir, ctx.index), registry.snapshot())
    except OSError as exc:
        logger.warning("metrics: cannot write this worker's snapshot: %s", exc)


def totals(registry: Registry) -> dict[str, dict]:
    """Every figure as a snapshot: this process's, or the sum over the workers."""
    ctx = workers.current()
    if ctx is None:
        return registry.snapshot()
    write_snapshot(registry)
    return merge_snapshots(_read_snapshots(ctx.runtime_dir) or [registry.snapshot()])


def _read_snapshots(runtime_dir: str) -> list[dict[str, dict]]:
    snapshots = []
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(runtime_dir)):
            if name.endswith(".json"):
                snap = _read_json(os.path.join(runtime_dir, name))
                if snap is not None:
                    snapshots.append(snap)
    return snapshots


def render_all(registry: Registry) -> str:
    """What a scrape shows: this process's figures, or in a worker those of every
    worker (and of those retired). A worker answering a scrape first writes its
    own snapshot and then shows the sum of the files only: two scrapes answered
    by different workers never see a counter go backwards."""
    ctx = workers.current()
    if ctx is None:
        return registry.render()
    write_snapshot(registry)
    return registry.render(_read_snapshots(ctx.runtime_dir))


async def serve_metrics(registry: Registry, listen: str, key: str = "metrics_listen"):
    """HTTP/1.0 ``GET /metrics`` on ``listen`` (HOST:PORT); anything else is 404.
    In a worker process, on the socket the parent bound (workers.py)."""
    host, port = parse_hostport(listen, key)
    ctx = workers.current()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_REQUEST_BYTES:
                raise ValueError("request too large")
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/metrics":
                body = render_all(registry).encode()
                status, ctype = b"200 OK", b"text/plain; version=0.0.4"
            else:
                body, status, ctype = b"not found\n", b"404 Not Found", b"text/plain"
            writer.write(b"HTTP/1.0 " + status + b"\r\nContent-Type: " + ctype
                         + b"\r\nContent-Length: " + str(len(body)).encode()
                         + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (TimeoutError, ValueError, OSError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    if ctx is not None:
        server = workers.ServerGroup([
            await asyncio.start_server(handle, sock=sock, limit=MAX_REQUEST_BYTES)
            for sock in ctx.sockets_for(listen, key)])
    else:
        server = await asyncio.start_server(handle, host, port, limit=MAX_REQUEST_BYTES)
    logger.info("metrics on http://%s/metrics", listen)
    return server


class MetricsEndpoint:
    """A daemon's ``GET /metrics`` listener, moved or stopped as its configuration says.

    In a worker process it also writes the worker's snapshot for the others
    (``share``, see the module docstring)."""

    def __init__(self, registry: Registry, key: str = "metrics_listen"):
        self.registry = registry
        self.key = key
        self.listen = ""
        self._server = None
        self._snapshots: asyncio.Task | None = None

    async def serve(self, listen: str) -> None:
        """Listen on ``listen`` (HOST:PORT; empty: nowhere), closing the old listener first."""
        if listen == self.listen:  # self.listen is "" whenever nothing listens
            return
        self.close()
        if listen:
            self._server = await serve_metrics(self.registry, listen, self.key)
            self.listen = listen

    async def bind(self, listen: str):
        """A listener on ``listen`` next to the current one, for ``swap``; None when
        nothing is to be bound (unchanged or empty). OSError when it cannot be
        bound (ConfigError in a worker: not an address bound at start), and then
        nothing has changed: a reload builds everything first."""
        if listen == self.listen or not listen:
            return None
        return await serve_metrics(self.registry, listen, self.key)

    def swap(self, listen: str, server) -> None:
        """Make ``server`` (from ``bind(listen)``) the endpoint; the old one closes."""
        if listen == self.listen:
            return
        self.close()
        if server is not None:
            self._server = server
            self.listen = listen

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.listen = ""

    # ------------------------------------------------------------ several workers

    def share(self) -> None:
        """In a worker: write this worker's snapshot now and every SNAPSHOT_INTERVAL_S
        (for the scrapes and the controller's /stat answered by any worker)."""
        if workers.current() is not None and self._snapshots is None:
            write_snapshot(self.registry)
            self._snapshots = asyncio.get_running_loop().create_task(self._write_snapshots())

    def stop_sharing(self) -> None:
        """At stop: the last snapshot, with everything counted until now."""
        if self._snapshots is not None:
            self._snapshots.cancel()
            self._snapshots = None
            write_snapshot(self.registry)

    async def _write_snapshots(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL_S)
            write_snapshot(self.registry)
