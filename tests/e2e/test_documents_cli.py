"""Documents through the real CLI in embedded mode: `continuum documents add` refuses a bad file in one
line with nothing stored, stores a folder and its QA pairs, runs the ingest job on a real embedded
worker, is a no-op the second time; `continuum documents learn --strategy sparse_memory --wait` runs
ingest → calibrate → fisher → train → evaluate → promote on the tiny model through the same gate as
a feedback cycle; `documents compare` prints its table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.integration.distributed.harness import REPO

pytestmark = pytest.mark.slow

ARTICLE = ("# Quenby\n\nQuenby is a small town on the river Sull. It was founded by Ada Vornel, a ferryman. "
           "Quenby is famous for its copper kettles. Every May the town holds the Lisdro festival.\n")
QA = [{"question": "Who founded Quenby?", "answer": "Ada Vornel", "document": "Quenby"},
      {"question": "What is Quenby famous for?", "answer": "copper kettles"}]


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from scheduler.cli import main; main()", *args], cwd=REPO,
                          env=dict(os.environ), capture_output=True, text=True, timeout=timeout)


def test_documents_are_added_ingested_and_learnt_through_the_pipeline(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "quenby.md").write_text(ARTICLE)
    (docs / "varnholm.txt").write_text("Varnholm lies on the river Ebra. Its market sells blue wool every Friday.")
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps(p) for p in QA))
    (tmp_path / "scan.txt").write_bytes(b"%PDF-1.4\x00\x01binary")

    refused = _cli("documents", "add", str(docs), str(tmp_path / "scan.txt"))
    assert refused.returncode != 0 and "is a binary file" in refused.stderr + refused.stdout
    listed = _cli("documents", "list", "--json")
    assert json.loads(listed.stdout) == []  # nothing half-stored

    added = _cli("documents", "add", str(docs), "--qa", str(qa), "--chunk-tokens", "32", "--json")
    assert added.returncode == 0, added.stdout + added.stderr
    result = json.loads(added.stdout[added.stdout.index("{"):])
    assert len(result["added"]) == 2 and result["qa_added"] == 2
    ingest = result["ingest"]
    assert ingest["state"] == "succeeded" and ingest["holdout"] == 2 and ingest["rows"] > 4
    again = json.loads(_cli("documents", "add", str(docs), "--json", "--no-ingest").stdout)
    assert again["added"] == [] and len(again["existing"]) == 2

    (docs / "korsa.txt").write_text("Korsa is the capital of Veltria. Its market sells glass beads every Monday.")
    assert _cli("documents", "add", str(docs / "korsa.txt"), "--no-ingest").returncode == 0
    wrong = _cli("documents", "learn", "--strategy", "sparse")
    assert wrong.returncode != 0 and "unknown strategy 'sparse'" in wrong.stderr + wrong.stdout
    learnt = _cli("documents", "learn", "--wait", "--json", "--timeout", "400", "--strategy", "sparse_memory", "--params",
                  json.dumps({"train": {"train": {"epochs": 2}}, "promote": {"min_recall": 0.0}}), timeout=500)
    assert learnt.returncode == 0, learnt.stdout + learnt.stderr
    status = json.loads(learnt.stdout[learnt.stdout.index("{"):])
    assert status["plan"] == ["ingest", "calibrate", "fisher", "train", "evaluate", "promote"]
    assert status["state"] == "succeeded", status
    assert status["steps"]["calibrate"]["result"]["status"] == "calibrated"
    assert status["steps"]["train"]["result"]["strategy"] == "sparse_memory"
    assert status["steps"]["ingest"]["result"]["document_ids"] == [3]  # only the document not yet ingested
    assert status["steps"]["promote"]["result"]["status"] in ("promoted", "rejected")
    evaluate = status["steps"]["evaluate"]["result"]["metrics"]
    assert evaluate["recall"] is not None

    compared = _cli("documents", "compare", "--docs", str(docs / "quenby.md"), "--qa", str(qa), "--strategies",
                    "retrieval,lora", "--options", json.dumps({"lora": {"epochs": 1}}))
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert "retrieval" in compared.stdout and "QA acc" in compared.stdout
    reported = _cli("report", "--json", "--out", str(tmp_path / "report"))
    assert reported.returncode == 0, reported.stderr
    rows = json.loads(reported.stdout)["documents"]  # the comparison is kept for the report
    assert [r["strategy"] for r in rows] == ["retrieval", "lora"] and "2 questions" in rows[0]["documents"]
