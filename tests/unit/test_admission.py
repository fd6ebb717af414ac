"""The decode budget: who is admitted, who is refused at once, and when cost goes back."""

import pytest

from dipr.core.errors import Overloaded
from dipr.service.admission import DecodeBudget


class Recorder:
    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def in_flight(self, lane: str, megapixels: float) -> None:
        self.last[lane] = megapixels


def test_requests_are_admitted_while_the_budget_has_room_then_refused_at_once():
    budget = DecodeBudget(1600)
    budget.admit([50.0, 50.0])  # light: at most 100
    budget.admit([90.0])
    assert budget.in_flight() == pytest.approx(190)
    budget.admit([400.0] * 2)  # heavy: 990 in flight, within three quarters (1200)
    with pytest.raises(Overloaded, match="decoding 990 megapixels") as refusal:
        budget.admit([300.0])  # 1290 > 1200
    assert refusal.value.cause == "decode_budget"
    assert budget.in_flight() == pytest.approx(990)  # a refusal holds nothing


def test_heavy_requests_never_take_the_light_quarter():
    budget = DecodeBudget(1600)
    budget.admit([1000.0])
    budget.admit([200.0])  # 1200: the heavy lane is full
    with pytest.raises(Overloaded):
        budget.admit([10.0] * 16)  # heavy (160 > 100)
    for _ in range(4):
        budget.admit([100.0])  # light requests still fit: the last quarter
    assert budget.in_flight("light") == pytest.approx(400)
    with pytest.raises(Overloaded):
        budget.admit([1.0])  # 1601 > 1600 and the light reserve (400) is used up


def test_light_requests_keep_their_quarter_even_beside_an_oversized_heavy_one():
    budget = DecodeBudget(1600)
    budget.admit([900.0] * 2)  # larger than the whole budget: admitted alone
    with pytest.raises(Overloaded):
        budget.admit([500.0])  # a second heavy one waits for the first
    for _ in range(4):
        budget.admit([100.0])
    with pytest.raises(Overloaded):
        budget.admit([50.0])


def test_each_image_gives_its_cost_back_once_and_closing_returns_the_rest():
    recorder = Recorder()
    budget = DecodeBudget(1600, observer=recorder)
    admission = budget.admit([300.0, 200.0, 100.0])
    assert admission.lane == "heavy" and recorder.last["heavy"] == pytest.approx(600)
    admission.image_done(1)
    admission.image_done(1)  # again: nothing more
    assert budget.in_flight() == pytest.approx(400)
    admission.close()
    admission.close()
    assert budget.in_flight() == 0 and recorder.last["heavy"] == 0
    budget.admit([1200.0])  # the room is back


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError):
        DecodeBudget(0)
