"""Admission by cost: a budget of decoding work in flight, decided at once when a request
arrives, from what its image headers say it may decode (`core.decode_cost`).

Two lanes share the budget. A light request (at most 1/16 of the budget) is admitted while the
whole budget has room, or while light requests hold less than the last quarter: heavy requests
can never take that quarter, so a storm of large uploads cannot starve ordinary photos. A heavy
request is admitted while the work in flight stays within three quarters of the budget, or when
no other heavy request is in flight (a request larger than its lane would otherwise never be
admitted). So the work in flight is at most the budget plus one heavy request.

Each image's cost is given back as soon as its decoding is over (its pixels are dropped then),
the rest when the request ends, whichever way.
"""

import threading
from collections.abc import Sequence
from typing import Protocol

from dipr.core.errors import Overloaded

LIGHT_SHARE = 1 / 16  # the largest light request, as a share of the budget
LIGHT_RESERVE = 1 / 4  # the share of the budget only light requests may use


class BudgetObserver(Protocol):
    def in_flight(self, lane: str, megapixels: float) -> None: ...


class _Unobserved:
    def in_flight(self, lane: str, megapixels: float) -> None:
        pass


class DecodeBudget:
    def __init__(self, megapixels: float, observer: BudgetObserver | None = None) -> None:
        if megapixels <= 0:
            raise ValueError("the decode budget must be positive")
        self.megapixels = megapixels
        self._observer = observer or _Unobserved()
        self._lock = threading.Lock()
        self._held = {"light": 0.0, "heavy": 0.0}

    def in_flight(self, lane: str | None = None) -> float:
        return sum(self._held.values()) if lane is None else self._held[lane]

    def admit(self, image_costs: Sequence[float]) -> "Admission":
        """Hold the request's cost (one entry per image) or refuse it at once (Overloaded)."""
        cost = sum(image_costs)
        lane = "light" if cost <= self.megapixels * LIGHT_SHARE else "heavy"
        with self._lock:
            total = self._held["light"] + self._held["heavy"]
            if lane == "light":
                fits = (
                    total + cost <= self.megapixels
                    or self._held["light"] + cost <= self.megapixels * LIGHT_RESERVE
                )
            else:
                fits = (
                    total + cost <= self.megapixels * (1 - LIGHT_RESERVE)
                    or self._held["heavy"] == 0
                )
            if not fits:
                raise Overloaded(
                    f"the service is decoding {total:.0f} megapixels; this request's "
                    f"{cost:.0f} more do not fit its budget of {self.megapixels:.0f} now",
                    cause="decode_budget",
                )
            self._held[lane] += cost
            self._observer.in_flight(lane, self._held[lane])
        return Admission(self, lane, image_costs)

    def _give_back(self, lane: str, cost: float) -> None:
        with self._lock:
            # max(): float sums given back in another order may leave a crumb below zero.
            self._held[lane] = max(0.0, self._held[lane] - cost)
            self._observer.in_flight(lane, self._held[lane])


class Admission:
    """One admitted request's hold on the budget, image by image."""

    def __init__(self, budget: DecodeBudget, lane: str, image_costs: Sequence[float]) -> None:
        self.lane = lane
        self._budget = budget
        self._costs = list(image_costs)
        self._lock = threading.Lock()

    def image_done(self, index: int) -> None:
        """Image `index` is decoded and its pixels dropped: its cost goes back (once)."""
        with self._lock:
            cost, self._costs[index] = self._costs[index], 0.0
        if cost:
            self._budget._give_back(self.lane, cost)

    def close(self) -> None:
        """The request ended: whatever it still holds goes back."""
        with self._lock:
            cost, self._costs = sum(self._costs), [0.0] * len(self._costs)
        if cost:
            self._budget._give_back(self.lane, cost)
