"""Logging set-up shared by both daemons.

One line per event, Postfix-style ``key=value`` fields, to stderr (journald
under systemd) or to syslog's mail facility next to Postfix's own lines.
Third-party libraries that log every SMTP line at INFO (aiosmtpd's
``mail.log``) are held at WARNING: per-line logging costs throughput and says
nothing an administrator needs.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys

from smtpproxy.common.config import LogConfig

NOISY_LIBRARIES = ("mail.log", "aiosmtplib", "asyncio")


def setup(cfg: LogConfig, program: str) -> None:
    """(Re)configure the root logger from ``cfg``; safe to call again on reload."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    if cfg.destination == "syslog":
        handler: logging.Handler = logging.handlers.SysLogHandler(
            address=cfg.syslog_socket,
            facility=logging.handlers.SysLogHandler.facility_names[cfg.syslog_facility],
        )
        handler.setFormatter(logging.Formatter(f"{program}[%(process)d]: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {program}[%(process)d] %(levelname)s: %(message)s")
        )
    root.addHandler(handler)
    # No format here names the thread, the source line or the function: a
    # record need not look them up (the logging HOWTO's "Optimization").
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    root.setLevel(cfg.level.upper())
    quiet = logging.DEBUG if cfg.level == "debug" else logging.WARNING
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(quiet)


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}

# All a printable value needs (the rest of _ESCAPES are not printable).
_PRINTABLE_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


def _escape(c: str) -> str:
    if c in _ESCAPES:
        return _ESCAPES[c]
    if c.isprintable():
        return c
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" if ord(c) < 0x10000 \
        else f"\\U{ord(c):08x}"


def quote(value: object) -> str:
    """A log field value: bare when safe, else double-quoted with escapes.

    Whatever a client wrote (a HELO, an address) comes out on one line with
    no control character at all: CR, NUL, escape sequences and Unicode line
    separators are written as escapes, so a field can neither forge a log
    line nor drive a terminal.
    """
    text = str(value)
    # One pass in C over the usual value (every transaction's log line quotes
    # six); the per-character escape only for what needs it.
    if text.isprintable():
        if text and " " not in text and '"' not in text and "=" not in text:
            return text
        return '"' + text.translate(_PRINTABLE_ESCAPES) + '"'
    return '"' + "".join(_escape(c) for c in text) + '"'
