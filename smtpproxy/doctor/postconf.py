"""Postfix's configuration as the doctor reads it: ``postconf`` output, parsed.

``read(config_dir)`` runs ``postconf [-c DIR] -x`` (every main.cf parameter,
defaults included, ``$names`` expanded), ``postconf -M`` (master.cf services)
and ``postconf -P -x`` (each service's ``-o`` overrides, expanded), and
returns a ``Postfix``. ``param(service, name)`` is the value a service runs
with: its override, else main.cf's. Raises ``PostconfError`` with postconf's
own message when it cannot run.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from dataclasses import dataclass, field

POSTCONF = "postconf"
TIMEOUT_S = 30.0
_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class PostconfError(Exception):
    pass


@dataclass
class Service:
    name: str          # the master.cf name: "smtp", "127.0.0.1:10026", "submission"
    type: str          # inet, unix, pass, ...
    chroot: str        # y, n or - (the default, n since Postfix 3.0)
    command: str       # smtpd, pickup, ...
    overrides: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}/{self.type}"

    @property
    def host(self) -> str:
        """The explicit listening host ("" when the service follows inet_interfaces)."""
        if self.type != "inet" or ":" not in self.name:
            return ""
        return self.name.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> str:
        return self.name.rpartition(":")[2] if self.type == "inet" else ""

    @property
    def loopback_only(self) -> bool:
        host = self.host
        if host == "localhost":
            return True
        try:
            return bool(host) and ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def chrooted(self) -> bool:
        return self.chroot == "y"


@dataclass
class Postfix:
    config_dir: str | None
    main: dict[str, str]
    services: list[Service]

    def param(self, service: Service | None, name: str) -> str:
        if service is not None and name in service.overrides:
            return service.overrides[name]
        return self.main.get(name, "")

    def smtpd_services(self) -> list[Service]:
        return [s for s in self.services if s.command == "smtpd" and s.type in ("inet", "pass")]

    def find_inet(self, host: str, port: int) -> Service | None:
        """The inet smtpd service listening on host:port (explicitly, or through inet_interfaces)."""
        exact, bare = None, None
        for s in self.smtpd_services():
            if s.type != "inet" or _port_number(s.port) != port:
                continue
            if s.host and _same_host(s.host, host):
                exact = s
            elif not s.host:
                bare = s
        return exact or bare


def _same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.lower() == b.lower()


_SERVICES = {"smtp": 25, "submission": 587, "submissions": 465, "smtps": 465}


def _port_number(port: str) -> int | None:
    if port.isdigit():
        return int(port)
    return _SERVICES.get(port)


def time_s(value: str) -> float | None:
    """A Postfix time value ("100s", "2m", "300") in seconds; None when it is not one."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", value)
    if not m:
        return None
    return float(m.group(1)) * _TIME_UNITS[m.group(2) or "s"]


def _postconf(config_dir: str | None, *args: str) -> str:
    argv = [POSTCONF, *(("-c", config_dir) if config_dir else ()), *args]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    except FileNotFoundError:
        raise PostconfError("postconf not found (is Postfix installed?)") from None
    except subprocess.TimeoutExpired:
        raise PostconfError(f"{' '.join(argv)} did not finish in {TIMEOUT_S:g}s") from None
    if out.returncode != 0:
        raise PostconfError(out.stderr.strip() or f"{' '.join(argv)} exited {out.returncode}")
    return out.stdout


def parse_params(text: str) -> dict[str, str]:
    params = {}
    for line in text.splitlines():
        name, sep, value = line.partition(" = ")
        if not sep and line.endswith(" ="):
            name, sep, value = line[:-2], " =", ""
        if sep:
            params[name.strip()] = value.strip()
    return params


def parse_services(master: str, overrides: str) -> list[Service]:
    services = []
    for line in master.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        services.append(Service(name=fields[0], type=fields[1], chroot=fields[4], command=fields[7]))
    by_key = {s.key: s for s in services}
    for line in overrides.splitlines():
        left, sep, value = line.partition(" = ")
        if not sep and line.endswith(" ="):
            left, sep, value = line[:-2], " =", ""
        if not sep:
            continue
        key, _, param = left.strip().rpartition("/")  # "name/type/param"
        service = by_key.get(key)
        if service is not None:
            service.overrides[param] = value.strip()
    return services


def read(config_dir: str | None) -> Postfix:
    main = parse_params(_postconf(config_dir, "-x"))
    services = parse_services(_postconf(config_dir, "-M"), _postconf(config_dir, "-P", "-x"))
    return Postfix(config_dir=config_dir, main=main, services=services)
