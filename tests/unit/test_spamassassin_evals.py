"""SpamAssassin eval: tests computed natively (evals.py): each on a message built here
that should fire it and one that should not, the date parser against known times, the
rule parser's eval rule kind, and the check running them for its metas."""

from __future__ import annotations

import calendar

import pytest

from smtpproxy.common import config
from smtpproxy.scan.message import parse
from smtpproxy.scan.spamassassin import evals, evals_html, relays
from smtpproxy.scan.spamassassin.check import SpamAssassinCheck, _Texts
from smtpproxy.scan.spamassassin.rules import load_text
from smtpproxy.transaction import ClientInfo

FREEMAIL = evals.Freemail({"gmail.com", "yahoo.com"}, {"mail*.example"}, {"friend@yahoo.com"},
                          {"com", "org", "net", "example"})


def message(headers: str, body: str = "hello\n", mail_from: str = "") -> evals.EvalInput:
    msg = parse((headers.strip("\n") + "\n\n" + body).encode())
    return evals.EvalInput(msg, _Texts(msg, mail_from, 1 << 20).header_values, FREEMAIL)


def run(ev: evals.EvalInput, fn: str, *args: str) -> bool:
    return evals.run(ev, fn, args)


# ------------------------------------------------------------------ dates

def test_rfc822_dates_parse_as_spamassassin_reads_them():
    utc = calendar.timegm
    assert evals.parse_rfc822_date("Thu, 19 Sep 2002 03:14:18 +0100") == utc((2002, 9, 19, 2, 14, 18))
    assert evals.parse_rfc822_date("19 Sep 2002 03:14:18 EST") == utc((2002, 9, 19, 8, 14, 18))
    # ctime order (its time goes with the date, as in Util.pm), two-digit years, an
    # unknown zone as -0000, a day past the month's end
    assert evals.parse_rfc822_date("Thu Sep 19 03:14:18 2002") == utc((2002, 9, 19, 0, 0, 0))
    assert evals.parse_rfc822_date("19 Sep 02 03:14 XYZ") == utc((2002, 9, 19, 3, 14, 0))
    assert evals.parse_rfc822_date("31 Feb 2003 10:00:00 +0000") == utc((2003, 3, 1, 10, 0, 0))
    assert evals.parse_rfc822_date("yesterday, around noon") is None


RECEIVED = ("Received: from mx.example.org (mx.example.org [192.0.2.7])\n"
            "\tby mail.example.net with ESMTP id 1A2B; Thu, 19 Sep 2002 10:00:00\n"
            "    +0000\n")


@pytest.mark.parametrize("date, window, fires", [
    ("Thu, 19 Sep 2002 18:00:00 +0000", ("6", "12"), True),   # 8 hours ahead
    ("Thu, 19 Sep 2002 18:00:00 +0000", ("3", "6"), False),
    ("Thu, 19 Sep 2002 11:00:00 +0000", ("-6", "-3"), False),  # within the hour
    ("Sun, 01 Sep 2002 10:00:00 +0000", ("undef", "-96"), True),  # 18 days behind
    ("Thu, 19 Sep 2002 18:00:00 +0800", ("-6", "-3"), False),  # same instant, other zone
])
def test_shifted_date_compares_date_with_the_folded_received_time(date, window, fires):
    assert run(message(RECEIVED + f"Date: {date}\n"), "check_for_shifted_date", *window) is fires


def test_shifted_date_needs_both_times():
    assert not run(message("Date: Thu, 19 Sep 2002 18:00:00 +0000\n"), "check_for_shifted_date", "6", "12")
    assert not run(message(RECEIVED), "check_for_shifted_date", "undef", "-96")


# ------------------------------------------------------------------ Message-ID

def _outlook_id(when: int) -> str:
    token = int(when * 0.0023283064365387 + 27111902.8329849)
    return f"<0000{token:08x}$0123abcd$89abcdef@pc>"


