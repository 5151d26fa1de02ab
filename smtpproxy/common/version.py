"""The installed distribution's version, for ``--version`` of both programs.

Read from the package metadata (pyproject.toml's ``version``), so a wheel, an
editable checkout and a system package all report what was installed.
"""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "smtpproxy"


def version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"
