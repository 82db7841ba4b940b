"""The export job on real servers: Postgres + S3 (moto) and SQLite + a local folder.

Every row must land in exactly one dataset, none lost — under concurrency, after a crash between the
upload and the commit, and with rows whose ids commit out of order.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from common.db import Dataset, Feedback, create_db_engine, session_factory
from common.errors import ObjectStoreUnavailable, PermanentError, ValidationError
from common.objectstore import LocalObjectStore, open_store
from common.settings import load_settings
from workers.export import (
    ExportConfig,
    dataset_uid,
    export_feedback,
    iter_dataset_rows,
    read_dataset_manifest,
    split_of,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LINE_KEYS = {
    "feedback_id", "prompt", "response", "messages", "feedback", "weight", "unlikelihood", "split", "content_hash",
    "created_at",
}


class Backend:
    def __init__(self, url: str, store, env: dict[str, str]):
        self.url = url
        self.engine = create_db_engine(url)
        self.sessions = session_factory(self.engine)
        self.store = store
        self.env = env  # CONTINUUM_* variables that point a subprocess at the same database and store
        self.settings = load_settings()

    def seed(self, rows: list[dict]) -> None:
        """Store `rows` as they are, repeats included: the importer would drop repeated content, but
        rows stored before migration 0004 (or by another writer) can repeat it, and the export must
        still collapse them. Known external ids are skipped as the importer does."""
        from datetime import datetime, timezone

        from common.db.engine import session_scope
        from common.feedback.importer import _insert_ignoring_known_ids
        from common.feedback.schema import problems_of

        now = datetime.now(timezone.utc)
        values = []
        for data in rows:
            row, problems = problems_of(dict(data), self.settings.feedback_max_chars)
            assert row is not None, problems
            values.append(row.to_db(now))
        with session_scope(self.sessions) as session:
            session.execute(_insert_ignoring_known_ids(session), values)

    def feedback(self) -> list[Feedback]:
        with self.sessions() as session:
            return list(session.scalars(select(Feedback).order_by(Feedback.id)))

    def datasets(self) -> list[Dataset]:
        with self.sessions() as session:
            return list(session.scalars(select(Dataset).order_by(Dataset.id)))


@pytest.fixture
def postgres_s3(migrated_postgres_url, s3_env):
    backend = Backend(migrated_postgres_url, open_store(load_settings()), {**s3_env, "CONTINUUM_DATABASE_URL": migrated_postgres_url})
    yield backend
    backend.engine.dispose()


@pytest.fixture
def sqlite_local(migrated_sqlite_url, tmp_path):
    root = tmp_path / "objects"
    backend = Backend(
        migrated_sqlite_url,
        LocalObjectStore(root),
        {"CONTINUUM_DATABASE_URL": migrated_sqlite_url, "CONTINUUM_STORAGE_URL": f"file://{root}"},
    )
    yield backend
    backend.engine.dispose()


@pytest.fixture(params=["postgres_s3", "sqlite_local"])
def backend(request) -> Backend:
    return request.getfixturevalue(request.param)


def rows(n: int, start: int = 0, feedback=lambda i: "thumbs_up" if i % 3 else "thumbs_down") -> list[dict]:
    return [{"prompt": f"question {i}?", "response": f"answer {i}", "feedback": feedback(i)} for i in range(start, start + n)]


def config(**overrides) -> ExportConfig:
    return ExportConfig.create(**{"holdout_percent": 20, **overrides})


def shard_lines(backend: Backend, dataset: Dataset) -> list[dict]:
    raw = backend.store.get_bytes(f"datasets/{dataset.uid}/data.jsonl.gz")
    return [json.loads(line) for line in gzip.decompress(raw).splitlines()]


def test_shard_and_manifest_are_complete_and_consistent(backend):
    backend.seed(rows(30))
    backend.seed(rows(5))  # exact duplicates of rows 0-4 (same content, new ids)
    backend.seed(
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hé"}], "feedback": "thumbs_up"}]
    )
    result = export_feedback(backend.sessions, backend.store, config(), "job-1")
    assert result.status == "exported"
    assert (result.claimed, result.rows, result.duplicates, result.skipped) == (36, 31, 5, 0)

    [dataset] = backend.datasets()
    assert (dataset.id, dataset.uid, dataset.num_rows) == (result.dataset_id, result.dataset_uid, 31)
    assert all(f.dataset_id == dataset.id for f in backend.feedback())

    raw = backend.store.get_bytes(f"datasets/{dataset.uid}/data.jsonl.gz")
    manifest = read_dataset_manifest(backend.store, dataset.uri)
    assert hashlib.sha256(raw).hexdigest() == manifest["sha256"] == dataset.sha256 == result.sha256
    assert manifest["files"]["data.jsonl.gz"] == {"size": len(raw), "sha256": dataset.sha256}
    assert manifest["counts"] == {
        "claimed": 36, "written": 31, "train": dataset.num_train, "probe": result.probe,
        "holdout": dataset.num_holdout, "duplicates": 5, "skipped": 0, "min_feedback_id": 1, "max_feedback_id": 36,
    }
    assert manifest["feedback_id_range"] == [1, 36] == [dataset.min_feedback_id, dataset.max_feedback_id]
    assert manifest["schema_version"] == dataset.schema_version == 1
    assert manifest["policy"]["thumbs_down_policy"] == "unlikelihood"
    assert (manifest["policy"]["probe_percent"], manifest["policy"]["split_key"]) == (20, "prompt")
    assert sorted(backend.store.list("datasets/")) == [
        f"datasets/{dataset.uid}/data.jsonl.gz", f"datasets/{dataset.uid}/manifest.json",
    ]

    lines = shard_lines(backend, dataset)
    assert all(set(line) == LINE_KEYS for line in lines)
    by_id = {f.id: f for f in backend.feedback()}
    assert sorted(line["feedback_id"] for line in lines) == list(range(1, 31)) + [36]  # 31-35 were duplicates
    for line in lines:
        stored = by_id[line["feedback_id"]]
        assert (line["prompt"], line["response"], line["feedback"], line["content_hash"]) == (
            stored.prompt, stored.response, stored.feedback, stored.content_hash,
        )
        # Default policy: a thumbs-down row is never a positive target.
        assert line["weight"] == (2.0 if stored.feedback == "thumbs_up" else 1.0)
        assert line["unlikelihood"] is (stored.feedback == "thumbs_down")
        assert line["split"] == split_of(stored.prompt, 20, 20)
        assert line["created_at"].endswith("+00:00")
    chat = next(line for line in lines if line["feedback_id"] == 36)
    assert chat["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hé"}]
    assert chat["response"] == "hé" and chat["prompt"] == "hi"
    assert sum(line["split"] == "holdout" for line in lines) == dataset.num_holdout > 0
    assert sum(line["split"] == "probe" for line in lines) == result.probe > 0
    assert dataset.num_train + result.probe + dataset.num_holdout == 31

    streamed = list(iter_dataset_rows(backend.store, dataset.uri))
    assert streamed == lines
    assert list(iter_dataset_rows(backend.store, f"datasets/{dataset.uid}", split="holdout")) == [
        line for line in lines if line["split"] == "holdout"
    ]
    assert list(iter_dataset_rows(backend.store, dataset.uri, split=("train", "probe"))) == [
        line for line in lines if line["split"] != "holdout"
    ]


def test_crash_between_upload_and_commit_then_retry(backend):
    backend.seed(rows(40))

    def crash() -> None:
        raise RuntimeError("worker died after the upload")

    with pytest.raises(RuntimeError, match="worker died"):
        export_feedback(backend.sessions, backend.store, config(), "job-crash", after_upload=crash)
    # The claim committed before the upload (no lock held across it): the rows are this job's,
    # in a dataset still `pending` that nothing reads.
    [pending] = backend.datasets()
    assert pending.state == "pending" and pending.sha256 == ""
    assert all(f.dataset_id == pending.id for f in backend.feedback())
    uploaded = sorted(backend.store.list("datasets/"))
    assert len(uploaded) == 2  # the shard + manifest under the job's prefix, no row names them yet

    backend.seed(rows(3, start=100))  # late rows: not part of this job's claim
    retry = export_feedback(backend.sessions, backend.store, config(), "job-crash")
    assert retry.status == "exported" and retry.claimed == 40  # resumed its own claim
    [dataset] = backend.datasets()
    assert dataset.id == pending.id and dataset.state == "ready"
    assert sorted(backend.store.list("datasets/")) == uploaded  # same keys, rewritten
    assert [f.dataset_id for f in backend.feedback()] == [dataset.id] * 40 + [None] * 3
    assert read_dataset_manifest(backend.store, dataset.uri)["sha256"] == dataset.sha256
    # Running the finished job again does not export again.
    again = export_feedback(backend.sessions, backend.store, config(), "job-crash")
    assert (again.dataset_id, again.reason) == (dataset.id, "already exported by this job")
    assert len(backend.datasets()) == 1


def test_killed_process_between_upload_and_commit_loses_nothing(postgres_s3):
    """A real crash: the exporting process dies (os._exit) with its transaction open."""
    postgres_s3.seed(rows(25))
    script = (
        "import os\n"
        "from common.settings import load_settings\n"
        "from common.db import create_db_engine, session_factory\n"
        "from common.objectstore import open_store\n"
        "from workers.export import ExportConfig, export_feedback\n"
        "s = load_settings()\n"
        "export_feedback(session_factory(create_db_engine(s.database_url)), open_store(s), ExportConfig.create(),\n"
        "                'job-killed', after_upload=lambda: os._exit(17))\n"
    )
    env = {**os.environ, **postgres_s3.env}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 17, done.stderr
    [pending] = postgres_s3.datasets()
    assert pending.state == "pending" and all(f.dataset_id == pending.id for f in postgres_s3.feedback())
    retry = export_feedback(postgres_s3.sessions, postgres_s3.store, ExportConfig.create(), "job-killed")
    assert retry.claimed == 25 and [d.state for d in postgres_s3.datasets()] == ["ready"]


def test_below_minimum_is_skipped_and_leaves_rows_unclaimed(backend):
    backend.seed(rows(5))
    result = export_feedback(backend.sessions, backend.store, config(min_rows=10), "job-small")
    assert (result.status, result.reason, result.dataset_id) == ("skipped", "5 new feedback rows, fewer than the 10 a cycle needs", None)
    assert backend.datasets() == []
    assert all(f.dataset_id is None for f in backend.feedback())
    assert list(backend.store.list("datasets/")) == []
    backend.seed(rows(5, start=5))
    assert export_feedback(backend.sessions, backend.store, config(min_rows=10), "job-small-2").claimed == 10


@pytest.mark.parametrize(
    "policy, down_weight, down_unlikelihood, written, skipped",
    [("skip", None, None, 20, 10), ("train_as_positive", 0.25, False, 30, 0), ("unlikelihood", 1.0, True, 30, 0)],
)
def test_thumbs_down_policies(backend, policy, down_weight, down_unlikelihood, written, skipped):
    backend.seed(rows(30))  # i % 3 == 0 → thumbs_down: 10 of 30
    result = export_feedback(
        backend.sessions, backend.store,
        config(thumbs_down_policy=policy, thumbs_down_weight=0.25, thumbs_up_weight=3.0), f"job-{policy}",
    )
    assert (result.claimed, result.rows, result.skipped) == (30, written, skipped)
    [dataset] = backend.datasets()
    assert dataset.num_skipped == skipped and dataset.policy["thumbs_down_policy"] == policy
    lines = shard_lines(backend, dataset)
    assert len(lines) == written and sum(line["split"] == "holdout" for line in lines) == dataset.num_holdout
    assert {(line["weight"], line["unlikelihood"]) for line in lines if line["feedback"] == "thumbs_up"} == {(3.0, False)}
    downs = [line for line in lines if line["feedback"] == "thumbs_down"]
    if policy == "skip":
        assert downs == []
    else:
        assert {(line["weight"], line["unlikelihood"]) for line in downs} == {(down_weight, down_unlikelihood)}
    assert all(f.dataset_id == dataset.id for f in backend.feedback())  # skipped rows are claimed too


def test_postgres_renders_the_same_lines_as_the_python_writer(postgres_s3, sqlite_local):
    """Postgres renders shard lines in SQL, SQLite through ShardWriter: same rows → same lines."""
    sample = rows(40) + rows(6) + [
        {"prompt": 'quote " back\\slash \n tab\t é ☃ \u0001', "response": "r\u2028", "feedback": "thumbs_down"},
        {"messages": [{"role": "user", "content": "q ✓"}, {"role": "assistant", "content": "a"}], "feedback": "thumbs_up"},
    ]
    decoded = {}
    for backend in (postgres_s3, sqlite_local):
        backend.seed(sample)
        result = export_feedback(backend.sessions, backend.store, config(thumbs_down_policy="skip"), "job-same")
        [dataset] = backend.datasets()
        lines = shard_lines(backend, dataset)
        decoded[backend.url.split(":")[0]] = (
            [{k: v for k, v in line.items() if k != "created_at"} for line in lines],
            (result.claimed, result.rows, result.train, result.holdout, result.duplicates, result.skipped,
             result.probe),
        )
    (pg_lines, pg_counts), (sqlite_lines, sqlite_counts) = decoded.values()
    assert pg_lines == sqlite_lines and len(pg_lines) == pg_counts[1]
    assert pg_counts == sqlite_counts and (pg_counts[0], pg_counts[4]) == (48, 6) and pg_counts[5] > 0


def test_a_prompt_is_never_on_two_sides(backend):
    """Many answers (and both judgements) to one prompt all land in one split — on both backends.

    Keyed on prompt + response (or the content hash) the answers of one prompt would scatter over
    train, probe and holdout, and holdout/probe scores would measure memorised prompts."""
    sample = [
        {"prompt": f"prompt {p}", "response": f"answer {a}", "feedback": "thumbs_up" if a % 4 else "thumbs_down"}
        for p in range(40) for a in range(6)
    ]
    sample += [  # chat rows with the same conversation before the response share its split too
        {"messages": [{"role": "user", "content": f"prompt {p}"}, {"role": "assistant", "content": f"chat {p}"}],
         "feedback": "thumbs_up"} for p in range(40)
    ]
    backend.seed(sample)
    result = export_feedback(backend.sessions, backend.store, config(), "job-prompts")
    [dataset] = backend.datasets()
    sides: dict[str, set[str]] = {}
    for line in shard_lines(backend, dataset):
        sides.setdefault(line["prompt"], set()).add(line["split"])
    assert len(sides) == 40 and all(len(split) == 1 for split in sides.values()), sides
    assert {next(iter(split)) for split in sides.values()} == {"train", "probe", "holdout"}
    assert result.rows == 280 and result.train + result.probe + result.holdout == 280


def test_the_renamed_downweight_policy_is_refused_with_its_new_name():
    with pytest.raises(ValidationError, match="renamed 'train_as_positive'"):
        ExportConfig.create(thumbs_down_policy="downweight")
    assert ExportConfig.create().thumbs_down_policy.value == "unlikelihood"


def test_dedup_within_batch_and_split_is_deterministic_across_exports(sqlite_local):
    same = [{"prompt": f"p{i}", "response": "r", "feedback": "thumbs_up"} for i in range(200)]
    sqlite_local.seed(same + same[:50])
    first = export_feedback(sqlite_local.sessions, sqlite_local.store, config(), "job-a")
    assert (first.rows, first.duplicates) == (200, 50)
    sqlite_local.seed(same)  # the same content again, in a later batch: kept (dedup is per batch)
    second = export_feedback(sqlite_local.sessions, sqlite_local.store, config(), "job-b")
    assert (second.rows, second.duplicates) == (200, 0)
    first_ds, second_ds = sqlite_local.datasets()
    split_a = {line["content_hash"]: line["split"] for line in shard_lines(sqlite_local, first_ds)}
    split_b = {line["content_hash"]: line["split"] for line in shard_lines(sqlite_local, second_ds)}
    assert split_a == split_b
    assert 20 <= list(split_a.values()).count("holdout") <= 60  # ~20% of 200
    kept = {line["feedback_id"] for line in shard_lines(sqlite_local, first_ds)}
    assert kept == set(range(1, 201))  # the earliest id of each duplicate group is the one kept


def test_same_shard_bytes_for_same_rows(sqlite_local):
    """mtime-free gzip: a retry over the same rows reproduces the same sha256."""
    sqlite_local.seed(rows(50))

    def crash() -> None:
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        export_feedback(sqlite_local.sessions, sqlite_local.store, config(), "job-r", after_upload=crash)
    first = read_dataset_manifest(sqlite_local.store, "datasets/" + dataset_uid("job-r"))
    result = export_feedback(sqlite_local.sessions, sqlite_local.store, config(), "job-r")
    assert result.sha256 == first["sha256"]


def test_concurrent_exports_claim_disjoint_batches(postgres_s3):
    """Export A holds its claim (locked, uncommitted) while export B runs: B gets exactly the rest."""
    postgres_s3.seed(rows(100))
    a_uploaded, release_a = threading.Event(), threading.Event()
    results = {}

    def hold() -> None:
        a_uploaded.set()
        assert release_a.wait(60)

    def run_a() -> None:
        results["a"] = export_feedback(postgres_s3.sessions, postgres_s3.store, config(max_rows=60), "job-a", after_upload=hold)

    thread = threading.Thread(target=run_a)
    thread.start()
    try:
        assert a_uploaded.wait(60)
        results["b"] = export_feedback(postgres_s3.sessions, postgres_s3.store, config(max_rows=60), "job-b")
    finally:
        release_a.set()
        thread.join(60)
    assert (results["a"].claimed, results["b"].claimed) == (60, 40)
    datasets = {d.id: d for d in postgres_s3.datasets()}
    assert set(datasets) == {results["a"].dataset_id, results["b"].dataset_id}
    ids_by_dataset = {
        ds_id: {line["feedback_id"] for line in shard_lines(postgres_s3, ds)} for ds_id, ds in datasets.items()
    }
    a_ids, b_ids = ids_by_dataset[results["a"].dataset_id], ids_by_dataset[results["b"].dataset_id]
    assert a_ids == set(range(1, 61)) and b_ids == set(range(61, 101))
    assert {f.id: f.dataset_id for f in postgres_s3.feedback()} == {
        i: results["a"].dataset_id if i <= 60 else results["b"].dataset_id for i in range(1, 101)
    }


@pytest.mark.parametrize("which", ["postgres_s3", "sqlite_local"])
def test_many_exporters_racing_lose_and_duplicate_nothing(request, which):
    backend: Backend = request.getfixturevalue(which)
    backend.seed(rows(300, feedback=lambda i: "thumbs_up"))
    errors: list[BaseException] = []
    counter = iter(range(10_000))
    lock = threading.Lock()

    def worker() -> None:
        try:
            while True:
                with lock:
                    job = f"job-{next(counter)}"
                if export_feedback(backend.sessions, backend.store, config(max_rows=23), job).status == "skipped":
                    return
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    datasets = backend.datasets()
    seen: list[int] = []
    for dataset in datasets:
        ids = [line["feedback_id"] for line in shard_lines(backend, dataset)]
        assert len(ids) == dataset.num_rows <= 23
        assert {f.id for f in backend.feedback() if f.dataset_id == dataset.id} == set(ids)
        seen.extend(ids)
    assert sorted(seen) == list(range(1, 301))  # every row exactly once


def test_rows_committed_out_of_id_order_are_not_lost(postgres_s3):
    """A row whose id was drawn first but committed last is still exported (no id watermark)."""
    postgres_s3.seed(rows(3))
    slow = postgres_s3.sessions()
    slow.add(Feedback(prompt="slow", response="r", feedback="thumbs_up", content_hash="0" * 64))
    slow.flush()  # id 4 drawn, not committed
    postgres_s3.seed(rows(2, start=10))  # ids 5, 6 committed
    first = export_feedback(postgres_s3.sessions, postgres_s3.store, config(), "job-1")
    assert first.claimed == 5
    slow.commit()
    slow.close()
    second = export_feedback(postgres_s3.sessions, postgres_s3.store, config(), "job-2")
    assert second.claimed == 1
    ds = {d.id: d for d in postgres_s3.datasets()}
    assert [line["feedback_id"] for line in shard_lines(postgres_s3, ds[second.dataset_id])] == [4]


def test_iter_dataset_rows_detects_a_corrupt_shard(sqlite_local):
    sqlite_local.seed(rows(10))
    result = export_feedback(sqlite_local.sessions, sqlite_local.store, config(), "job-x")
    key = f"datasets/{result.dataset_uid}/data.jsonl.gz"
    data = gzip.decompress(sqlite_local.store.get_bytes(key))
    sqlite_local.store.put_bytes(key, gzip.compress(data.replace(b"answer 1", b"answer X")))
    with pytest.raises(PermanentError, match="does not match its manifest"):
        list(iter_dataset_rows(sqlite_local.store, result.uri))
    with pytest.raises(PermanentError, match="not in the configured object store"):
        list(iter_dataset_rows(sqlite_local.store, "s3://elsewhere/datasets/x"))


def test_config_errors_list_every_problem():
    with pytest.raises(ValidationError) as caught:
        ExportConfig.create(min_rows=0, thumbs_up_weight=-1, holdout_percent=90)
    assert len(caught.value.problems) == 3
    with pytest.raises(ValidationError, match="must not exceed"):
        ExportConfig.create(min_rows=10, max_rows=5)
    with pytest.raises(ValidationError, match="job_id"):
        export_feedback(None, None, ExportConfig.create(), "")  # type: ignore[arg-type]
    settings = load_settings(thumbs_down_policy="skip", export_min_rows=7)
    assert ExportConfig.from_settings(settings).thumbs_down_policy.value == "skip"
    assert ExportConfig.from_settings(settings, min_rows=9).min_rows == 9


def test_cli_export_runs_as_a_job_and_names_the_dataset_id_train_takes(sqlite_local):
    sqlite_local.seed(rows(12))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUUM_")}
    env.update(sqlite_local.env, CONTINUUM_HOME=os.environ["CONTINUUM_HOME"], COLUMNS="80")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", "from scheduler.cli import main; main()", *args],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )

    done = cli("export", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert (out["state"], out["status"], out["claimed"]) == ("succeeded", "exported", 12)
    assert out["uri"].startswith(f"{sqlite_local.store.url}/datasets/{out['dataset_uid']}")  # + the attempt
    [dataset] = sqlite_local.datasets()
    assert dataset.job_id == out["job_id"] and dataset.id == out["dataset_id"]
    job = cli("jobs", "show", out["job_id"], "--json")  # the id it printed is a job the ledger knows
    assert job.returncode == 0 and json.loads(job.stdout)["kind"] == "export", job.stderr
    sqlite_local.seed(rows(3, start=100))
    human = cli("export")
    assert human.returncode == 0, human.stderr
    assert f"train it with `continuum train --dataset {out['dataset_id'] + 1}`" in " ".join(human.stdout.split())
    skipped = cli("export")
    assert skipped.returncode == 0
    assert "0 new feedback rows, fewer than the 1 a cycle needs" in " ".join(skipped.stdout.split())


class _FailingStore(LocalObjectStore):
    """A real local store whose streamed writes break after the first chunk (a dropped connection)."""

    @contextmanager
    def open_write(self, key: str):
        with super().open_write(key) as fh:
            yield _BreaksAfterFirstWrite(fh)


class _BreaksAfterFirstWrite:
    def __init__(self, fh):
        self._fh, self._writes = fh, 0

    def write(self, data: bytes) -> int:
        self._writes += 1
        if self._writes > 1:
            raise ObjectStoreUnavailable("connection reset while uploading")
        return self._fh.write(data)


def test_upload_failure_keeps_the_claim_for_the_retry(sqlite_local, tmp_path):
    sqlite_local.seed(rows(3_000))
    store = _FailingStore(tmp_path / "failing")
    with pytest.raises(ObjectStoreUnavailable, match="connection reset"):
        export_feedback(sqlite_local.sessions, store, config(fetch_rows=500), "job-net")
    [pending] = sqlite_local.datasets()  # claimed and committed; not published
    assert pending.state == "pending" and all(f.dataset_id == pending.id for f in sqlite_local.feedback())
    assert list(store.list("datasets/")) == []  # nothing published, not even the shard
    progress: list[tuple[int, int]] = []
    done = export_feedback(
        sqlite_local.sessions, sqlite_local.store, config(fetch_rows=500), "job-net",
        progress=lambda n, total: progress.append((n, total)),
    )
    assert done.claimed == 3_000 and progress[-1] == (3_000, 3_000) and len(progress) == 6


def test_sqlite_export_holds_no_write_lock_while_it_uploads(sqlite_local):
    """Embedded SQLite has one write lock: an export holding it for its whole upload made every other
    writer (the export's own lease keeper included) wait and fail. Mid-upload, another writer gets in."""
    import sqlite3

    sqlite_local.seed(rows(200))
    path = sqlite_local.url.split("sqlite:///", 1)[1]
    seen: list[str] = []

    def write_elsewhere() -> None:  # runs after the shard and manifest are uploaded, before finalising
        other = sqlite3.connect(path, timeout=1.0)
        try:
            other.execute("BEGIN IMMEDIATE")  # the write lock itself
            other.execute("UPDATE feedback SET response = response WHERE id = 1")
            other.execute("COMMIT")
            seen.append("wrote")
        finally:
            other.close()

    result = export_feedback(sqlite_local.sessions, sqlite_local.store, config(), "job-lockfree",
                             after_upload=write_elsewhere)
    assert seen == ["wrote"] and result.status == "exported" and result.claimed == 200


def test_rows_of_an_export_that_died_for_good_are_released_to_the_next(sqlite_local):
    """A pending claim (committed before the upload) whose job ends failed or cancelled must not keep
    its rows forever: the next export releases them and takes them."""
    from common.ledger import JobLedger

    sqlite_local.seed(rows(30))
    ledger = JobLedger(sqlite_local.sessions)
    job, _ = ledger.create("export", queue="io", max_attempts=1)
    assert ledger.claim(job.id, "w", 60).ok

    def die() -> None:
        raise RuntimeError("worker died mid-export")

    with pytest.raises(RuntimeError):
        export_feedback(sqlite_local.sessions, sqlite_local.store, config(), job.id, after_upload=die)
    assert [d.state for d in sqlite_local.datasets()] == ["pending"]
    assert ledger.fail(job.id, "w", "worker died", retryable=False).value == "failed"

    follow_up = export_feedback(sqlite_local.sessions, sqlite_local.store, config(), "job-next")
    assert follow_up.status == "exported" and follow_up.claimed == 30
    [dataset] = sqlite_local.datasets()
    assert dataset.job_id == "job-next" and dataset.state == "ready"
    assert all(f.dataset_id == dataset.id for f in sqlite_local.feedback())
