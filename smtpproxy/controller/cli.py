"""``smtpproxy pw``, ``smtpproxy history`` and ``smtpproxy trace``.

    smtpproxy pw [-p PASSWORD]
    smtpproxy history [-c FILE] [--since AGE|TIME] [--action A] [--from ADDR] [--rcpt ADDR]
                      [--limit N] [--json]
    smtpproxy trace [-c FILE] [--json] REF|QUEUEID|MESSAGE-ID

``pw`` prints the hash for controller.password or enable_password as its
last line (the password from -p, else asked on the terminal, else the first
line of standard input), like ``rspamadm pw``.

``history`` and ``trace`` read the configured store (SQLite here, or the
Redis every MX host shares). ``trace`` shows one row with every symbol
explained by its description from the symbols table. Exit status: 0; 1
when ``trace`` finds nothing; 75 when the store is unusable.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import getpass
import json
import re
import sys
import time

from smtpproxy.cliconfig import load_with_flags
from smtpproxy.common.config import ConfigError
from smtpproxy.common.store import StoreError, open_store
from smtpproxy.controller.auth import hash_password
from smtpproxy.controller.history import HistoryStore, matches
from smtpproxy.scan.engine import load_symbols

PROGRAM = "smtpproxy"
EX_TEMPFAIL = 75
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def cmd_pw(args: argparse.Namespace) -> int:
    password = args.password
    if password is None:
        if sys.stdin.isatty():
            password = getpass.getpass("Enter passphrase: ")
            if getpass.getpass("Repeat passphrase: ") != password:
                print(f"{PROGRAM}: the passwords differ", file=sys.stderr)
                return 1
        else:
            password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print(f"{PROGRAM}: an empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def parse_since(text: str, now: float) -> float:
    """"2h", "30m", "1d" ago, an ISO time, or Unix seconds -> Unix seconds."""
    match = _AGE.fullmatch(text)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ConfigError("--since", f"expected 2h, 30m, 1d, an ISO time or Unix seconds: {text!r}") \
            from None


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


async def _history_store(cfg):
    store = open_store(cfg.store, cfg.state_dir)
    await store.open()
    return store, HistoryStore(store, cfg.history)


def _guarded(main) -> int:
    try:
        return asyncio.run(main())
    except StoreError as exc:
        print(f"{PROGRAM}: store unusable: {exc}", file=sys.stderr)
        return EX_TEMPFAIL


def cmd_history(args: argparse.Namespace) -> int:
    cfg = load_with_flags(args)
    since = parse_since(args.since, time.time()) if args.since else 0.0

    async def main() -> int:
        store, history = await _history_store(cfg)
        shown = 0
        try:
            async for row in history.newest():
                if since and row.get("unix_time", 0) < since:
                    break
                if not matches(row, action=args.action or "", sender=args.sender or "",
                               rcpt=args.rcpt or ""):
                    continue
                if args.json:
                    print(json.dumps(row, ensure_ascii=False))
                else:
                    print(f"{_when(row['unix_time'])} {row.get('host', '')} "
                          f"{row.get('ref') or row.get('qid') or '-'} {row.get('action')} "
                          f"{row.get('score', 0):.2f} {row.get('ip') or '-'} "
                          f"<{row.get('sender_smtp', '')}> -> "
                          f"{','.join(row.get('rcpt_smtp', []))} "
                          f"\"{row.get('subject', '')[:60]}\"")
                shown += 1
                if shown >= args.limit:
                    break
        finally:
            await store.close()
        return 0

    return _guarded(main)


def policy_text(entry: dict) -> str:
    """One policy decision of a row (controller/history.py) in words."""
    parts = []
    if entry.get("whitelisted"):
        parts.append(f"whitelisted ({entry['whitelisted']})")
    if entry.get("greylist"):
        text = f"greylist {entry['greylist']}"
        if "delayed_s" in entry:
            text += f", delayed {entry['delayed_s']}s"
        elif "wait_s" in entry:
            text += f", wait {entry['wait_s']}s"
        parts.append(text)
    if entry.get("ratelimit"):
        parts.append(f"rate limit {entry['ratelimit']}: {entry.get('action', '')}")
    return "; ".join(parts) or "-"


def describe(row: dict, descriptions: dict[str, str]) -> list[str]:
    lines = [
        f"time:        {_when(row['unix_time'])} ({row['unix_time']})",
        f"host:        {row.get('host', '')} listener {row.get('listener', '')} "
        f"profile {row.get('profile', '')} session {row.get('session', '')}",
        f"client:      {row.get('ip') or '-'} name {row.get('client_name') or '-'} "
        f"helo {row.get('helo') or '-'}",
        f"envelope:    <{row.get('sender_smtp', '')}> -> "
        f"{', '.join('<' + r + '>' for r in row.get('rcpt_smtp', []))}",
        f"from:        {row.get('sender_mime', '')}",
        f"subject:     {row.get('subject', '')}",
        f"message-id:  {row.get('message-id', '')}",
        f"size:        {row.get('size', 0)} bytes",
        f"score:       {row.get('score', 0):.2f} / {row.get('required_score', 0):.2f}",
        f"action:      {row.get('action', '')} (outcome {row.get('verdict', '')})",
        f"reply:       {row.get('reply', '')}",
        f"queue id:    {row.get('qid') or '-'}",
        f"reference:   {row.get('ref') or '-'}",
        f"scan time:   {row.get('time_real', 0):.3f}s",
    ]
    for entry in row.get("policy", []):
        lines.append(f"policy:      <{entry.get('rcpt', '')}> {policy_text(entry)}")
    lines.append("symbols:")
    for name, sym in row.get("symbols", {}).items():
        options = f" [{', '.join(sym.get('options', []))}]" if sym.get("options") else ""
        lines.append(f"  {name} ({sym.get('score', 0):.2f}){options}")
        if descriptions.get(name):
            lines.append(f"      {descriptions[name]}")
    return lines


def cmd_trace(args: argparse.Namespace) -> int:
    cfg = load_with_flags(args)
    try:
        descriptions = {name: d.description for name, d in load_symbols(cfg.scan).items()}
    except ConfigError:
        descriptions = {}

    async def main() -> int:
        store, history = await _history_store(cfg)
        try:
            row = await history.find(args.id)
        finally:
            await store.close()
        if row is None:
            print(f"{PROGRAM}: no history row for {args.id}", file=sys.stderr)
            return 1
        if args.json:
            for name, sym in row.get("symbols", {}).items():
                sym["description"] = descriptions.get(name, "")
            print(json.dumps(row, ensure_ascii=False, indent=1))
        else:
            print("\n".join(describe(row, descriptions)))
        return 0

    return _guarded(main)


def add_parsers(sub, with_config) -> None:
    pw = sub.add_parser("pw", help="hash a controller password (controller.password)")
    pw.add_argument("-p", "--password", metavar="PASSWORD",
                    help="the password (else asked, or read from standard input)")
    pw.set_defaults(func=cmd_pw)

    history = with_config(sub.add_parser("history", help="list scanned messages, newest first"))
    history.add_argument("--state-dir", metavar="DIR", help="state directory")
    history.add_argument("--since", metavar="AGE|TIME", help="2h, 30m, 1d, an ISO time or Unix seconds")
    history.add_argument("--action", metavar="ACTION",
                         help="reject, soft reject, greylist, add header, no action, ...")
    history.add_argument("--from", dest="sender", metavar="ADDR", help="sender contains ADDR")
    history.add_argument("--rcpt", metavar="ADDR", help="a recipient contains ADDR")
    history.add_argument("--limit", type=int, default=100, metavar="N", help="at most N rows")
    history.add_argument("--json", action="store_true", help="one JSON object per row")
    history.set_defaults(func=cmd_history)

    trace = with_config(sub.add_parser("trace", help="one message's row with every symbol explained"))
    trace.add_argument("--state-dir", metavar="DIR", help="state directory")
    trace.add_argument("--json", action="store_true", help="the row as JSON")
    trace.add_argument("id", metavar="REF|QUEUEID|MESSAGE-ID")
    trace.set_defaults(func=cmd_trace)
