"""ARC chain verification (RFC 8617) with dkimpy's ``ARC.verify``, shared by the ARC check and the sealer.

Contract: ``await verify_chain(resolver, raw, min_rsa_key_bits)`` returns
``{"result", "reason", "results"}``: result is pass, fail, none or
temperror (a key lookup failed for now), reason dkimpy's text made plain,
results one dict per ARC instance (instance, cv, as_domain, as_selector,
ams_domain, ams_selector). It never raises for DNS or content problems.

dkimpy runs in a worker thread (pool ``"arc"``); its key lookups come back to
the event loop's Resolver (bridge.py). RSA keys under ``min_rsa_key_bits``
(never less than 1024, RFC 8301) fail the chain.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import dkim

from smtpproxy.mailauth.bridge import DnsTemporary, TxtBridge, reason_text, run_in_pool, shared_pool

if TYPE_CHECKING:
    from smtpproxy.common.dns import Resolver

_quiet = logging.getLogger("smtpproxy.dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value or "")


def verify_in_thread(bridge: TxtBridge, raw: bytes, min_rsa_key_bits: int) -> dict:
    """Runs in a worker thread: dkimpy's verdict on the chain, as plain data."""
    try:
        arc = dkim.ARC(raw, logger=_quiet, minkey=min_rsa_key_bits)
        cv, results, reason = arc.verify(dnsfunc=bridge.dnsfunc)
    except DnsTemporary as exc:
        return {"result": "temperror", "reason": f"key lookup {exc.name}: {exc.reason}", "results": []}
    except dkim.DKIMException as exc:
        return {"result": "fail", "reason": reason_text(exc), "results": []}
    except Exception as exc:  # dkimpy trips over some malformed values
        return {"result": "fail", "reason": f"unverifiable: {type(exc).__name__}", "results": []}
    result = {dkim.CV_Pass: "pass", dkim.CV_None: "none"}.get(cv, "fail")
    return {"result": result, "reason": reason_text(_text(reason)), "results": [
        {"instance": r.get("instance"), "cv": _text(r.get("cv")),
         "as_domain": _text(r.get("as-domain")), "as_selector": _text(r.get("as-selector")),
         "ams_domain": _text(r.get("ams-domain")), "ams_selector": _text(r.get("ams-selector"))}
        for r in results]}


async def verify_chain(resolver: Resolver, raw: bytes, min_rsa_key_bits: int) -> dict:
    """The chain's status; cancelling the caller frees the worker thread within one lookup."""
    return await run_in_pool(shared_pool("arc"), TxtBridge(resolver), verify_in_thread, raw,
                             min_rsa_key_bits)
