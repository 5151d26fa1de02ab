"""SpamAssassin compatibility without a message: the rule-file parser, the Perl regex
translation and the meta evaluator, as labelled tables."""

from __future__ import annotations

import re

import pytest

from smtpproxy.scan.spamassassin import meta
from smtpproxy.scan.spamassassin.regex import Untranslatable, split_match_op, translate
from smtpproxy.scan.spamassassin.rules import load_text, replace_tags

# ------------------------------------------------------------------ the parser

PARSER_CASES = [
    ("header rule", "header FOO Subject =~ /cheap/i\nscore FOO 2.5\ndescribe FOO Cheap stuff",
     {"FOO": ("header", "Subject", 2.5)}),
    ("tabs and a comment", "body\tBAR\t/hello world/ # a comment\nscore BAR 1.0 2.0 3.0 4.0",
     {"BAR": ("body", "", 1.0)}),
    ("escaped hash is not a comment", "body HASH /\\#1 deal/",
     {"HASH": ("body", "", 1.0)}),
    ("default score 1, sub-rule 0", "body B1 /x/\nbody __B2 /y/",
     {"B1": ("body", "", 1.0), "__B2": ("body", "", 0.0)}),
    ("nice rule defaults to -1", "body N /x/\ntflags N nice",
     {"N": ("body", "", -1.0)}),
    ("ifplugin of a loaded plugin", "ifplugin Mail::SpamAssassin::Plugin::BodyEval\nbody IN /x/\nendif",
     {"IN": ("body", "", 1.0)}),
    ("ifplugin of an unknown plugin", "ifplugin Some::Other::Plugin\nbody OUT /x/\nendif", {}),
    ("if version", "if (version >= 3.004000)\nbody NEW /x/\nendif\nif (version < 3.000000)\nbody OLD /y/\nendif",
     {"NEW": ("body", "", 1.0)}),
    ("if !plugin with else",
     "if !plugin(Mail::SpamAssassin::Plugin::ReplaceTags)\nbody FALLBACK /x/\nelse\nbody MAIN /y/\nendif",
     {"MAIN": ("body", "", 1.0)}),
    ("if can()", "if can(Mail::SpamAssassin::Conf::feature_bug6558_free)\nbody CAN /x/\nendif\n"
     "if can(Mail::SpamAssassin::Conf::feature_nonexistent)\nbody CANT /y/\nendif",
     {"CAN": ("body", "", 1.0)}),
    ("nested false block stays false through else",
     "ifplugin No::Such\nif (version >= 3)\nbody A /x/\nelse\nbody B /y/\nendif\nendif", {}),
    ("later definition wins", "body DUP /first/\nbody DUP /second/", {"DUP": ("body", "", 1.0)}),
    ("meta", "body __A /a/\nmeta M __A && !__B\nscore M 3", {"__A": ("body", "", 0.0), "M": ("meta", "", 3.0)}),
    ("uri rawbody full", "uri U /example/\nrawbody R /<b>/\nfull F /^X-Foo/m",
     {"U": ("uri", "", 1.0), "R": ("rawbody", "", 1.0), "F": ("full", "", 1.0)}),
    ("exists and modifiers", "header E exists:X-Mailer\nheader AD From:addr =~ /@example\\.com$/",
     {"E": ("header", "X-Mailer", 1.0), "AD": ("header", "From:addr", 1.0)}),
    ("lang lines are ignored", "lang de describe FOO Billig\nbody FOO /x/", {"FOO": ("body", "", 1.0)}),
]


@pytest.mark.parametrize("label,text,expected", PARSER_CASES, ids=[c[0] for c in PARSER_CASES])
def test_parser(label, text, expected):
    rs = load_text(text)
    got = {name: (r.kind, r.header, rs.score(name)) for name, r in rs.rules.items()}
    assert got == expected


def test_parser_tflags_priority_and_descriptions():
    rs = load_text("body M /x/\ntflags M multiple maxhits=3 net\npriority M -100\ndescribe M Many x")
    assert rs.tflags["M"] == {"multiple", "net"} and rs.maxhits["M"] == 3
    assert rs.priority["M"] == -100 and rs.descriptions["M"] == "Many x"


def test_parser_counts_what_it_skips():
    rs = load_text(
        "header R eval:check_rbl('a', 'zen.example.')\nbody E eval:check_body_length(10)\n"
        "body E2 eval:check_body_length(20)\naskdns MH _SENDERDOMAIN_ TXT /x/\n"
        "header T ALL-EXTERNAL =~ /x/\nbody BAD /\\p{L}/\nwelcomelist_from a@b.example\n"
        "header IF_UNSET X-Foo =~ /^$/ [if-unset: EMPTY]\n"
    )
    assert rs.evals == {"check_rbl": 1, "check_body_length": 2}
    assert set(rs.skipped) == {"R", "E", "E2", "MH", "T", "BAD"}
    assert rs.skipped["BAD"].startswith("regex:")
    assert rs.ignored["welcomelist_from"] == 1
    assert rs.rules["IF_UNSET"].if_unset == "EMPTY"
    assert rs.skip_reasons()["eval test"] == 3
    assert rs.skipped["MH"] == "network test (askdns)"