def test_outlook_message_id_far_from_the_date_fires():
    date = "Thu, 19 Sep 2002 10:00:00 +0000"
    sent = calendar.timegm((2002, 9, 19, 10, 0, 0))
    consistent = message(RECEIVED + f"Date: {date}\nMessage-ID: {_outlook_id(sent)}\n")
    assert not run(consistent, "check_outlook_message_id")
    forged = message(RECEIVED + f"Date: {date}\nMessage-ID: {_outlook_id(sent - 86400 * 30)}\n")
    assert run(forged, "check_outlook_message_id")
    other = message(RECEIVED + f"Date: {date}\nMessage-ID: <1234@example.org>\n")
    assert not run(other, "check_outlook_message_id")


def test_received_removers():
    assert run(message("Subject: x\n"), "gated_through_received_hdr_remover")  # no Received at all
    assert not run(message(RECEIVED), "gated_through_received_hdr_remover")
    msn = "Received: from groups.msn.com (tk2dcpuba01.msn.com [65.54.195.22]) by x.example; Thu, 19 Sep 2002\n"
    assert run(message(msn), "gated_through_received_hdr_remover")
    lyris = RECEIVED + "List-Unsubscribe: <mailto:leave-list-123@lists.example>\n"
    assert run(message(lyris), "check_messageid_not_usable")
    assert not run(message(RECEIVED), "check_messageid_not_usable")


# ------------------------------------------------------------------ recipients, To, Subject

def test_similar_and_sorted_recipients():
    similar = "To: " + ", ".join(f"ab{i}@mail{i}.example" for i in range(7)) + "\n"
    assert run(message(similar), "similar_recipients", "0.65", "undef")
    assert run(message(similar), "sorted_recipients")
    varied = "To: alice@one.example, bob@two.example, carol@three.example, dave@four.example, " \
             "erin@five.example, frank@six.example, zed@seven.example, amy@eight.example\n"
    assert not run(message(varied), "similar_recipients", "0.65", "undef")
    assert not run(message(varied), "sorted_recipients")
    few = "To: ab1@x.example, ab2@x.example\n"  # fewer than five: not measured
    assert not run(message(few), "similar_recipients", "0.1", "undef")


def test_missing_to_header():
    assert run(message("From: a@example.org\n"), "check_for_missing_to_header")
    assert not run(message("To: \n"), "check_for_missing_to_header")  # present, even empty
    assert not run(message("Apparently-To: bob@example.net\n"), "check_for_missing_to_header")


def test_subject_all_caps():
    assert run(message("Subject: Re: BUY CHEAP WATCHES NOW!!\n"), "subject_is_all_caps")
    assert not run(message("Subject: Buy cheap watches now\n"), "subject_is_all_caps")
    assert not run(message("Subject: SHORT ONE\n"), "subject_is_all_caps")  # under 10 characters
    assert not run(message("Subject: ONEVERYLONGWORD\n"), "subject_is_all_caps")
    # Charsets that often come out as capitals are left alone.
    assert not run(message("Subject: =?koi8-r?Q?HELLO_THERE_FRIEND?=\n"), "subject_is_all_caps")


# ------------------------------------------------------------------ MIME structure

MULTIPART = ("MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=b\n",
             "--b\nContent-Type: text/plain\n\nhi\n--b\nContent-Type: text/html\n\n<p>hi</p>\n--b--\n")


def test_html_only_and_any_html():
    html_only = message("Content-Type: text/html\n", "<p>hi</p>\n")
    assert run(html_only, "check_for_mime_html_only") and run(html_only, "check_for_mime_html")
    both = message(*MULTIPART)
    assert not run(both, "check_for_mime_html_only") and run(both, "check_for_mime_html")
    plain = message("Subject: x\n")
    assert not run(plain, "check_for_mime_html_only") and not run(plain, "check_for_mime_html")


