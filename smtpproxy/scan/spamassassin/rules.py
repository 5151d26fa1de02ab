"""SpamAssassin rule files -> a RuleSet: the rules we run, and every one we do not, with why.

Read like SpamAssassin reads them: per line, ``#`` starts a comment unless
escaped (``\\#`` is a literal ``#``), the first word is the directive.
Understood:

  header NAME Header[:raw|:addr|:name|:first|:last] =~ /re/flags [if-unset: TEXT]
  header NAME Header !~ /re/   header NAME exists:Header   (ALL, ToCc, MESSAGEID, EnvelopeFrom)
  body | rawbody | full | uri NAME /re/flags           meta NAME expression
  score NAME S0 [S1 S2 S3]   describe NAME text   tflags NAME nice multiple maxhits=N ...
  priority NAME N   include FILE   loadplugin NAME   require_version V
  ifplugin NAME / if EXPR / else / endif   (version, plugin(NAME), can(NAME), ! && || ())
  replace_tag / replace_pre / replace_inter / replace_post / replace_rules   (ReplaceTags)

``eval:`` tests of functions evals.py implements become rules of kind
"eval" (the function and its arguments); the others are skipped and
counted per function. ``lang`` lines and
every other directive (network lists, welcomelists, Bayes settings...) are
counted as ignored. A rule whose regex Python cannot take is skipped with
the reason (regex.py). Nothing here reads a message.
"""

from __future__ import annotations

import glob
import os
import re
from collections import Counter
from dataclasses import dataclass, field

from smtpproxy.scan.spamassassin import meta as meta_expr
from smtpproxy.scan.spamassassin.evals import supported as eval_supported
from smtpproxy.scan.spamassassin.regex import Translated, Untranslatable, split_match_op, translate

# The SpamAssassin version whose rules we claim to run, for "if (version >= ...)".
VERSION = 4.000001
RULE_TYPES = ("header", "mimeheader", "body", "rawbody", "full", "uri", "meta")
# Rule-defining directives of plugins we do not run: their rules are skipped, visibly.
OTHER_RULE_TYPES = {
    "askdns": "network test (askdns)",
    "uridnsbl": "network test (uridnsbl)",
    "urirhsbl": "network test (urirhsbl)",
    "urirhssub": "network test (urirhssub)",
    "uridnssub": "network test (uridnssub)",
    "hashbl": "network test (hashbl)",
}
# What SpamAssassin 4.0's stock .pre files load; used when no loadplugin line was read.
DEFAULT_PLUGINS = frozenset(f"Mail::SpamAssassin::Plugin::{name}" for name in (
    "Check", "HTTPSMismatch", "URIDetail", "Bayes", "BodyEval", "DNSEval", "HTMLEval",
    "HeaderEval", "MIMEEval", "RelayEval", "URIEval", "WLBLEval", "VBounce", "ImageInfo",
    "FreeMail", "AskDNS", "ReplaceTags", "MIMEHeader", "DKIM", "DMARC", "SPF", "URIDNSBL",
    "Pyzor", "Razor2", "SpamCop", "AutoLearnThreshold", "WelcomeListSubject", "HashBL",
))
# can(Mail::SpamAssassin::Conf::...) features; a plugin's can(...) is true when it is loaded.
FEATURES = {
    "feature_bug6558_free": True, "feature_welcomelist_blocklist": True,
    "compat_welcomelist_blocklist": False, "perl_min_version_5010000": True,
    "feature_capture_rules": False,  # %{TAG} captures are not implemented
    "feature_dns_block_rule": True, "feature_registryboundaries": True,
    "feature_yesno_takes_args": True, "feature_originating_ip_headers": True,
    "feature_dns_local_ports_permit_avoid": True,
}
HEADER_RULE_RE = re.compile(r"^(exists:)?(\S+?)\s*(?:(=~|!~)\s*(.*))?$", re.S)
IF_UNSET_RE = re.compile(r"\s*\[if-unset:\s*(.*)\]\s*$")
IF_CALL_RE = re.compile(r"\b(plugin|can)\s*\(\s*([\w:]+)\s*\)")
EVAL_RE = re.compile(r"^eval:\s*(\w+)\s*(?:\((.*)\))?\s*$", re.S)
# One argument of an eval call: 'quoted', "quoted" or bare (numbers, undef).
EVAL_ARG_RE = re.compile(r"""\s*(?:'([^']*)'|"([^"]*)"|([^,\s]+))\s*(?:,|$)""")
# Pseudo-headers of SpamAssassin's trust path we do not compute (the header
# fields each part of the chain added); the X-Spam-Relays-* ones are (relays.py).
UNSUPPORTED_HEADERS = ("ALL-TRUSTED", "ALL-INTERNAL", "ALL-UNTRUSTED", "ALL-EXTERNAL")
MAX_INCLUDE_DEPTH = 10


