"""Promotion on Postgres: compare-and-set alias moves, the append-only history, the gate, rollback,
and the vLLM-style hot-swap calls against a local recording HTTP server."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from common.db import create_db_engine, session_factory, session_scope
from common.db.models import Adapter, AliasHistory, Evaluation
from common.objectstore import open_store
from common.settings import load_settings
from workers.context import JobContext
from workers.promote.aliases import move_alias, read_alias, rollback
from workers.promote.logic import run as promote

pytestmark = pytest.mark.integration


@pytest.fixture
def sessions(migrated_postgres_url):
    engine = create_db_engine(migrated_postgres_url, pool_size=8)
    yield session_factory(engine)
    engine.dispose()


def _adapters(sessions, n: int) -> list[int]:
    with session_scope(sessions) as session:
        rows = [Adapter(name="default", version=v, base_model="builtin:tiny", uri=f"s3://b/adapters/v{v}")
                for v in range(1, n + 1)]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def _history(sessions) -> list[AliasHistory]:
    with session_scope(sessions) as session:
        return list(session.scalars(select(AliasHistory).order_by(AliasHistory.id)))


def test_two_concurrent_promotions_exactly_one_wins_both_recorded(sessions):
    for round_ in range(5):
        a, b = _adapters(sessions, 2) if round_ == 0 else _more(sessions)
        expected = read_alias(sessions, "production").revision
        barrier = threading.Barrier(2)

        def race(target: int):
            barrier.wait()
            return move_alias(sessions, "production", target, expected, job_id=f"job-{target}")

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(race, (a, b)))
        assert sum(r.succeeded for r in results) == 1
        winner = next(r for r in results if r.succeeded)
        state = read_alias(sessions, "production")
        assert state.adapter_id == winner.to_adapter_id and state.revision == expected + 1
        attempts = [h for h in _history(sessions) if h.job_id in (f"job-{a}", f"job-{b}")]
        assert len(attempts) == 2 and sorted(h.succeeded for h in attempts) == [False, True]
        loser = next(h for h in attempts if not h.succeeded)
        assert "compare-and-set lost" in loser.reason


_version = iter(range(100, 200))


def _more(sessions) -> tuple[int, int]:
    with session_scope(sessions) as session:
        rows = [Adapter(name="default", version=next(_version), base_model="builtin:tiny", uri="s3://b/x")
                for _ in range(2)]
        session.add_all(rows)
        session.flush()
        return rows[0].id, rows[1].id


def test_rollback_moves_back_and_is_recorded(sessions):
    v1, v2 = _adapters(sessions, 2)
    assert move_alias(sessions, "production", v1, 0).succeeded
    assert move_alias(sessions, "production", v2, 1).succeeded
    with session_scope(sessions) as session:
        for adapter_id in (v1, v2):
            session.get(Adapter, adapter_id).status = "promoted"
    back = rollback(sessions, "production")
    assert back.succeeded and read_alias(sessions, "production").adapter_id == v1
    with session_scope(sessions) as session:  # the version rolled away from no longer says "promoted"
        assert [session.get(Adapter, i).status for i in (v1, v2)] == ["promoted", "rolled_back"]
    assert [(h.action, h.from_adapter_id, h.to_adapter_id) for h in _history(sessions)] == [
        ("promote", None, v1), ("promote", v1, v2), ("rollback", v2, v1)]


class _Recorder(BaseHTTPRequestHandler):
    calls: list[tuple[str, dict]] = []

    def do_POST(self):  # noqa: N802 - http.server naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append((self.path, body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def serving_engine():
    _Recorder.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.calls
    server.shutdown()
    server.server_close()


def _context(settings, sessions, job_id, params):
    return JobContext(settings=settings, sessions=sessions, store=open_store(settings), job_id=job_id, params=params)


def _evaluation(sessions, adapter_id, forgetting, gain):
    with session_scope(sessions) as session:
        metrics = {"recall": {"token_accuracy": 0.9}, "forgetting_max": forgetting,
                   "retention": {} if forgetting is None else {"1": {"forgetting": forgetting}},
                   "generalisation": {"nll_gain": gain}}
        row = Evaluation(adapter_id=adapter_id, metrics=metrics)
        session.add(row)
        session.flush()
        return row.id


def test_promote_job_gates_moves_alias_and_hot_swaps(sessions, serving_engine, monkeypatch):
    url, calls = serving_engine
    monkeypatch.setenv("CONTINUUM_HOT_SWAP_URL", url)
    settings = load_settings(gate_max_forgetting=0.1, gate_min_generalisation_gain=0.0)
    v1, v2, v3 = _adapters(sessions, 3)

    first = promote(_context(settings, sessions, "p1", {"evaluation_id": _evaluation(sessions, v1, None, None)}))
    assert first["status"] == "promoted" and first["hot_swap"] == ["load default@v1"]
    second = promote(_context(settings, sessions, "p2", {"evaluation_id": _evaluation(sessions, v2, 0.02, 0.3)}))
    assert second["status"] == "promoted" and second["previous_adapter_id"] == v1
    # Forgot too much: refused, alias untouched, the refusal recorded, no serving call.
    third = promote(_context(settings, sessions, "p3", {"evaluation_id": _evaluation(sessions, v3, 0.5, 0.3)}))
    assert third["status"] == "rejected" and "worst forgetting since first taught 0.50 > 0.1 FAIL" in third["reason"]
    assert read_alias(sessions, "production").adapter_id == v2

    assert calls == [
        ("/v1/load_lora_adapter", {"lora_name": "default@v1", "lora_path": "s3://b/adapters/v1"}),
        ("/v1/load_lora_adapter", {"lora_name": "default@v2", "lora_path": "s3://b/adapters/v2"}),
        ("/v1/unload_lora_adapter", {"lora_name": "default@v1"}),
    ]
    history = _history(sessions)
    assert [(h.job_id, h.succeeded) for h in history] == [("p1", True), ("p2", True), ("p3", False)]
    # A retried promote job (same job id) does not move the alias again; it only re-sends the hot-swap.
    again = promote(_context(settings, sessions, "p2", {"evaluation_id": 2}))
    assert again["status"] == "promoted" and len(_history(sessions)) == 3
    with session_scope(sessions) as session:
        assert session.get(Adapter, v3).status == "rejected" and session.get(Adapter, v2).status == "promoted"
