"""``smtpproxy doctor``: is this proxy really in Postfix's path, and can it do its work?

The commonest failure of a filter in production is not a wrong score but a
filter that is silently not in the path. The doctor reads the live Postfix
configuration (``postconf -x``, ``postconf -M``, ``postconf -P -x``, with
``-c DIR`` for another instance) and our own, asks the servers involved (the
proxy's listeners, the re-injection smtpd, the policy daemon, the resolver,
the DNS lists, the store), and reports one ``Finding`` per check: OK, WARN
or FAIL, what it saw, and the exact fix (a main.cf or master.cf line, or a
configuration key).

Modules, one per group of checks:

- ``postconf.py``  reading Postfix's configuration into a ``Postfix`` model;
- ``wiring.py``    master.cf and main.cf: every public smtpd through the
  proxy, each proxy target alive and ours, the re-injection smtpd (XFORWARD,
  no loop), timeouts, the submission profile, policy services, chroot sockets;
- ``resources.py`` what the scan needs: the resolver and the DNS lists, the
  store, the DKIM keys and their DNS records;
- ``cli.py``       the subcommand, the report (text or ``--json``), the exit
  status (0: nothing FAILed, 1: something did).

Every probe runs under a short timeout; the doctor never changes anything.
"""

from __future__ import annotations

from dataclasses import dataclass

OK = "OK"
WARN = "WARN"
FAIL = "FAIL"


@dataclass(frozen=True)
class Finding:
    status: str      # OK, WARN or FAIL
    check: str       # which check, e.g. "bypass", "xforward", "dnsbl"
    subject: str     # what it is about, e.g. "master.cf smtp/inet", "zen.spamhaus.org"
    saw: str         # what the doctor saw
    fix: str = ""    # the exact change that makes it OK (empty for OK)

    def line(self) -> str:
        text = f"{self.status:<4} {self.check} {self.subject}: {self.saw}"
        return f"{text} -- fix: {self.fix}" if self.fix else text

    def as_dict(self) -> dict[str, str]:
        return {"status": self.status, "check": self.check, "subject": self.subject,
                "saw": self.saw, "fix": self.fix}
