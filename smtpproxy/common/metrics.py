"""Counters and a Prometheus text endpoint, shared by both daemons.

Deliberately small: labelled counters, gauges read at scrape time and one
fixed-bucket histogram type, rendered in the Prometheus text exposition
format by a tiny asyncio HTTP server (``GET /metrics``). Off unless a
``metrics_listen`` address is configured; it should listen on loopback or
a management network only.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable

from smtpproxy.common.config import parse_hostport

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8192


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

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        lines += [f"{self.name}{_labels(self.labels, k)} {v:g}" for k, v in sorted(self.values.items())]
        return lines


class Gauge:
    """A value read when scraped (e.g. the number of open sessions); a read
    that returns None leaves the sample out (a feature that is off)."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float | None]):
        self.name, self.help, self.read = name, help_text, read

    def render(self) -> list[str]:
        value = self.read()
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

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            lines.append(f'{self.name}_bucket{{le="{bound:g}"}} {running}')
        running += self.counts[-1]
        lines += [f'{self.name}_bucket{{le="+Inf"}} {running}',
                  f"{self.name}_sum {self.total:g}", f"{self.name}_count {running}"]
        return lines


class Registry:
    def __init__(self) -> None:
        self.metrics: list[Counter | Gauge | Histogram] = []

    def counter(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Counter:
        metric = Counter(name, help_text, labels)
        self.metrics.append(metric)
        return metric

    def gauge(self, name: str, help_text: str, read: Callable[[], float | None]) -> Gauge:
        metric = Gauge(name, help_text, read)
        self.metrics.append(metric)
        return metric

    def histogram(self, name: str, help_text: str, buckets: tuple[float, ...]) -> Histogram:
        metric = Histogram(name, help_text, buckets)
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        return "\n".join(line for metric in self.metrics for line in metric.render()) + "\n"


async def serve_metrics(registry: Registry, listen: str) -> asyncio.Server:
    """HTTP/1.0 ``GET /metrics`` on ``listen`` (HOST:PORT); anything else is 404."""
    host, port = parse_hostport(listen, "metrics_listen")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_REQUEST_BYTES:
                raise ValueError("request too large")
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/metrics":
                body = registry.render().encode()
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

    server = await asyncio.start_server(handle, host, port, limit=MAX_REQUEST_BYTES)
    logger.info("metrics on http://%s/metrics", listen)
    return server


class MetricsEndpoint:
    """A daemon's ``GET /metrics`` listener, moved or stopped as its configuration says."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self.listen = ""
        self._server: asyncio.Server | None = None

    async def serve(self, listen: str) -> None:
        """Listen on ``listen`` (HOST:PORT; empty: nowhere), closing the old listener first."""
        if listen == self.listen:  # self.listen is "" whenever nothing listens
            return
        self.close()
        if listen:
            self._server = await serve_metrics(self.registry, listen)
            self.listen = listen

    async def bind(self, listen: str) -> asyncio.Server | None:
        """A listener on ``listen`` next to the current one, for ``swap``; None when
        nothing is to be bound (unchanged or empty). OSError when it cannot be
        bound, and then nothing has changed: a reload builds everything first."""
        if listen == self.listen or not listen:
            return None
        return await serve_metrics(self.registry, listen)

    def swap(self, listen: str, server: asyncio.Server | None) -> None:
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
