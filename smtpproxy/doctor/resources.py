"""What the scan and the store need, checked: the resolver, the DNS lists, the store, the DKIM keys.

- ``dns``: the configured resolver answers, and how fast;
- ``dnsbl``: each configured list answers this resolver: an IP list's test
  entry (127.0.0.2) is listed; an answer in 127.255.255.0/24 or one of the
  zone's ``blocked_codes`` means the list refuses queries from this resolver
  (Spamhaus refuses large public resolvers), which would make every lookup
  worthless;
- ``store``: reachable and how fast; for Redis, ``maxmemory-policy`` must not
  evict (every key we write has a TTL, so even volatile-* policies drop
  greylist, rate-limit and Bayes state);
- ``dkim``: each selector's DNS record publishes its key (``dkim check``'s
  code), and each key file is readable by the service user only.
"""

from __future__ import annotations

import asyncio
import grp
import ipaddress
import os
import pwd
import stat
import time

from smtpproxy.common.config import Config, ConfigError
from smtpproxy.common.dns import DnsTempError, Resolver
from smtpproxy.common.store import StoreError, open_store
from smtpproxy.doctor import FAIL, OK, WARN, Finding
from smtpproxy.sign import keys as keymod

SLOW_DNS_S = 1.0
SLOW_STORE_S = 0.1
SERVICE_USER = "smtpproxy"  # the units' User= and Group= (README, Installing)
REFUSED = ipaddress.ip_network("127.255.255.0/24")
# What the resolver is asked to show that it answers (any answer will do, NXDOMAIN too).
PROBE_NAME = "example.com"
# Redis policies that never drop a key to make room.
SAFE_REDIS_POLICIES = ("noeviction",)


async def check(cfg: Config) -> list[Finding]:
    out: list[Finding] = []
    resolver = Resolver(cfg.dns)
    try:
        out += await _check_dns(cfg, resolver)
        out += await _check_store(cfg)
        out += await _check_dkim(cfg, resolver)
    finally:
        resolver.close()
    return out


async def _check_dns(cfg: Config, resolver: Resolver) -> list[Finding]:
    server = cfg.dns.nameserver or "/etc/resolv.conf"
    started = time.monotonic()
    try:
        # A name that exists everywhere ("." would never be sent: the resolver
        # answers names that cannot exist without asking).
        await resolver.query(PROBE_NAME, "NS")
    except DnsTempError as exc:
        return [Finding(FAIL, "dns", server, f"the resolver does not answer ({exc.reason})",
                        'dns.nameserver = "127.0.0.1" with a local resolver (apt-get install unbound)')]
    took = time.monotonic() - started
    out = [Finding(WARN if took > SLOW_DNS_S else OK, "dns", server, f"answers in {took * 1000:.0f} ms",
                   "a local caching resolver (unbound) on 127.0.0.1" if took > SLOW_DNS_S else "")]
    if not cfg.scan.enabled or not cfg.scan.dnsbl.enabled:
        return out
    for zone in cfg.scan.dnsbl.zones:
        # The refusal answer comes for any question; an IP list also shows its test entry.
        qname = f"2.0.0.127.{zone.zone}" if zone.kind == "ip" else f"example.com.{zone.zone}"
        try:
            answers = [str(r) for r in await resolver.query(qname, "A")]
        except DnsTempError as exc:
            out.append(Finding(FAIL, "dnsbl", zone.zone, f"{qname}: lookup fails ({exc.reason})",
                               f"check dns.nameserver ({server}) or remove the zone from scan.dnsbl.zones"))
            continue
        refused = [a for a in answers if ipaddress.ip_address(a) in REFUSED or a in zone.blocked_codes]
        fix = ('dns.nameserver = "127.0.0.1" with your own recursive resolver (apt-get install unbound), '
               "not a public or forwarding one; or the list's paid access (replace the zone in scan.dnsbl.zones)")
        if refused:
            out.append(Finding(FAIL, "dnsbl", zone.zone,
                               f"{qname} answers {', '.join(refused)}: the list refuses queries from this resolver",
                               fix))
        elif zone.kind == "ip" and not answers:
            out.append(Finding(WARN, "dnsbl", zone.zone,
                               f"test entry {qname} not listed: the resolver hides the list's answers "
                               "or the zone name is wrong", fix))
        else:
            seen = ", ".join(answers) or "NXDOMAIN, as expected"
            out.append(Finding(OK, "dnsbl", zone.zone, f"{qname} -> {seen}"))
    return out