# ------------------------------------------------------------------ freemail

def test_freemail_header_and_from():
    assert run(message("Reply-To: Joe <joe77@gmail.com>\n"), "check_freemail_header", "Reply-To", r"\d@")
    assert not run(message("Reply-To: joe@gmail.com\n"), "check_freemail_header", "Reply-To", r"\d@")
    assert run(message("Reply-To: joe@mailbox.example\n"), "check_freemail_header", "Reply-To")  # wildcard
    assert not run(message("Reply-To: joe@mail.box.example\n"), "check_freemail_header", "Reply-To")
    assert not run(message("Reply-To: support@gmail.com\n"), "check_freemail_header", "Reply-To")  # role
    assert not run(message("Reply-To: friend@yahoo.com\n"), "check_freemail_header", "Reply-To")  # listed
    assert run(message("From: x@example.org\n", mail_from="joe@yahoo.com"), "check_freemail_from")
    assert not run(message("From: x@example.org\n"), "check_freemail_from")
    assert not run(message("From: joe@gmail.com\n"), "check_freemail_header", "Reply-To")


# ------------------------------------------------------------------ rules and the check

def test_eval_rules_parse_into_their_own_kind():
    rs = load_text("header A eval:check_for_shifted_date('-6', '-3')\n"
                   "header B eval:check_outlook_message_id()\n"
                   "header C eval:check_rbl('x', 'zen.example.')\n"
                   "header D eval:similar_recipients('0.65','undef')\n"
                   "freemail_domains gmail.com mail*.example\n")
    assert (rs.rules["A"].kind, rs.rules["A"].text, rs.rules["A"].args) == \
        ("eval", "check_for_shifted_date", ("-6", "-3"))
    assert rs.rules["B"].args == () and rs.rules["D"].args == ("0.65", "undef")
    assert rs.skipped["C"] == "eval:check_rbl" and rs.evals["check_rbl"] == 1
    assert rs.evals_run == {"check_for_shifted_date": 1, "check_outlook_message_id": 1,
                            "similar_recipients": 1}
    assert rs.freemail_domains == {"gmail.com"} and rs.freemail_wildcards == {"mail*.example"}
    assert "freemail_domains" not in rs.ignored


LOCAL_CF = r"""
freemail_domains gmail.com
header   __LOCAL_FREEMAIL_RT  eval:check_freemail_header('Reply-To')
header   LOCAL_FUTURE         eval:check_for_shifted_date('6', '12')
score    LOCAL_FUTURE         2.0
header   LOCAL_SUBJ           Subject =~ /prize/i
meta     LOCAL_FREEMAIL_PRIZE __LOCAL_FREEMAIL_RT && LOCAL_SUBJ
score    LOCAL_FREEMAIL_PRIZE 3.0
meta     LOCAL_NOT_FUTURE     LOCAL_SUBJ && !LOCAL_FUTURE
score    LOCAL_NOT_FUTURE     1.0
"""


