"""`continuum report` from a real (migrated) database, rendered in headless Chromium.

The page must show every plot: each <img> decodes (naturalWidth > 0) in a real browser, with no network.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from matplotlib import image as mpimg

from common.db import create_db_engine, session_factory
from common.db.models import Adapter, AliasHistory, Dataset, DocumentComparison, Evaluation, Job
from scheduler.report import Gate, build_report
from scheduler.report.data import accuracy_row, forgetting_pair

pytestmark = pytest.mark.integration

# Three weekly cycles ending a few days ago, so the production timeline spans a realistic window up to now.
T0 = (datetime.now(timezone.utc) - timedelta(days=18)).replace(minute=0, second=0, microsecond=0)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _dataset(session, index: int) -> Dataset:
    row = Dataset(
        uid=f"ds-{index}", uri=f"file:///d/{index}", manifest_key=f"d/{index}/manifest.json", num_rows=100,
        num_train=90, num_holdout=10, sha256="0" * 64, schema_version=1, policy={}, created_at=T0 + timedelta(days=7 * index),
    )
    session.add(row)
    session.flush()
    return row


def populate(session) -> dict[str, int]:
    """Three cycles of a `default` lineage and a `naive` baseline; production moves, one refusal, one rollback."""
    datasets = [_dataset(session, i) for i in range(3)]
    ids = {}
    for lineage, keep in (("default", 0.95), ("naive", 0.55)):
        parent = None
        for cycle, dataset in enumerate(datasets):
            adapter = Adapter(
                name=lineage, version=cycle + 1, parent_id=parent, base_model="tiny", uri=f"file:///a/{lineage}/{cycle}",
                status="candidate", dataset_ids=[d.id for d in datasets[: cycle + 1]],
                metadata_={"train": {"loss_curve": [3.0 / (1 + 0.3 * s) + 0.1 * cycle for s in range(20)],
                                     # the nested recipe's per-tier statistics, on the naive lineage here
                                     **({"tiers": [{"tier": 0, "frequency": 1, "updates": 20, "mean_update_norm": 0.1},
                                                   {"tier": 1, "frequency": 4, "updates": 5, "mean_update_norm": 0.2}]}
                                        if lineage == "naive" else {})}},
                created_at=T0 + timedelta(days=7 * cycle, hours=1),
            )
            session.add(adapter)
            session.flush()
            parent = adapter.id
            ids[f"{lineage}@v{cycle + 1}"] = adapter.id
            # JSON keys are strings, exactly as the evaluate job stores them.
            accuracy = {str(d.id): round(0.9 * keep ** (cycle - k), 3) for k, d in enumerate(datasets[: cycle + 1])}
            forgetting = round(1 - keep, 3) if cycle else 0.0
            if lineage == "default":  # the evaluate job's vocabulary
                metrics = {
                    "recall": {"token_accuracy": 0.9}, "forgetting_max": forgetting or None,
                    "forgetting_mean": forgetting / 2 or None,
                    "general_retention": {"still_right": 0.97 - 0.01 * cycle, "kl_drift": 0.01 * (cycle + 1)},
                    "backward_transfer": -0.04 * cycle or None,
                    "accuracy_matrix": {"versions": [f"v{k + 1}" for k in range(cycle + 1)], "datasets": list(accuracy),
                                        "matrix": [[None] * len(accuracy), list(accuracy.values())]},
                }
            else:  # an evaluation stored before it: still read
                metrics = {"accuracy_by_dataset": accuracy, "plasticity": 0.9, "kl_drift": 0.01 * (cycle + 1),
                           "forgetting": {"max": forgetting, "mean": forgetting / 2}}
            session.add(
                Evaluation(
                    adapter_id=adapter.id, dataset_id=dataset.id, passed_gate=forgetting <= 0.1, metrics=metrics,
                    created_at=T0 + timedelta(days=7 * cycle, hours=2),
                )
            )
    moves = [
        ("promote", None, "default@v1", True, 3),
        ("promote", "default@v1", "naive@v2", False, 7 * 24 + 3),  # refused by the gate
        ("promote", "default@v1", "default@v2", True, 7 * 24 + 4),
        ("promote", "default@v2", "default@v3", True, 14 * 24 + 3),
        ("rollback", "default@v3", "default@v2", True, 15 * 24),
    ]
    for action, source, target, ok, hours in moves:
        session.add(
            AliasHistory(
                alias="production", action=action, from_adapter_id=ids.get(source), to_adapter_id=ids[target],
                succeeded=ok, reason=None if ok else "forgetting 0.450 > 0.100", created_at=T0 + timedelta(hours=hours),
            )
        )
    for n, (turns, drift, published, restarted) in enumerate(
            ((10, 0.02, None, None), (25, 0.05, {"version": 4}, None), (40, 0.01, None, "the gate refused v4"))):
        # Online jobs of the `default` lineage, as `workers/online/job.py` records them.
        metrics = {"turns": turns, "facts": 3 + n,
                   "stability": {"anchor_perplexity": 4.0 + drift, "kl_to_base": 0.01 * (n + 1), "perplexity_drift": drift},
                   "plasticity": {"recent_loss": 2.0 - 0.3 * n, "loss_improvement": 0.4, "adaptation_speed": 0.2},
                   "forgetting": {"anchor_regression": drift, "forgetting_rate_per_100_turns": 100 * drift / turns}}
        result = {"status": "applied", "lineage": "default", "turn_clock": turns, "facts": 3 + n, "metrics": metrics,
                  **({"published": published} if published else {}), **({"restarted": restarted} if restarted else {})}
        session.add(Job(id=f"online-{n}", kind="online", queue="online", state="succeeded", result=result,
                        idempotency_key=f"online-{n}", finished_at=T0 + timedelta(days=15, hours=n)))
    for n, qa in enumerate((0.10, 0.52)):  # two `documents compare` runs, as scheduler/cli/documents.py records
        results = [{"strategy": "retrieval", "changes_weights": False, "qa_accuracy": qa, "general_retention": 0.97,
                    "forgetting_ratio": 0.03, "learn_seconds": 0.4, "answer_seconds_per_question": 0.9,
                    "artifact_bytes": 52_000},
                   {"strategy": "sparse_memory", "changes_weights": True, "qa_accuracy": 0.02 + n / 10,
                    "general_retention": 0.87, "forgetting_ratio": 0.13, "learn_seconds": 715.0,
                    "answer_seconds_per_question": 0.5, "artifact_bytes": 2_400_000, "learnt": [{"steps": 8}]}]
        session.add(DocumentComparison(base_model="smollm2", documents=["Quenby", "Korsa"], questions=60,
                                       results=results, options={}, created_at=T0 + timedelta(days=16, hours=n)))
    session.add(Job(id="online-skip", kind="online", queue="online", state="succeeded", idempotency_key="online-skip",
                    result={"status": "skipped", "lineage": "default"}, finished_at=T0 + timedelta(days=16)))
    session.commit()
    return ids


@pytest.fixture
def report(migrated_sqlite_url, tmp_path):
    sessions = session_factory(create_db_engine(migrated_sqlite_url))
    with sessions() as session:
        populate(session)
    with sessions() as session:
        files = build_report(session, tmp_path / "report", gate=Gate(max_forgetting=0.1, min_recall=0.5,
                                                                         min_general_retention=0.9))
    return files


def test_report_files_are_valid_images_and_data_is_right(report):
    names = sorted(p.name for p in report.pngs)
    assert names == [
        "accuracy_matrix_default.png", "accuracy_matrix_naive.png", "document_strategies.png", "loss_curves.png",
        "online_learning.png", "production_timeline.png", "recall_forgetting_retention.png",
    ]
    for path in report.pngs:
        payload = path.read_bytes()
        assert payload.startswith(PNG_MAGIC), path
        pixels = mpimg.imread(path)  # decodes the whole file: a truncated PNG fails here
        assert pixels.shape[0] > 150 and pixels.shape[1] > 400, (path.name, pixels.shape)
        assert pixels[..., :3].std() > 0.05, f"{path.name} is blank"
    data = report.data
    assert data.holder() == "default@v2"  # the rollback is the last successful move
    assert [s.label for s in data.spans] == ["default@v1", "default@v2", "default@v3", "default@v2"]
    assert [p.version for p in data.lineages["default"]] == [1, 2, 3]
    v3 = data.lineages["naive"][2]
    assert v3.forgetting_max == pytest.approx(0.45) and v3.forgetting_mean == pytest.approx(0.225)
    assert sorted(v3.accuracy_by_dataset.values()) == pytest.approx([0.272, 0.495, 0.9], abs=1e-3)
    assert len(v3.loss_curve) == 20 and v3.tiers == ((1, 20, 0.1), (4, 5, 0.2))
    assert data.lineages["default"][0].tiers == ()  # a plain-step lineage has no tiers
    new = data.lineages["default"][2]
    assert (new.recall, new.general_retention, new.kl_drift) == pytest.approx((0.9, 0.95, 0.03))
    assert new.forgetting_max == pytest.approx(0.05) and new.forgetting_mean == pytest.approx(0.025)
    assert sorted(new.accuracy_by_dataset.values()) == pytest.approx([0.812, 0.855, 0.9], abs=1e-3)
    assert data.lineages["default"][0].forgetting_max is None  # a first cycle has nothing to forget: not 0
    online = data.online["default"]  # the skipped job is not a point
    assert [(p.turns, p.published_version, p.restarted) for p in online] == [
        (10, None, None), (25, 4, None), (40, None, "the gate refused v4")]
    assert online[1].perplexity_drift == pytest.approx(0.05) and online[2].recent_loss == pytest.approx(1.4)
    latest = data.comparisons[-1]  # oldest first: the plot draws the newest
    assert [c.strategies[0].qa_accuracy for c in data.comparisons] == [0.10, 0.52]
    assert [(f.strategy, f.changes_weights, f.artifact_bytes) for f in latest.strategies] == [
        ("retrieval", False, 52_000), ("sparse_memory", True, 2_400_000)]
    assert latest.documents == ("Quenby", "Korsa") and latest.questions == 60


def test_report_page_is_self_contained(report):
    html = report.html.read_text(encoding="utf-8")
    sources = re.findall(r'<img[^>]*\ssrc="([^"]+)"', html)
    assert len(sources) == len(report.pngs)
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "the page must not load anything from the network"
    assert "<h2>Learning from documents</h2>" in html and "60 questions on smollm2" in html
    assert "<script" not in html
    assert "default@v2" in html and "forgetting 0.450" not in html  # reasons stay in the DB, not the summary
    versions = html[html.index("<h2>Versions</h2>"):html.index("<h2>Online learning</h2>")]
    # "plasticity" once meant recall here; now it is only online learning's loss figures.
    assert "plasticity" not in versions.lower() and "held-out data" not in html
    online = html[html.index("<h2>Online learning</h2>"):]
    assert "v4" in online and "restarted: the gate refused v4" in online and "0.050" in online
    assert "probe rows" in html and "never replayed" in html and "general retention" in html
    assert "backward transfer" in html and "-0.08" in html
    assert "every 1: 20 × 0.100; every 4: 5 × 0.200" in html  # the nested tiers' statistics


def test_metric_readers_tolerate_other_shapes():
    assert accuracy_row({"accuracy_by_dataset": [{"dataset_id": 2, "accuracy": 0.5}, {"bad": 1}]}, None) == {2: 0.5}
    assert accuracy_row({"plasticity": 0.7}, 4) == {4: 0.7}
    assert accuracy_row({"accuracy_by_dataset": {"x": 1, "3": "nan", "5": float("nan")}}, None) == {}
    assert forgetting_pair({"forgetting": 0.2}) == (0.2, None)  # an old flat value was the max, not the mean
    assert forgetting_pair({"forgetting_max": 0.3}) == (0.3, None)
    assert forgetting_pair({}) == (None, None)


def test_empty_database_still_renders(migrated_sqlite_url, tmp_path):
    sessions = session_factory(create_db_engine(migrated_sqlite_url))
    with sessions() as session:
        files = build_report(session, tmp_path / "empty")
    assert files.html.is_file() and all(p.read_bytes().startswith(PNG_MAGIC) for p in files.pngs)
    assert "No adapter versions yet" in files.html.read_text(encoding="utf-8")


# --- headless Chromium ---------------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--virtual-time-budget=5000",
]

# Appended to a COPY of the page (the report itself has no script): after load, write each image's
# decoded size into the DOM, which --dump-dom then prints.
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}));
  const out = document.createElement('pre'); out.id = 'probe'; out.textContent = JSON.stringify(imgs);
  document.body.appendChild(out);
});
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)  # type: ignore[return-value]
    raise RuntimeError("headless Chromium is needed: apt-get install -y chromium chromium-driver (make system-deps)")


def _run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    command = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_every_plot_renders_in_headless_chromium(report, tmp_path):
    probe_page = report.html.with_name("probe.html")
    probe_page.write_text(report.html.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    result = _run_chromium(tmp_path, "--dump-dom", probe_page.as_uri())
    match = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert match, f"chromium printed no probe (rc={result.returncode}): {result.stderr[-2000:]}"
    images = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert len(images) == len(report.pngs)
    broken = [img for img in images if not (img["complete"] and img["w"] > 0 and img["h"] > 0)]
    assert not broken, f"images that did not decode in the browser: {broken}"

    screenshot = Path(report.html.parent / "screenshot.png")
    result = _run_chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1200,2600", report.html.as_uri())
    assert screenshot.is_file(), f"no screenshot (rc={result.returncode}): {result.stderr[-2000:]}"
    pixels = mpimg.imread(screenshot)
    assert pixels.shape[:2] == (2600, 1200)
    # The plots put colour on the page: a blank or text-only page has almost no saturated pixels.
    rgb = pixels[..., :3]
    saturated = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.25
    assert saturated.mean() > 0.02, f"only {saturated.mean():.4f} of the screenshot is coloured"


def test_cli_report_writes_the_page_and_prints_the_summary(migrated_sqlite_url, tmp_path):
    import os
    import sys

    sessions = session_factory(create_db_engine(migrated_sqlite_url))
    with sessions() as session:
        populate(session)
    out = tmp_path / "cli-report"
    env = {**os.environ, "CONTINUUM_DATABASE_URL": migrated_sqlite_url, "COLUMNS": "200"}
    cli = [sys.executable, "-c", "from scheduler.cli import main; main()", "report", "--out", str(out)]
    as_json = subprocess.run([*cli, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert as_json.returncode == 0, as_json.stderr
    payload = json.loads(as_json.stdout)
    assert Path(payload["html"]) == out / "index.html" and len(payload["pngs"]) == 7
    assert [row["version"] for row in payload["versions"]][:3] == ["default@v1", "default@v2", "default@v3"]
    assert [row["turns"] for row in payload["online"]] == ["10", "25", "40"]
    assert [(r["strategy"], r["QA accuracy"], r["artifact"]) for r in payload["documents"][:2]] == [
        ("retrieval", "0.52", "52.0 kB"), ("sparse_memory", "0.12", "2.40 MB")]  # newest run first
    table = subprocess.run([*cli, "--lineage", "default"], env=env, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert "default@v3" in table.stdout and "naive@v1" not in table.stdout
    assert "online default: 40 turns, 5 facts" in table.stdout
    assert "retrieval QA 0.52 forgetting 0.03, sparse_memory QA 0.12 forgetting 0.13" in table.stdout
    assert "index.html" in table.stdout