def test_mimeheader_rules_parse():
    rs = load_text("mimeheader MH Content-Type =~ /^image\\//i\nmimeheader MR Content-Type:raw !~ /x/\n"
                   "mimeheader MX exists:Content-Type\nmimeheader MA Content-Type:addr =~ /x/\n")
    assert rs.rules["MH"].kind == "mimeheader" and rs.rules["MH"].header == "Content-Type"
    assert rs.rules["MR"].negate and rs.rules["MR"].header == "Content-Type:raw"
    assert rs.skipped["MX"].startswith("syntax") and "modifier" in rs.skipped["MA"]


def test_parser_negated_header_and_unclosed_block():
    rs = load_text("header NOT_X X-Mailer !~ /Outlook/\nifplugin Mail::SpamAssassin::Plugin::Check\n")
    assert rs.rules["NOT_X"].negate
    assert any("without endif" in e for e in rs.errors)


def test_replace_tags():
    tags = {"tag": {"A": "[aA@]", "B": "[bB8]"}, "pre": {}, "inter": {"W1": "\\W?"},
            "post": {"P2": "{1,2}"}}
    assert replace_tags("<A><B>", tags) == "[aA@][bB8]"
    assert replace_tags("<inter W1><A><B>", tags) == "\\W?[aA@]\\W?[bB8]"
    assert replace_tags("<post P2><A>x<B>", tags) == "[aA@]{1,2}x[bB8]{1,2}"
    rs = load_text("replace_tag V (?:[vV]|\\\\/)\nbody FUZZ /<V>iagra/i\nreplace_rules FUZZ")
    assert rs.rules["FUZZ"].pattern.python == rb"(?:[vV]|\\/)iagra"


# ------------------------------------------------------------------ regex translation

TRANSLATIONS = [
    # label, rule text, python pattern, matches, does not match
    ("slashes and /i", "/cheap/i", b"cheap", b"CHEAP meds", b"expensive"),
    ("m{} delimiters", "m{a/b}", b"a/b", b"xa/by", b"ab"),
    ("m!! delimiters with flags", "m!^foo!m", b"^foo", b"x\nfoo", b"xfoo"),
    ("\\z is Python's \\Z", "/end\\z/", b"end\\Z", b"the end", b"the end\n"),
    ("Perl \\Z allows a final newline", "/end\\Z/", b"end(?=\\n?\\Z)", b"the end\n", b"end here"),
    ("named group", "/(?<w>ab)\\k<w>/", b"(?P<w>ab)(?P=w)", b"abab", b"ab"),
    ("possessive kept for Python", "/a++b/", b"a++b", b"aab", b"b"),
    ("atomic group kept", "/(?>a+)b/", b"(?>a+)b", b"aab", b"ac"),
    ("/x ignores white space", "/c h e a p # comment\n/x", b"c h e a p # comment\n", b"cheap", b"c h"),
    ("/s dot matches newline", "/a.b/s", b"a.b", b"a\nb", b"ab"),
    ("mid-pattern (?i)", "/a(?i)b/", b"a(?i:b)", b"aB", b"AB"),
    ("(?i) holds across |", "/x(?i)b|c/", b"x(?i:b)|(?i:c)", b"C", b"X"),
    ("\\h horizontal space", "/a\\hb/", b"a[\\t \\xa0]b", b"a b", b"a\nb"),
    ("POSIX class", "/[[:digit:]]{3}/", b"[0-9]{3}", b"a123", b"a12"),
    ("\\Q..\\E quotes", "/\\Q1+1\\E=2/", b"1\\+1=2", b"1+1=2", b"11=2"),
    ("\\x{41}", "/\\x{41}/", b"\\x41", b"A", b"a"),
    ("escaped hash kept", "/\\#1/", b"\\#1", b"#1", b"1"),
    ("look-behind", "/(?<!\\d)42/", b"(?<!\\d)42", b"x42", b"142"),
    ("back-reference", "/(a)\\1/", b"(a)\\1", b"aa", b"ab"),
    ("unknown letter escape is the letter", "/\\ix/", b"ix", b"ix", b"x"),
    ("bracket in a class", "/[[]/", b"[\\[]", b"[", b"]"),
    ("bytes, not characters", "/\\xc3\\xa9t\\xc3\\xa9/", b"\\xc3\\xa9t\\xc3\\xa9", "été".encode(), b"ete"),
]


