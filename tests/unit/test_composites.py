"""Composite symbols: parsing, evaluation and rspamd's removal rules, through the engine."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpproxy.common import config
from smtpproxy.common.config import ConfigError
from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.composites import And, Atom, Not, Or, parse_expression
from smtpproxy.scan.engine import Engine, SymbolDef
from smtpproxy.scan.message import parse
from smtpproxy.transaction import ClientInfo

SYMBOLS = {name: SymbolDef(score, name) for name, score in {
    "CHECK_TIMEOUT": 0.0, "CHECK_ERROR": 0.0,
    "A": 1.0, "B": 2.0, "C": 4.0, "Z": 0.0, "OPT": 0.5,
}.items()}


class Fixed:
    """A check that reports the same hits for every message."""

    name = "fixed"
    after = ()

    def __init__(self, hits):
        self.hits = hits
        self.symbols = tuple({h.symbol for h in hits})

    async def run(self, ctx):
        return list(self.hits)


def scan_cfg(**composites):
    return config.build(config.ScanConfig, {"composites": composites}, "scan.")


def scan(hits, **composites):
    engine = Engine(scan_cfg(**composites), [Fixed([Hit(s) if isinstance(s, str) else s for s in hits])],
                    SYMBOLS)
    ctx = CheckContext(message=parse(b"Subject: x\r\n\r\nbody\r\n"), client=ClientInfo(),
                       mail_from="", rcpt_tos=[], profile="inbound", resolver=None)
    return asyncio.run(engine.scan(ctx))


def shown(result):
    return {name: s.score for name, s in result.symbols.items()}


@pytest.mark.parametrize("text, tree", [
    ("A", Atom("A", "")),
    ("A & B | C", Or((And((Atom("A", ""), Atom("B", ""))), Atom("C", "")))),
    ("A & (B | C)", And((Atom("A", ""), Or((Atom("B", ""), Atom("C", "")))))),
    ("!A & B", And((Not(Atom("A", "")), Atom("B", "")))),
    ("A and not B or C", Or((And((Atom("A", ""), Not(Atom("B", "")))), Atom("C", "")))),
    ("~A & -B & ^C", And((Atom("A", "~"), Atom("B", "-"), Atom("C", "^")))),
])
def test_expressions_parse_into_trees(text, tree):
    assert parse_expression(text) == tree


@pytest.mark.parametrize("text, complaint", [
    ("", "empty"),
    ("A &", "ends too early"),
    ("(A | B", "not closed"),
    ("A B", "unexpected"),
    ("A & $B", "cannot read"),
    ("g:policies & A", "groups are not supported"),
    ("a_lower", "not a symbol name"),
    ("A[/(/]", "bad regex"),
    ("__import__('os')", "cannot read"),
])
def test_bad_expressions_name_the_key(text, complaint):
    with pytest.raises(ConfigError) as err:
        parse_expression(text, "scan.composites.X.expression")
    assert err.value.key == "scan.composites.X.expression"
    assert complaint in err.value.message


def test_default_policy_removes_the_parts_score_and_symbol():
    result = scan(["A", "B", "C"], AB={"expression": "A & B", "score": 5.0})
    assert shown(result) == {"AB": 5.0, "C": 4.0}
    assert result.score == 9.0
    assert result.symbols["AB"].options == ("A", "B")


def test_composite_does_not_fire_without_all_its_parts():
    result = scan(["A", "C"], AB={"expression": "A & B", "score": 5.0})
    assert shown(result) == {"A": 1.0, "C": 4.0}


def test_atom_prefixes_narrow_the_removal():
    # ~ keeps the symbol at score 0, - keeps both, the plain atom goes.
    result = scan(["A", "B", "C"], ABC={"expression": "~A & -B & C", "score": 1.0})
    assert shown(result) == {"ABC": 1.0, "A": 0.0, "B": 2.0}
    assert result.score == 3.0


@pytest.mark.parametrize("policy, expected, total", [
    ("remove_all", {"AB": 0.5}, 0.5),
    ("remove_weight", {"AB": 0.5, "A": 0.0, "B": 0.0}, 0.5),
    ("remove_symbol", {"AB": 0.5}, 3.5),  # hidden, but their score still counts
    ("leave", {"AB": 0.5, "A": 1.0, "B": 2.0}, 3.5),
])
def test_policies(policy, expected, total):
    result = scan(["A", "B"], AB={"expression": "A & B", "score": 0.5, "policy": policy})
    assert shown(result) == expected
    assert result.score == total


def test_symbol_kept_when_any_composite_wants_it_kept_unless_forced():
    kept = scan(["A", "B", "C"], X={"expression": "A & B", "score": 0.0},
                Y={"expression": "-A & C", "score": 0.0})
    assert "A" in kept.symbols and kept.symbols["A"].score == 1.0
    forced = scan(["A", "B", "C"], X={"expression": "^A & B", "score": 0.0},
                  Y={"expression": "-A & C", "score": 0.0})
    assert "A" not in forced.symbols


def test_negated_atoms_are_never_removed():
    result = scan(["A", "C"], X={"expression": "C & !(A & B)", "score": 1.0})
    assert shown(result) == {"X": 1.0, "A": 1.0}


def test_zero_score_symbol_counts_as_found():
    assert "X" in scan(["Z"], X={"expression": "Z", "score": 1.0, "policy": "leave"}).symbols


def test_options_must_match():
    opt = Hit("OPT", ("setup.exe", "readme.txt"))
    assert "X" in scan([opt], X={"expression": "OPT[setup.exe]", "score": 1.0}).symbols
    assert "X" in scan([opt], X={"expression": "OPT[/\\.exe$/, readme.txt]", "score": 1.0}).symbols
    assert "X" not in scan([opt], X={"expression": "OPT[other.exe]", "score": 1.0}).symbols


def test_composite_of_composites_runs_in_dependency_order():
    # Declared before the composite it names: the order comes from the expressions.
    result = scan(["A", "B", "C"], OUTER={"expression": "INNER & C", "score": 10.0},
                  INNER={"expression": "A & B", "score": 3.0})
    assert shown(result) == {"OUTER": 10.0}
    assert result.symbols["OUTER"].options == ("INNER", "C")


def test_a_cycle_is_refused():
    with pytest.raises(ConfigError, match="cycle"):
        scan([], X={"expression": "Y & A", "score": 1.0}, Y={"expression": "X | B", "score": 1.0})


def test_unknown_symbol_in_a_configured_composite_is_named():
    with pytest.raises(ConfigError) as err:
        scan([], X={"expression": "A & NO_SUCH_SYMBOL", "score": 1.0})
    assert err.value.key == "scan.composites.X.expression"
    assert "NO_SUCH_SYMBOL" in err.value.message


def test_composite_name_clashing_with_a_symbol_is_refused():
    with pytest.raises(ConfigError, match="symbols.toml: MISSING_MID"):
        Engine(scan_cfg(MISSING_MID={"expression": "MISSING_DATE", "score": 1.0}), [])


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError) as err:
        scan_cfg(X={"expression": "A", "policy": "drop"})
    assert err.value.key == "scan.composites.X.policy"
    with pytest.raises(ConfigError) as err:
        scan_cfg(X={"score": 1.0})
    assert err.value.key == "scan.composites.X.expression"
    with pytest.raises(ConfigError) as err:
        scan_cfg(bad_name={"expression": "A"})
    assert err.value.key == "scan.composites.bad_name"


def test_shipped_defaults_load_with_the_full_symbol_table():
    engine = Engine(config.load(None).scan, [])
    assert {"AUTH_NA", "VIOLATED_DIRECT_SPF", "DMARC_POLICY_ALLOW_WITH_FAILURES"} <= set(
        engine.composites.names)
    assert engine.symbols["VIOLATED_DIRECT_SPF"].score == 3.5


def test_shipped_default_switched_off_or_replaced():
    off = Engine(scan_cfg(AUTH_NA={"enabled": False}), [], None)
    assert "AUTH_NA" not in off.composites.names and "AUTH_NA" not in off.symbols
    replaced = Engine(scan_cfg(AUTH_NA={"expression": "R_SPF_NA & R_DKIM_NA", "score": 2.0}), [], None)
    assert replaced.symbols["AUTH_NA"].score == 2.0


def test_shipped_default_without_its_inputs_is_left_out():
    # The explicit table has no SPF/DKIM symbols: the defaults cannot apply, and no error.
    engine = Engine(scan_cfg(), [], SYMBOLS)
    assert engine.composites.names == []


def test_violated_direct_spf_leaves_its_parts():
    table = Engine(config.load(None).scan, []).symbols
    engine = Engine(config.load(None).scan, [Fixed([Hit("R_SPF_FAIL"), Hit("RCVD_COUNT_ZERO")])], table)
    ctx = CheckContext(message=parse(b"Subject: x\r\n\r\nbody\r\n"), client=ClientInfo(),
                       mail_from="", rcpt_tos=[], profile="inbound", resolver=None)
    result = asyncio.run(engine.scan(ctx))
    assert set(result.symbols) == {"R_SPF_FAIL", "RCVD_COUNT_ZERO", "VIOLATED_DIRECT_SPF"}
    assert result.score == round(table["R_SPF_FAIL"].score + table["RCVD_COUNT_ZERO"].score + 3.5, 2)



def test_negation_fires_when_its_symbol_is_absent():
    # Decided without looking at the message's symbols: the answer over none.
    assert "X" in scan([], X={"expression": "!A", "score": 1.0}).symbols
    assert "X" not in scan(["A"], X={"expression": "!A", "score": 1.0}).symbols
    assert "X" not in scan(["C"], X={"expression": "A | B", "score": 1.0}).symbols


def test_configured_composites_survive_configdump():
    import tomllib
    cfg = config.load(None, {"scan.composites": {"X_Y": {"expression": "A & B", "score": 1.5}}})
    dumped = config.dump(cfg)
    assert "[scan.composites.X_Y]" in dumped
    assert config.build(config.Config, tomllib.loads(dumped)) == cfg


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="AB_ ()&|!~-^[]/,andortx", max_size=40))
def test_any_text_parses_or_is_a_config_error(text):
    try:
        tree = parse_expression(text, "scan.composites.X.expression")
    except ConfigError as err:
        assert err.key == "scan.composites.X.expression"
    else:
        assert isinstance(tree, Atom | Not | And | Or)
