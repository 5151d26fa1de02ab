"""The native rules (phishing, redirectors, display names, hidden HTML text, mixed scripts), as tables of labelled messages."""

from __future__ import annotations

import asyncio
import email.header
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpproxy.common.config import Config, ConfigError, ScanConfig
from smtpproxy.scan.checks.base import CheckContext
from smtpproxy.scan.checks.display_names import DisplayNamesCheck
from smtpproxy.scan.checks.html_text import HtmlTextCheck
from smtpproxy.scan.checks.mixed_charset import MixedCharsetCheck, word_badness
from smtpproxy.scan.checks.phishing import PhishingCheck, phishing_weight
from smtpproxy.scan.checks.redirectors import RedirectorsCheck, shipped_redirectors
from smtpproxy.scan.html_doc import MAX_HTML_CHARS, html_doc
from smtpproxy.scan.message import parse
from smtpproxy.scan.urls import split_url
from smtpproxy.transaction import ClientInfo
from tests.support.fuzz import wire_bytes

HEAD = ("From: Shop <news@shop.example>\r\nTo: bob@example.net\r\nSubject: Offers\r\n"
        "Date: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <1@shop.example>\r\n")


def html_message(body: str, head: str = HEAD) -> str:
    return head + "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + body + "\r\n"


def text_message(body: str, head: str = HEAD) -> str:
    return head + "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n"


def context(raw: str, rcpt_tos=("bob@example.net",), facts=None) -> CheckContext:
    return CheckContext(message=parse(raw.encode()), client=ClientInfo(addr="192.0.2.1", helo="mx.shop.example"),
                        mail_from="news@shop.example", rcpt_tos=list(rcpt_tos), profile="inbound",
                        resolver=None, facts=dict(facts or {}))


def run(check, raw: str, **kwargs) -> dict[str, tuple[tuple[str, ...], float]]:
    hits = asyncio.run(check.run(context(raw, **kwargs)))
    return {hit.symbol: (hit.options, round(hit.weight, 2)) for hit in hits}


# ------------------------------------------------------------------ phishing

def link(href: str, text: str) -> str:
    return html_message(f'<p>Dear customer, please <a href="{href}">{text}</a> today.</p>')


PHISHING_CASES = [
    ("shown host differs, unrelated names", link("http://login.evil.example/pp", "https://www.paypal.com/signin"),
     {}, {"PHISHING": (("paypal.com->evil.example",), 0.5)}),
    ("look-alike name weighs almost fully", link("http://paypa1.com/x", "www.paypal.com"), {},
     {"PHISHING": (("paypal.com->paypa1.com",), 0.98)}),
    ("bare host name with a real suffix", link("http://203.0.113.9/login", "paypal.com"), {},
     {"PHISHING": (("paypal.com->203.0.113.9",), 0.5)}),
    ("the same host is fine", link("https://www.paypal.com/a", "https://www.paypal.com/b"), {}, {}),
    ("a subdomain is fine", link("https://click.shop.example/t?1", "shop.example"), {}, {}),
    ("the same name under another suffix weighs nothing", link("http://brand.com/", "brand.co.uk"), {}, {}),
    ("plain words are no host", link("http://shop.example/", "Click here"), {}, {}),
    ("a name without a real suffix is no host", link("http://shop.example/", "john.smith"), {}, {}),
    ("tracker carrying the shown URL is fine",
     link("http://track.mailer.example/c?u=https%3A%2F%2Fwww.shop.example%2Fsale", "https://www.shop.example/sale"),
     {}, {}),
    ("through a known shortener: REDIRECTOR_FALSE", link("https://bit.ly/3abc", "https://www.paypal.com/"), {},
     {"REDIRECTOR_FALSE": (("paypal.com->bit.ly",), 1.0)}),
    ("the sender's own domain with DMARC pass is fine", link("http://links.shop.example/x", "www.brand.example"),
     {"facts": {"dmarc": {"result": "pass", "domain": "shop.example"}}}, {}),
    ("the sender's own domain without DMARC pass is not", link("http://links.shop.example/x", "www.brand.example"),
     {}, {"PHISHING": (("brand.example->shop.example",), 0.5)}),
    ("internationalized look-alike", link("http://xn--pypal-4ve.com/", "www.paypal.com"), {},
     {"PHISHING": (("paypal.com->p\u0430ypal.com",), 1.0)}),
    ("mailto link showing a web address is no pair", link("mailto:a@evil.example", "www.paypal.com"), {}, {}),
    ("undecoded quoted-printable href is no host", link('3D"http://evil.example/', "www.paypal.com"), {}, {}),
    ("zero-width space in a URL host", text_message("Go to http://pay\u200bpal.com/login now"), {},
     {"ZERO_WIDTH_SPACE_URL": (("pay\u200bpal.com",), 1.0)}),
]


