"""The in-flight byte budget: message bytes all sessions hold at once, against proxy.max_inflight_bytes.

Beyond it a message is read to its end and dropped, and the client gets
452 4.3.1 (server.py); the daemon owns the one budget of the process.
"""

from __future__ import annotations


class InflightBudget:
    """Message bytes all sessions hold now, against ``proxy.max_inflight_bytes``.

    A session takes its share as it reads DATA (``Reservation.take``) and
    gives it back once its end-of-data is answered, so the bytes are counted
    while the scan, the signer and the relay hold their copies too.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def reserve(self) -> Reservation:
        return Reservation(self)


class Reservation:
    """One message's share of the InflightBudget; refused once, it takes nothing more."""

    def __init__(self, budget: InflightBudget):
        self.budget = budget
        self.held = 0
        self.refused = False

    def take(self, size: int) -> bool:
        if self.refused:
            return False
        if self.budget.used + size > self.budget.limit:
            self.refused = True
            self.release()
            return False
        self.budget.used += size
        self.held += size
        return True

    def release(self) -> None:
        self.budget.used -= self.held
        self.held = 0
