"""The Bayes classifier: tokenizer, Robinson-Fisher classifier, storage on the common store.

- ``tokenizer.py``: a parsed message to a set of tokens (words and word
  pairs of the decoded text and HTML-as-text, URL hosts, selected headers);
- ``classifier.py``: token counts to a spam probability (Robinson's f(w),
  Fisher's chi-square combining, as SpamBayes and SpamAssassin do);
- ``storage.py``: counts per token and class, learned-message ids and the
  per-class message counts on the common store (SQLite or Redis);
- ``cli.py``: ``smtpproxy learn spam|ham`` and ``smtpproxy bayes stats|dump|restore``.

The check that reports BAYES_SPAM / BAYES_HAM is smtpproxy/scan/checks/bayes.py.
See docs/bayes.md.
"""
