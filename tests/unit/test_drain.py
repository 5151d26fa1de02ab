"""SIGTERM's drain: telling idle sessions goodbye never ends the drain early."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from smtpproxy.daemon import _say_goodbye


class _Transport:
    def __init__(self):
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class _Session:
    """A session whose client goes away while it is told (aiosmtpd drops its transport)."""

    def __init__(self):
        self.transport = _Transport()
        self.service = SimpleNamespace(sessions={self})
        self.told: list[str] = []

    async def push(self, line: str) -> None:
        self.told.append(line)
        self.transport = None


def test_client_gone_while_told_of_the_shutdown_never_stops_the_drain():
    session = _Session()
    transport = session.transport
    asyncio.run(_say_goodbye(session))  # raised AttributeError, which ended the drain
    assert session.told and session.told[0].startswith("421 ")
    assert transport.closed