@pytest.mark.parametrize("label,raw,kwargs,expected", PHISHING_CASES, ids=[c[0] for c in PHISHING_CASES])
def test_phishing(label, raw, kwargs, expected):
    assert run(PhishingCheck(), raw, **kwargs) == expected


def test_many_long_phished_links_cost_little():
    links = "".join(f'<a href="http://{"b" * 60}{i}.example/">http://{"a" * 60}{i}.example/</a>' for i in range(300))
    started = time.process_time()
    hits = run(PhishingCheck(), html_message(links))
    assert time.process_time() - started < 0.5
    assert hits["PHISHING"][1] == 0.5 and len(hits["PHISHING"][0]) == 5


def test_phishing_weight_follows_rspamd_distance():
    assert phishing_weight("paypal.com", "paypal.com") == 0.0
    assert phishing_weight("paypal-secure.com", "paypal.com") == pytest.approx(0.797, abs=0.01)
    assert phishing_weight("paypa1.com", "paypal.com") == pytest.approx(0.98, abs=0.01)  # one letter swapped
    assert phishing_weight("payypal.com", "paypal.com") == 1.0  # one letter added
    assert phishing_weight("evil.example", "paypal.com") == 0.5
    assert phishing_weight("pаypal.com", "paypal.com") == 1.0  # a Cyrillic a: a look-alike
    assert phishing_weight("раураl.com", "paypal.com") == 1.0  # all but one letter Cyrillic


# ------------------------------------------------------------------ redirectors

REDIRECTOR_CASES = [
    ("a shortener", text_message("See https://bit.ly/3xYz and https://tinyurl.com/abc"), {
        "REDIRECTOR_URL": (("bit.ly", "tinyurl.com"), 1.0)}),
    ("a subdomain of a listed redirector", text_message("http://eur01.safelinks.protection.outlook.com/?url=x"),
     {"REDIRECTOR_URL": (("eur01.safelinks.protection.outlook.com",), 1.0)}),
    ("google redirection", text_message("https://www.google.com/url?q=http://evil.example/"),
     {"HAS_GOOGLE_REDIR": (("www.google.com",), 1.0)}),
    ("google search is no redirection", text_message("https://www.google.com/search?q=smtp"), {}),
    ("googleusercontent proxy", text_message("https://images1-focus-opensocial.googleusercontent.com/proxy/abc"),
     {"HAS_GUC_PROXY_URI": (("images1-focus-opensocial.googleusercontent.com",), 1.0)}),
    ("firebase storage", text_message("https://firebasestorage.googleapis.com/v0/b/x/o/y.html"),
     {"HAS_GOOGLE_FIREBASE_URL": (("firebasestorage.googleapis.com",), 1.0)}),
    ("ipfs gateway with a content id",
     text_message("https://ipfs.io/ipfs/QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG/login.html"),
     {"HAS_IPFS_GATEWAY_URL": (("ipfs.io",), 1.0)}),
    ("an ipfs word without a content id", text_message("https://docs.example/ipfs/intro"), {}),
    ("a plain site", text_message("https://www.shop.example/sale and www.bitly.example"), {}),
]


@pytest.mark.parametrize("label,raw,expected", REDIRECTOR_CASES, ids=[c[0] for c in REDIRECTOR_CASES])
def test_redirectors(label, raw, expected):
    assert run(RedirectorsCheck(), raw) == expected


