"""Online learning through the real parts: `continuum serve` with CONTINUUM_ONLINE=true answers over
HTTP, stores each turn and enqueues an `online` job; a real `continuum worker -Q online` process
applies it; the fact shows up in the fact memory (`/v1/facts`) and the job's result carries metrics.
With CONTINUUM_ONLINE_PUBLISH_EVERY=1 the learnt fact becomes version 1 of the lineage, which the same
worker's real evaluate and promote jobs put through the gate into production, and the server then
answers with it: talking to the model changes the model it serves."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
from sqlalchemy import select

from tests.integration.distributed.harness import REPO
from tests.support.servers import _terminate, free_port, wait_for_port


def test_a_fact_said_in_chat_is_learnt_by_the_online_worker(tmp_path):
    from common.db import create_db_engine, session_factory, session_scope
    from common.db.models import Job, OnlineTurn

    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUUM_")}
    env.update(CONTINUUM_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               CONTINUUM_ONLINE="true", CONTINUUM_ONLINE_STEPS_PER_TURN="1", CONTINUUM_LORA_RANK="4",
               CONTINUUM_LORA_ALPHA="8", CONTINUUM_ONLINE_PUBLISH_EVERY="1", CONTINUUM_SERVE_POLL_SECONDS="0.5",
               # The tiny random model cannot meet the real model's thresholds; the gate still runs.
               CONTINUUM_GATE_MIN_RECALL="0", CONTINUUM_GATE_MIN_GENERALISATION_GAIN="-100")
    port = free_port()
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("serve", "worker")}
    serve = subprocess.Popen([sys.executable, "-m", "scheduler", "serve", "--port", str(port)], cwd=REPO, env=env,
                             stdout=logs["serve"], stderr=subprocess.STDOUT)
    worker = None
    try:
        wait_for_port(port, timeout=120, proc=serve)
        worker = subprocess.Popen([sys.executable, "-m", "scheduler", "worker", "-Q", "online,cpu,io"], cwd=REPO, env=env,
                                  stdout=logs["worker"], stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=120) as client:
            for said in ("Zorbel owns a purple boat.", "Who owns the purple boat?"):
                answer = client.post("/v1/chat/completions", json={
                    "model": "production", "messages": [{"role": "user", "content": said}], "max_tokens": 8})
                assert answer.status_code == 200, answer.text
            pinned = client.post("/v1/chat/completions", json={
                "model": "base", "messages": [{"role": "user", "content": "Kira works at the lighthouse."}],
                "max_tokens": 4})
            assert pinned.status_code == 200
            deadline = time.monotonic() + 240
            facts = []
            while time.monotonic() < deadline:
                facts = client.get("/v1/facts").json()["facts"]
                if facts:
                    break
                time.sleep(1)
        assert [f["subject"] for f in facts] == ["Zorbel"], facts  # the `base` turn was not learnt
        engine = create_db_engine(f"sqlite:///{home / 'continuum.db'}")
        sessions = session_factory(engine)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with session_scope(sessions) as session:
                turns = session.scalars(select(OnlineTurn).order_by(OnlineTurn.id)).all()
                if all(t.applied_at is not None for t in turns):
                    break
            time.sleep(1)
        assert [(t.turn_number, t.kind) for t in turns] == [(1, "fact"), (2, "question")]
        with session_scope(sessions) as session:
            jobs = session.scalars(select(Job).where(Job.kind == "online", Job.state == "succeeded")).all()
            assert jobs and jobs[0].queue == "online"
            applied = [j.result for j in jobs if j.result.get("status") == "applied"]
            assert sum(r["turns_applied"] for r in applied) == 2
            assert "stability" in applied[-1]["metrics"] and "plasticity" in applied[-1]["metrics"]
            published = [r["published"] for r in applied if "published" in r]
            assert [p["version"] for p in published] == [1] and published[0]["dataset"]["probe"] == 2
        deadline = time.monotonic() + 240
        health = {}
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.monotonic() < deadline:
                health = client.get("/health").json()
                if health["serving"].get("production") == "default@v1":
                    break
                time.sleep(1)
        assert health["serving"].get("production") == "default@v1", health
        with httpx.Client(base_url=url, timeout=30) as client:
            online = client.get("/v1/stats").json()["online"]  # what `continuum chat` shows under /stats
        assert online["turns_learnt"] == 2 and online["turns_waiting"] == 0 and online["facts"] == 1
        assert online["last_published"]["version"] == 1 and "stability" in online["metrics"]
        shown = subprocess.run([sys.executable, "-m", "scheduler", "chat", "--url", url], input="/stats\n/quit\n",
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
        assert "online learning" in shown.stdout and "2 learnt, 0 waiting" in shown.stdout, shown.stdout
        assert "last v1" in shown.stdout and "anchor perplexity" in shown.stdout
        with session_scope(sessions) as session:
            steps = {j.kind: j.state for j in session.scalars(select(Job).where(Job.pipeline_run_id.is_not(None)))}
            assert steps == {"evaluate": "succeeded", "promote": "succeeded"}
        engine.dispose()
    finally:
        _terminate(worker)
        _terminate(serve)
        for log in logs.values():
            log.close()
        print((tmp_path / "worker.log").read_text()[-4000:])
