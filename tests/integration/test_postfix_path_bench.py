"""bench/postfix_path_bench.py, tiny: both paths through Postfix answer and scan every message.

Five messages per path, one DNS delay, two sessions in flight: the bench's
plumbing (XCLIENT per session, the proxy daemon behind smtpd_proxy_filter,
rspamd's proxy worker as a milter, the counters and the check pass) works,
and neither path passes mail unscanned. No figure is asserted.
"""

from __future__ import annotations

import shutil

import pytest

from bench.postfix_path_bench import parse_args, run_bench

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("rspamd") is None or shutil.which("postfix") is None,
                       reason="needs Debian's rspamd and postfix"),
]


def test_both_paths_answer_and_scan_every_message():
    out = run_bench(parse_args(["--messages", "5", "--delay-ms", "0", "--concurrency", "2",
                                "--no-install"]), log=lambda _text: None)
    for path in ("proxy", "milter"):
        [run] = out.results[path, 0.0, 2]
        assert run.outcomes["accepted"] + run.outcomes["rejected"] == out.n, (path, run.outcomes)
        assert sum(run.queries.values()) > 0, path  # cold: every message asked the DNS server
        scans = run.counters["scanned"] if path == "milter" else sum(
            v for k, v in run.counters.items() if k.startswith("action:"))
        assert scans == out.n, (path, run.counters)
        accepted = out.checked[path]["accepted"]
        assert accepted and out.headers[path]["delivered"] == accepted, (path, out.headers[path])
        for header in ("X-Spamd-Result", "Authentication-Results", "A-R spf=", "A-R dkim="):
            assert out.headers[path][header] == accepted, (path, header, out.headers[path])
    assert out.warm[0.0, 2][0].counters, "the second smtpproxy pass was scanned too"