def test_the_check_runs_evals_and_feeds_metas(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10_local.cf").write_text(LOCAL_CF)
    cfg = config.load(None, {"state_dir": str(tmp_path / "state"), "scan.spamassassin.enabled": True,
                             "scan.spamassassin.rules_dirs": [str(rules)],
                             "scan.spamassassin.local_cf": str(tmp_path / "none.cf")})
    check = SpamAssassinCheck(cfg, use_hyperscan=False)
    assert not check.partial_metas  # every input is computed
    spam = parse((RECEIVED + "Date: Thu, 19 Sep 2002 18:00:00 +0000\nSubject: Claim your prize\n"
                  "Reply-To: winner@gmail.com\n\nhi\n").encode())
    assert {h.symbol for h in check.scan(spam)} == {"LOCAL_FUTURE", "LOCAL_SUBJ", "LOCAL_FREEMAIL_PRIZE"}
    ham = parse((RECEIVED + "Date: Thu, 19 Sep 2002 10:05:00 +0000\nSubject: Claim your prize\n"
                 "Reply-To: winner@example.org\n\nhi\n").encode())
    assert {h.symbol for h in check.scan(ham)} == {"LOCAL_SUBJ", "LOCAL_NOT_FUTURE"}
    assert any(line.endswith("eval tests run by function: check_freemail_header 1, "
                             "check_for_shifted_date 1") for line in check.report())


def test_hostile_values_do_not_raise():
    ev = message("Date: 99999999 Jan 99999 99:99:99 +9999\n" + RECEIVED
                 + "Message-ID: <0000ffffffff$ffffffff$ffffffff@x>\nTo: @, 0, @@@, a@\n")
    for fn, args in (("check_for_shifted_date", ("undef", "undef")), ("check_outlook_message_id", ()),
                     ("similar_recipients", ("0", "undef")), ("sorted_recipients", ())):
        assert run(ev, fn, *args) in (True, False)
    assert not run(ev, "check_freemail_header", "To", "(unbalanced")


# ------------------------------------------------------------------ relays (Received chain)

POSTFIX = ("from mail.example.org (mail.example.org [203.0.113.5]) by mx.example.net (Postfix) "
           "with ESMTP id 4F2A1C; Thu, 19 Sep 2002 10:00:00 +0000 (UTC)")
POSTFIX_NO_RDNS = ("from yahoo.com (unknown [198.51.100.7]) by mx.example.net (Postfix) with SMTP "
                   "id 99ZZ; Thu, 19 Sep 2002 10:00:00 +0000")
LOCAL = ("from localhost (localhost [127.0.0.1]) by mx.example.net (Postfix) with ESMTP id 1AB; "
         "Thu, 19 Sep 2002 10:00:05 +0000")  # ids under 3 characters are not kept


def test_received_fields_parse_as_spamassassin_parses_them():
    r = relays.parse_received(POSTFIX)
    assert isinstance(r, relays.Relay)
    assert (r.ip, r.rdns, r.helo, r.by, r.id) == ("203.0.113.5", "mail.example.org", "mail.example.org",
                                                  "mx.example.net", "4F2A1C")
    r = relays.parse_received(POSTFIX_NO_RDNS)
    assert (r.ip, r.rdns, r.helo, r.no_reverse_dns) == ("198.51.100.7", "", "yahoo.com", True)
    sendmail = ("from pc1 (IDENT:joe@dsl.example.com [198.51.100.9]) by relay.example.org "
                "(8.11.6/8.11.6) with ESMTP id g8J2EHC32519; Thu, 19 Sep 2002 03:14:18 +0100")
    r = relays.parse_received(sendmail)
    assert (r.ip, r.rdns, r.helo, r.ident, r.by) == ("198.51.100.9", "dsl.example.com", "pc1", "joe",
                                                     "relay.example.org")
    exim = ("from [61.174.163.26] (helo=host) by list.example.net with smtp (Exim 3.31 #1 (Debian)) "
            "id 18t2z0-0001NX-00 for <x@example.net>; Wed, 12 Mar 2003 01:57:10 -0800")
    r = relays.parse_received(exim)
    assert (r.ip, r.helo, r.by, r.id) == ("61.174.163.26", "host", "list.example.net", "18t2z0-0001NX-00")
    assert relays.parse_received("from x.example.org (x.example.org [192.0.2.8]) by y.example.org "
                                 "with ESMTPSA id 1; Thu, 19 Sep 2002 10:00:00 +0000").auth == "ESMTPSA"
    # Not a handover between hosts; not parseable; a mail fetcher.
    assert relays.parse_received("(qmail 27981 invoked by uid 225); 14 Mar 2003 07:24:34 -0000") == relays.SKIP
    assert relays.parse_received("from somewhere over the rainbow") is None
    assert relays.parse_received("from pop.example.com [192.0.2.1] by localhost with POP3 "
                                 "(fetchmail-5.9.0) for x@localhost") == relays.FETCHER


def test_trust_ends_at_the_first_public_relay():
    chain = relays.relays([LOCAL, POSTFIX, POSTFIX_NO_RDNS, "from nowhere at all"],
                          originating=["[192.0.2.77]"])
    assert [r.ip for r in chain.trusted] == ["127.0.0.1"] == [r.ip for r in chain.internal]
    assert [r.ip for r in chain.untrusted] == ["203.0.113.5", "198.51.100.7", "192.0.2.77"]
    assert chain.unparseable == 1
    assert chain.header("X-Spam-Relays-Untrusted").startswith(
        "[ ip=203.0.113.5 rdns=mail.example.org helo=mail.example.org by=mx.example.net ident= "
        "envfrom= intl=0 id=4F2A1C auth= msa=0 ] [ ip=198.51.100.7 rdns= helo=yahoo.com")
    assert chain.header("X-Spam-Relays-Trusted").endswith(" intl=1 id=1AB auth= msa=0 ]")
    # An authenticated submission extends trust past a public address.
    auth = "from pc (pc.example.org [192.0.2.8]) by smtp.example.org with ESMTPSA id 7; Thu, 19 Sep 2002"
    assert [r.ip for r in relays.relays([auth, POSTFIX]).trusted] == ["192.0.2.8"]


def test_the_xforward_client_comes_first_unless_a_field_names_it():
    client = relays.Relay(ip="198.51.100.20", rdns="", helo="mx.example.com", no_reverse_dns=True)
    chain = relays.relays([POSTFIX], client=client)
    assert [r.ip for r in chain.untrusted] == ["198.51.100.20", "203.0.113.5"]
    postfix_added = relays.Relay(ip="203.0.113.5", rdns="mail.example.org", helo="mail.example.org")
    assert [r.ip for r in relays.relays([POSTFIX], client=postfix_added).untrusted] == ["203.0.113.5"]
    # Named further down (the site's own hops above it): the chain as it is.
    chain = relays.relays([LOCAL, POSTFIX], client=postfix_added)
    assert [r.ip for r in chain.trusted] == ["127.0.0.1"] and [r.ip for r in chain.untrusted] == ["203.0.113.5"]


def test_relay_evals():
    assert run(message(f"Received: {LOCAL}\n"), "check_all_trusted")
    assert not run(message(f"Received: {LOCAL}\nReceived: {POSTFIX}\n"), "check_all_trusted")
    assert run(message("Subject: x\n"), "check_no_relays")
    assert run(message("Received: from somewhere over the rainbow\n"), "check_relays_unparseable")
    # A big-dotcom HELO from a host the MTA found no rDNS for.
    assert run(message(f"Received: {POSTFIX_NO_RDNS}\n"), "check_for_no_rdns_dotcom_helo")
    assert not run(message(f"Received: {POSTFIX}\n"), "check_for_no_rdns_dotcom_helo")
    numeric = "Received: from 203.0.113.99 (unknown [198.51.100.7]) by mx (Postfix) with SMTP id 9\n"
    assert run(message(numeric), "helo_ip_mismatch") and run(message(numeric), "check_for_numeric_helo")
    same = "Received: from 198.51.100.8 (unknown [198.51.100.7]) by mx (Postfix) with SMTP id 9\n"
    assert not run(message(same), "helo_ip_mismatch") and run(message(same), "check_for_numeric_helo")
    assert not run(message(f"Received: {POSTFIX}\n"), "helo_ip_mismatch")


def test_forged_yahoo_received():
    forged = message(f"From: joe@yahoo.com\nReceived: {POSTFIX}\n")
    assert run(forged, "check_for_forged_yahoo_received_headers")
    real = message("From: joe@yahoo.com\nReceived: from web12.mail.yahoo.com (web12.mail.yahoo.com "
                   "[216.136.173.5]) by mx.example.net (Postfix) with SMTP id 7; Thu, 19 Sep 2002\n")
    assert not run(real, "check_for_forged_yahoo_received_headers")  # Yahoo's rDNS handed it over
    assert not run(message(f"From: joe@example.org\nReceived: {POSTFIX}\n"),
                   "check_for_forged_yahoo_received_headers")


def test_freemail_replyto():
    both = "From: joe@gmail.com\nReply-To: jane@yahoo.com\n"
    assert run(message(both), "check_freemail_replyto", "replyto")
    assert not run(message("From: joe@gmail.com\nReply-To: joe@gmail.com\n"), "check_freemail_replyto",
                   "replyto")
    # A freemail Reply-To other than the freemail address the body gives.
    body = "Write to winner77@gmail.com today.\n"
    assert run(message("From: a@example.org\nReply-To: jane@yahoo.com\n", body), "check_freemail_replyto",
               "replyto")
    assert not run(message("From: a@example.org\nReply-To: jane@yahoo.com\n"), "check_freemail_replyto",
                   "replyto")
    # From a bulk or bounce envelope sender: not a sign.
    assert not run(message(both, mail_from="bounce-123@lists.example.org"), "check_freemail_replyto", "replyto")
    # "reply": no Reply-To, From freemail, the body asks to write elsewhere.
    assert run(message("From: joe@gmail.com\n", body), "check_freemail_replyto", "reply")


def test_relay_header_rules_see_the_xforward_client(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10_local.cf").write_text("header LOCAL_RDNS_NONE X-Spam-Relays-Untrusted =~ /^[^\\]]+ rdns= /\n"
                                       "score LOCAL_RDNS_NONE 1.0\n")
    cfg = config.load(None, {"state_dir": str(tmp_path / "state"), "scan.spamassassin.enabled": True,
                             "scan.spamassassin.rules_dirs": [str(rules)],
                             "scan.spamassassin.local_cf": str(tmp_path / "none.cf")})
    check = SpamAssassinCheck(cfg, use_hyperscan=False)
    msg = parse(b"From: a@example.org\nSubject: hi\n\nhello\n")
    unknown = ClientInfo(name="unknown", addr="198.51.100.7", helo="pc")
    assert {h.symbol for h in check.scan(msg, "", unknown)} == {"LOCAL_RDNS_NONE"}
    named = ClientInfo(name="mail.example.org", addr="203.0.113.5", helo="mail.example.org")
    assert check.scan(msg, "", named) == []