def test_redirectors_file_overrides_the_shipped_list(tmp_path):
    path = tmp_path / "redirectors"
    path.write_text("# ours\nlinks.example\n")
    check = RedirectorsCheck(Config(scan=ScanConfig(redirectors_file=str(path))))
    assert run(check, text_message("http://go.links.example/a http://bit.ly/b")) == {
        "REDIRECTOR_URL": (("links.example",), 1.0)}


def test_unreadable_redirectors_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="scan.redirectors_file"):
        RedirectorsCheck(Config(scan=ScanConfig(redirectors_file=str(tmp_path / "missing"))))


def test_shipped_redirector_list_is_package_data():
    assert {"bit.ly", "t.co", "tinyurl.com"} <= shipped_redirectors()


# ------------------------------------------------------------------ display names

def with_from(from_value: str, to_value: str = "bob@example.net") -> str:
    head = HEAD.replace("From: Shop <news@shop.example>", f"From: {from_value}")
    return text_message("Hello", head.replace("To: bob@example.net", f"To: {to_value}"))


DISPLAY_NAME_CASES = [
    ("plain name", with_from("Alice Example <alice@shop.example>"), {}, {"TO_DN_NONE": ((), 1.0)}),
    ("name shows the recipient's domain", with_from('"it@example.net" <helpdesk@evil.example>'), {},
     {"SPOOF_DISPLAY_NAME": (("evil.example", "example.net"), 1.0), "TO_DN_NONE": ((), 1.0)}),
    ("recipient's domain from the envelope only", with_from('"admin@corp.example" <x@evil.example>'),
     {"rcpt_tos": ["bob@corp.example"]},
     {"SPOOF_DISPLAY_NAME": (("evil.example", "corp.example"), 1.0), "TO_DN_NONE": ((), 1.0)}),
    ("name shows another domain", with_from('"service@paypal.com" <x@evil.example>'), {},
     {"FROM_NEQ_DISPLAY_NAME": (("evil.example", "paypal.com"), 1.0), "TO_DN_NONE": ((), 1.0)}),
    ("a mailing list's rewritten From", with_from('"alice@corp.example via Users" <users@lists.example>'), {},
     {"TO_DN_NONE": ((), 1.0)}),
    ("a list's rewrite does not excuse the recipient's domain",
     with_from('"it@example.net via Users" <users@lists.example>'), {},
     {"SPOOF_DISPLAY_NAME": (("lists.example", "example.net"), 1.0), "TO_DN_NONE": ((), 1.0)}),
    ("name shows the sender's parent domain", with_from('"alice@shop.example" <alice@mail.shop.example>'), {},
     {"TO_DN_NONE": ((), 1.0)}),
    ("name shows the sender's own address", with_from('"Alice (alice@shop.example)" <alice@shop.example>'), {},
     {"TO_DN_NONE": ((), 1.0)}),
    ("name without a dotted domain is no address", with_from('"alice@home" <alice@shop.example>'), {},
     {"TO_DN_NONE": ((), 1.0)}),
    ("name is the address", with_from('"alice@shop.example" <alice@shop.example>'), {},
     {"FROM_DN_EQ_ADDR": ((), 1.0), "TO_DN_NONE": ((), 1.0)}),
    ("title Mrs", with_from('"Mrs. Mariam Abacha" <m@mail.example>'), {},
     {"FROM_NAME_HAS_TITLE": (("mrs",), 1.0), "TO_DN_NONE": ((), 1.0)}),
    ("title Dr", with_from('"Dr John Okafor" <j@mail.example>'), {},
     {"FROM_NAME_HAS_TITLE": (("dr",), 1.0), "TO_DN_NONE": ((), 1.0)}),
    ("a name starting like a title is none", with_from('"Drew Mrsic" <d@mail.example>'), {},
     {"TO_DN_NONE": ((), 1.0)}),
    ("excess space", with_from('"Alice  Example" <alice@shop.example>'), {},
     {"FROM_NAME_EXCESS_SPACE": ((), 1.0), "TO_DN_NONE": ((), 1.0)}),
    ("To named Recipients", with_from("Shop <news@shop.example>", "Recipients <news@shop.example>"), {},
     {"TO_DN_RECIPIENTS": ((), 1.0), "TO_DN_ALL": ((), 1.0)}),
    ("some To names", with_from("Shop <news@shop.example>", "Bob <bob@example.net>, carol@example.net"), {},
     {"TO_DN_SOME": ((), 1.0)}),
    ("To names are the addresses", with_from("Shop <news@shop.example>", '"bob@example.net" <bob@example.net>'),
     {}, {"TO_DN_EQ_ADDR_ALL": ((), 1.0)}),
]


