"""Plain-function parts of accounts and logging: rate limits, refusal counting, the access log's
lines and keep-alive summaries, registration codes (the server tests: test_accounts.py)."""

from __future__ import annotations

import logging

import pytest

from central import accounts
from central.accesslog import KeepaliveTally, loggable_target
from central.auth import Refusals


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sliding_limit_per_key_and_its_wait():
    limit = accounts.SlidingLimit(2, 60.0)
    assert limit.retry_after("a", 0.0) == 0
    limit.add("a", 0.0)
    limit.add("a", 10.0)
    assert limit.retry_after("a", 20.0) == pytest.approx(40.0)
    assert limit.retry_after("b", 20.0) == 0
    assert limit.retry_after("a", 60.5) == 0  # the first event left the window


def test_sliding_limit_keeps_a_bounded_number_of_keys():
    limit = accounts.SlidingLimit(1, 60.0, max_keys=100)
    for i in range(1000):
        limit.add(f"10.0.{i // 256}.{i % 256}", float(i))
    assert len(limit._events) <= 100


def test_registration_gate_counts_attempts_per_address_and_creations_in_total():
    gate = accounts.RegistrationGate(True, per_address=2, total=3, max_pending=10)
    assert gate.attempt("a", 0) == 0 and gate.attempt("a", 1) == 0
    assert gate.attempt("a", 2) > 0  # a third attempt from one address
    for when in (3, 4, 5):
        assert gate.attempt(f"b{when}", when) == 0
        gate.created(when)
    assert gate.attempt("c", 6) > 0  # three accounts this hour: nobody else
    assert gate.attempt("c", 3 + gate.WINDOW_S + 1) == 0


def test_codes_are_compared_as_people_type_them():
    code = accounts.new_code()
    assert len(code) == 9 and code[4] == "-" and set(code) - {"-"} <= set(accounts.CODE_ALPHABET)
    stored = accounts.hash_code(code)
    assert accounts.code_matches(code.lower().replace("-", " "), stored)
    assert not accounts.code_matches("AAAA-AAAA", stored)


def test_operator_names_are_matched_whole():
    assert accounts.valid_operator_name("alice.b-1")
    for bad in ("admin\n", "a", "Alice", "-x", "x" * 33, "al ice", None, 3):
        assert not accounts.valid_operator_name(bad), bad


def test_refusals_log_once_per_address_and_window_and_bound_anonymous_audit(caplog):
    clock = Clock()
    refusals = Refusals(clock=clock)
    with caplog.at_level(logging.WARNING, logger="dvic-central.auth"):
        for _ in range(30):
            refusals.unauthenticated("10.0.0.9")
        audited = [refusals.may_audit_anonymous("10.0.0.9") for _ in range(30)]
        assert [r.getMessage() for r in caplog.records] == [
            "refused a request from 10.0.0.9: missing, unknown or expired token"]
        assert audited.count(True) == Refusals.AUDIT_PER_WINDOW and audited[: Refusals.AUDIT_PER_WINDOW] == [
            True] * Refusals.AUDIT_PER_WINDOW
        clock.now += Refusals.WINDOW_S
        refusals.sweep()
    messages = [r.getMessage() for r in caplog.records][1:]
    assert messages == ["refused 30 requests from 10.0.0.9 in 60 s: missing, unknown or expired token",
                        "20 refused calls from 10.0.0.9 were not audited (at most 10 per 60 s per address)"]
    assert refusals.may_audit_anonymous("10.0.0.9")  # a new window


def test_refusals_keep_a_bounded_number_of_addresses():
    refusals = Refusals(max_addresses=50, clock=Clock())
    for i in range(500):
        refusals.unauthenticated(f"10.1.{i // 256}.{i % 256}")
    assert len(refusals._windows) <= 50


def test_access_log_target_masks_secrets_and_stays_one_line():
    assert loggable_target("/api/v1/logs", "node=pi&token=abc&limit=5") == "/api/v1/logs?node=pi&token=***&limit=5"
    assert loggable_target("/x", "api_key=1&Password=2&code=3&q=a") == "/x?api_key=***&Password=***&code=***&q=a"
    assert loggable_target("/a\nb c", "") == "/a%0Ab%20c"
    assert len(loggable_target("/" + "x" * 5000, "")) <= 301


def test_keepalives_are_summed_up_once_a_window(caplog):
    clock = Clock()
    tally = KeepaliveTally(clock)
    with caplog.at_level(logging.INFO, logger="dvic-central.access"):
        for status in [200] * 500 + [401] * 3:
            tally.add(status)
        assert caplog.records == []
        clock.now += 60
        tally.add(200)
    assert [r.getMessage() for r in caplog.records] == ["node keep-alives in the last 60 s: 504 (200: 501, 401: 3)"]
