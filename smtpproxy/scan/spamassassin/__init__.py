"""SpamAssassin rule compatibility: SpamAssassin's rule files run as one of our checks.

One module per concern, none importing the package itself:

  rules.py    the rule-file parser (directives, if/ifplugin blocks, include)
  regex.py    Perl regex -> Python ``re`` and Hyperscan patterns
  meta.py     meta expressions, parsed once and evaluated without ``eval``
  matcher.py  one Hyperscan database per rule type (cached in state_dir),
              with Python ``re`` confirming every candidate
  check.py    the Check: rule names are symbols, scores are SpamAssassin's
              times ``scan.spamassassin.score_scale``

Nothing of SpamAssassin is shipped here: the rules are read from where the
system has them (Debian's ``spamassassin`` package). docs/spamassassin.md
says what is supported and what is skipped.
"""
