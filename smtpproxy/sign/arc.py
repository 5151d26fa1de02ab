"""ARC sealing (RFC 8617): the next ARC set for a message we forward.

Contract:

- ``seal_set(content, domain, selector, key_pem, srv_id, headers, ...)``
  returns the new set (ARC-Seal, ARC-Message-Signature,
  ARC-Authentication-Results, each a CRLF-terminated field) from the
  message's own Authentication-Results for ``srv_id``: their results, top
  down and verbatim (comments kept, RFC 8617 4.1.1), become the
  ARC-Authentication-Results, and their ``arc=`` result is the seal's ``cv=``.
  An empty list when there is nothing to seal: no Authentication-Results of
  ours, or a chain that has ended (RFC 8617 5.1.2: an instance above 1
  without an arc= result). A failed chain's seal covers only its own set.
  ``timestamp`` and ``standardize`` exist for the ValiMail signing suite
  (tests/unit/test_arc_sign_suite.py, 17/17).
- ``with_arc_result(content, srv_id, cv, verified)`` replaces every
  Authentication-Results field claiming ``srv_id`` (parsed with authres, as
  the scan removes forgeries) by one on top holding only what we verified:
  the scan's results (``verified``) and the chain status
  (``arc=pass|fail|none``) the proxy verified itself
  (smtpproxy/mailauth/arc.py, by the scan or, when the scan did not, by the
  signer), never whatever an incoming header says.

dkimpy parses the message and canonicalises the body; the set is assembled,
its header fields canonicalised, by smtpproxy/sign/dkim.py's ``gen_header``
(the same bytes as dkimpy's) because dkimpy's own ``ARC.sign``
re-parses the results and drops their comments, which changes what the seal
covers, and signs RSA in pure Python. Only
RSA keys seal (dkimpy's ARC code and most ARC verifiers know rsa-sha256 only).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Sequence

import dkim
from dkim.canonicalization import CanonicalizationPolicy

from smtpproxy.headers import split_fields
from smtpproxy.scan.results import is_own_authres
from smtpproxy.sign.dkim import gen_header
from smtpproxy.sign.keys import KeyError_, PrivateKey, parse_key

_quiet = logging.getLogger("smtpproxy.sign.dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False

AR = b"Authentication-Results"


_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
INSTANCE_LIMIT = 50  # RFC 8617 4.2.1


def _parts(value: bytes) -> list[bytes]:
    """An Authentication-Results value split at the semicolons outside comments and quotes."""
    parts, depth, quoted, start, i = [], 0, False, 0, 0
    while i < len(value):
        c = value[i:i + 1]
        if quoted:
            if c == b"\\":
                i += 1
            elif c == b'"':
                quoted = False
        elif c == b'"':
            quoted = True
        elif c == b"(":
            depth += 1
        elif c == b")" and depth:
            depth -= 1
        elif c == b";" and not depth:
            parts.append(value[start:i])
            start = i + 1
        i += 1
    parts.append(value[start:])
    return [b" ".join(p.split()) for p in parts]


def _our_results(headers: list[tuple[bytes, bytes]], srv_id: str) -> list[bytes]:
    """The results of every Authentication-Results field of ``srv_id``, top down, comments kept."""
    results = []
    for name, value in headers:
        if name.lower() != AR.lower() or _authserv_id(value) != srv_id.lower():
            continue
        results += [r for r in _parts(value)[1:] if r and r.lower() != b"none"]
    return results


def seal_set(content: bytes, domain: str, selector: str, key: PrivateKey | bytes, srv_id: str,
             headers: Sequence[str], timestamp: int | None = None,
             standardize: bool = False, only_present: bool = True) -> list[bytes]:
    arc = dkim.ARC(content, logger=_quiet, signature_algorithm=b"rsa-sha256")
    results = _our_results(arc.headers, srv_id)
    if not results:
        return []  # nothing to say about this message: no ARC set (dkimpy does the same)
    arc_results = [r for r in results if r.lower().startswith(b"arc=")]
    if not arc_results:
        cv = dkim.CV_None
    elif len(arc_results) > 1:
        cv = dkim.CV_Fail  # RFC 8617 5.1.1: ambiguous status
    else:
        cv = arc_results[0][4:].split()[0].rstrip(b";").lower()
        if cv not in (dkim.CV_Pass, dkim.CV_Fail, dkim.CV_None):
            cv = dkim.CV_Fail
    max_instance, sets = arc.sorted_arc_headers()
    instance = max_instance + 1 if sets else 1
    if instance > INSTANCE_LIMIT:
        raise dkim.ParameterError("Maximum instance tag value exceeded")
    if instance == 1 and cv != dkim.CV_None:
        raise dkim.ParameterError("no existing chain, so the ARC status must be none")
    if instance > 1 and cv == dkim.CV_None:
        return []  # RFC 8617 5.1.2: the chain has ended
    if not isinstance(key, PrivateKey):
        try:
            key = parse_key(key)
        except KeyError_ as exc:
            raise dkim.KeyFormatError(str(exc)) from None
    if key.key_type != "rsa":
        raise dkim.KeyFormatError("ARC seals with RSA keys only")
    stamp = str(int(time.time()) if timestamp is None else int(timestamp)).encode("ascii")
    number = str(instance).encode("ascii")

    # ARC-Authentication-Results: our results verbatim (comments kept), i= first.
    aar = b" i=" + number + b"; " + srv_id.encode("utf-8") + b";" + b";".join(
        b"\r\n " + r for r in results) + b"\r\n"

    # ARC-Message-Signature: a DKIM signature by another name (RFC 8617 4.1.2).
    # RFC 8617 4.1.2 lets it cover DKIM-Signature, which dkimpy refuses by default.
    present = {name.lower() for name, _ in arc.headers}
    include = [h.lower().encode("ascii") for h in headers]
    if only_present:
        include = [h for h in include if h in present]
    if b"from" not in include:
        raise dkim.ParameterError("The From header field MUST be signed")
    body_hash = base64.b64encode(hashlib.sha256(_RELAXED.canonicalize_body(arc.body)).digest())
    ams = gen_header(arc, [
        (b"i", number), (b"a", b"rsa-sha256"), (b"c", b"relaxed/relaxed"),
        (b"d", domain.encode("ascii")), (b"s", selector.encode("ascii")), (b"t", stamp),
        (b"h", b" : ".join(include)), (b"bh", body_hash), (b"b", b"0" * 60),
    ], include, b"ARC-Message-Signature", key, standardize)

    # ARC-Seal over every earlier set (oldest first: AAR, AMS, AS of each) and
    # the new AAR and AMS; a failed chain's seal covers only its own set.
    chain = [] if cv == dkim.CV_Fail else [field for _i, field in sets]  # newest first
    arc.headers = [(b"ARC-Message-Signature", ams), (b"ARC-Authentication-Results", aar), *chain]
    seal_include = [name.lower() for name, _ in reversed(arc.headers)]
    seal = gen_header(arc, [
        (b"i", number), (b"cv", cv), (b"a", b"rsa-sha256"), (b"d", domain.encode("ascii")),
        (b"s", selector.encode("ascii")), (b"t", stamp), (b"b", b"0" * 60),
    ], seal_include, b"ARC-Seal", key, standardize)
    return [b"ARC-Seal: " + seal, b"ARC-Message-Signature: " + ams,
            b"ARC-Authentication-Results:" + aar]


def _authserv_id(field_value: bytes) -> str:
    return field_value.split(b";", 1)[0].split(b"(", 1)[0].strip().decode("utf-8", "replace").lower()


def with_arc_result(content: bytes, srv_id: str, cv: str, verified: str = "") -> bytes:
    """``content`` with one Authentication-Results field of ours on top: the
    results of ``verified`` (the value the scan wrote, any authserv-id; its
    arc= and "none" dropped), then arc=``cv``.

    Every field claiming ``srv_id`` (scan/results.py's ``is_own_authres``,
    the rule the scan removes forgeries by) goes: whatever a sender wrote
    under our name is never merged, so a seal covers only what we verified.
    """
    fields, end = split_fields(content)
    kept = [field for field in fields
            if not (field.partition(b":")[0].strip().lower() == AR.lower()
                    and is_own_authres(field.partition(b":")[2], srv_id))]
    results = [r for r in _parts(verified.encode("utf-8"))[1:]
               if r and r.lower() != b"none" and not r.lower().startswith(b"arc=")]
    parts = [srv_id.encode("utf-8"), *results, f"arc={cv}".encode("ascii")]
    ours = AR + b": " + b";\r\n\t".join(parts) + b"\r\n"
    return ours + b"".join(kept) + content[end:]
