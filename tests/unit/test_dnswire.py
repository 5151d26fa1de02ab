"""The resolver's wire codec (common/dnswire.py) against dnspython's reading of the same messages.

Labelled answers are built with dnspython, read by ``parse_response`` and
compared with what dnspython's own resolve_chaining makes of them; messages
that are not an answer to the question, or are cut short or looped, are
checked to be ignored or refused, never to raise anything else.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from smtpproxy.common.dnswire import (
    MalformedMessage,
    make_query,
    name_wire,
    parse_response,
    read_name,
)

SOA = ("example.test.", 120, "IN", "SOA", "ns.example.test. host.example.test. 1 3600 600 86400 30")


def response(qname: str, rdtype: str, rcode: str = "NOERROR", answer=(), authority=(),
             msg_id: int = 4242) -> bytes:
    query = dns.message.make_query(qname, rdtype, use_edns=0)
    query.id = msg_id
    msg = dns.message.make_response(query)
    msg.set_rcode(dns.rcode.from_text(rcode))
    for spec in answer:
        msg.answer.append(dns.rrset.from_text(*spec))
    for spec in authority:
        msg.authority.append(dns.rrset.from_text(*spec))
    return msg.to_wire()


def parse(wire: bytes, qname: str, rdtype: str, msg_id: int = 4242):
    return parse_response(wire, msg_id, name_wire(qname), int(dns.rdatatype.from_text(rdtype)))


CASES = [
    ("a record", "a.example.test.", "A", "NOERROR",
     [("a.example.test.", 300, "IN", "A", "192.0.2.1", "192.0.2.2")], []),
    ("aaaa record", "a.example.test.", "AAAA", "NOERROR",
     [("a.example.test.", 60, "IN", "AAAA", "2001:db8::1")], []),
    ("mx with compressed exchange", "example.test.", "MX", "NOERROR",
     [("example.test.", 300, "IN", "MX", "10 mx.example.test.", "5 mx2.example.test.")], []),
    ("txt of several strings", "example.test.", "TXT", "NOERROR",
     [("example.test.", 300, "IN", "TXT", '"v=spf1 " "-all"', '"other"')], []),
    ("cname chain, the lower ttl wins", "www.example.test.", "A", "NOERROR",
     [("www.example.test.", 40, "IN", "CNAME", "web.example.test."),
      ("web.example.test.", 300, "IN", "A", "192.0.2.9")], []),
    ("records of other names are not the answer", "a.example.test.", "A", "NOERROR",
     [("b.example.test.", 300, "IN", "A", "192.0.2.3"), ("a.example.test.", 300, "IN", "A", "192.0.2.4")], []),
    ("nodata with soa", "a.example.test.", "MX", "NOERROR", [], [SOA]),
    ("nxdomain with soa", "nope.example.test.", "A", "NXDOMAIN", [], [SOA]),
    ("nxdomain after a cname", "www.example.test.", "A", "NXDOMAIN",
     [("www.example.test.", 20, "IN", "CNAME", "gone.example.test.")], [SOA]),
    ("nxdomain without soa", "nope.example.test.", "A", "NXDOMAIN", [], []),
    ("ptr", "1.2.0.192.in-addr.arpa.", "PTR", "NOERROR",
     [("1.2.0.192.in-addr.arpa.", 300, "IN", "PTR", "host.example.test.")], []),
]


@pytest.mark.parametrize("label, qname, rdtype, rcode, answer, authority", CASES)
def test_reads_what_dnspython_reads(label, qname, rdtype, rcode, answer, authority):
    wire = response(qname, rdtype, rcode, answer, authority)
    ours = parse(wire, qname, rdtype)
    theirs = dns.message.from_wire(wire).resolve_chaining()
    assert ours.rcode == dns.rcode.from_text(rcode), label
    assert not ours.truncated
    if rcode == "NOERROR" and theirs.answer is not None:
        assert sorted(r.to_text() for r in ours.rdatas) == sorted(r.to_text() for r in theirs.answer), label
        assert ours.ttl == theirs.minimum_ttl, label
        assert ours.negative_ttl is None
    else:
        assert ours.rdatas == (), label
        # dnspython's minimum_ttl for a negative answer: the SOA's TTL and minimum, the CNAMEs'.
        assert ours.negative_ttl == theirs.minimum_ttl, label


@pytest.mark.parametrize("label, mutate", [
    ("another id", lambda w: (w[0] ^ 1).to_bytes(1, "big") + w[1:]),
    ("not a response (QR clear)", lambda w: w[:2] + bytes((w[2] & 0x7F,)) + w[3:]),
    ("another opcode", lambda w: w[:2] + bytes((w[2] | 0x10,)) + w[3:]),
    ("shorter than a header", lambda w: w[:11]),
])
def test_not_an_answer_to_us_is_none(label, mutate):
    wire = response("a.example.test.", "A", answer=[("a.example.test.", 300, "IN", "A", "192.0.2.1")])
    assert parse(mutate(wire), "a.example.test.", "A") is None, label


@pytest.mark.parametrize("label, qname, rdtype", [
    ("another name", "b.example.test.", "A"),
    ("another type", "a.example.test.", "AAAA"),
    ("a longer name", "x.a.example.test.", "A"),
])
def test_an_answer_to_another_question_is_none(label, qname, rdtype):
    wire = response("a.example.test.", "A", answer=[("a.example.test.", 300, "IN", "A", "192.0.2.1")])
    assert parse(wire, qname, rdtype) is None, label


def test_question_case_does_not_matter():
    wire = response("A.Example.TEST.", "A", answer=[("A.Example.TEST.", 300, "IN", "A", "192.0.2.1")])
    assert [r.address for r in parse(wire, "a.example.test.", "A").rdatas] == ["192.0.2.1"]


def test_truncated_and_error_rcodes_carry_no_records():
    query = dns.message.make_query("a.example.test.", "TXT")
    query.id = 4242
    msg = dns.message.make_response(query)
    msg.flags |= dns.flags.TC
    assert parse(msg.to_wire(), "a.example.test.", "TXT").truncated
    msg.flags &= ~dns.flags.TC
    msg.set_rcode(dns.rcode.SERVFAIL)
    parsed = parse(msg.to_wire(), "a.example.test.", "TXT")
    assert (parsed.rcode, parsed.rdatas) == (dns.rcode.SERVFAIL, ())


def test_every_prefix_is_ignored_or_refused():
    # A datagram cut anywhere: None (not ours) or MalformedMessage, nothing else.
    wire = response("www.example.test.", "A", answer=[
        ("www.example.test.", 40, "IN", "CNAME", "web.example.test."),
        ("web.example.test.", 300, "IN", "A", "192.0.2.9")], authority=[SOA])
    outcomes = set()
    for cut in range(len(wire)):
        try:
            parsed = parse(wire[:cut], "www.example.test.", "A")
            outcomes.add("ignored" if parsed is None else "read")
        except MalformedMessage:
            outcomes.add("refused")
    # Cut in the header or question: not ours; in the records: refused; after
    # the answer section (the SOA is not needed): read.
    assert outcomes == {"ignored", "refused", "read"}
    assert parse(wire, "www.example.test.", "A").rdatas


@pytest.mark.parametrize("label, tail", [
    ("pointer to itself", b"\xc0\x20"),
    ("pointer forwards", b"\xc0\x40"),
    ("label type 0x40", b"\x41a\x00"),
])
def test_bad_names_are_refused(label, tail):
    # The question, then one answer record whose owner is the bad name.
    qname = name_wire("a.example.test.")
    header = bytes.fromhex("10928180000100010000 0000".replace(" ", ""))
    question = qname + b"\x00\x01\x00\x01"
    assert 12 + len(question) == 0x20
    wire = header + question + tail + b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01"
    with pytest.raises(MalformedMessage):
        parse(wire, "a.example.test.", "A", msg_id=0x1092)


def test_names_are_bounded():
    long_label = b"\x3f" + b"a" * 63
    with pytest.raises(MalformedMessage):
        read_name(long_label * 5 + b"\x00", 0)  # 320 octets


def test_query_is_what_dnspython_reads():
    wire = make_query(0x1234, name_wire("Mail.Example.TEST."), 16, 1232)
    msg = dns.message.from_wire(wire)
    assert msg.id == 0x1234 and msg.flags & dns.flags.RD and not msg.flags & dns.flags.QR
    assert msg.question[0].name == dns.name.from_text("mail.example.test.")
    assert msg.question[0].rdtype == dns.rdatatype.TXT
    assert (msg.edns, msg.payload) == (0, 1232)


@pytest.mark.parametrize("text, wire", [
    ("example.test.", b"\x07example\x04test\x00"),
    ("EXAMPLE.test.", b"\x07example\x04test\x00"),
    (".", b"\x00"),
])
def test_name_wire(text, wire):
    assert name_wire(text) == wire


@pytest.mark.parametrize("rdtype, text", [
    ("A", "192.0.2.1"),
    ("A", "0.0.0.0"),
    ("AAAA", "2001:db8::1"),
    ("AAAA", "::ffff:192.0.2.1"),
    ("AAAA", "::"),
    ("TXT", '"v=spf1 " "-all"'),
    ("TXT", '""'),
    ("TXT", '"' + "x" * 255 + '" "y"'),
    ("TXT", '"\\000\\255 binary"'),
])
def test_records_built_here_equal_dnspythons(rdtype, text):
    wire = response("a.example.test.", rdtype, answer=[("a.example.test.", 300, "IN", rdtype, text)])
    (ours,) = parse(wire, "a.example.test.", rdtype).rdatas
    (theirs,) = dns.message.from_wire(wire).answer[0]
    assert type(ours) is type(theirs)
    assert ours == theirs and hash(ours) == hash(theirs)
    assert ours.to_text() == theirs.to_text() and ours.to_wire() == theirs.to_wire()


@pytest.mark.parametrize("label, rdtype, rdata", [
    ("A of three octets", 1, b"\xc0\x00\x02"),
    ("AAAA of four octets", 28, b"\xc0\x00\x02\x01"),
    ("TXT string longer than its record", 16, b"\x05abc"),
    ("empty TXT", 16, b""),
])
def test_bad_record_data_is_refused(label, rdtype, rdata):
    qname = name_wire("a.example.test.")
    header = bytes.fromhex("109281800001000100000000")
    question = qname + rdtype.to_bytes(2, "big") + b"\x00\x01"
    record = b"\xc0\x0c" + rdtype.to_bytes(2, "big") + b"\x00\x01\x00\x00\x00\x3c"
    wire = header + question + record + len(rdata).to_bytes(2, "big") + rdata
    with pytest.raises(MalformedMessage):
        parse_response(wire, 0x1092, qname, rdtype)
