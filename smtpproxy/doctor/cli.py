"""``smtpproxy doctor [-c CONFIG] [--postfix-config DIR] [--json] [--ignore-service SERVICE ...]``.

One line per check (OK / WARN / FAIL, what was seen, the fix), or with
--json one object with every finding. Exit 0 when nothing FAILed, 1 when
something did, 2 for a configuration that does not load.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from smtpproxy.doctor import FAIL, OK, Finding


def cmd_doctor(args: argparse.Namespace) -> int:
    from smtpproxy.cliconfig import load_with_flags
    from smtpproxy.common.runtime import run
    from smtpproxy.doctor import postconf, resources, wiring

    cfg = load_with_flags(args)
    findings: list[Finding] = []
    try:
        pf = postconf.read(args.postfix_config)
    except postconf.PostconfError as exc:
        findings.append(Finding(FAIL, "postconf", args.postfix_config or "/etc/postfix", str(exc),
                                "install Postfix or give --postfix-config DIR"))
    else:
        findings.append(Finding(OK, "postconf", args.postfix_config or "/etc/postfix",
                                f"{len(pf.services)} services, {len(pf.smtpd_services())} smtpd"))
        ignore = frozenset((*cfg.doctor.ignore_services, *(args.ignore_service or ())))
        findings += wiring.check(pf, cfg, ignore)
    findings += run(resources.check(cfg))
    failed = any(f.status == FAIL for f in findings)
    if args.json:
        print(json.dumps({"ok": not failed, "findings": [f.as_dict() for f in findings]}, indent=1))
    else:
        for f in findings:
            print(f.line())
        counts = {s: sum(1 for f in findings if f.status == s) for s in ("OK", "WARN", "FAIL")}
        print(f"{counts['OK']} ok, {counts['WARN']} warnings, {counts['FAIL']} failed")
    sys.stdout.flush()
    return 1 if failed else 0


def add_parsers(sub: Any, with_config: Any) -> None:
    doctor = with_config(sub.add_parser(
        "doctor", help="is the proxy wired into Postfix, and can it do its work? (OK/WARN/FAIL)"))
    doctor.add_argument("--postfix-config", metavar="DIR",
                        help="Postfix configuration directory (postconf -c DIR); default: Postfix's own")
    doctor.add_argument("--ignore-service", metavar="SERVICE", action="append",
                        help="a public smtpd (NAME or NAME/TYPE) deliberately left without the proxy")
    doctor.add_argument("--json", action="store_true", help="one JSON object with every finding")
    doctor.add_argument("--state-dir", metavar="DIR", help="state directory (where the SQLite store is)")
    doctor.set_defaults(func=cmd_doctor)
