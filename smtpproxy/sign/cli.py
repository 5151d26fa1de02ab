"""``smtpproxy dkim``: key generation and checking the published records.

    smtpproxy dkim keygen -d DOMAIN -s SELECTOR [--type rsa|ed25519] [--bits N] [--dir DIR]
    smtpproxy dkim check [-c FILE] -d DOMAIN [--dns HOST:PORT]

keygen writes DIR/DOMAIN.SELECTOR.key (mode 0640; an existing file is never
overwritten) and prints the DNS record in zone-file form, its value split
into 255-octet strings, with the key table line as a comment. check looks up
the record of every selector the configuration has for DOMAIN (the key
table, and the ARC key) and says whether it publishes that private key:
exit 0 when all do, 1 otherwise. docs/signing.md has the rotation procedure.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from smtpproxy.common.config import ConfigError, parse_nameserver
from smtpproxy.sign import keys as keymod


def cmd_keygen(args: argparse.Namespace) -> int:
    domain = args.domain.strip().rstrip(".").lower()
    selector = args.selector.strip().lower()
    if not domain or "." not in domain or not selector or any(c in selector for c in "/ :"):
        print("smtpproxy: dkim keygen: need a domain (-d) and a selector (-s)", file=sys.stderr)
        return 2
    path = os.path.abspath(os.path.join(args.dir, f"{domain}.{selector}.key"))
    try:
        data = keymod.generate_rsa(args.bits) if args.type == "rsa" else keymod.generate_ed25519()
        key = keymod.parse_key(data)
        keymod.write_private_key(path, data)
    except keymod.KeyError_ as exc:
        print(f"smtpproxy: dkim keygen: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"smtpproxy: dkim keygen: cannot create {path}: {exc.strerror}", file=sys.stderr)
        return 1
    detail = f"RSA {key.bits} bits" if key.key_type == "rsa" else "ed25519 (RFC 8463)"
    print(f"; private key ({detail}) written to {path}, mode 0640:")
    print("; give it to the daemon's group (chgrp smtpproxy) and add to the key table:")
    print(f";   {selector}-{domain} {domain}:{selector}:{path}")
    print(keymod.zone_line(domain, selector, key))
    return 0


def configured_keys(cfg: Any, domain: str) -> list[tuple[str, str, Any]]:
    """(selector, key path, key) of every key the configuration has for domain:
    the key table's and the ARC key. ConfigError when one does not load."""
    from smtpproxy.sign.tables import TableError, load_tables

    wanted: list[tuple[str, str, Any]] = []
    if cfg.sign.key_table:
        try:
            tables = load_tables(cfg.sign.key_table, cfg.sign.signing_table)
        except TableError as exc:
            raise ConfigError(f"sign.{exc.which}", str(exc)) from None
        wanted += [(k.selector, k.path, k.key) for k in tables.keys.values() if k.domain == domain]
    if cfg.sign.arc.key_file and cfg.sign.arc.domain.lower() == domain:
        try:
            wanted.append((cfg.sign.arc.selector, cfg.sign.arc.key_file,
                           keymod.load_key(cfg.sign.arc.key_file)))
        except keymod.KeyError_ as exc:
            raise ConfigError("sign.arc.key_file", str(exc)) from None
    return wanted


async def check_records(resolver: Any, domain: str,
                        wanted: list[tuple[str, str, Any]]) -> list[tuple[str, bool, str]]:
    """(record name, publishes the key?, the sentence for it) per configured selector."""
    from smtpproxy.common.dns import DnsTempError

    results = []
    for selector, path, key in wanted:
        name = f"{selector}._domainkey.{domain}"
        try:
            records = await resolver.txt(name)
        except DnsTempError as exc:
            results.append((name, False, f"DNS trouble ({exc.reason}), try again"))
            continue
        if not records:
            results.append((name, False, f"NOT PUBLISHED (no TXT record); key {path}"))
            continue
        matches = [keymod.record_matches(key, r) for r in records]
        if any(ok for ok, _ in matches):
            results.append((name, True, f"OK, the record publishes {path} ({key.key_type})"))
        else:
            results.append((name, False, f"MISMATCH with {path}: {matches[0][1]}"))
    return results


def cmd_check(args: argparse.Namespace) -> int:
    from smtpproxy.cliconfig import load_with_flags
    from smtpproxy.common.dns import Resolver
    from smtpproxy.common.runtime import run

    cfg = load_with_flags(args)
    domain = args.domain.strip().rstrip(".").lower()
    wanted = configured_keys(cfg, domain)
    if not wanted:
        print(f"{domain}: no selector configured for this domain")
        return 1
    dns_cfg = cfg.dns
    if args.dns:
        import dataclasses

        parse_nameserver(args.dns, "--dns")
        dns_cfg = dataclasses.replace(cfg.dns, nameserver=args.dns)

    async def check_all() -> int:
        resolver = Resolver(dns_cfg)
        try:
            results = await check_records(resolver, domain, wanted)
        finally:
            resolver.close()
        for name, _ok, text in results:
            print(f"{name}: {text}")
        return 0 if all(ok for _, ok, _ in results) else 1

    return run(check_all())


def add_parsers(sub: Any, with_config: Any) -> None:
    dkim_parser = sub.add_parser("dkim", help="DKIM keys: generate, check the DNS records")
    dkim_sub = dkim_parser.add_subparsers(dest="dkim_command", required=True, metavar="COMMAND")

    keygen = dkim_sub.add_parser("keygen", help="write a private key, print its DNS record")
    keygen.add_argument("-d", "--domain", required=True, help="the signing domain (d=)")
    keygen.add_argument("-s", "--selector", required=True, help="the selector (s=)")
    keygen.add_argument("--type", choices=("rsa", "ed25519"), default="rsa")
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    keygen.add_argument("--dir", default=".", help="where the key file goes (default: here)")
    keygen.set_defaults(func=cmd_keygen)

    check = with_config(dkim_sub.add_parser(
        "check", help="does DNS publish the configured keys of a domain?"))
    check.add_argument("-d", "--domain", required=True)
    check.add_argument("--dns", metavar="HOST:PORT", help="nameserver to ask")
    check.set_defaults(func=cmd_check)
