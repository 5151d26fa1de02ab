"""SpamAssassin's own rule files (Debian's ``spamassassin`` package) load and run.

Every rule file loads (loaded and skipped counts printed, nothing crashes),
and on a sample of the SpamAssassin corpus the Hyperscan path finds exactly
the hits of Python ``re`` alone. The first run compiles the Hyperscan
databases (a minute or two); they are kept under the test's state_dir.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smtpproxy.common import config
from smtpproxy.scan.message import parse
from smtpproxy.scan.spamassassin import matcher
from smtpproxy.scan.spamassassin.check import DEBIAN_RULES_DIR, SpamAssassinCheck

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpora" / "spam-ham"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.isdir(DEBIAN_RULES_DIR),
                       reason="Debian's spamassassin package is not installed"),
]


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("sa-state")


def debian_config(state_dir) -> config.Config:
    return config.load(None, {"state_dir": str(state_dir), "scan.spamassassin.enabled": True,
                              "scan.spamassassin.rules_dirs": [DEBIAN_RULES_DIR]})


def test_every_debian_rule_file_loads(state_dir):
    check = SpamAssassinCheck(debian_config(state_dir), use_hyperscan=False)
    rs = check.rules
    report = check.report()
    print("\n".join(report[:5]))
    assert rs.files and not rs.errors
    shipped = {os.path.join(DEBIAN_RULES_DIR, f) for f in os.listdir(DEBIAN_RULES_DIR) if f.endswith(".cf")}
    assert shipped <= set(rs.files)
    kinds = {r.kind for r in rs.rules.values()}
    assert kinds == {"header", "mimeheader", "body", "rawbody", "full", "uri", "meta", "eval"}
    assert rs.evals_run["check_for_shifted_date"] >= 10 and "X-Spam-Relays-External" not in str(rs.skipped)
    assert len(rs.rules) > 2000 and len(check.symbol_defs()) > 500
    assert rs.skip_reasons()["eval test"] > 100
    assert all(reason for reason in rs.skipped.values())


@pytest.mark.skipif(matcher.hyperscan is None, reason="hyperscan not installed")
def test_hyperscan_finds_what_re_finds_on_the_corpus(state_dir):
    files = sorted(p for p in (CORPUS / "spamassassin-public-corpus").rglob("*") if p.is_file())
    if not files:
        pytest.skip("no corpus")
    sample = files[:: max(1, len(files) // 150)]
    cfg = debian_config(state_dir)
    hs = SpamAssassinCheck(cfg, background_compile=False)
    assert hs.matcher.wait(600) and hs.matcher.ready
    plain = SpamAssassinCheck(cfg, use_hyperscan=False)
    assert not plain.matcher.ready
    fired = 0
    for path in sample:
        msg = parse(path.read_bytes())
        with_hs, with_re = hs.match(msg), plain.match(msg)
        assert with_hs == with_re, path.name
        fired += len(with_hs)
    assert fired > len(sample)  # the rules do fire
