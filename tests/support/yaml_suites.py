"""The YAML test suites of ../shared/corpora (OpenSPF, ValiMail ARC): scenarios and their cases.

Each file is a stream of scenarios, each with a ``tests`` mapping of case
name to case. A missing file gives no scenarios, so collection still works;
each suite has a test that asserts the file is there and complete.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import yaml

CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpora"


def scenarios(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open("rb") as f:
        return [s for s in yaml.safe_load_all(f) if s]


def cases(loaded: list[dict], xfail: Mapping[str, str] | None = None) -> Iterator:
    """pytest params (scenario index, case name, case), id'd by name; a name in
    ``xfail`` must fail (strict), for the RFC reason given."""
    xfail = xfail or {}
    for index, scenario in enumerate(loaded):
        for name, case in scenario["tests"].items():
            marks = [pytest.mark.xfail(reason=xfail[name], strict=True)] if name in xfail else []
            yield pytest.param(index, name, case, id=name, marks=marks)