@dataclass(slots=True)
class Rule:
    name: str
    kind: str  # one of RULE_TYPES
    where: str  # file:line of the definition
    text: str = ""  # the pattern as written (ReplaceTags works on it)
    flags: str = ""
    pattern: Translated | None = None
    header: str = ""  # header rules: the name (ALL, ToCc, ...) with modifiers, e.g. "From:addr"
    negate: bool = False  # !~
    exists: bool = False  # exists:Header
    if_unset: str | None = None
    meta: meta_expr.Node | None = None
    args: tuple[str, ...] = ()  # eval rules: the call's arguments (text is the function)


@dataclass
class RuleSet:
    rules: dict[str, Rule] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)  # score set 0
    descriptions: dict[str, str] = field(default_factory=dict)
    tflags: dict[str, set[str]] = field(default_factory=dict)
    maxhits: dict[str, int] = field(default_factory=dict)
    priority: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> reason
    evals: Counter = field(default_factory=Counter)  # eval function -> rules skipped
    evals_run: Counter = field(default_factory=Counter)  # eval function -> rules run (evals.py)
    # The FreeMail plugin's lists (freemail_domains, freemail_welcomelist), lower-cased.
    freemail_domains: set[str] = field(default_factory=set)
    freemail_wildcards: set[str] = field(default_factory=set)  # with * or ?
    freemail_welcomelist: set[str] = field(default_factory=set)
    valid_tlds: set[str] = field(default_factory=set)  # util_rb_tld (RegistryBoundaries)
    two_level_domains: set[str] = field(default_factory=set)  # util_rb_2tld
    three_level_domains: set[str] = field(default_factory=set)  # util_rb_3tld
    ignored: Counter = field(default_factory=Counter)  # directive -> lines
    inactive: int = 0  # rule lines inside false if/ifplugin blocks
    files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # file trouble, syntax errors

    def score(self, name: str) -> float:
        """SpamAssassin's default: 1 (-1 for nice), 0 for sub-rules; else the set-0 score."""
        if name in self.scores:
            return self.scores[name]
        if name.startswith("__"):
            return 0.0
        return -1.0 if "nice" in self.tflags.get(name, ()) else 1.0

    def forget_sources(self) -> None:
        """Drop what only building the check needs (patterns as written and
        translated, meta expression trees): the compiled forms are the matcher's
        and the check's. Kinds, header specs, eval calls and every count stay."""
        for rule in self.rules.values():
            if rule.kind not in ("meta", "eval"):  # an eval's text is its function
                rule.text = ""
            rule.pattern = None
            rule.meta = None

    def skip_reasons(self) -> Counter:
        return Counter(_reason_kind(r) for r in self.skipped.values())


def _reason_kind(reason: str) -> str:
    """Group reasons for a summary: "eval:check_rbl" -> "eval", "Python re: ..." -> "Python re"."""
    if reason.startswith("eval:"):
        return "eval test"
    return reason.split(":", 1)[0]


