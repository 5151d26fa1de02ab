"""Every action the policy daemon answers, in one place.

Texts are what the SMTP client reads: they say what to do (wait, slow down)
and never carry internals; the reason in detail goes to our log.
"""

from __future__ import annotations

DUNNO = "DUNNO"
# Internal trouble, when the administrator prefers fail-closed: Postfix turns
# it into a 450 only if the rest of the restrictions would have accepted.
DEFER_IF_PERMIT_TROUBLE = "DEFER_IF_PERMIT 4.3.0 Temporary policy service problem, try again later"


def default_action(configured: str) -> str:
    """The configured default action (DUNNO or DEFER_IF_PERMIT) as a reply."""
    return DEFER_IF_PERMIT_TROUBLE if configured == "DEFER_IF_PERMIT" else DUNNO


def greylist_defer(text: str, seconds: float) -> str:
    return f"DEFER_IF_PERMIT 4.7.1 {text.format(seconds=max(1, int(seconds + 0.999)))}"


def greylist_header(delayed_s: float, hostname: str, date: str) -> str:
    return f"PREPEND X-Greylist: delayed {int(delayed_s)} seconds by smtpproxy-policy at {hostname}; {date}"


def rate_exceeded(action: str, retry_after_s: float) -> str:
    seconds = max(1, int(retry_after_s + 0.999))
    if action == "REJECT":
        return "REJECT 5.7.1 Message rate limit exceeded"
    if action == "HOLD":
        return "HOLD rate limit exceeded"
    return f"DEFER 4.7.1 Message rate limit exceeded, try again in {seconds} seconds"
