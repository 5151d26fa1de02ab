"""Robustness: every message of the shared corpora scans without an exception.

The SpamAssassin public corpus, its test data and every MIME corpus go through
the parser and all offline checks, attachments (archives, olevba) included (no
DNS here). A check that raised would show up as CHECK_ERROR; an unscored
symbol would be a KeyError.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from smtpproxy.common import config
from smtpproxy.scan.checks.attachments import AttachmentsCheck
from smtpproxy.scan.checks.base import CheckContext
from smtpproxy.scan.checks.gtube import GtubeCheck
from smtpproxy.scan.checks.headers import HeadersCheck
from smtpproxy.scan.checks.mime import MimeCheck
from smtpproxy.scan.engine import Engine
from smtpproxy.scan.message import parse
from smtpproxy.transaction import ClientInfo

CORPORA = Path(__file__).resolve().parents[2].parent / "shared" / "corpora"
NOT_MESSAGES = (".md", ".tsv", ".yml", ".yaml", ".json", ".py", ".key", ".private", ".pem",
                ".gitattributes", ".txt")


def corpus_files(*subdirs: str) -> list[Path]:
    files = []
    for sub in subdirs:
        for root, _, names in os.walk(CORPORA / sub):
            files.extend(Path(root) / n for n in names if not n.endswith(NOT_MESSAGES))
    return sorted(files)


@pytest.mark.integration
@pytest.mark.parametrize("subdirs", [("spam-ham",), ("spamassassin-t-data",), ("mime",)])
def test_corpus_scans_without_exception(subdirs):
    files = corpus_files(*subdirs)
    assert len(files) > 50, f"corpus {subdirs} not found under {CORPORA}"
    full = config.load(None)
    cfg = full.scan
    engine = Engine(cfg, [GtubeCheck(), HeadersCheck(), MimeCheck(), AttachmentsCheck(full)])

    async def scan_all():
        errors = []
        for path in files:
            ctx = CheckContext(message=parse(path.read_bytes()), client=ClientInfo(helo="x.example"),
                               mail_from="", rcpt_tos=[], profile="inbound", resolver=None)
            result = await engine.scan(ctx)
            if "CHECK_ERROR" in result.symbols or "CHECK_TIMEOUT" in result.symbols:
                errors.append((path.name, result.summary()))
        return errors

    assert asyncio.run(scan_all()) == []
