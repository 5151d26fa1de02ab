"""GTUBE: the Generic Test for Unsolicited Bulk Email. Its string forces a reject."""

from __future__ import annotations

from typing import ClassVar

from smtpproxy.scan.checks.base import CheckContext, Hit

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


class GtubeCheck:
    name: ClassVar[str] = "gtube"
    symbols: ClassVar[tuple[str, ...]] = ("GTUBE",)
    after: ClassVar[tuple[str, ...]] = ()
    # Runs in the engine's task until it has to wait (checks/base.py).
    inline: ClassVar[bool] = True

    async def run(self, ctx: CheckContext) -> list[Hit]:
        # The raw bytes, so any transfer encoding of the body is irrelevant only
        # when it is 7bit/8bit, as in the standard test message.
        return [Hit("GTUBE")] if GTUBE in ctx.message.raw else []