# ------------------------------------------------------------------ HTML statistics

HTML = ('<!DOCTYPE html><html><head><title>Cheap meds</title><style>p {x: "<b>"}</style></head>'
        '<body><!-- saved from url=(0022)http://x.example/ --><a href="http://x.example/">'
        '<img src="cid:1"></a> hi</b></body></html>')


def test_html_statistics_as_spamassassins_parser_records_them():
    st = evals_html.html_stats(HTML)
    assert {"html", "head", "title", "style", "body", "a", "img", "!doctype"} <= set(st.inside)
    assert "b" in st.inside and st.closed_extra == 1  # a close without an open
    assert "p" not in st.inside  # style content is not markup
    assert st.anchor == ["<img>\n"] and st.title == ["Cheap meds"]
    assert st.comment == ["<!-- saved from url=(0022)http://x.example/ -->"]
    assert st.length == len(HTML)


def test_html_evals():
    html = message("Content-Type: text/html\n", HTML)
    plain = message("Subject: x\n", "<img> is not markup here\n")
    assert run(html, "html_test", "html") and not run(plain, "html_test", "html")
    assert run(html, "html_tag_exists", "style") and not run(html, "html_tag_exists", "center")
    assert run(html, "html_image_only", "0100", "0400") and not run(html, "html_image_only", "0400", "0800")
    assert run(html, "html_range", "length", "0", "1024") and not run(html, "html_range", "length", "1024", "inf")
    assert run(html, "html_text_match", "anchor", "<img>")
    assert run(html, "html_text_match", "comment", r"<!-- saved from url=\(\d{4}\)")
    assert not run(html, "html_text_match", "title", ".{120}")
    # Statistics not computed here keep their rules skipped.
    assert evals.supported("html_range", ("length", "0", "1")) and not evals.supported(
        "html_range", ("obfuscation_ratio", ".05", ".1"))
    assert not evals.supported("html_test", ("font_low_contrast",))


