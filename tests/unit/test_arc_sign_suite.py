"""The ValiMail ARC signing suite (17 cases) through smtpproxy.sign.arc.seal_set.

../shared/corpora/arc/valimail-arc_test_suite/tests/arc-draft-sign-tests.yml:
each case seals ``message`` with the scenario's ``privatekey``, ``domain``
and ``sel``, the case's ``t``, ``sig-headers`` and ``srv-id``, and compares
the new ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results with
``AS``, ``AMS`` and ``AAR`` in the suite's standardised form (tags sorted,
lower case; README.md of the suite), whitespace folded away before comparing.
The chain status comes from the message's own Authentication-Results, as
the suite intends (its README: "an accurate chain validation status ... has
been stamped into the most recent Authentication-Results header").
Every new set is also verified with dkimpy against the scenario's
``txt-records``, so a match is not a coincidence of formatting.
"""

from __future__ import annotations

import re

import dkim
import pytest

from smtpproxy.sign.arc import seal_set
from tests.support import yaml_suites

SUITE = (yaml_suites.CORPORA / "arc" / "valimail-arc_test_suite" / "tests"
         / "arc-draft-sign-tests.yml")


SCENARIOS = yaml_suites.scenarios(SUITE)
CASES = list(yaml_suites.cases(SCENARIOS))


def test_the_suite_is_all_there():
    assert len(CASES) == 17


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def _squeeze(value: bytes | str) -> str:
    text = value.decode() if isinstance(value, bytes) else value
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("index, name, case", CASES)
def test_sign_suite(index, name, case):
    scenario = SCENARIOS[index]
    message = _crlf(case["message"])
    new_set = seal_set(message, scenario["domain"], scenario["sel"],
                       scenario["privatekey"].encode(), case["srv-id"],
                       case["sig-headers"].split(":"), timestamp=case["t"],
                       standardize=True, only_present=False)
    if not case["AS"]:
        # The chain has ended (an instance above 1 without an arc= result): no new set.
        assert new_set == [] and not case["AMS"] and not case["AAR"], name
        return
    fields = {}
    for field in new_set:
        fname, _, value = field.partition(b":")
        fields[fname.decode().lower()] = value
    assert _squeeze(fields["arc-seal"]) == _squeeze(case["AS"]), name
    assert _squeeze(fields["arc-message-signature"]) == _squeeze(case["AMS"]), name
    assert _squeeze(fields["arc-authentication-results"]) == _squeeze(case["AAR"]), name
    records = {f"{k}.".encode(): v.encode() for k, v in scenario["txt-records"].items()}
    cv, _results, reason = dkim.arc_verify(b"".join(new_set) + message,
                                           dnsfunc=lambda n, timeout=5: records.get(n))
    # The new seal validates the chain it extends; after a cv=fail seal the chain
    # has failed for good and must never validate again.
    if b"cv=fail" in fields["arc-seal"]:
        assert cv != dkim.CV_Pass, name
    else:
        assert cv == dkim.CV_Pass, reason
