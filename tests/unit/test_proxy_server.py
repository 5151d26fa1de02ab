"""ProxySMTP sets up aiosmtpd's per-connection state itself (for speed): pin it to aiosmtpd's."""

from __future__ import annotations

import asyncio

from aiosmtpd.smtp import SMTP

from smtpproxy.common import config
from smtpproxy.server import ProxySMTP, _NoHooks


class _Service:
    def __init__(self):
        self.cfg = config.load(None)
        self.sessions = set()


def _state(obj) -> dict:
    return {k: v for k, v in vars(obj).items()}


def test_init_sets_the_same_state_as_aiosmtpd():
    async def build():
        service = _Service()
        ours = ProxySMTP(service, service.cfg.proxy.listeners[0], "mx.example.test")
        reference = ProxySMTP.__new__(ProxySMTP)
        SMTP.__init__(reference, _NoHooks(), data_size_limit=service.cfg.proxy.max_message_size_bytes,
                      enable_SMTPUTF8=True, decode_data=False, hostname="mx.example.test",
                      ident="ESMTP smtpproxy", timeout=service.cfg.proxy.command_timeout_s)
        return ours, reference

    ours, reference = asyncio.run(build())
    mine, theirs = _state(ours), _state(reference)
    own = {"service", "listener", "cfg", "downstream", "in_transaction", "tempfailed", "busy", "_txn_started",
           "_deadline"}
    assert set(theirs) <= set(mine), f"aiosmtpd sets state we do not: {set(theirs) - set(mine)}"
    assert set(mine) - set(theirs) == own
    for key in ("data_size_limit", "enable_SMTPUTF8", "_decode_data", "hostname", "tls_context",
                "_timeout_duration", "_tls_handshake_okay", "_auth_require_tls", "_proxy_timeout",
                "_authenticator", "_auth_required", "_handle_hooks", "_ehlo_hook_ver",
                "_enforce_call_limit", "__ident__"):
        assert mine[key] == theirs[key], key
    assert set(mine["_smtp_methods"]) == set(theirs["_smtp_methods"])
    assert ours._stream_reader._limit == reference._stream_reader._limit == ProxySMTP.line_length_limit