class _Parser:
    def __init__(self, plugins: set[str] | None):
        self.rs = RuleSet()
        self.plugins: set[str] = set(plugins) if plugins is not None else set()
        self.plugins_fixed = plugins is not None
        self.replace: dict[str, dict[str, str]] = {"tag": {}, "pre": {}, "inter": {}, "post": {}}
        self.replace_rules: set[str] = set()
        self.stack: list[tuple[bool, bool]] = []  # (this block's condition, enclosing active)

    @property
    def active(self) -> bool:
        return all(cond for cond, _ in self.stack)

    # ------------------------------------------------------------ files

    def read_file(self, path: str, depth: int = 0) -> None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            self.rs.errors.append(f"{path}: {exc.strerror or exc}")
            return
        self.rs.files.append(path)
        self.read_text(data.decode("latin-1"), path, depth)

    def read_text(self, text: str, where: str, depth: int = 0) -> None:
        depth_at_start = len(self.stack)
        for number, line in enumerate(text.splitlines(), 1):
            self.line(line, f"{where}:{number}", os.path.dirname(where), depth)
        if len(self.stack) != depth_at_start:  # SpamAssassin closes open blocks per file too
            self.rs.errors.append(f"{where}: if/ifplugin without endif")
            del self.stack[depth_at_start:]

    # ------------------------------------------------------------ lines

    def line(self, line: str, where: str, folder: str, depth: int) -> None:
        line = re.sub(r"(?<!\\)#.*", "", line).replace("\\#", "#").strip()
        if not line:
            return
        key, _, value = _split_word(line)
        key = key.lower().replace("-", "_")
        if key in ("ifplugin", "if"):
            cond = self.active and (value.split()[0] in self.plugins if key == "ifplugin" and value
                                    else self.condition(value, where))
            self.stack.append((cond, self.active))
            return
        if key == "else":
            if not self.stack:
                self.rs.errors.append(f"{where}: else without if")
                return
            cond, enclosing = self.stack.pop()
            self.stack.append((not cond and all(c for c, _ in self.stack), enclosing))
            return
        if key == "endif":
            if not self.stack:
                self.rs.errors.append(f"{where}: endif without if")
                return
            self.stack.pop()
            return
        if not self.active:
            if key in RULE_TYPES or key in OTHER_RULE_TYPES:
                self.rs.inactive += 1
            return
        if key == "lang":
            self.rs.ignored["lang"] += 1
            return
        if key == "include":
            if depth >= MAX_INCLUDE_DEPTH:
                self.rs.errors.append(f"{where}: include nested too deep")
                return
            self.read_file(os.path.join(folder, value), depth + 1)
            return
        if key == "loadplugin":
            name = value.split()[0] if value else ""
            # Only SpamAssassin's own plugins: a third-party one (with a path) is unknown to us.
            if not self.plugins_fixed and name.startswith("Mail::SpamAssassin::Plugin::") \
                    and len(value.split()) == 1:
                self.plugins.add(name)
            return
        if key == "require_version":
            return
        handler = getattr(self, "d_" + key, None)
        if handler is None:
            if key in OTHER_RULE_TYPES:
                name = value.split()[0] if value else ""
                if name:
                    self.define_skipped(name, OTHER_RULE_TYPES[key])
                return
            self.rs.ignored[key] += 1
            return
        name, _, rest = _split_word(value)
        handler(name, rest, where)

    def condition(self, text: str, where: str) -> bool:
        values: dict[str, float] = {"version": VERSION, "perl_version": 5.036}

        def call(m: re.Match) -> str:
            fn, arg = m.group(1), m.group(2)
            placeholder = f"__{fn}_{len(values)}"
            if fn == "plugin":
                values[placeholder] = 1 if arg in self.plugins else 0
            else:
                owner, _, attr = arg.rpartition("::")
                if owner == "Mail::SpamAssassin::Conf":
                    values[placeholder] = 1 if FEATURES.get(attr, False) else 0
                else:
                    values[placeholder] = 1 if owner in self.plugins else 0
            return placeholder

        try:
            return bool(meta_expr.evaluate(meta_expr.parse(IF_CALL_RE.sub(call, text)), values))
        except meta_expr.MetaSyntaxError as exc:
            self.rs.errors.append(f"{where}: if {text!r}: {exc}")
            return False

    # ------------------------------------------------------------ definitions

    def define(self, rule: Rule) -> None:
        self.rs.rules[rule.name] = rule
        self.rs.skipped.pop(rule.name, None)

    def define_skipped(self, name: str, reason: str) -> None:
        self.rs.rules.pop(name, None)
        self.rs.skipped[name] = reason

    def _eval(self, name: str, rest: str, where: str) -> bool:
        if not rest.startswith("eval:"):
            return False
        m = EVAL_RE.match(rest)
        fn = m.group(1) if m else rest[5:].split("(")[0].strip()
        args = _eval_args(m.group(2)) if m and m.group(2) is not None else ()
        if args is not None and eval_supported(fn, args):
            self.rs.evals_run[fn] += 1
            self.define(Rule(name, "eval", where, text=fn, args=args))
            return True
        self.rs.evals[fn] += 1
        self.define_skipped(name, f"eval:{fn}")
        return True

    def d_header(self, name: str, rest: str, where: str) -> None:
        if self._eval(name, rest, where):
            return
        unset = IF_UNSET_RE.search(rest)
        if unset:
            rest = rest[:unset.start()]
        m = HEADER_RULE_RE.match(rest.strip())
        if m is None or (not m.group(1) and not m.group(3)):
            self.define_skipped(name, f"syntax: header rule {rest[:40]!r}")
            return
        header = m.group(2)
        if header.split(":")[0] in UNSUPPORTED_HEADERS:
            self.define_skipped(name, f"pseudo-header (trust path) not available: {header}")
            return
        rule = Rule(name, "header", where, header=header, exists=bool(m.group(1)),
                    negate=m.group(3) == "!~", if_unset=unset.group(1) if unset else None)
        if rule.exists or self._with_regex(rule, m.group(4)):
            self.define(rule)

    def _with_regex(self, rule: Rule, operand: str) -> bool:
        """``rule`` with the regex of its ``=~``/``!~`` operand; False (skipped, counted) if untranslatable."""
        try:
            rule.text, rule.flags = split_match_op(operand)
        except Untranslatable as exc:
            self.define_skipped(rule.name, f"regex: {exc}")
            return False
        return True

    def d_mimeheader(self, name: str, rest: str, where: str) -> None:
        """MIMEHeader: ``mimeheader NAME Field[:raw] =~ /re/`` (or ``!~``), matched
        against that field of every MIME entity; only ``:raw`` is a modifier."""
        m = HEADER_RULE_RE.match(rest.strip())
        if m is None or m.group(1) or not m.group(3):
            self.define_skipped(name, f"syntax: mimeheader rule {rest[:40]!r}")
            return
        header = m.group(2)
        if set(header.split(":")[1:]) - {"raw"}:
            self.define_skipped(name, f"mimeheader modifier not implemented: {header}")
            return
        rule = Rule(name, "mimeheader", where, header=header, negate=m.group(3) == "!~")
        if self._with_regex(rule, m.group(4)):
            self.define(rule)

    def _pattern_rule(self, kind: str, name: str, rest: str, where: str) -> None:
        if self._eval(name, rest, where):
            return
        try:
            text, flags = split_match_op(rest)
        except Untranslatable as exc:
            self.define_skipped(name, f"regex: {exc}")
            return
        self.define(Rule(name, kind, where, text=text, flags=flags))

    def d_body(self, name: str, rest: str, where: str) -> None:
        self._pattern_rule("body", name, rest, where)

    def d_rawbody(self, name: str, rest: str, where: str) -> None:
        self._pattern_rule("rawbody", name, rest, where)

    def d_full(self, name: str, rest: str, where: str) -> None:
        self._pattern_rule("full", name, rest, where)

    def d_uri(self, name: str, rest: str, where: str) -> None:
        self._pattern_rule("uri", name, rest, where)

    def d_meta(self, name: str, rest: str, where: str) -> None:
        try:
            node = meta_expr.parse(rest)
        except meta_expr.MetaSyntaxError as exc:
            self.define_skipped(name, f"meta syntax: {exc}")
            return
        self.define(Rule(name, "meta", where, text=rest, meta=node))

    def d_score(self, name: str, rest: str, where: str) -> None:
        values = rest.replace("(", " ").replace(")", " ").split()
        try:
            self.rs.scores[name] = float(values[0])
        except (IndexError, ValueError):
            self.rs.errors.append(f"{where}: score {name}: not a number")

    def d_describe(self, name: str, rest: str, where: str) -> None:
        self.rs.descriptions[name] = rest

    def d_tflags(self, name: str, rest: str, where: str) -> None:
        flags = set()
        for word in rest.split():
            if word.startswith("maxhits="):
                try:
                    self.rs.maxhits[name] = int(word.split("=", 1)[1])
                except ValueError:
                    self.rs.errors.append(f"{where}: tflags {name}: bad {word}")
                flags.add("multiple")
            else:
                flags.add(word)
        self.rs.tflags[name] = flags

    def d_priority(self, name: str, rest: str, where: str) -> None:
        try:
            self.rs.priority[name] = int(rest.split()[0])
        except (IndexError, ValueError):
            self.rs.errors.append(f"{where}: priority {name}: not a number")

    def d_freemail_domains(self, name: str, rest: str, where: str) -> None:
        for word in f"{name} {rest}".split():
            if re.search(r"[^a-zA-Z0-9.*?-]", word):  # as FreeMail.pm, which warns
                self.rs.errors.append(f"{where}: freemail_domains: invalid {word!r}")
            elif "*" in word or "?" in word:
                self.rs.freemail_wildcards.add(word.lower())
            else:
                self.rs.freemail_domains.add(word.lower())

    def d_freemail_welcomelist(self, name: str, rest: str, where: str) -> None:
        for word in f"{name} {rest}".split():
            if re.search(r"\w[.@]\w", word):
                self.rs.freemail_welcomelist.add(word.lower())
            else:
                self.rs.errors.append(f"{where}: freemail_welcomelist: invalid {word!r}")

    d_freemail_whitelist = d_freemail_welcomelist

    def d_util_rb_tld(self, name: str, rest: str, where: str) -> None:
        self.rs.valid_tlds.update(w.lower() for w in f"{name} {rest}".split())

    def d_util_rb_2tld(self, name: str, rest: str, where: str) -> None:
        self.rs.two_level_domains.update(w.lower() for w in f"{name} {rest}".split())

    def d_util_rb_3tld(self, name: str, rest: str, where: str) -> None:
        self.rs.three_level_domains.update(w.lower() for w in f"{name} {rest}".split())

    def _replace(self, kind: str, name: str, rest: str) -> None:
        self.replace[kind][name] = rest

    def d_replace_tag(self, name: str, rest: str, where: str) -> None:
        self._replace("tag", name, rest)

    def d_replace_pre(self, name: str, rest: str, where: str) -> None:
        self._replace("pre", name, rest)

    def d_replace_inter(self, name: str, rest: str, where: str) -> None:
        self._replace("inter", name, rest)

    def d_replace_post(self, name: str, rest: str, where: str) -> None:
        self._replace("post", name, rest)

    def d_replace_rules(self, name: str, rest: str, where: str) -> None:
        self.replace_rules.update([name, *rest.split()])

    # ------------------------------------------------------------ the end

    def finish(self) -> RuleSet:
        rs = self.rs
        for name in sorted(self.replace_rules):
            rule = rs.rules.get(name)
            if rule is not None and rule.text:
                rule.text = replace_tags(rule.text, self.replace)
        for name, rule in list(rs.rules.items()):
            if rule.kind in ("meta", "eval") or rule.exists:
                continue
            try:
                rule.pattern = translate(rule.text, rule.flags)
            except Untranslatable as exc:
                del rs.rules[name]
                rs.skipped[name] = f"regex: {exc}"
        # translate() tried every pattern with re.compile, whose module cache
        # would keep the last 512 compiled (megabytes) for nothing.
        re.purge()
        return rs