async def _check_store(cfg: Config) -> list[Finding]:
    url = cfg.store.url or "sqlite://" + os.path.abspath(os.path.join(cfg.state_dir, "smtpproxy.db"))
    shown = url.split("@")[-1] if "@" in url else url  # no password in the report
    if url.startswith("sqlite://") and not os.path.exists(url[len("sqlite://"):]):
        return [Finding(WARN, "store", shown, "the SQLite file does not exist yet (the daemon creates it)",
                        "start smtpproxy, or give -c the configuration (and state_dir) the daemon uses")]
    store = open_store(cfg.store, cfg.state_dir)
    try:
        started = time.monotonic()
        await store.open()
        await store.get(store.key("doctor", "probe"))
        took = time.monotonic() - started
        out = [Finding(WARN if took > SLOW_STORE_S else OK, "store", shown,
                       f"reachable, {took * 1000:.1f} ms to open and read",
                       "a store closer to this host" if took > SLOW_STORE_S else "")]
        client = getattr(store, "client", None)
        if client is not None:
            out.append(await _redis_policy(client, shown))
        return out
    except (StoreError, OSError) as exc:
        return [Finding(FAIL, "store", shown, f"unreachable: {exc}",
                        "start the store (systemctl start redis-server) or fix store.url")]
    finally:
        await store.close()


async def _redis_config(client, name: str) -> str:
    if hasattr(client, "execute"):  # store/resp.py's FastRedis
        reply = await client.execute("CONFIG", "GET", name)
        return (reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])) if reply else ""
    reply = await client.config_get(name)
    return str(reply.get(name, ""))


async def _redis_policy(client, shown: str) -> Finding:
    try:
        async with asyncio.timeout(2):
            policy = await _redis_config(client, "maxmemory-policy")
            maxmemory = await _redis_config(client, "maxmemory")
    except Exception as exc:  # CONFIG renamed or refused: say so, it is not an outage
        return Finding(WARN, "redis", shown, f"cannot read maxmemory-policy ({exc})",
                       "make sure maxmemory-policy is noeviction in redis.conf")
    if policy in SAFE_REDIS_POLICIES or maxmemory in ("0", ""):
        return Finding(OK, "redis", shown, f"maxmemory-policy {policy}, maxmemory {maxmemory}")
    return Finding(FAIL, "redis", shown,
                   f"maxmemory-policy {policy} (maxmemory {maxmemory}): a full Redis silently drops "
                   "greylist, rate-limit and Bayes keys (every key has a TTL)",
                   "maxmemory-policy noeviction in redis.conf (CONFIG SET maxmemory-policy noeviction)")


async def _check_dkim(cfg: Config, resolver: Resolver) -> list[Finding]:
    from smtpproxy.sign.cli import check_records, configured_keys
    from smtpproxy.sign.tables import TableError, load_tables

    if not cfg.sign.key_table and not cfg.sign.arc.key_file:
        return []
    domains = set()
    if cfg.sign.key_table:
        try:
            tables = load_tables(cfg.sign.key_table, cfg.sign.signing_table)
        except TableError as exc:
            return [Finding(FAIL, "dkim", cfg.sign.key_table, str(exc), f"fix sign.{exc.which}")]
        domains |= {k.domain for k in tables.keys.values()}
    if cfg.sign.arc.key_file:
        domains.add(cfg.sign.arc.domain.lower())
    out = []
    for domain in sorted(domains):
        try:
            wanted = configured_keys(cfg, domain)
        except ConfigError as exc:
            out.append(Finding(FAIL, "dkim", domain, str(exc), f"fix {exc.args[0] if exc.args else 'sign'}"))
            continue
        for (name, ok, text), (_, _path, key) in zip(await check_records(resolver, domain, wanted), wanted,
                                                    strict=True):
            if ok:
                out.append(Finding(OK, "dkim", name, text))
            else:
                out.append(Finding(FAIL, "dkim", name, text,
                                   f"publish: {keymod.zone_line(domain, name.split('.')[0], key)}"))
        for _, path, _ in wanted:
            out.append(_key_file(path))
    return out


def _key_file(path: str) -> Finding:
    try:
        st = os.stat(path)
    except OSError as exc:
        return Finding(FAIL, "keyfile", path, f"cannot stat: {exc.strerror}", "fix the key table")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        return Finding(FAIL, "keyfile", path, f"mode {mode:04o}: readable by every user",
                       f"chmod 0640 {path}; chgrp {SERVICE_USER} {path}")
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return Finding(OK, "keyfile", path, f"mode {mode:04o} (no user {SERVICE_USER} on this host to check)")
    group_ok = st.st_gid == user.pw_gid and mode & 0o040
    if st.st_uid != user.pw_uid and not group_ok:
        owner = f"{_name(pwd.getpwuid, st.st_uid)}:{_name(grp.getgrgid, st.st_gid)}"
        return Finding(FAIL, "keyfile", path, f"owned by {owner}, mode {mode:04o}: the service user cannot read it",
                       f"chown root:{SERVICE_USER} {path}; chmod 0640 {path}")
    return Finding(OK, "keyfile", path, f"mode {mode:04o}, not readable by others")


def _name(lookup, ident: int) -> str:
    try:
        return lookup(ident)[0]
    except KeyError:
        return str(ident)
