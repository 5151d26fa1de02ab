"""Who may ask the controller what: password hashes, secure_ip, the wrong-password limiter.

Passwords are kept as scrypt hashes (``smtpproxy pw`` writes them, like
``rspamadm pw``): ``$scrypt$ln=14,r=8,p=1$<salt>$<hash>``, salt and hash in
unpadded base64. Checking one costs ~40 ms of CPU, so it runs in a worker
thread, and a password that matched is remembered (an HMAC of it under a
key of this process) so rspamc learning a directory pays once.

Levels, as rspamd has them: ``password`` reads, ``enable_password`` reads
and writes. Empty ``password``: reads are open; empty ``enable_password``:
``password`` writes too; both empty: writes only from ``secure_ip``, which
needs no password at all.

Wrong passwords: each is logged (the client's address, never what it sent)
and counted per address; past ``auth_failures_max`` within
``auth_failure_window_s`` the address gets 429 without its password being
hashed at all, so guessing is slow and costs us nothing.

A request that changes state must not come from a browser page of another
origin: one whose Origin (or Sec-Fetch-Site) says so is refused, whatever
its password or address.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import os
import time
from collections import OrderedDict

from smtpproxy.common.config import PASSWORD_HASH_PREFIX, ControllerConfig, parse_networks

logger = logging.getLogger("smtpproxy.controller")

SCRYPT_LN, SCRYPT_R, SCRYPT_P = 14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
# Addresses tracked by the limiter, and passwords remembered as good.
MAX_TRACKED = 4096
MAX_REMEMBERED = 64

READ, WRITE = "read", "write"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(SALT_BYTES)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=1 << SCRYPT_LN, r=SCRYPT_R,
                            p=SCRYPT_P, dklen=HASH_BYTES, maxmem=64 << 20)
    return f"{PASSWORD_HASH_PREFIX}ln={SCRYPT_LN},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (a hash_password result); False for a bad hash."""
    try:
        params, salt_text, hash_text = stored[len(PASSWORD_HASH_PREFIX):].split("$")
        opts = dict(part.split("=", 1) for part in params.split(","))
        ln, r, p = int(opts["ln"]), int(opts["r"]), int(opts["p"])
        salt, expected = _unb64(salt_text), _unb64(hash_text)
        if not (1 <= ln <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
            return False
        digest = hashlib.scrypt(password.encode(), salt=salt, n=1 << ln, r=r, p=p,
                                dklen=len(expected), maxmem=256 << 20)
    except (ValueError, KeyError):
        return False
    return hmac.compare_digest(digest, expected)


class AuthFailures:
    """Wrong passwords per client address within a sliding window."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, list[float]] = OrderedDict()

    def blocked(self, addr: str, cfg: ControllerConfig, now: float) -> bool:
        times = self._seen.get(addr)
        if not times:
            return False
        times[:] = [t for t in times if now - t < cfg.auth_failure_window_s]
        return len(times) >= cfg.auth_failures_max

    def failed(self, addr: str, now: float) -> None:
        self._seen.setdefault(addr, []).append(now)
        self._seen.move_to_end(addr)
        while len(self._seen) > MAX_TRACKED:
            self._seen.popitem(last=False)


class Decision:
    """What auth.check found: the level granted, or the HTTP status and error."""

    def __init__(self, status: int = 0, error: str = "", level: str = ""):
        self.status, self.error, self.level = status, error, level

    @property
    def ok(self) -> bool:
        return self.status == 0


class Authenticator:
    """One per controller; ``configure`` on every (re)load."""

    def __init__(self, cfg: ControllerConfig):
        self.failures = AuthFailures()
        self._key = os.urandom(32)
        self._good: OrderedDict[bytes, str] = OrderedDict()  # HMAC(password) -> level
        # One hash at a time: a flood of guesses must not take every worker thread.
        self._hashing = asyncio.Semaphore(1)
        self.configure(cfg)

    def configure(self, cfg: ControllerConfig) -> None:
        if getattr(self, "cfg", None) is not None and (
                (cfg.password, cfg.enable_password) != (self.cfg.password, self.cfg.enable_password)):
            self._good.clear()
        self.cfg = cfg
        self.secure = parse_networks(cfg.secure_ip, "controller.secure_ip")

    def is_secure(self, addr: str | None) -> bool:
        try:
            ip = ipaddress.ip_address((addr or "").split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.secure)

    async def _level(self, password: str) -> str | None:
        """The level ``password`` grants (WRITE, READ), None when it grants nothing."""
        tag = hmac.new(self._key, password.encode("utf-8", "surrogateescape"), "sha256").digest()
        if tag in self._good:
            return self._good[tag]
        cfg = self.cfg
        level = None
        async with self._hashing:
            if cfg.enable_password and await asyncio.to_thread(
                    verify_password, password, cfg.enable_password):
                level = WRITE
            elif cfg.password and await asyncio.to_thread(verify_password, password, cfg.password):
                level = READ if cfg.enable_password else WRITE
        if level is not None:
            self._good[tag] = level
            while len(self._good) > MAX_REMEMBERED:
                self._good.popitem(last=False)
        return level

    async def check(self, addr: str | None, password: str | None, need: str) -> Decision:
        """May a client at ``addr`` sending ``password`` (None: no header) do ``need``?
        When it may, ``level`` is the most it may do (READ or WRITE)."""
        cfg = self.cfg
        if addr is None or self.is_secure(addr):  # addr None: a unix: socket, guarded by its mode
            return Decision(level=WRITE)
        if not cfg.password and not cfg.enable_password:
            if need == READ:
                return Decision(level=READ)
            return Decision(403, "writes are allowed from controller.secure_ip only")
        if password is None:
            if need == READ and not cfg.password:
                return Decision(level=READ)
            return Decision(403, "password required")
        now = time.monotonic()
        if self.failures.blocked(addr, cfg, now):
            return Decision(429, "too many wrong passwords, try again later")
        level = await self._level(password)
        if level is None:
            self.failures.failed(addr, now)
            logger.warning("controller: wrong password from %s", addr)
            return Decision(403, "wrong password")
        if need == WRITE and level != WRITE:
            return Decision(403, "this needs the enable password")
        return Decision(level=level)


def cross_origin(headers) -> bool:
    """Whether a browser says this request comes from a page of another origin."""
    site = headers.get("Sec-Fetch-Site")
    if site and site not in ("same-origin", "none"):
        return True
    origin = headers.get("Origin")
    if origin is None:
        return False  # not a browser (rspamc, curl), or a same-origin GET
    host = headers.get("Host", "")
    return origin == "null" or origin.split("://", 1)[-1].rstrip("/") != host
