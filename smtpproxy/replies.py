"""Every SMTP reply the proxy itself composes, in one place.

The one mapping from a failure to its reply: a downstream failure at any verb
is TEMPFAIL (server.py's ``_downstream_failed``; before end of data the
later RCPTs and the DATA of that transaction get it too); a scan that could not
finish SCAN_TEMPFAIL and a message that must not leave unsigned
SIGN_TEMPFAIL (delivery.py); the scan's own reject and greylist replies are
configured (scan.reject_reply, ...), REJECT when a verdict carries none.

Replies that come from the downstream listener are relayed verbatim and are
not listed here. Texts are deliberately generic: a client never learns why a
downstream connection failed or which internal step broke; the details go to
the log line of the session.
"""

# Connection stage.
GREETING_IDENT = "ESMTP smtpproxy"
ACCESS_DENIED = "554 5.7.1 Access denied"
TOO_MANY_SESSIONS = "421 4.3.2 Too many connections, try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, closing connection"
TIMEOUT = "421 4.4.2 Error: timeout exceeded"

# Generic successes.
OK = "250 2.0.0 Ok"
BYE = "221 2.0.0 Bye"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"

# Temporary trouble of ours or of the downstream listener: nothing was queued.
TEMPFAIL = "451 4.3.0 Error: temporary failure, try again later"
SCAN_TEMPFAIL = "451 4.7.1 Error: message could not be checked, try again later"
SIGN_TEMPFAIL = "451 4.7.0 Error: message could not be signed, try again later"

# The scan refused the message; a verdict without a reply of its own gets this.
REJECT = "550 5.7.1 Rejected"

# Client mistakes.
SYNTAX_MAIL = "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"
SYNTAX_RCPT = "501 5.5.4 Syntax: RCPT TO:<address> [parameters]"
SYNTAX_XFORWARD = "501 5.5.4 Syntax: XFORWARD attribute=value..."
SYNTAX_NO_ARGS = "501 5.5.4 Syntax: {verb} takes no arguments"
SYNTAX_HELO = "501 5.5.4 Syntax: {verb} hostname"
BAD_XFORWARD = "501 5.5.4 Bad XFORWARD attribute: {detail}"
# An XFORWARD value or a HELO name with a control character (xtext "+0D+0A"
# decodes to CR LF): refused, so no client text can become a header line.
XFORWARD_CONTROL_CHARACTERS = "501 5.5.4 Error: control character in XFORWARD attribute value"
HELO_CONTROL_CHARACTERS = "501 5.5.4 Error: control character in {verb} hostname"
# proxy.bare_newline = "reject": a message line ended by a bare LF or CR (as
# Postfix's smtpd_forbid_bare_newline = reject); the connection is closed.
BARE_LF = "521 5.5.2 Error: bare <LF> received"
BARE_CR = "521 5.5.2 Error: bare <CR> received"
# aiosmtpd's own command-loop replies carry no enhanced status code; these replace them.
LINE_TOO_LONG = "500 5.5.2 Error: command line too long"
BAD_SYNTAX = "500 5.5.2 Error: bad syntax"
UNKNOWN_COMMAND = "502 5.5.2 Error: command not recognized"
# MAIL or RCPT with a control character: refused before anything goes downstream.
CONTROL_CHARACTERS = "501 5.5.4 Syntax: control characters are not allowed"
NEED_HELO = "503 5.5.1 Error: send HELO/EHLO first"
NEED_MAIL = "503 5.5.1 Error: need MAIL command"
NEED_RCPT = "503 5.5.1 Error: need RCPT command"
NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
XFORWARD_IN_TRANSACTION = "503 5.5.1 Error: MAIL transaction in progress"
NOT_IMPLEMENTED = "502 5.5.1 Error: command not implemented"

# Limits.
MESSAGE_TOO_BIG = "552 5.3.4 Error: message size exceeds fixed limit"
TOO_MANY_RECIPIENTS = "452 4.5.3 Error: too many recipients"
# The message would take the bytes held by all sessions over proxy.max_inflight_bytes.
INSUFFICIENT_STORAGE = "452 4.3.1 Insufficient system storage"


def lines(code: int, text: str) -> list[str]:
    """A (possibly multi-line) reply as wire lines without CRLF: 250-a, 250 b."""
    parts = text.split("\n") if text else [""]
    last = len(parts) - 1
    return [f"{code}{' ' if i == last else '-'}{part}".rstrip() for i, part in enumerate(parts)]
