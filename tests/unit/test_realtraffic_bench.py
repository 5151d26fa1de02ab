"""bench/realtraffic_bench.py: the re-addressed mail and the DNS data that describes its sender."""

from __future__ import annotations

import dkim

from bench.realtraffic_bench import RBL_ZONE, URIBL_ZONE, World, query_kind, readdress

ORIGINAL = (b"From someone@old.example  Thu Aug 22 13:17:22 2002\n"
            b"Return-Path: <someone@old.example>\n"
            b"DKIM-Signature: v=1; d=old.example; s=x;\n b=abc\n"
            b"From: Some One <some.one@old.example>\n"
            b"To: you@example.net\n"
            b"Subject: hello\n"
            b"\n"
            b"see http://www.listed.example/page\n")


def test_readdress_gives_the_message_a_new_sender():
    message, address = readdress(ORIGINAL, "fresh.com")
    assert address == "some.one@fresh.com"
    head = message.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head == [b"Return-Path: <some.one@fresh.com>", b"From: some.one@fresh.com",
                    b"To: you@example.net", b"Subject: hello"]
    assert b"\n" not in message.replace(b"\r\n", b"")


def test_readdress_without_a_usable_local_part():
    _message, address = readdress(b"From: =?utf-8?q?x?= <\"a b\"@old.example>\n\nbody\n", "fresh.com")
    assert address == "sender@fresh.com"


def test_sample_is_signed_by_its_domain_and_described_in_dns():
    world = World()
    sample = world.sender("r0", 0, ORIGINAL, True, 1024, ["listed.example"])
    assert sample is not None and sample.mail_from == "some.one@r0-0.com"
    records = world.records

    def dnsfunc(name, timeout=5):
        return next(v for t, v, *_ in records[name.decode().rstrip(".")] if t == "TXT").encode()

    assert dkim.verify(sample.raw, dnsfunc=dnsfunc)
    assert records["r0-0.com"][0] == ("TXT", "v=spf1 mx include:_spf.r0-0.com -all")
    assert records["_spf.r0-0.com"] == [("TXT", f"v=spf1 ip4:{sample.client_ip} -all")]
    assert records["_dmarc.r0-0.com"][0][1].startswith("v=DMARC1; p=reject")
    reversed_ip = ".".join(reversed(sample.client_ip.split(".")))
    assert records[f"{reversed_ip}.{RBL_ZONE}"] == [("A", "127.0.0.2")]
    assert records[f"listed.example.{URIBL_ZONE}"] == [("A", "127.0.0.2")]
    # The next sender: new domain, new address, a three-level SPF chain.
    other = world.sender("r0", 1, ORIGINAL, False, 1024, [])
    assert other.client_ip != sample.client_ip
    assert records["_spf2.r0-1.com"] == [("TXT", f"v=spf1 ip4:{other.client_ip} -all")]


def test_query_kinds():
    assert [query_kind(name, rtype) for name, rtype in [
        ("r0-1.com.", "TXT"), ("_spf2.r0-1.com.", "TXT"), ("bench._domainkey.r0-1.com.", "TXT"),
        ("_dmarc.r0-1.com.", "TXT"), ("mx.r0-1.com.", "AAAA"), ("2.0.18.198.rbl.bench.test.", "A"),
        ("example.org.uribl.bench.test.", "A"), ("maps.rspamd.com.", "A"),
    ]] == ["spf", "spf", "dkim", "dmarc", "a/mx", "dnsbl", "uribl", "other"]
