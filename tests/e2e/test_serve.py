"""`continuum serve` as a real process on loopback, driven by real HTTP clients (httpx and the
`openai` package): chat (plain and streamed), the served models, feedback on a served answer, the
bearer token, and a promotion that swaps the served adapter while answers are streaming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch

from tests.integration.distributed.harness import REPO
from tests.support.servers import _terminate, free_port, wait_for_port

TOKEN = "serve-test-token-0123456789"
QUESTION = [{"role": "user", "content": "What colour is the sky over the harbour?"}]


def _publish(settings, sessions, version: int, seed: int) -> int:
    """A tiny-model adapter with visible random weights, registered as `default@v<version>`."""
    from common.db import session_scope
    from common.db.models import Adapter
    from common.objectstore import open_store
    from workers.learning.lora import LoraSettings, attach_adapter, publish_adapter
    from workers.learning.tiny import build_tiny_model

    torch.manual_seed(seed)
    model = attach_adapter(build_tiny_model(0), LoraSettings(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    prefix = f"adapters/default/job-{version}"
    publish_adapter(open_store(settings), prefix, model)
    with session_scope(sessions) as session:
        row = Adapter(name="default", version=version, base_model="builtin:tiny", uri=f"file://{prefix}",
                      metadata_={"prefix": prefix})
        session.add(row)
        session.flush()
        return row.id


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from common.db import create_db_engine, session_factory
    from common.db.migrate import upgrade
    from common.settings import load_settings
    from workers.promote.aliases import move_alias

    home = tmp_path_factory.mktemp("serve") / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUUM_")}
    env.update(CONTINUUM_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               CONTINUUM_SERVE_TOKEN=TOKEN, CONTINUUM_SERVE_POLL_SECONDS="0.3", OMP_NUM_THREADS="1",
               CONTINUUM_SERVE_MAX_NEW_TOKENS="1024")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONTINUUM_HOME", str(home))
        settings = load_settings()
        upgrade(settings.resolved_database_url)
        engine = create_db_engine(settings.resolved_database_url)
        sessions = session_factory(engine)
        v1, v2 = _publish(settings, sessions, 1, seed=1), _publish(settings, sessions, 2, seed=2)
        assert move_alias(sessions, "production", v1, 0).succeeded
    port = free_port()
    log = (home.parent / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "scheduler", "serve", "--port", str(port)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=120, proc=proc)
        yield {"url": f"http://127.0.0.1:{port}", "sessions": sessions, "v1": v1, "v2": v2, "home": home}
    finally:
        _terminate(proc)
        log.close()
        engine.dispose()
        print((home.parent / "serve.log").read_text()[-3000:])


def _client(server) -> httpx.Client:
    return httpx.Client(base_url=server["url"], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)


def _chat(client: httpx.Client, model: str, **extra) -> dict:
    response = client.post("/v1/chat/completions", json={"model": model, "messages": QUESTION, "max_tokens": 24,
                                                         **extra})
    assert response.status_code == 200, response.text
    return response.json()


def test_models_and_the_token(server):
    assert httpx.get(f"{server['url']}/v1/models").status_code == 401
    wrong = httpx.get(f"{server['url']}/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    with _client(server) as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert {"base", "default", "production", "default@v1"} <= set(ids), ids


def test_an_answer_comes_from_the_adapter_and_streams_the_same_text(server):
    from openai import OpenAI

    with _client(server) as client:
        plain = _chat(client, "production")
        base = _chat(client, "base")
        missing = client.post("/v1/chat/completions", json={"model": "nope", "messages": QUESTION})
    assert plain["id"].startswith("chatcmpl-") and plain["model"] == "default@v1"
    assert plain["usage"]["completion_tokens"] > 0 and plain["choices"][0]["finish_reason"] in ("stop", "length")
    assert base["model"] == "base"
    # The adapter's random weights change the greedy answer: the adapter is really applied.
    assert plain["choices"][0]["message"]["content"] != base["choices"][0]["message"]["content"]
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"

    openai = OpenAI(base_url=f"{server['url']}/v1", api_key=TOKEN)
    stream = openai.chat.completions.create(model="production", messages=QUESTION, max_tokens=24, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(chunks) > 3 and text == plain["choices"][0]["message"]["content"]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    same = openai.chat.completions.create(model="default", messages=QUESTION, max_tokens=24)
    assert same.choices[0].message.content == text


def test_feedback_on_a_served_answer(server):
    from sqlalchemy import select

    from common.db import session_scope
    from common.db.models import Feedback, FeedbackQuarantine

    with _client(server) as client:
        answer = _chat(client, "production")
        first = client.post("/v1/feedback", json={"response_id": answer["id"], "feedback": "thumbs_up"})
        again = client.post("/v1/feedback", json={"response_id": answer["id"], "feedback": "thumbs_up"})
        bad = client.post("/v1/feedback", json={"prompt": "hi", "response": "hello", "feedback": "meh"})
        garbled = client.post("/v1/feedback", content=b"{not json")
        unknown = client.post("/v1/feedback", json={"response_id": "chatcmpl-missing", "feedback": "thumbs_up"})
        plain = client.post("/v1/feedback", json={"prompt": "2+2?", "response": "4", "feedback": "thumbs_down"})
    assert first.status_code == 200 and first.json() == {"stored": True, "duplicate": False}
    assert again.status_code == 200 and again.json() == {"stored": False, "duplicate": True}
    assert bad.status_code == 422 and "'feedback' must be one of" in bad.json()["error"]["message"]
    assert garbled.status_code == 422 and "bad JSON" in garbled.json()["error"]["message"]
    assert unknown.status_code == 404
    assert plain.status_code == 200 and plain.json()["stored"]
    with session_scope(server["sessions"]) as session:
        rows = session.scalars(select(Feedback).where(Feedback.external_id == f"served:{answer['id']}")).all()
        assert len(rows) == 1
        row = rows[0]
        assert row.response == answer["choices"][0]["message"]["content"] and row.feedback == "thumbs_up"
        assert row.messages[0] == QUESTION[0] and row.metadata_["served_model"] == "default@v1"
        assert not session.scalars(select(Feedback).where(Feedback.response == "hello")).all()
        reasons = [q.reason for q in session.scalars(select(FeedbackQuarantine)).all()]
        assert any("'feedback' must be one of" in r for r in reasons) and any("bad JSON" in r for r in reasons)


def _stream(server, max_tokens: int, record: dict, started: threading.Event, errors: list) -> None:
    """One streamed answer; `record` gets its model, finish reason and when each event arrived."""
    try:
        with _client(server) as client, client.stream(
                "POST", "/v1/chat/completions",
                json={"model": "production", "messages": QUESTION, "max_tokens": max_tokens, "stream": True}) as r:
            assert r.status_code == 200
            events = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append((time.monotonic(), line[6:]))
                    if len(events) == 6:  # the role chunk and 5 pieces: resolved, and generating or queued
                        started.set()
        started.set()
        assert events[-1][1] == "[DONE]", events[-3:]
        chunks = [json.loads(e) for _, e in events[:-1]]
        record.update(model=chunks[0]["model"], finish=chunks[-1]["choices"][0]["finish_reason"],
                      last=events[-1][0], pieces=len(chunks) - 2)
    except BaseException as exc:  # reported by the test: a dropped request fails it
        errors.append(exc)
        started.set()


def test_a_promotion_swaps_the_adapter_while_answers_stream(server):
    """A long answer is streaming when production moves; the new version's load queues behind it, and
    three more answers arrive, still on the old version, behind the load. All four finish on the version
    they started with (the old one is unloaded only after them); answers after the move use the new one."""
    from workers.promote.aliases import move_alias

    errors: list[BaseException] = []
    records = [{} for _ in range(4)]
    started = [threading.Event() for _ in range(4)]
    threads = [threading.Thread(target=_stream, args=(server, 1000 if i == 0 else 16, records[i], started[i],
                                                      errors)) for i in range(4)]
    threads[0].start()
    assert started[0].wait(60)  # the long answer is generating
    revision = _alias_revision(server)
    moved_at = time.monotonic()
    assert move_alias(server["sessions"], "production", server["v2"], revision).succeeded
    time.sleep(1.0)  # the follower has seen the move (polls every 0.3 s) and its load waits for the model
    with _client(server) as client:
        assert client.get("/health").json()["serving"]["production"] == "default@v1"  # not switched yet
        for thread in threads[1:]:
            thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and client.get("/health").json()["serving"].get("production") != "default@v2":
            time.sleep(0.1)
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        assert records[0]["last"] > moved_at + 1.0, "the long answer ended too soon: nothing was in flight"
        assert records[0]["finish"] == "length" and records[0]["pieces"] > 100
        assert [r["model"] for r in records] == ["default@v1"] * 4  # each kept the version it started on
        assert all(r["finish"] in ("stop", "length") for r in records)
        assert _chat(client, "production")["model"] == "default@v2"
        health = client.get("/health").json()
        assert health["serving"] == {"default": "default@v2", "production": "default@v2"}
        assert "default@v1" not in health["loaded"]  # unloaded once its last answer ended
        # An older version can still be asked for by name: loaded on demand from the registry.
        assert _chat(client, "default@v1")["model"] == "default@v1"


def _alias_revision(server) -> int:
    from common.db import session_scope
    from common.db.models import Alias

    with session_scope(server["sessions"]) as session:
        return session.get(Alias, "production").revision


def test_continuum_chat_talks_judges_and_shows_stats(server):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUUM_")}
    env.update(CONTINUUM_HOME=str(server["home"]), CONTINUUM_SERVE_TOKEN=TOKEN)
    script = "Zorbel owns a purple boat.\n/good\n/bad\n/stats\n/facts\n/what\n/quit\n"
    done = subprocess.run([sys.executable, "-m", "scheduler", "chat", "--url", server["url"]], input=script,
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "model>" in out and "(default@v" in out
    assert "stored: thumbs_up" in out and "already judged: thumbs_down" in out  # one judgement per answer
    assert "answers" in out and "median first token seconds" in out
    assert "online learning is off" in out and "unknown command /what" in out
    nowhere = subprocess.run([sys.executable, "-m", "scheduler", "chat", "--url", "http://127.0.0.1:9"], input="/quit\n",
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert nowhere.returncode != 0 and "nothing answers at http://127.0.0.1:9" in nowhere.stderr + nowhere.stdout


def test_a_message_that_cannot_be_stored_is_refused_with_a_reason(server):
    with _client(server) as client:
        bad = client.post("/v1/chat/completions", json={"model": "base", "messages": [
            {"role": "user", "content": "nul \u0000 here"}]})
        empty = client.post("/v1/chat/completions", json={"model": "base", "messages": []})
        last = client.post("/v1/chat/completions", json={"model": "base", "messages": [
            {"role": "assistant", "content": "hi"}]})
    assert bad.status_code == 400 and "NUL" in bad.json()["error"]["message"]
    assert empty.status_code == 400 and "messages" in empty.json()["error"]["message"]
    assert last.status_code == 400 and "user's turn" in last.json()["error"]["message"]
