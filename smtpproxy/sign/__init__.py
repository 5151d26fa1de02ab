"""Outbound signing: DKIM signatures and ARC seals added to the message on its way downstream.

The delivery pipeline (smtpproxy/delivery.py) calls ``signer.sign(txn,
arc_result, auth_results)`` after the scan accepted the message and its
result headers were applied, so the signature covers the message exactly as
it is re-injected; ``arc_result`` is the ARC chain status the scan verified
(None: not verified, the sealer verifies it itself), ``auth_results`` the
Authentication-Results value the scan wrote ("": no scan), the only results
an ARC seal carries besides ``arc=``. A signer returns the message to send
(normally the same bytes with new header fields on top). It raises
``SignTempfail`` when policy says a message it cannot sign must wait (the
client then gets 451 4.7.0 and retries); any other trouble it logs and
passes the message unsigned.

NoSigner is the signer in place when signing is not configured.
"""

from __future__ import annotations

from typing import Protocol

from smtpproxy.transaction import Transaction


class SignTempfail(Exception):
    """The message must not leave unsigned; the text is for the log."""


class Signer(Protocol):
    async def sign(self, txn: Transaction, arc_result: str | None = None,
                   auth_results: str = "") -> bytes: ...


class NoSigner:
    async def sign(self, txn: Transaction, arc_result: str | None = None,
                   auth_results: str = "") -> bytes:
        return txn.content