def _eval_args(text: str) -> tuple[str, ...] | None:
    """The arguments of an eval call as strings; None when they do not parse."""
    args = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = EVAL_ARG_RE.match(text, pos)
        if m is None or m.end() == pos:
            return None
        args.append(next(g for g in m.groups() if g is not None))
        pos = m.end()
    return tuple(args)


def _split_word(text: str) -> tuple[str, str, str]:
    """("word", " ", "rest stripped"), splitting at the first run of white space."""
    parts = text.split(None, 1)
    if not parts:
        return "", "", ""
    return parts[0], " ", parts[1].strip() if len(parts) > 1 else ""


def replace_tags(text: str, tags: dict[str, dict[str, str]]) -> str:
    """The ReplaceTags plugin: ``<A>`` -> replace_tag A, with ``<pre X>``/``<post X>``/``<inter X>``."""
    for _ in range(6):
        again = False
        pre = post = inter = None
        m = re.search(r"<pre (.+?)>", text)
        if m:
            pre, text = m.group(1), text[:m.start()] + text[m.end():]
        m = re.search(r"<post (.+?)>", text)
        if m:
            post, text = m.group(1), text[:m.start()] + text[m.end():]
        m = re.search(r"<inter (.+?)>", text)
        if m:
            inter, text = m.group(1), text[:m.start()] + text[m.end():]
        parts = re.split(r"(<[^<>]+>)", text)
        while parts and parts[-1] == "":  # Perl's split drops trailing empty fields
            parts.pop()
        before = tags["pre"].get(pre or "")
        if before:
            parts = [re.sub(r"(<.+?>)", lambda m, s=before: s + m.group(1), p, count=1)
                     for p in parts]
        after = tags["post"].get(post or "")
        if after:
            parts = [re.sub(r"(<.+?>)", lambda m, s=after: m.group(1) + s, p) for p in parts]
        if inter and tags["inter"].get(inter):
            parts = [tags["inter"][inter] if p == "" else p for p in parts]
        for i, part in enumerate(parts):
            m = re.search(r"<(.+?)>", part)
            if m and tags["tag"].get(m.group(1)):
                replacement = tags["tag"][m.group(1)]
                parts[i] = part.replace(f"<{m.group(1)}>", replacement)
                again = again or bool(re.search(r"<[^>]+>", replacement))
        text = "".join(parts)
        if not again:
            break
    return text


