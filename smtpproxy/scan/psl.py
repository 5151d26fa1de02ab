"""The public suffix list (https://publicsuffix.org/list/): public suffixes and organisational domains.

Contract: ``PublicSuffixList.load(path)`` reads the list once (at start-up
or reload; a missing or unreadable file is an OSError for the caller to
report); ``public_suffix(name)`` and ``organizational_domain(name)`` are pure
lookups that never raise. Names are compared lower-case, without a final
dot; IDN rules in the list are used in their A-label (xn--) form, as mail
domains arrive.

The algorithm is the list's own (publicsuffix.org "Formal algorithm"): the
matching rule with the most labels wins, an exception rule (``!``) beats
everything, ``*`` matches one label, and a name no rule matches has the
implicit rule ``*`` (its last label is the suffix). The ICANN and PRIVATE
sections are both used, as OpenDMARC and rspamd do: blogspot.com's users are
separate organisations for DMARC.

The source is Debian's ``publicsuffix`` package
(/usr/share/publicsuffix/public_suffix_list.dat), kept current by the
distribution's updates; see docs/dkim-arc-dmarc.md.
"""

from __future__ import annotations

DEFAULT_PATH = "/usr/share/publicsuffix/public_suffix_list.dat"


def _idna(label_text: str) -> str:
    try:
        return label_text.encode("idna").decode("ascii")
    except UnicodeError:
        return label_text


class PublicSuffixList:
    def __init__(self, rules: set[str], exceptions: set[str]):
        self._rules = rules
        self._exceptions = exceptions

    @classmethod
    def load(cls, path: str = DEFAULT_PATH) -> PublicSuffixList:
        with open(path, encoding="utf-8") as f:
            return cls.parse(f.read())

    @classmethod
    def parse(cls, text: str) -> PublicSuffixList:
        rules: set[str] = set()
        exceptions: set[str] = set()
        for line in text.splitlines():
            line = line.strip().split()[0] if line.strip() else ""
            if not line or line.startswith("//"):
                continue
            rule = line.lower().rstrip(".")
            target = exceptions if rule.startswith("!") else rules
            rule = rule.lstrip("!")
            if not rule.isascii():
                rule = ".".join(lab if lab == "*" else _idna(lab) for lab in rule.split("."))
            target.add(rule)
        return cls(rules, exceptions)

    def public_suffix(self, name: str) -> str:
        """The public suffix of ``name`` ("" for an empty name)."""
        labels = name.lower().rstrip(".").split(".")
        if not labels or not labels[-1]:
            return ""
        best = 1  # the implicit "*" rule
        for i in range(len(labels)):
            candidate = ".".join(labels[i:])
            if candidate in self._exceptions:
                return ".".join(labels[i + 1:])
            wild = ".".join(["*", *labels[i + 1:]])
            if candidate in self._rules or (i + 1 < len(labels) and wild in self._rules):
                best = max(best, len(labels) - i)
        return ".".join(labels[-best:])

    def is_listed(self, suffix: str) -> bool:
        """Whether ``suffix`` is a rule of the list itself ("com", "co.uk"), not only the implicit "*"."""
        return suffix.lower().rstrip(".") in self._rules

    def organizational_domain(self, name: str) -> str:
        """The public suffix plus one label; ``name`` itself when it is a public suffix."""
        name = name.lower().rstrip(".")
        suffix = self.public_suffix(name)
        if not suffix or suffix == name:
            return name
        labels = name.split(".")
        return ".".join(labels[-(suffix.count(".") + 2):])
