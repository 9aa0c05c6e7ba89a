"""`BodyBudget`, the per-worker cap on request-body bytes in flight, on its own: reservations
add up and come back, a body over the whole budget is a 413, one that does not fit now a 503,
and slow uploads give way to a body that needs the room."""

from __future__ import annotations

import time

import pytest

from lossreg.errors import PayloadTooLarge, ServerBusy
from lossreg_service.server.body import BodyBudget, release_request


def test_reservations_add_up_and_come_back() -> None:
    budget = BodyBudget(100, retry_after_s=2)
    a: dict = {}
    b: dict = {}
    budget.reserve(a, 60)
    budget.reserve(b, 40)
    assert budget.used == 100
    with pytest.raises(ServerBusy) as busy:
        budget.reserve({}, 1)
    assert busy.value.retry_after == 2
    release_request(a)
    assert budget.used == 40
    release_request(a)  # twice is harmless
    assert budget.used == 40
    budget.reserve({}, 60)
    assert budget.used == 100


def test_a_body_bigger_than_the_whole_budget_is_413() -> None:
    with pytest.raises(PayloadTooLarge) as too_large:
        BodyBudget(100, retry_after_s=1).reserve({}, 101)
    assert too_large.value.field == "body"


def test_slow_uploads_give_way_slowest_first() -> None:
    budget = BodyBudget(100, retry_after_s=1, min_rate=10)
    slow, slower, fast = {}, {}, {}
    for state in (slow, slower, fast):
        budget.reserve(state, 30)
    uploads = {id(s): budget.start_upload(s) for s in (slow, slower, fast)}
    past = time.monotonic() - 2  # two seconds into each upload
    for state, received in ((slow, 10), (slower, 2), (fast, 29)):
        uploads[id(state)].started = past
        uploads[id(state)].received = received
    budget.reserve({}, 30)  # 90 used, 30 wanted: the slowest gives back its 28 unsent bytes
    assert uploads[id(slower)].shed and not uploads[id(slow)].shed
    assert not uploads[id(fast)].shed
    assert budget.used == 90 - 28 + 30


def test_without_a_minimum_rate_nobody_is_shed() -> None:
    budget = BodyBudget(100, retry_after_s=1, min_rate=0)
    state: dict = {}
    budget.reserve(state, 90)
    budget.start_upload(state).started = time.monotonic() - 60
    with pytest.raises(ServerBusy):
        budget.reserve({}, 20)
