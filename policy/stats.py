"""What the policy daemon counts, for GET /metrics (policy.metrics_listen).

The counters live in the service, so they survive a reload (SIGHUP builds a
new Policy); the Policy only reports what it decided.
"""

from __future__ import annotations

from collections.abc import Callable

from smtpproxy.common.metrics import Registry

DECISION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 3.0)


class PolicyStats:
    def __init__(self, connections: Callable[[], float], inflight: Callable[[], float]):
        r = self.registry = Registry()
        r.gauge("smtpproxy_policy_connections_active", "Policy connections open now", connections)
        r.gauge("smtpproxy_policy_requests_inflight", "Requests being decided now", inflight)
        self.replies = r.counter("smtpproxy_policy_replies_total",
                                 "Replies by action (its first word: DUNNO, DEFER_IF_PERMIT, 450, ...)",
                                 ("action",))
        self.greylist = r.counter("smtpproxy_policy_greylist_total",
                                  "Greylist outcomes (new, early, passed, known, awl, or why exempt)",
                                  ("result",))
        self.rate_limited = r.counter("smtpproxy_policy_rate_limited_total",
                                      "Requests refused by a rate-limit rule", ("rule",))
        self.defaulted = r.counter("smtpproxy_policy_default_action_total",
                                   "Requests answered the default action because of trouble "
                                   "(store, timeout, bad_request, error)",
                                   ("reason",))
        self.store_errors = r.counter("smtpproxy_policy_store_errors_total",
                                      "Store calls that failed: greylist, rate_limit, or open "
                                      "(at start-up and each retry until it works)",
                                      ("operation",))
        self.decisions_lost = r.counter("smtpproxy_policy_decisions_lost_total",
                                        "Decisions not recorded for the proxy's history "
                                        "(queue_full, store, error)", ("reason",))
        self.refused = r.counter("smtpproxy_policy_connections_refused_total",
                                 "Connections closed at once: max_connections reached")
        self.malformed = r.counter("smtpproxy_policy_malformed_total",
                                   "Connections closed for a malformed request")
        self.seconds = r.histogram("smtpproxy_policy_decision_seconds",
                                   "Time to decide one request", DECISION_BUCKETS)

    def reply(self, action: str) -> None:
        self.replies.inc(action.split(" ", 1)[0])