@pytest.mark.parametrize("label,raw,kwargs,expected", DISPLAY_NAME_CASES, ids=[c[0] for c in DISPLAY_NAME_CASES])
def test_display_names(label, raw, kwargs, expected):
    assert run(DisplayNamesCheck(), raw, **kwargs) == expected


def test_huge_from_field_is_cut_not_fatal():
    raw = with_from('"' + "a " * 200_000 + '" <a@shop.example>')
    started = time.process_time()
    run(DisplayNamesCheck(), raw)
    assert time.process_time() - started < 1.0


# ------------------------------------------------------------------ hidden text and pictures

WORDS = " ".join(["Our spring catalogue is out with new garden tools and seeds."] * 4)

HTML_TEXT_CASES = [
    ("plain newsletter", html_message(f"<p>{WORDS}</p>"), {}),
    ("one hidden preheader weighs little",
     html_message(f'<div style="display:none">Preview text</div><p>{WORDS}</p>'),
     {"MANY_INVISIBLE_PARTS": (("1",), 0.05)}),
    ("zero-size font blocks",
     html_message(f"<p>{WORDS}</p>" + '<span style="font-size:0px">filler words</span>' * 3),
     {"ZERO_FONT": (("3",), 0.2), "MANY_INVISIBLE_PARTS": (("3",), 0.2)}),
    ("many zero-size blocks weigh fully",
     html_message(f"<p>{WORDS}</p>" + "<font style='font-size:0'>x y</font>" * 11),
     {"ZERO_FONT": (("11",), 1.0), "MANY_INVISIBLE_PARTS": (("11",), 1.0)}),
    ("white text on white",
     html_message(f'<body bgcolor="#ffffff"><p>Buy now</p><font color="#fefefe">{WORDS}</font></body>'),
     {"R_WHITE_ON_WHITE": (("font color #fefefe bgcolor #ffffff",), 1.0),
      "MANY_INVISIBLE_PARTS": (("1",), 0.05)}),
    ("white text on a dark cell is fine",
     html_message(f'<table><tr><td bgcolor="#003366"><font color="#ffffff">{WORDS}</font></td></tr></table>'),
     {}),
    ("white text where a stylesheet class may set the background",
     html_message(f'<body bgcolor="#ffffff"><table><tr><td class="dark"><font color="#ffffff">{WORDS}</font>'
                  '</td></tr></table></body>'), {}),
    ("white text on a background picture",
     html_message(f'<div style="background:url(hero.jpg)"><span style="color:#fff">{WORDS}</span></div>'), {}),
    ("white text on white under a class that sets white again",
     html_message(f'<div class="x"><p style="background-color:#fff;color:#fefefe">{WORDS}</p><p>Buy</p></div>'),
     {"R_WHITE_ON_WHITE": (("p color #fefefe bgcolor #ffffff",), 1.0), "MANY_INVISIBLE_PARTS": (("1",), 0.05)}),
    ("a short part with a linked embedded picture",
     html_message('<a href="http://shop.example/"><img src="cid:pic1" width="150" height="100"></a>'
                  '<p>Buy our spring tools now</p>'),
     {"HTML_SHORT_LINK_IMG_1": ((), 1.0)}),
    ("a remote linked picture is not embedded",
     html_message(f'<a href="http://shop.example/"><img src="http://shop.example/a.png" width="30" '
                  f'height="20"></a><p>{WORDS}</p>'), {}),
    ("a large picture and no text",
     html_message('<img src="http://shop.example/big.png" width="600" height="400">'),
     {"R_EMPTY_IMAGE": ((), 1.0)}),
    ("linked pictures outweigh the words",
     html_message('<p>Click</p><a href="http://x.example/"><img src="http://x.example/a.gif" width="800" '
                  'height="600"></a>'),
     {"R_SUSPICIOUS_IMAGES": (("0.87",), 0.87)}),
]


