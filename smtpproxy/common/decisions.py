"""The policy daemon's decisions, as both daemons read and write them in the store.

The policy daemon (policy/decisions.py) records each decision that is not a
plain DUNNO by default (a greylist result, a rate-limit refusal, a
whitelisting) under ``decision_key(store, client, sender, rcpt)`` for
``policy.decisions_ttl_s``; the proxy's history (controller/history.py)
reads them back for each recipient of a message it scanned, so a history
row shows what the policy daemon decided for the same client and envelope
when both share a store.

The key is a hash of the client address, the sender and the recipient (the
store never holds addresses in clear): addresses compared without case and
angle brackets, the client address in its canonical form (Postfix's
``client_address`` and the proxy's XFORWARD ADDR spell IPv6 differently).

A record (``encode``/``decode``) is one JSON object, the newest decision
for the triplet (a retry overwrites the deferral it follows)::

  {"t": 1767225600.0, "greylist": "passed", "delayed_s": 300}
  {"t": ..., "greylist": "new", "wait_s": 300}
  {"t": ..., "greylist": "known"}          # also "early", "awl"
  {"t": ..., "whitelisted": "client_whitelist"}
  {"t": ..., "ratelimit": "inbound_client", "action": "DEFER"}
"""

from __future__ import annotations

import hashlib
import ipaddress
import json

TAG = "pd"


def _address(value: str) -> str:
    return value.strip().strip("<>").lower()


def _client(value: str) -> str:
    value = value.strip()
    if value[:5].upper() == "IPV6:":
        value = value[5:]
    try:
        return ipaddress.ip_address(value).compressed
    except ValueError:
        return value.lower()


def decision_key(store, client: str, sender: str, rcpt: str) -> str:
    """The store key of the decisions for (client address, sender, recipient)."""
    text = f"{_client(client)}\0{_address(sender)}\0{_address(rcpt)}"
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return store.key(TAG, digest)


def encode(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def decode(value: bytes | None) -> dict | None:
    """The record of a stored value; None when absent or not a record."""
    if value is None:
        return None
    try:
        record = json.loads(value)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
