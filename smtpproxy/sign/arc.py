"""ARC sealing (RFC 8617): the next ARC set for a message we forward.

Contract:

- ``seal_set(content, domain, selector, key_pem, srv_id, headers, ...)``
  returns the new set (ARC-Seal, ARC-Message-Signature,
  ARC-Authentication-Results, each a CRLF-terminated field) from the
  message's own Authentication-Results for ``srv_id``: their results are
  merged into the ARC-Authentication-Results, and their ``arc=`` result is
  the seal's ``cv=``. An empty list when the chain has ended (RFC 8617 5.1.2:
  an instance above 1 without an arc= result is not sealed). dkimpy builds the
  set; ``timestamp`` and ``standardize`` exist for the ValiMail test suite.
- ``with_arc_result(content, srv_id, cv)`` rewrites our Authentication-Results
  so they carry the chain status we verified ourselves (``arc=pass|fail|none``)
  and nothing older: the proxy verifies the chain right before sealing
  (scan/checks/arc.py's verification, its DNS through the one Resolver) rather
  than trusting whatever the scan may have written.

Only RSA keys seal (dkimpy's ARC signer knows rsa-sha256 only, and so do
most ARC verifiers).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import authres
import dkim

_quiet = logging.getLogger("smtpproxy.sign.dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False

AR = b"Authentication-Results"


def seal_set(content: bytes, domain: str, selector: str, key_pem: bytes, srv_id: str,
             headers: Sequence[str], timestamp: int | None = None,
             standardize: bool = False, only_present: bool = True) -> list[bytes]:
    arc = dkim.ARC(content, logger=_quiet, signature_algorithm=b"rsa-sha256")
    # RFC 8617 4.1.2: the AMS may cover DKIM-Signature (dkimpy refuses it by default).
    arc.should_not_sign.discard(b"dkim-signature")
    present = {name.lower() for name, _ in arc.headers}
    include = [h.lower().encode("ascii") for h in headers]
    if only_present:
        include = [h for h in include if h in present]
    return arc.sign(selector.encode("ascii"), domain.encode("ascii"), key_pem,
                    srv_id.encode("utf-8"), include_headers=include,
                    timestamp=timestamp, standardize=standardize)


def _split_header(content: bytes) -> tuple[list[bytes], bytes]:
    """Header fields (each with its folded lines and CRLF) and the rest."""
    end = content.find(b"\r\n\r\n")
    head, rest = (content, b"") if end < 0 else (content[:end + 2], content[end + 2:])
    fields: list[bytes] = []
    for line in head.split(b"\r\n")[:-1] if head.endswith(b"\r\n") else head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields, rest


def _authserv_id(field_value: bytes) -> str:
    return field_value.split(b";", 1)[0].split(b"(", 1)[0].strip().decode("utf-8", "replace").lower()


def with_arc_result(content: bytes, srv_id: str, cv: str) -> bytes:
    """``content`` with our Authentication-Results merged into one field on top, arc=``cv`` in it."""
    fields, rest = _split_header(content)
    results: list[str] = []
    kept: list[bytes] = []
    for field in fields:
        name, _, value = field.partition(b":")
        if name.strip().lower() == AR.lower() and _authserv_id(value) == srv_id.lower():
            try:
                parsed = authres.AuthenticationResultsHeader.parse(
                    "Authentication-Results: " + value.decode("utf-8").replace("\r\n", ""))
                results += [str(r) for r in parsed.results if r.method != "arc"]
            except (authres.core.SyntaxError, UnicodeDecodeError, Exception):
                pass  # unparsable: dropped, as dkimpy would skip it
            continue
        kept.append(field)
    parts = [srv_id, *results, f"arc={cv}"]
    ours = (AR + b": " + ";\r\n\t".join(parts).encode("utf-8") + b"\r\n")
    return ours + b"".join(kept) + rest
