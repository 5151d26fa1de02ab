"""The Prometheus text rendering of our counters."""

from smtpproxy.common.metrics import Registry


def test_render_counters_gauges_and_histograms():
    r = Registry()
    c = r.counter("x_total", "Things", ("kind",))
    c.inc("a")
    c.inc("a")
    c.inc('b"\\', amount=3)
    r.gauge("y", "Now", lambda: 7)
    h = r.histogram("z_seconds", "Time", (0.1, 1.0))
    for v in (0.05, 0.5, 5.0):
        h.observe(v)
    assert r.render().splitlines() == [
        "# HELP x_total Things", "# TYPE x_total counter",
        'x_total{kind="a"} 2', 'x_total{kind="b\\"\\\\"} 3',
        "# HELP y Now", "# TYPE y gauge", "y 7",
        "# HELP z_seconds Time", "# TYPE z_seconds histogram",
        'z_seconds_bucket{le="0.1"} 1', 'z_seconds_bucket{le="1"} 2', 'z_seconds_bucket{le="+Inf"} 3',
        "z_seconds_sum 5.55", "z_seconds_count 3",
    ]


def test_endpoint_moves_and_stops_as_configured():
    import asyncio

    from smtpproxy.common.metrics import MetricsEndpoint
    from tests.support.net import free_port

    async def get(port: int) -> bytes | None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return None
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        reply = await reader.read()
        writer.close()
        return reply

    async def main():
        r = Registry()
        r.counter("x_total", "Things").inc()
        endpoint = MetricsEndpoint(r)
        a, b = free_port(), free_port()
        await endpoint.serve(f"127.0.0.1:{a}")
        assert b"x_total 1" in await get(a)
        await endpoint.serve(f"127.0.0.1:{a}")  # unchanged: the same listener
        assert b"x_total 1" in await get(a)
        await endpoint.serve(f"127.0.0.1:{b}")
        assert await get(a) is None and b"x_total 1" in await get(b)
        await endpoint.serve("")
        assert await get(b) is None

    asyncio.run(main())