def rule_files(dirs: tuple[str, ...] | list[str], local_cf: str = "") -> list[str]:
    """The files SpamAssassin would read, in its order: every ``.pre``, then the
    rules directories' ``.cf`` files (sorted), then local.cf."""
    pre = []
    if local_cf:
        pre += sorted(glob.glob(os.path.join(glob.escape(os.path.dirname(local_cf)), "*.pre")))
    cf = []
    for folder in dirs:
        pre += sorted(glob.glob(os.path.join(glob.escape(folder), "*.pre")))
        cf += sorted(glob.glob(os.path.join(glob.escape(folder), "*.cf")))
    return pre + cf + ([local_cf] if local_cf else [])


def load_files(paths: list[str], plugins: set[str] | None = None) -> RuleSet:
    """Parse the files in order. ``plugins``: the loaded plugins (None: from loadplugin lines)."""
    parser = _Parser(plugins)
    if plugins is None:
        # The .pre files come first and say which plugins are loaded.
        for path in paths:
            if path.endswith(".pre"):
                parser.read_file(path)
        if not parser.plugins:
            parser.plugins = set(DEFAULT_PLUGINS)
        paths = [p for p in paths if not p.endswith(".pre")]
    for path in paths:
        parser.read_file(path)
    return parser.finish()


def load_text(text: str, plugins: set[str] | None = None, where: str = "<text>") -> RuleSet:
    """Parse rule text (tests); plugins default to SpamAssassin's stock set."""
    parser = _Parser(set(DEFAULT_PLUGINS) if plugins is None else plugins)
    parser.read_text(text, where)
    return parser.finish()
