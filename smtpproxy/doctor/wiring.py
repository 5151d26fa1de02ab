"""Is the proxy in Postfix's path? master.cf and main.cf against our configuration, and live probes.

Checks (one ``Finding`` each, per service or target):

- ``bypass``: every public smtpd (inet, not bound to a loopback address, not
  a re-injection listener) has ``smtpd_proxy_filter``, unless ignored;
- ``proxy``: each ``smtpd_proxy_filter`` target is a listener of our
  configuration, is listening, and greets as smtpproxy; ``profile``: the
  submission services use an outbound listener, the others an inbound one;
- ``reinject``: each listener's downstream is an smtpd service of this
  Postfix; ``xforward``: it authorises XFORWARD from the proxy (its EHLO
  offers XFORWARD to us, as Postfix does only for authorised hosts);
  ``loop``: it has no ``smtpd_proxy_filter`` and no ``content_filter`` that
  sends mail back in;
- ``timeout``: ``smtpd_proxy_timeout`` above ``proxy.scan_timeout_s`` +
  ``proxy.downstream_reply_timeout_s``; ``speed_adjust`` noted;
- ``policy``: each ``check_policy_service`` answers a request, and what
  Postfix does when it cannot (``default_action``);
- ``chroot``: a UNIX-socket target of a chrooted smtpd is named relative to
  the queue directory and its mode lets Postfix connect;
- ``signing``: locally submitted mail (pickup) reaches the signer when
  signing is configured.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
import stat
from dataclasses import dataclass

from smtpproxy.common.config import Config, ListenerConfig, parse_hostport
from smtpproxy.doctor import FAIL, OK, WARN, Finding
from smtpproxy.doctor.postconf import Postfix, Service, time_s

PROBE_TIMEOUT_S = 5.0
# Postfix advertises XFORWARD only to smtpd_authorized_xforward_hosts; the
# proxy connects to a loopback downstream from this address.
PROXY_SOURCE = "127.0.0.1"
SUBMISSION_PORTS = ("submission", "submissions", "smtps", "587", "465")


@dataclass(frozen=True)
class Target:
    """Where a Postfix client setting points: ("inet", host, port) or ("unix", path)."""

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""
    relative: bool = False  # a unix path as written was relative to queue_directory

    def __str__(self) -> str:
        return f"{self.host}:{self.port}" if self.kind == "inet" else f"unix:{self.path}"


def postfix_target(value: str, queue_directory: str) -> Target | None:
    """smtpd_proxy_filter / check_policy_service syntax: [inet:]host:port, unix:path (relative to the queue)."""
    value = value.strip()
    if value.startswith("unix:"):
        path = value[5:]
        relative = not path.startswith("/")
        return Target("unix", path=os.path.normpath(os.path.join(queue_directory, path)),
                      relative=relative)
    if value.startswith("inet:"):
        value = value[5:]
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit():
        return None
    return Target("inet", host=host or "localhost", port=int(port))


def config_target(listen: str) -> Target:
    if listen.startswith("unix:"):
        return Target("unix", path=os.path.normpath(listen[5:]))
    host, port = parse_hostport(listen)
    return Target("inet", host=host, port=port)


def same_target(a: Target, b: Target) -> bool:
    if a.kind != b.kind:
        return False
    if a.kind == "unix":
        return a.path == b.path
    return a.port == b.port and _same_host(a.host, b.host)


def _same_host(a: str, b: str) -> bool:
    names = {"localhost": "127.0.0.1"}
    a, b = names.get(a.lower(), a), names.get(b.lower(), b)
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.lower() == b.lower()


def postfix_form(listener: ListenerConfig, queue_directory: str) -> str:
    """How master.cf names this listener in smtpd_proxy_filter."""
    if listener.listen.startswith("unix:"):
        path = listener.listen[5:]
        queue = queue_directory.rstrip("/") + "/"
        return "unix:" + (path[len(queue):] if path.startswith(queue) else path)
    return listener.listen


# ------------------------------------------------------------------ probes


def _connect(target: Target) -> socket.socket:
    if target.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(PROBE_TIMEOUT_S)
        sock.connect(target.path)
        return sock
    return socket.create_connection((target.host, target.port), timeout=PROBE_TIMEOUT_S)


def _read_reply(f) -> list[str]:
    lines = []
    while True:
        line = f.readline(4096).decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            raise OSError("connection closed")
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            return lines


def smtp_probe(target: Target) -> tuple[str, list[str]]:
    """The greeting line and the EHLO reply lines; OSError when it cannot talk SMTP."""
    with _connect(target) as sock, sock.makefile("rb") as f:
        greeting = _read_reply(f)
        if not greeting[0].startswith("220"):
            raise OSError(f"greeting {greeting[0]!r}")
        sock.sendall(b"EHLO doctor.smtpproxy.invalid\r\n")
        ehlo = _read_reply(f)
        sock.sendall(b"QUIT\r\n")
        return greeting[0], ehlo


def policy_probe(target: Target) -> str:
    """The answer of a policy server to a harmless request (VRFY stage, counted by no rule)."""
    request = (b"request=smtpd_access_policy\nprotocol_state=VRFY\nprotocol_name=ESMTP\n"
               b"client_address=127.0.0.1\nclient_name=localhost\nhelo_name=doctor.smtpproxy.invalid\n"
               b"sender=\nrecipient=postmaster\ninstance=doctor\n\n")
    with _connect(target) as sock, sock.makefile("rb") as f:
        sock.sendall(request)
        answer = f.readline(4096).decode("utf-8", "replace").rstrip("\n")
        if not answer.startswith("action="):
            raise OSError(f"not a policy answer: {answer!r}")
        return answer


# ------------------------------------------------------------------ the checks


def _is_submission(pf: Postfix, s: Service) -> bool:
    return (s.port in SUBMISSION_PORTS or s.name in SUBMISSION_PORTS
            or s.overrides.get("smtpd_sasl_auth_enable") == "yes"
            or "submission" in s.overrides.get("syslog_name", ""))


def _listener_for(cfg: Config, target: Target) -> tuple[int, ListenerConfig] | None:
    for i, listener in enumerate(cfg.proxy.listeners):
        if same_target(config_target(listener.listen), target):
            return i, listener
    return None


def _networks(value: str) -> list:
    nets = []
    for item in re.split(r"[\s,]+", value):
        try:
            nets.append(ipaddress.ip_network(item.strip("[]"), strict=False))
        except ValueError:
            continue  # a table or a host name: the live probe decides
    return nets


def check(pf: Postfix, cfg: Config, ignore: frozenset[str] = frozenset()) -> list[Finding]:
    out: list[Finding] = []
    queue = pf.main.get("queue_directory", "/var/spool/postfix")
    inbound = next((x for x in cfg.proxy.listeners if x.profile == "inbound"), cfg.proxy.listeners[0])

    # The re-injection services: each listener's downstream.
    downstreams: dict[str, tuple[ListenerConfig, Service | None]] = {}
    for listener in cfg.proxy.listeners:
        host, port = parse_hostport(listener.downstream)
        downstreams[listener.name] = (listener, pf.find_inet(host, port))
    reinject_keys = {s.key for _, s in downstreams.values() if s is not None}

    for s in pf.smtpd_services():
        subject = f"master.cf {s.key}"
        filt = pf.param(s, "smtpd_proxy_filter")
        if s.key in reinject_keys:
            continue  # checked below as a re-injection listener
        if not filt:
            if s.loopback_only or s.type != "inet":
                continue
            if s.key in ignore or s.name in ignore:
                out.append(Finding(OK, "bypass", subject, "public smtpd without smtpd_proxy_filter, deliberately (doctor.ignore_services)"))
                continue
            out.append(Finding(
                FAIL, "bypass", subject,
                "public smtpd without smtpd_proxy_filter: mail accepted here is never scanned",
                f'add "  -o smtpd_proxy_filter={postfix_form(inbound, queue)}" under the '
                f'"{s.name} {s.type} ... smtpd" line in master.cf (or doctor.ignore_services = ["{s.key}"] if deliberate)'))
            continue
        out.append(Finding(OK, "bypass", subject, f"smtpd_proxy_filter = {filt}"))
        out += _check_target(pf, cfg, s, filt, queue)
        out += _check_timeout(pf, cfg, s)

    for listener, s in downstreams.values():
        out += _check_downstream(pf, cfg, listener, s)
    out += _check_policy(pf, cfg, queue)
    if cfg.sign.key_table:
        pickup = next((s for s in pf.services if s.command == "pickup"), None)
        if pickup is not None and not pf.param(pickup, "content_filter"):
            out.append(Finding(
                WARN, "signing", f"master.cf {pickup.key}",
                "signing is configured but locally submitted mail (sendmail, cron) does not pass the proxy",
                'add "  -o content_filter=signer:[127.0.0.1]:10027" under pickup and the signer '
                'service (conf/postfix/master.cf, docs/signing.md)'))
    return out


def _check_target(pf: Postfix, cfg: Config, s: Service, filt: str, queue: str) -> list[Finding]:
    out = []
    subject = f"master.cf {s.key}"
    target = postfix_target(filt, queue)
    if target is None:
        return [Finding(FAIL, "proxy", subject, f"smtpd_proxy_filter = {filt} is not host:port or unix:path",
                        f'-o smtpd_proxy_filter={postfix_form(cfg.proxy.listeners[0], queue)}')]
    found = _listener_for(cfg, target)
    if found is None:
        known = ", ".join(x.listen for x in cfg.proxy.listeners)
        out.append(Finding(
            FAIL, "proxy", subject,
            f"smtpd_proxy_filter = {filt} is no listener of this configuration ({known})",
            f"point it at a listener ({known}) or add a [[proxy.listeners]] with listen = \"{target}\""))
    else:
        i, listener = found
        submission = _is_submission(pf, s)
        wanted = "outbound" if submission else "inbound"
        if listener.profile != wanted:
            alt = next((x for x in cfg.proxy.listeners if x.profile == wanted), None)
            fix = (f'-o smtpd_proxy_filter={postfix_form(alt, queue)} under "{s.name}"' if alt else
                   f'add a [[proxy.listeners]] with profile = "{wanted}" and point "{s.name}" at it')
            out.append(Finding(
                FAIL, "profile", subject,
                f"{'a submission' if submission else 'an inbound'} service goes into listener "
                f"{listener.name!r} whose profile is {listener.profile}", fix))
        else:
            out.append(Finding(OK, "profile", subject, f"listener {listener.name!r}, profile {listener.profile}"))
        if target.kind == "unix":
            out += _check_socket(s, target, i, listener, queue)
    try:
        greeting, ehlo = smtp_probe(target)
    except OSError as exc:
        out.append(Finding(
            FAIL, "proxy", str(target), f"nothing answers SMTP there ({exc}): Postfix tempfails every message of {s.key}",
            "start smtpproxy (systemctl start smtpproxy) and check proxy.listeners[].listen"))
        return out
    if "smtpproxy" not in greeting:
        out.append(Finding(FAIL, "proxy", str(target), f"answers, but is not smtpproxy: {greeting!r}",
                           "point smtpd_proxy_filter at smtpproxy's listener"))
    else:
        out.append(Finding(OK, "proxy", str(target), f"smtpproxy answers: {greeting!r}"))
    return out


def _check_socket(s: Service, target: Target, i: int, listener: ListenerConfig, queue: str) -> list[Finding]:
    out = []
    subject = f"master.cf {s.key}"
    queue_prefix = queue.rstrip("/") + "/"
    if s.chrooted:
        if not target.relative or not target.path.startswith(queue_prefix):
            rel = target.path[len(queue_prefix):] if target.path.startswith(queue_prefix) else None
            out.append(Finding(
                FAIL, "chroot", subject,
                f"a chrooted smtpd cannot reach unix:{target.path} (outside or not relative to {queue})",
                f'-o smtpd_proxy_filter=unix:{rel}' if rel else
                f'proxy.listeners[{i}].listen = "unix:{queue_prefix}smtpproxy/smtpproxy.sock" and '
                f'-o smtpd_proxy_filter=unix:smtpproxy/smtpproxy.sock'))
        else:
            out.append(Finding(OK, "chroot", subject, f"socket {target.path} inside the chroot {queue}"))
    try:
        st = os.stat(target.path)
    except OSError:
        return out  # the probe reports that nothing listens
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o002:
        out.append(Finding(
            WARN, "socket", target.path,
            f"mode {mode:04o}: only its owner and group may connect; Postfix's smtpd runs as user postfix",
            f'proxy.listeners[{i}].socket_mode = "0666" (the directory guards it)'))
    return out


def _check_timeout(pf: Postfix, cfg: Config, s: Service) -> list[Finding]:
    out = []
    subject = f"master.cf {s.key}"
    raw = pf.param(s, "smtpd_proxy_timeout")
    value = time_s(raw)
    need = cfg.proxy.scan_timeout_s + cfg.proxy.downstream_reply_timeout_s
    if value is None:
        out.append(Finding(WARN, "timeout", subject, f"smtpd_proxy_timeout = {raw!r} not understood"))
    elif value <= need:
        out.append(Finding(
            FAIL, "timeout", subject,
            f"smtpd_proxy_timeout = {raw}, but the proxy may take proxy.scan_timeout_s "
            f"({cfg.proxy.scan_timeout_s:g}) + proxy.downstream_reply_timeout_s "
            f"({cfg.proxy.downstream_reply_timeout_s:g}) = {need:g}s to answer end-of-data",
            f"smtpd_proxy_timeout = {math.ceil(need * 1.1)}s in main.cf "
            f"(or lower proxy.scan_timeout_s / proxy.downstream_reply_timeout_s)"))
    else:
        out.append(Finding(OK, "timeout", subject,
                           f"smtpd_proxy_timeout = {raw} > scan {cfg.proxy.scan_timeout_s:g}s + "
                           f"downstream reply {cfg.proxy.downstream_reply_timeout_s:g}s"))
    if "speed_adjust" in pf.param(s, "smtpd_proxy_options"):
        out.append(Finding(
            WARN, "speed_adjust", subject,
            "smtpd_proxy_options = speed_adjust: recipients the re-injection listener refuses "
            "can no longer be refused alone (postconf(5), NOTE 1)",
            f'remove "-o smtpd_proxy_options=speed_adjust" from "{s.name}" where the re-injection '
            "listener rejects recipients"))
    return out


def _check_downstream(pf: Postfix, cfg: Config, listener: ListenerConfig, s: Service | None) -> list[Finding]:
    subject = f"listener {listener.name} -> {listener.downstream}"
    if s is None:
        return [Finding(
            FAIL, "reinject", subject, "no smtpd service of this Postfix listens there",
            f'add the re-injection service "{listener.downstream} inet n - n - - smtpd" with its -o lines '
            "(conf/postfix/master.cf) or set proxy.listeners[].downstream")]
    out = [Finding(OK, "reinject", subject, f"master.cf {s.key}")]
    svc = f"master.cf {s.key}"
    filt = pf.param(s, "smtpd_proxy_filter")
    if filt:
        out.append(Finding(
            FAIL, "loop", svc, f"the re-injection listener has smtpd_proxy_filter = {filt}: "
            "mail would pass the proxy again, forever",
            f'add "  -o smtpd_proxy_filter=" under "{s.name} {s.type} ... smtpd" in master.cf'))
    cf = pf.param(s, "content_filter")
    if cf:
        nexthop = cf.partition(":")[2]
        target = postfix_target(nexthop.replace("[", "").replace("]", ""), "/")
        back_in = target is not None and target.kind == "inet" and (
            _listener_for(cfg, target) is not None
            or any(pf.param(x, "smtpd_proxy_filter") or pf.param(x, "content_filter")
                   for x in [pf.find_inet(target.host, target.port)] if x is not None))
        out.append(Finding(
            FAIL if back_in else WARN, "loop", svc,
            f"content_filter = {cf}: mail accepted here "
            + ("is sent back in through the filter" if back_in else
               "goes to that filter after the queue; it must not come back in through a filtered service"),
            f'add "  -o content_filter=" under "{s.name} {s.type} ... smtpd" in master.cf'))
    if not filt and not cf:
        out.append(Finding(OK, "loop", svc, "no smtpd_proxy_filter, no content_filter"))
    authorised = pf.param(s, "smtpd_authorized_xforward_hosts")
    nets = _networks(authorised)
    in_config = any(ipaddress.ip_address(PROXY_SOURCE) in n for n in nets)
    host, port = parse_hostport(listener.downstream)
    fix = f'add "  -o smtpd_authorized_xforward_hosts=127.0.0.0/8" under "{s.name} {s.type} ... smtpd" in master.cf'
    try:
        _, ehlo = smtp_probe(Target("inet", host=host, port=port))
    except OSError as exc:
        out.append(Finding(FAIL, "reinject", f"{host}:{port}", f"nothing answers SMTP there ({exc})",
                           "start Postfix (postfix start) and check the re-injection service"))
        if not in_config:
            out.append(Finding(FAIL, "xforward", svc,
                               f"smtpd_authorized_xforward_hosts = {authorised or '(empty)'}", fix))
        return out
    offers = any(line[4:].upper().startswith("XFORWARD") for line in ehlo)
    if offers:
        out.append(Finding(OK, "xforward", svc, f"authorised for the proxy ({authorised}); EHLO offers XFORWARD"))
    else:
        out.append(Finding(
            FAIL, "xforward", svc,
            f"smtpd_authorized_xforward_hosts = {authorised or '(empty)'}: Postfix logs the proxy, not the "
            "real client, and the checks lose nothing but the log does", fix))
    return out


_POLICY = re.compile(r"check_policy_service\s*(\{[^}]*\}|[^\s,]+)")


def _policy_entries(pf: Postfix) -> list[tuple[str, str, str]]:
    """(where, address, default_action or "") of every check_policy_service."""
    seen = []
    sources = [(f"main.cf {k}", v) for k, v in pf.main.items()
               if k.endswith("_restrictions") or k in pf.main.get("smtpd_restriction_classes", "").replace(",", " ").split()]
    for s in pf.smtpd_services():
        sources += [(f"master.cf {s.key} {k}", v) for k, v in s.overrides.items()]
    for where, value in sources:
        for m in _POLICY.finditer(value):
            body = m.group(1)
            attrs = {}
            if body.startswith("{"):
                parts = [p.strip() for p in body.strip("{} ").split(",") if p.strip()]
                body = parts[0] if parts else ""
                attrs = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
            seen.append((where, body, attrs.get("default_action", "").strip()))
    return seen


def _check_policy(pf: Postfix, cfg: Config, queue: str) -> list[Finding]:
    out = []
    entries = _policy_entries(pf)
    if not entries:
        return [Finding(OK, "policy", "main.cf", "no check_policy_service (greylisting and rate limits unused)")]
    probed: dict[str, str | Exception] = {}
    ours = config_target(cfg.policy.listen)
    for where, address, default_action in entries:
        target = postfix_target(address, queue)
        if target is None:
            out.append(Finding(WARN, "policy", where, f"check_policy_service {address}: address not understood"))
            continue
        action = default_action or pf.main.get("smtpd_policy_service_default_action", "451 4.3.5 Server configuration problem")
        key = str(target)
        if key not in probed:
            try:
                probed[key] = policy_probe(target)
            except OSError as exc:
                probed[key] = exc
        answer = probed[key]
        if isinstance(answer, Exception):
            out.append(Finding(
                FAIL, "policy", where,
                f"check_policy_service {address}: nothing answers ({answer}); Postfix applies "
                f"default_action \"{action}\" to every message",
                f'start smtpproxy-policy (systemctl start smtpproxy-policy) with policy.listen = "{target}"'
                if not same_target(target, ours) else "start smtpproxy-policy (systemctl start smtpproxy-policy)"))
            continue
        if action.upper().startswith(("5", "REJECT")):
            out.append(Finding(
                WARN, "policy", where,
                f"check_policy_service {address} answers ({answer}), but when it cannot, Postfix "
                f"rejects for good (default_action \"{action}\")",
                f"check_policy_service {{ {address}, default_action=DUNNO }} or "
                "smtpd_policy_service_default_action = 451 4.3.5 Server configuration problem"))
            continue
        note = "" if same_target(target, ours) else f" (not this configuration's policy.listen {cfg.policy.listen})"
        out.append(Finding(OK, "policy", where,
                           f"check_policy_service {address} answers {answer}{note}; "
                           f"default_action \"{action}\""))
    return out