def test_registered_domains_and_the_envelope_sender_matching_the_relay():
    two, three = frozenset({"co.uk"}), frozenset({"act.edu.au"})
    assert evals.registered_domain("mail.example.co.uk", two, three) == "example.co.uk"
    assert evals.registered_domain("a.b.example.com", two, three) == "example.com"
    assert evals.registered_domain("x.y.act.edu.au", two, three) == "y.act.edu.au"
    assert evals.registered_domain("mail.www.city.ca.us", two, three) == "www.city.ca.us"  # <any>.<state>.us
    fm = evals.Freemail(set(), set(), set(), set(), {"co.uk"}, set())
    received = "Received: from mx (out.mail.example.co.uk [203.0.113.5]) by mx.example.net (Postfix) with ESMTP id 4F2A\n"

    def ev(mail_from: str) -> evals.EvalInput:
        msg = parse((received + "\nhi\n").encode())
        return evals.EvalInput(msg, _Texts(msg, mail_from, 1 << 20).header_values, fm)

    assert run(ev("bounce@news.example.co.uk"), "check_mailfrom_matches_rcvd")
    assert not run(ev("joe@other.co.uk"), "check_mailfrom_matches_rcvd")
    assert not run(ev(""), "check_mailfrom_matches_rcvd")


# ------------------------------------------------------------------ SPF, DKIM, DMARC (our checks' facts)