@pytest.mark.parametrize("label,rule,python,yes,no", TRANSLATIONS, ids=[c[0] for c in TRANSLATIONS])
def test_translation(label, rule, python, yes, no):
    source, flags = split_match_op(rule)
    t = translate(source, flags)
    assert t.python == python
    compiled = re.compile(t.python, t.flags)
    assert compiled.search(yes)
    assert not compiled.search(no)


UNTRANSLATABLE = [
    ("unicode property", "/\\p{L}/"),
    ("character above 0xFF", "/\\x{263a}/"),
    ("recursion", "/(a(?R)?b)/"),
    ("\\K", "/a\\Kb/"),
    ("unterminated", "/abc"),
    ("unknown flag", "/abc/q"),
    ("not a regex", "abc"),
]


@pytest.mark.parametrize("label,rule", UNTRANSLATABLE, ids=[c[0] for c in UNTRANSLATABLE])
def test_untranslatable(label, rule):
    with pytest.raises(Untranslatable):
        translate(*split_match_op(rule))


def test_hyperscan_pattern_is_a_superset_form():
    t = translate(*split_match_op("/\\Afoo(?>bar)x++\\z/"))
    assert t.hyperscan == b"^foo(?:bar)x+$"


# ------------------------------------------------------------------ meta expressions

META_CASES = [
    ("and", "A && B", {"A": 1, "B": 1}, True),
    ("and, one off", "A && B", {"A": 1}, False),
    ("or", "A || B", {"B": 1}, True),
    ("not", "!A", {}, True),
    ("&& binds tighter than ||", "A || B && C", {"A": 1}, True),
    ("&& binds tighter than ||, 2", "A || B && C", {"B": 1}, False),
    ("parentheses", "(A || B) && C", {"A": 1}, False),
    ("! binds tighter than &&", "!A && B", {"B": 1}, True),
    ("sum and comparison", "A + B + C > 1", {"A": 1, "C": 1}, True),
    ("sum below", "A + B + C > 1", {"A": 1}, False),
    ("+ binds tighter than >", "A + B >= 2 && C", {"A": 1, "B": 1, "C": 1}, True),
    ("multiple counts", "M > 2", {"M": 3}, True),
    ("unknown names are 0", "UNKNOWN_RULE || !OTHER", {}, True),
    ("numbers", "(A * 2) == 2", {"A": 1}, True),
    ("division by zero is 0", "A / B", {"A": 1}, False),
    ("< and <=", "A < 1 && B <= 1", {"B": 1}, True),
    ("!=", "A != B", {"A": 1}, True),
    ("unary minus", "-A + 2 > 0", {"A": 1}, True),
]


@pytest.mark.parametrize("label,expr,values,fires", META_CASES, ids=[c[0] for c in META_CASES])
def test_meta(label, expr, values, fires):
    assert bool(meta.evaluate(meta.parse(expr), values)) is fires


@pytest.mark.parametrize("label,expr,values,fires", META_CASES, ids=[c[0] for c in META_CASES])
def test_compiled_meta_gives_the_tree_walks_value(label, expr, values, fires):
    tree = meta.parse(expr)
    # The generated function and the closures (the fallback) return the very
    # value the tree walk does: && and || pass on the deciding operand.
    assert meta.compile_node(tree)(values) == meta.evaluate(tree, values)
    assert meta._closures(tree)(values) == meta.evaluate(tree, values)
    assert bool(meta.compile_node(tree)(values)) is fires


def test_compiled_meta_returns_the_deciding_operand():
    assert meta.compile_node(meta.parse("A && B"))({"A": 2, "B": 3}) == 3
    assert meta.compile_node(meta.parse("A || B"))({"B": 4}) == 4


def test_compiled_meta_names_are_literals_not_code():
    # A name is only ever a dictionary key in the generated source.
    fn = meta.compile_node(meta.parse("__import__ || exec"))
    assert fn({"exec": 1}) == 1
    assert fn({}) == 0


def test_deep_meta_compiles_or_falls_back():
    # 150 terms: deeper than Python's nesting of parentheses takes, so the closures serve.
    expr = " + ".join(f"R{i}" for i in range(150)) + " > 2"
    fn = meta.compile_node(meta.parse(expr))
    assert fn({"R1": 1, "R7": 1, "R149": 1}) == 1
    assert fn({"R1": 1, "R7": 1}) == 0


@pytest.mark.parametrize("expr", ["(" * 2000 + "A" + ")" * 2000, " + ".join(["A"] * 400)])
def test_too_deep_meta_is_a_syntax_error(expr):
    with pytest.raises(meta.MetaSyntaxError):
        meta.parse(expr)


@pytest.mark.parametrize("expr", ["A &&", "(A || B", "A B", "A ; system('x')", "", "A & B"])
def test_meta_syntax_errors(expr):
    with pytest.raises(meta.MetaSyntaxError):
        meta.parse(expr)


def test_meta_names():
    assert meta.names(meta.parse("(__A + __B > 1) && !C || 3")) == {"__A", "__B", "C"}
