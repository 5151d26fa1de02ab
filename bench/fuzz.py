#!/usr/bin/env python3
"""The long run of the property-based tests (tests/unit/test_fuzz_*.py).

    .venv/bin/python bench/fuzz.py [--examples 20000] [-k SUBSTRING] [--seed N]

Runs every Hypothesis property of those modules with ``--examples`` random
examples each (the suite runs them bounded and derandomised, the "ci"
profile of tests/support/fuzz.py), shrinking any counterexample. Prints per
property the examples run (counterexample search and shrinking included),
the seconds taken and the outcome: ok, known (marked xfail in the suite:
the reason names the defect) or FAIL; a failure prints its minimal
example. Exits 1 when a property not marked xfail fails.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import settings  # noqa: E402

from tests.support.fuzz import register_profiles  # noqa: E402

MODULES = ["tests.unit.test_fuzz_codecs", "tests.unit.test_fuzz_data", "tests.unit.test_fuzz_headers",
           "tests.unit.test_fuzz_message", "tests.unit.test_fuzz_dkim"]


def xfail_reason(test) -> str | None:
    for mark in getattr(test, "pytestmark", []):
        if mark.name == "xfail":
            return mark.kwargs.get("reason", "xfail")
    return None


def falsifying(exc: BaseException) -> list[str]:
    """The minimal examples Hypothesis attached to the failure, one entry per distinct failure."""
    errors = list(exc.exceptions) if isinstance(exc, BaseExceptionGroup) else [exc]
    out = []
    for error in errors:
        notes = [n for n in getattr(error, "__notes__", []) if "reproduce_failure" not in n]
        last = traceback.format_exception_only(type(error), error)[0].strip()
        out.append(" ".join(" ".join(notes).split()) + f" -> {last[:300]}")
    return out


def run(test, seed: int | None) -> tuple[int, float, BaseException | None]:
    calls = 0
    inner = test.hypothesis.inner_test

    def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        return inner(*args, **kwargs)

    test.hypothesis.inner_test = counting
    started = time.monotonic()
    error = None
    try:
        (test if seed is None else __import__("hypothesis").seed(seed)(test))()
    except BaseException as exc:  # a property's failure, whatever it is
        if isinstance(exc, KeyboardInterrupt):
            raise
        error = exc
    finally:
        test.hypothesis.inner_test = inner
    return calls, time.monotonic() - started, error


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20_000, help="examples per property")
    parser.add_argument("-k", dest="pattern", default="", help="only properties whose name has this")
    parser.add_argument("--seed", type=int, default=None, help="a fixed seed (default: random)")
    args = parser.parse_args()

    # @given takes the settings in force when it decorates: load before importing the tests.
    register_profiles(long_examples=args.examples)
    settings.load_profile("long")
    logging.disable(logging.CRITICAL)  # the properties drive code that logs every refusal
    tests = [(module, name, getattr(mod, name))
             for module in MODULES for mod in [importlib.import_module(module)]
             for name in sorted(vars(mod))
             if name.startswith("test_") and getattr(getattr(mod, name), "is_hypothesis_test", False)
             and args.pattern in name]

    print(f"{len(tests)} properties, up to {args.examples} examples each")
    unexpected = known = 0
    total_started = time.monotonic()
    for module, name, test in tests:
        calls, seconds, error = run(test, args.seed)
        reason = xfail_reason(test)
        if error is None:
            outcome = "ok" if reason is None else f"ok (marked xfail: {reason})"
        elif reason is not None:
            known += 1
            outcome = f"known: {reason}"
        else:
            unexpected += 1
            outcome = "FAIL"
        print(f"{module.rsplit('.', 1)[1]}::{name}: {calls} examples, {seconds:.1f} s, {outcome}")
        if error is not None:
            for example in falsifying(error):
                print(f"    {example}")
    print(f"{len(tests)} properties in {time.monotonic() - total_started:.0f} s: "
          f"{len(tests) - known - unexpected} held, {known} known failures, {unexpected} new failures")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
