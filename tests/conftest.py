"""Make the repository importable as-is (``import smtpproxy``, ``import tests.support``),
and offer the shared server fixtures to every test directory.

``pytest_plugins`` is only allowed in this top-level conftest: the real
redis-server fixtures (``redis_server``, ``redis_sentinel``, ``redis_cluster``)
live in tests/support/redis.py and are used by tests/store, tests/bayes and
tests/policy alike.
"""

import os
import sys
from pathlib import Path

from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest_plugins = ["tests.support.redis"]

# Property-based tests (tests/unit/test_fuzz_*.py): bounded and reproducible in
# the suite; HYPOTHESIS_PROFILE=long (or bench/fuzz.py) for a long run.
from tests.support.fuzz import register_profiles  # noqa: E402

register_profiles()
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
