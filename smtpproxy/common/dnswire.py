"""DNS messages on the wire for the resolver: a query's bytes, and what it needs from an answer.

dnspython builds and parses whole messages as objects: about 50 us to build a
query and 70 to 130 us to parse a small answer (bench/dns_bench.py
``--wire``), more than all the rest of a lookup. The resolver needs only the
header, the answer chain for its one question and the negative TTL, so this
codec reads just those. Callers still get dnspython rdata: A, AAAA and TXT
built here (the bulk of mail's lookups), the rest by ``dns.rdata.from_wire``.

Contract (pure functions, no I/O):

- ``make_query(msg_id, qname_wire, rdtype, payload)``: one question, class
  IN, RD set, an EDNS0 OPT record advertising ``payload`` octets.
- ``name_wire(text)``: the uncompressed wire form of a plain absolute name
  ("a.example." of letters, digits, "-" and "_"), lower-cased.
- ``parse_response(wire, msg_id, qname_wire, rdtype)``: ``None`` when the
  message is not a response to that id and question (the caller keeps
  waiting: a stray or forged datagram must not end a lookup); else a
  ``Response`` (rcode, truncated, the rdata of the answer chain, its TTL,
  the negative TTL). Raises ``MalformedMessage`` when it claims to be that
  response but cannot be read.
- Bounded on hostile input: every read is range-checked, compression
  pointers must point backwards (no loops), a name is at most 255 octets,
  a CNAME chain at most ``MAX_CNAMES`` hops.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.exception
import dns.ipv6
import dns.message
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA

__all__ = ["MalformedMessage", "Response", "make_query", "name_wire", "parse_response"]

MAX_CNAMES = 16  # dnspython's bound on a chain, kept so answers do not change
MAX_TTL = 2**31 - 1

CLASS_IN = 1
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_OPT = 41

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
RCODE_YXDOMAIN = 6

_FLAG_QR = 0x8000
_FLAG_TC = 0x0200
_FLAG_RD = 0x0100
_OPCODE_MASK = 0x7800

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_U16 = struct.Struct("!H")


class MalformedMessage(ValueError):
    """A response to our question that cannot be read."""


@dataclass(frozen=True, slots=True)
class Response:
    rcode: int
    truncated: bool
    # The records of the asked type at the end of the CNAME chain (empty: NODATA or NXDOMAIN).
    rdatas: tuple[dns.rdata.Rdata, ...] = ()
    # The smallest TTL along the chain and its records (MAX_TTL when there are none).
    ttl: int = MAX_TTL
    # NXDOMAIN/NODATA: RFC 2308's min(SOA TTL, SOA minimum) and the chain's CNAME TTLs
    # (dnspython's 300 s without a SOA); None for an answer with data.
    negative_ttl: int | None = None


def make_query(msg_id: int, qname_wire: bytes, rdtype: int, payload: int) -> bytes:
    # Header: id, RD, one question, one additional record (the OPT).
    return b"".join((
        _HEADER.pack(msg_id, _FLAG_RD, 1, 0, 0, 1),
        qname_wire,
        struct.pack("!HH", rdtype, CLASS_IN),
        # OPT: root owner, type 41, class = UDP payload size, TTL 0 (version 0, no flags), no options.
        b"\x00", struct.pack("!HHIH", TYPE_OPT, payload, 0, 0),
    ))


def name_wire(text: str) -> bytes:
    """The wire form of a plain absolute name ("example.com." or "." for the root)."""
    labels = text.lower().encode("ascii").split(b".")
    return b"".join(bytes((len(label),)) + label for label in labels if label) + b"\x00"


def read_name(wire: bytes, offset: int) -> tuple[bytes, int]:
    """(the name at offset as lower-cased uncompressed wire form, the offset after it)."""
    parts = []
    length = 0
    end = -1
    pos = offset
    while True:
        if pos >= len(wire):
            raise MalformedMessage("name runs past the end")
        count = wire[pos]
        if count == 0:
            pos += 1
            break
        if count >= 0xC0:
            if pos + 1 >= len(wire):
                raise MalformedMessage("name runs past the end")
            target = ((count & 0x3F) << 8) | wire[pos + 1]
            if end < 0:
                end = pos + 2
            if target >= pos:  # only backwards: every pointer shortens the walk, no loop
                raise MalformedMessage("bad compression pointer")
            pos = target
            continue
        if count > 63:
            raise MalformedMessage("bad label type")
        length += count + 1
        if length > 254 or pos + 1 + count > len(wire):
            raise MalformedMessage("name too long")
        parts.append(wire[pos:pos + 1 + count])
        pos += 1 + count
    # Length octets are below 64, so lower() changes only the letters.
    return b"".join(parts).lower() + b"\x00", pos if end < 0 else end


def parse_response(wire: bytes, msg_id: int, qname_wire: bytes,
                   rdtype: int) -> Response | None:
    if len(wire) < 12:
        return None
    rid, flags, qdcount, ancount, nscount, _arcount = _HEADER.unpack_from(wire)
    if rid != msg_id or not flags & _FLAG_QR or flags & _OPCODE_MASK or qdcount != 1:
        return None
    # The question is the message's first name, so it is never compressed:
    # compare it octet by octet (names without regard to case).
    qend = 12 + len(qname_wire)
    if (wire[12:qend].lower() != qname_wire
            or wire[qend:qend + 4] != struct.pack("!HH", rdtype, CLASS_IN)):
        return None
    rcode = flags & 0x000F
    truncated = bool(flags & _FLAG_TC)
    if truncated or rcode not in (RCODE_NOERROR, RCODE_NXDOMAIN):
        return Response(rcode, truncated)
    pos = qend + 4
    try:
        answers, pos = _read_records(wire, pos, ancount)
        return _resolve(wire, rcode, answers, qname_wire, rdtype, pos, nscount)
    except (IndexError, struct.error, dns.exception.DNSException) as exc:
        raise MalformedMessage(f"{type(exc).__name__}: {exc}") from None


def _read_records(wire: bytes, pos: int, count: int) -> tuple[list[tuple], int]:
    """(owner, type, class, ttl, rdata offset, rdata length) of count records from pos."""
    records = []
    for _ in range(count):
        owner, pos = read_name(wire, pos)
        rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(wire, pos)
        pos += 10
        if pos + rdlen > len(wire):
            raise MalformedMessage("record data runs past the end")
        # RFC 2181 8: a TTL with the top bit set is read as 0.
        records.append((owner, rtype, rclass, 0 if ttl > MAX_TTL else ttl, pos, rdlen))
        pos += rdlen
    return records, pos


def _resolve(wire: bytes, rcode: int, answers: list[tuple], qname: bytes, rdtype: int,
             pos: int, nscount: int) -> Response:
    name = qname
    ttl = MAX_TTL
    for _hop in range(MAX_CNAMES + 1):
        found = [r for r in answers if r[0] == name and r[1] == rdtype and r[2] == CLASS_IN]
        if found:
            rdatas = []
            seen = set()
            for _owner, _type, _class, rttl, offset, length in found:
                raw = wire[offset:offset + length]
                if raw in seen:  # one record twice is one record, as in an rrset
                    continue
                seen.add(raw)
                rdatas.append(_rdata(wire, rdtype, offset, length))
                ttl = min(ttl, rttl)
            if rcode == RCODE_NOERROR:
                return Response(rcode, False, tuple(rdatas), ttl)
            break  # NXDOMAIN with data: no answer, as dnspython reads it
        cname = next((r for r in answers if r[0] == name and r[1] == TYPE_CNAME
                      and r[2] == CLASS_IN), None)
        if cname is None:
            break
        ttl = min(ttl, cname[3])
        name, _end = read_name(wire, cname[4])
    # NODATA or NXDOMAIN: the SOA in the authority section bounds the negative TTL.
    authority, _pos = _read_records(wire, pos, nscount)
    negative = None
    for _owner, rtype, rclass, rttl, offset, length in authority:
        if rtype == TYPE_SOA and rclass == CLASS_IN and length >= 22:
            (minimum,) = struct.unpack_from("!I", wire, offset + length - 4)
            negative = min(ttl, rttl, minimum)
            break
    if negative is None:
        # No SOA, no negative TTL of the zone's own: dnspython's stand-in.
        negative = min(ttl, dns.message.NEGATIVE_TTL_WITHOUT_SOA)
    return Response(rcode, False, (), ttl, negative)


# The common types are built straight from their octets: dnspython's
# from_wire costs 15 to 20 us a record, a quarter of a whole lookup, mostly
# validating what the octets already fix. The rdata is set up through
# dnspython's own pickling entry (__setstate__), so it is the same object
# dnspython would build (test_dnswire compares them); everything else goes
# through dnspython.
_IN = dns.rdataclass.IN
_A = dns.rdtypes.IN.A.A
_AAAA = dns.rdtypes.IN.AAAA.AAAA
_TXT = dns.rdtypes.ANY.TXT.TXT


def _rdata(wire: bytes, rdtype: int, offset: int, length: int) -> dns.rdata.Rdata:
    if rdtype == 1 and length == 4:
        return _built(_A, dns.rdatatype.A, address=".".join(map(str, wire[offset:offset + 4])))
    if rdtype == 28 and length == 16:
        return _built(_AAAA, dns.rdatatype.AAAA,
                      address=dns.ipv6.inet_ntoa(wire[offset:offset + 16]))
    if rdtype == 16 and length:
        strings = []
        pos, end = offset, offset + length
        while pos < end:
            count = wire[pos]
            if pos + 1 + count > end:
                raise MalformedMessage("TXT string runs past its record")
            strings.append(wire[pos + 1:pos + 1 + count])
            pos += 1 + count
        return _built(_TXT, dns.rdatatype.TXT, strings=tuple(strings))
    # Other types, and A/AAAA of the wrong size or an empty TXT (dnspython refuses those).
    return dns.rdata.from_wire(_IN, dns.rdatatype.RdataType(rdtype), wire, offset, length)


def _built(cls: type, rdtype: dns.rdatatype.RdataType, **fields) -> dns.rdata.Rdata:
    rdata = cls.__new__(cls)
    rdata.__setstate__({"rdclass": _IN, "rdtype": rdtype, "rdcomment": None, **fields})
    return rdata