AUTH_HEADERS = "From: Ann <ann@mail.example.org>\nTo: bob@example.net\nSubject: hi\n"


def with_facts(facts: dict, mail_from: str = "bounce@example.org") -> evals.EvalInput:
    msg = parse((AUTH_HEADERS + "\nhello\n").encode())
    return evals.EvalInput(msg, _Texts(msg, mail_from, 1 << 20).header_values, FREEMAIL, facts=facts)


def sig(domain: str, result: str = "pass") -> dict:
    return {"result": result, "domain": domain, "selector": "s", "algorithm": "rsa-sha256", "reason": ""}


def test_spf_results_come_from_our_spf_check():
    ev = with_facts({"spf": {"result": "softfail", "domain": "example.org", "identity": "mailfrom"}})
    assert run(ev, "check_for_spf_softfail")
    assert not run(ev, "check_for_spf_pass") and not run(ev, "check_for_spf_fail")
    # No SPF result (the check was off for this profile): no SPF test fires.
    assert not any(run(with_facts({}), f"check_for_spf_{r}") for r in ("pass", "none", "fail"))


def test_dkim_tests_read_the_signatures():
    ev = with_facts({"dkim": {"signatures": [sig("example.org"), sig("esp.example", "fail")]}})
    assert run(ev, "check_dkim_signed") and run(ev, "check_dkim_signed", "esp.example")
    assert run(ev, "check_dkim_valid") and run(ev, "check_dkim_valid", "*.org")
    assert not run(ev, "check_dkim_valid", "esp.example")
    # The author (From) is mail.example.org: a valid signature by its parent domain counts.
    assert run(ev, "check_dkim_valid_author_sig")
    assert run(ev, "check_dkim_valid_envelopefrom")  # bounce@example.org
    other = with_facts({"dkim": {"signatures": [sig("esp.example")]}})
    assert not run(other, "check_dkim_valid_author_sig") and not run(other, "check_dkim_valid_envelopefrom")
    assert not run(with_facts({"dkim": {"signatures": []}}), "check_dkim_signed")


