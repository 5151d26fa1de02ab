"""Fixtures that start real servers: a private Postfix, smtp-sink, the proxy."""

from __future__ import annotations

import pytest

from tests.support.pipeline import Pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """One shared pipeline per test module; tests must leave it running."""
    p = Pipeline(tmp_path_factory.mktemp("pipeline"))
    p.start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def fresh_pipeline(tmp_path):
    """A pipeline of the test's own, for tests that break or reconfigure things."""
    made: list[Pipeline] = []

    def make(**kwargs) -> Pipeline:
        p = Pipeline(tmp_path / f"p{len(made)}", **kwargs)
        made.append(p)
        p.start()
        return p

    yield make
    for p in made:
        p.stop()