@pytest.mark.parametrize("label,raw,expected", HTML_TEXT_CASES, ids=[c[0] for c in HTML_TEXT_CASES])
def test_html_text(label, raw, expected):
    assert run(HtmlTextCheck(), raw) == expected


HOSTILE_MARKUP = {
    "unclosed start tags": "<a" * (MAX_HTML_CHARS // 2),
    "unclosed end tags": "</" * (MAX_HTML_CHARS // 2),
    "lone brackets": "<" * MAX_HTML_CHARS,
    "unclosed comments": "<!--" * (MAX_HTML_CHARS // 4),
    "deep nesting": '<span style="color:#fff">x' * (MAX_HTML_CHARS // 26),
    "end tags": "</a>" * (MAX_HTML_CHARS // 4),
}


@pytest.mark.parametrize("label", list(HOSTILE_MARKUP))
def test_hostile_markup_costs_little(label):
    # html.parser needs seconds for some of these; the tokenizer is linear.
    started = time.process_time()
    html_doc(HOSTILE_MARKUP[label])
    assert time.process_time() - started < 0.5


def test_link_text_and_entities():
    doc = html_doc('<a href="http://a.example/?x=1&amp;y=2">  <b>www.</b>shop&#46;example </a>')
    assert [(link.href, link.text) for link in doc.links] == [("http://a.example/?x=1&y=2", "www.shop.example")]


# ------------------------------------------------------------------ mixed scripts

MIXED_CASES = [
    ("english text", text_message(WORDS), {}),
    ("russian text", text_message("Привет, как дела? Мы рады видеть вас снова на нашем сайте."), {}),
    ("german text", text_message("Größere Bestellungen über fünfzig Euro werden schnell geliefert."), {}),
    ("latin words with cyrillic look-alikes",
     text_message("Yоur аccоunt hаs bееn lоckеd, vеrify yоur pаypаl nоw"), {"R_MIXED_CHARSET": (("2.33",), 1.0)}),
    ("one disguised word among many is not enough",
     text_message("Please find the attached invoice for the order you placed with us last week at pаypal"), {}),
    ("a mixed subject", text_message("Hello", HEAD.replace(
        "Subject: Offers", "Subject: " + email.header.Header("Yоur аccоunt", "utf-8").encode())),
     {"R_MIXED_CHARSET": (("subject",), 0.25)}),
]


@pytest.mark.parametrize("label,raw,expected", MIXED_CASES, ids=[c[0] for c in MIXED_CASES])
def test_mixed_charset(label, raw, expected):
    assert run(MixedCharsetCheck(), raw) == expected


def test_long_mixed_text_costs_little():
    raw = text_message("pаypal éàü " * 100_000)
    started = time.process_time()
    assert "R_MIXED_CHARSET" in run(MixedCharsetCheck(), raw)
    assert time.process_time() - started < 0.5


def test_word_badness_as_rspamd():
    assert word_badness("paypal") == 0.0
    assert word_badness("paуpal") == 1.5  # Cyrillic у after two Latin letters, then back
    assert word_badness("Привет") == 0.0
    assert word_badness("größe") == 0.5  # two accented letters: (2 - 1) / 2
    assert word_badness("Yоur") == 2.0  # Latin Y, Cyrillic о, Latin ur: two switches after runs of one
    assert word_badness("аbcdefghijklmnop") == 0.0  # long words are left alone


# ------------------------------------------------------------------ helpers

@pytest.mark.parametrize("url,expected", [
    ("https://User:pw@Shop.Example:8443/a?b#c", ("https", "shop.example")),
    ("www.shop.example/x", ("http", "www.shop.example")),
    ("//cdn.example/x", ("http", "cdn.example")),
    ("mailto:a@b.example", ("mailto", "")),
    ("http://[2001:db8::1]:80/", ("http", "[2001:db8::1]")),
    ("http://shop.example./", ("http", "shop.example")),
])
def test_split_url(url, expected):
    assert split_url(url) == expected


# ------------------------------------------------------------------ in the engine

class DmarcResult:
    """Stands in for the DMARC check: leaves its facts, as the real one does."""

    name = "dmarc"
    symbols = ("DMARC_POLICY_ALLOW",)
    after = ()

    def __init__(self, result: str, domain: str):
        self.facts = {"result": result, "domain": domain}

    async def run(self, ctx):
        ctx.facts["dmarc"] = self.facts
        return []


@pytest.mark.parametrize("dmarc,expected", [
    ("fail", {"PHISHING": 2.0, "FROM_NEQ_DISPLAY_NAME": 4.0}),  # PHISHING: 4.0 x weight 0.5
    ("pass", {"FROM_NEQ_DISPLAY_NAME": 4.0}),  # the link is the DMARC-verified sender's own
])
def test_engine_scores_the_native_symbols_with_their_weights(dmarc, expected):
    from smtpproxy.scan.engine import Engine, load_symbols

    cfg = Config()
    checks = [DmarcResult(dmarc, "evil.example"), PhishingCheck(cfg), DisplayNamesCheck()]
    engine = Engine(cfg.scan, checks, load_symbols(cfg.scan))
    raw = link("http://login.evil.example/pp", "https://www.paypal.com/signin").replace(
        "From: Shop <news@shop.example>", '"service@paypal.com" <x@evil.example>'.join(("From: ", "")))
    result = asyncio.run(engine.scan(context(raw)))
    scores = {name: s.score for name, s in result.symbols.items() if s.score}
    assert scores == pytest.approx(expected)


def test_hidden_text_inside_inline_elements_counts():
    doc = html_doc('<body bgcolor="white"><p>Hello</p><font color="white"><b>cheap pills</b> here</font></body>')
    assert (doc.invisible_blocks, doc.transparent_len) == (1, len("cheap pills") + len("here"))
    doc = html_doc('<div style="display:none"><p>one</p><p>two</p></div><p>shown</p>')
    assert doc.invisible_blocks == 2  # each hidden paragraph, not their empty container


# ------------------------------------------------------------------ never raise

MARKUP_PIECES = ["<", ">", "/", "=", '"', "'", " ", "a", "!", "-", "?", "&", "#", ";", ":", "\u0430", "\u200b",
                 "<a href=", "</a>", "<font color=white>", "</font>", "<!--", "-->", 'style="font-size:0"',
                 "http://x.example", "www.y.example", "<img width=300 height=300 src=cid:a>", "<script>",
                 "</p>", "<td bgcolor=#000>", "class=c", "background:url(x)", "rgb(300,1,1", "&amp;"]


@given(st.lists(st.sampled_from(MARKUP_PIECES), max_size=60).map("".join))
@settings(max_examples=300, deadline=None)
def test_html_reader_never_raises_and_keeps_its_bounds(markup):
    doc = html_doc(markup)
    assert len(doc.links) <= 200 and len(doc.images) <= 100
    assert 0 <= doc.transparent_len <= doc.text_len


CHECKS = [PhishingCheck(), RedirectorsCheck(), DisplayNamesCheck(), HtmlTextCheck(), MixedCharsetCheck()]


@given(st.lists(st.sampled_from(MARKUP_PIECES), max_size=40).map("".join),
       st.sampled_from(["x@a.example", '"it@example.net" <x@a.example>', '"" a " b" <@>', "=?utf-8?B?w6k=?= <", ""]),
       wire_bytes(10))
@settings(max_examples=200, deadline=None)
def test_native_checks_never_raise(markup, from_value, wire):
    for raw in (html_message(markup, HEAD.replace("Shop <news@shop.example>", from_value)),
                text_message(markup), HEAD + "\r\n" + wire.decode("latin-1")):
        for check in CHECKS:
            hits = asyncio.run(check.run(context(raw)))
            assert all(hit.symbol in check.symbols and 0 <= hit.weight <= 1 for hit in hits)
