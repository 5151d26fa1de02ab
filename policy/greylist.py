"""Greylisting: defer the first attempt of an unknown triplet, accept the retry.

A triplet is (client network, normalised sender, recipient). Using the
network (IPv4 /24, IPv6 /64) rather than the address, and a sender with its
per-message noise removed, is what lets large sender pools, which retry
from a neighbouring address with a fresh bounce tag, through on their first
retry: the main complaint about postgrey.

Sender normalisation: lower-cased; BATV (``prvs=TAG=user@dom``) and SRS
(``SRS0=H=TT=orig.dom=user@fwd``, ``SRS1=...``) unwrapped to the original
address; ``+extension`` stripped; runs of digits in the local part of a
remaining VERP-style address replaced by ``#``.

Keys are hashes (the store never holds addresses in clear) and share the
client network's hash tag, so the one-round-trip Redis script may touch the
triplet and the network's auto-whitelist entry on a Cluster.

Never greylisted: SASL-authenticated clients, ``trusted_networks``, and
whatever the whitelist maps list. Store trouble propagates as StoreError;
the caller answers the default action.
"""

from __future__ import annotations

import email.utils
import hashlib
import re

from policy import replies
from policy.net import NetworkSet, client_network
from policy.whitelist import Whitelist

__all__ = ["Greylister", "client_network", "keys", "normalize_sender", "params"]
from smtpproxy.common.config import GreylistConfig, parse_networks
from smtpproxy.common.store import GL_AWL, GL_EARLY, GL_NEW, GL_PASSED, GreylistParams, Store

_BATV = re.compile(r"^(?:prvs|msprvs\d*|btv1)=[^=]*=(.+)$", re.IGNORECASE)
_SRS0 = re.compile(r"^srs0[=+-][^=]*=[^=]*=([^=]+)=(.+)$", re.IGNORECASE)
_SRS1 = re.compile(r"^srs1[=+-].*?==[^=]*=[^=]*=([^=]+)=(.+)$", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")


def normalize_sender(sender: str) -> str:
    """The part of a sender address that stays the same across retries."""
    sender = sender.strip().lower()
    local, at, domain = sender.rpartition("@")
    if not at:
        return sender
    m = _BATV.match(local)
    if m:
        local = m.group(1)
    m = _SRS1.match(local) or _SRS0.match(local)
    if m:
        domain, local = m.group(1), m.group(2)
    local = local.split("+", 1)[0] or local
    local = _DIGITS.sub("#", local)
    return f"{local}@{domain}"


_last_date: tuple[int, str] = (0, "")


def _date(now: float) -> str:
    """RFC 5322 date, formatted once per second."""
    global _last_date
    second = int(now)
    if _last_date[0] != second:
        _last_date = (second, email.utils.formatdate(second, localtime=False))
    return _last_date[1]


def _h(text: str, n: int) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:n]


def keys(store: Store, network: str, sender: str, recipient: str) -> tuple[str, str]:
    """(triplet key, client-network key); both carry the network's hash tag."""
    tag = "gl:" + _h(network, 16)
    triplet = _h(f"{network}\0{sender}\0{recipient.lower()}", 32)
    return store.key(tag, "t", triplet), store.key(tag, "awl")


def params(cfg: GreylistConfig) -> GreylistParams:
    return GreylistParams(
        delay_s=cfg.delay_s, retry_window_s=cfg.retry_window_s, pass_ttl_s=cfg.pass_ttl_s,
        awl_deliveries=cfg.awl_deliveries, awl_count_interval_s=cfg.awl_count_interval_s,
        awl_ttl_s=cfg.awl_ttl_s,
    )


class Greylister:
    def __init__(self, cfg: GreylistConfig, whitelist: Whitelist, hostname: str):
        self.cfg = cfg
        self.whitelist = whitelist
        self.hostname = hostname
        self.params = params(cfg)
        self.trusted = NetworkSet(
            parse_networks(cfg.trusted_networks, "policy.greylist.trusted_networks"))
        self.states = frozenset(cfg.protocol_states)
        self.contexts = frozenset(cfg.policy_contexts)

    def applies(self, req: dict[str, str]) -> bool:
        return (self.cfg.enabled and req.get("protocol_state", "").upper() in self.states
                and req.get("policy_context", "") in self.contexts)

    def exempt(self, req: dict[str, str]) -> str | None:
        """Why this request is never greylisted, or None."""
        if req.get("sasl_username"):
            return "sasl"
        address = req.get("client_address", "")
        if address in self.trusted:
            return "trusted"
        if self.whitelist.client(address, req.get("client_name")):
            return "client_whitelist"
        if self.whitelist.sender(req.get("sender")):
            return "sender_whitelist"
        if self.whitelist.recipient(req.get("recipient")):
            return "recipient_whitelist"
        return None

    async def check(self, store: Store, req: dict[str, str], now: float) -> tuple[str | None, str]:
        """(action or None to go on, what happened for the log)."""
        action, note, _ = await self.decide(store, req, now)
        return action, note

    async def decide(self, store: Store, req: dict[str, str],
                     now: float) -> tuple[str | None, str, dict]:
        """``check``, plus the decision as the proxy's history shows it
        (smtpproxy/common/decisions.py): {"greylist": state, ...} or
        {"whitelisted": why}."""
        why = self.exempt(req)
        if why:
            return None, why, {"whitelisted": why}
        network = client_network(req.get("client_address", ""), self.cfg.client_prefix_v4,
                                 self.cfg.client_prefix_v6)
        sender = normalize_sender(req.get("sender", ""))
        triplet_key, client_key = keys(store, network, sender, req.get("recipient", ""))
        result = await store.greylist(triplet_key, client_key, now, self.params)
        record: dict = {"greylist": result.state}
        if result.state in (GL_NEW, GL_EARLY):
            record["wait_s"] = round(result.wait_s)
            return replies.greylist_defer(self.cfg.defer_text, result.wait_s), result.state, record
        if result.state == GL_PASSED:
            record["delayed_s"] = round(result.delayed_s)
            if self.cfg.add_header:
                header = replies.greylist_header(result.delayed_s, self.hostname, _date(now))
                return header, result.state, record
        return None, result.state if result.state != GL_AWL else "awl", record
