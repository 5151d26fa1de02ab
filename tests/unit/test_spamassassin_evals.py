"""SpamAssassin eval: tests computed natively (evals.py): each on a message built here
that should fire it and one that should not, the date parser against known times, the
rule parser's eval rule kind, and the check running them for its metas."""

from __future__ import annotations

import calendar

import pytest

from smtpproxy.common import config
from smtpproxy.scan.message import parse
from smtpproxy.scan.spamassassin import evals
from smtpproxy.scan.spamassassin.check import SpamAssassinCheck, _Texts
from smtpproxy.scan.spamassassin.rules import load_text

FREEMAIL = evals.Freemail({"gmail.com", "yahoo.com"}, {"mail*.example"}, {"friend@yahoo.com"})


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
