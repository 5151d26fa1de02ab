"""Building the signer from the configuration (start-up, reload and configtest).

``build_signer(cfg)`` loads the signing tables, every key they name and the
ARC sealing key now, so a bad or unreadable key is a ConfigError naming the
configuration key (``sign.key_table``, ``sign.arc.key_file``) at start-up
and at ``configtest``, never a surprise mid-message. ``key_warnings(cfg)``
lists key files readable by others, for configtest.
"""

from __future__ import annotations

import socket

from smtpproxy.common.config import Config, ConfigError
from smtpproxy.mailauth.bridge import shared_pool
from smtpproxy.sign import NoSigner, Signer
from smtpproxy.sign.keys import KeyError_, load_key, loose_permissions
from smtpproxy.sign.tables import TableError, TableSource


def build_signer(cfg: Config, resolver=None) -> Signer:
    """The signer for ``cfg``; ``resolver`` (the daemon's one Resolver) verifies ARC chains
    the scan did not verify. Without one (configtest) such a chain cannot be sealed."""
    sign = cfg.sign
    if not sign.key_table and not sign.arc.profiles:
        return NoSigner()
    from smtpproxy.sign.signer import ArcSealer, ProxySigner

    tables = None
    if sign.key_table:
        try:
            tables = TableSource(sign.key_table, sign.signing_table, sign.table_check_interval_s)
        except TableError as exc:
            raise ConfigError(f"sign.{exc.which}", str(exc)) from None
    sealer = None
    if sign.arc.profiles:
        try:
            key = load_key(sign.arc.key_file)
        except KeyError_ as exc:
            raise ConfigError("sign.arc.key_file", str(exc)) from None
        if key.key_type != "rsa":
            raise ConfigError("sign.arc.key_file", "ARC seals with RSA keys only")
        authserv_id = (sign.arc.authserv_id or cfg.scan.authserv_id or cfg.proxy.hostname
                       or socket.getfqdn())
        sealer = ArcSealer(sign.arc, authserv_id, key, resolver, cfg.scan.arc.min_rsa_key_bits)
    return ProxySigner(sign, tables, sealer, shared_pool("sign", sign.pool_threads))


def key_warnings(cfg: Config) -> list[str]:
    """Key files whose mode lets others read them (or the group write them)."""
    paths = []
    if cfg.sign.key_table:
        try:
            paths += [k.path for k in TableSource(cfg.sign.key_table, cfg.sign.signing_table,
                                                  1.0).tables.keys.values()]
        except TableError:
            pass  # build_signer reports it
    if cfg.sign.arc.key_file:
        paths.append(cfg.sign.arc.key_file)
    return [w for w in (loose_permissions(p) for p in dict.fromkeys(paths)) if w]
