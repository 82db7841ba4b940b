"""Fencing tokens, the database clock, the claim/hand-back race and poison hand-backs on SQLite."""

from __future__ import annotations

import pytest

from common.db import create_db_engine, session_factory
from common.ledger import JobLedger
from tests.unit.ledger import fencing_cases as cases


@pytest.fixture
def engine(migrated_sqlite_url):
    engine = create_db_engine(migrated_sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def ledger(engine) -> JobLedger:
    return JobLedger(session_factory(engine))


def test_token_bumps_on_every_claim(ledger):
    cases.token_bumps_on_every_claim(ledger)


def test_no_two_claims_share_a_token(ledger):
    cases.no_two_claims_share_a_token(ledger)


def test_stale_token_registers_nothing(ledger):
    cases.stale_token_registers_nothing(ledger)


def test_expired_lease_registers_nothing_even_unclaimed(ledger):
    cases.expired_lease_registers_nothing_even_unclaimed(ledger)


def test_cancel_before_final_write_is_cancelled(ledger):
    cases.cancel_before_final_write_is_cancelled(ledger)


def test_skewed_clock_steals_no_live_lease(engine):
    cases.skewed_clock_steals_no_live_lease(
        lambda clock: JobLedger(session_factory(engine), **({} if clock is None else {"clock": clock}))
    )


def test_duplicate_racing_a_hand_back_never_dead_letters(ledger, monkeypatch):
    cases.duplicate_racing_a_hand_back_never_dead_letters(ledger, monkeypatch)


def test_poison_hand_backs_are_dead_lettered(ledger):
    cases.poison_hand_backs_are_dead_lettered(ledger)


def test_heartbeat_after_our_own_final_write_is_not_a_lost_lease(ledger):
    cases.heartbeat_after_our_own_final_write_is_not_a_lost_lease(ledger)