@pytest.mark.parametrize("dmarc,fires", [
    ({"result": "pass", "domain": "example.org", "policy": "reject"}, "check_dmarc_pass"),
    ({"result": "fail", "domain": "example.org", "policy": "reject"}, "check_dmarc_reject"),
    ({"result": "fail", "domain": "example.org", "policy": "quarantine"}, "check_dmarc_quarantine"),
    ({"result": "fail", "domain": "example.org", "policy": "none"}, "check_dmarc_none"),
    ({"result": "none", "domain": "example.org", "policy": "", "reason": "no DMARC record"},
     "check_dmarc_missing"),
    ({"result": "temperror", "domain": "example.org", "policy": "", "reason": "DNS timeout"}, None),
    ({"result": "none", "domain": "example.org", "policy": "", "reason": "no resolver"}, None),
])
def test_dmarc_tests_read_the_result(dmarc, fires):
    ev = with_facts({"dmarc": dmarc})
    names = ("check_dmarc_pass", "check_dmarc_reject", "check_dmarc_quarantine", "check_dmarc_none",
             "check_dmarc_missing")
    assert {n for n in names if run(ev, n)} == ({fires} if fires else set())


AUTH_CF = r"""
header   SPF_FAIL          eval:check_for_spf_fail()
score    SPF_FAIL          0.9
full     DKIM_VALID_AU     eval:check_dkim_valid_author_sig()
score    DKIM_VALID_AU     -0.1
meta     LOCAL_FORGED      LOCAL_SUBJ && !DKIM_VALID_AU && SPF_FAIL
score    LOCAL_FORGED      3.0
header   LOCAL_SUBJ        Subject =~ /prize/i
score    LOCAL_SUBJ        0.5
"""


def test_auth_rules_feed_the_metas_but_are_not_scored_twice(tmp_path):
    from tests.unit.test_spamassassin_check import sa_config
    sa = SpamAssassinCheck(sa_config(tmp_path, AUTH_CF), background_compile=False)
    assert "SPF_FAIL" not in sa.symbol_defs() and "DKIM_VALID_AU" not in sa.symbol_defs()
    assert "scored by our SPF" in sa.not_emitted["SPF_FAIL"]
    assert "spf" in sa.after and "dkim" in sa.after and "dmarc" in sa.after
    msg = parse(b"From: ann@example.org\r\nTo: bob@example.net\r\nSubject: your prize\r\n\r\nhi\r\n")
    fail = {"spf": {"result": "fail", "domain": "example.org"}, "dkim": {"signatures": []}}
    assert {h.symbol for h in sa.scan(msg, "ann@example.org", facts=fail)} == {"LOCAL_SUBJ", "LOCAL_FORGED"}
    signed = {**fail, "dkim": {"signatures": [sig("example.org")]}}
    assert {h.symbol for h in sa.scan(msg, "ann@example.org", facts=signed)} == {"LOCAL_SUBJ"}


def test_hostile_address_fields_give_their_bare_addresses():
    from smtpproxy.scan.spamassassin.check import address_pairs
    nested = "Ann <ann@example.org> (" + "(" * 5000 + "x" + ")" * 5000 + "), bob@example.net"
    pairs = address_pairs([nested])  # email.utils recurses once per nested comment
    assert ("", "ann@example.org") in pairs or ("Ann", "ann@example.org") in pairs
    assert address_pairs(["Ann <ann@example.org>, bob@example.net"]) == [
        ("Ann", "ann@example.org"), ("", "bob@example.net")]
    msg = parse(("From: a@example.org\nTo: " + nested + "\nSubject: x\n\nhi\n").encode())
    assert "ann@example.org" in _Texts(msg, "", 1 << 20).header_values("To:addr")
