"""The `ingest` job on the tiny model's tokenizer with a real SQLite ledger and object-store folder:
chunks that overlap and cover the text, probe chunks by hash, QA pairs held out; a retry returns the
same dataset; then the real `train` job learns the chunks as plain text (loss on every token but the
first, no template) and the adapter's loss on them falls."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from common.db import session_scope
from common.db.models import Dataset, Document
from common.documents.reading import DocumentText, QAPair
from common.documents.store import add_documents
from common.errors import NotFound
from tests.unit.learning_keep.cycles import make_cycles
from workers.export.shard import iter_dataset_rows
from workers.ingest import job as ingest_job
from workers.ingest.chunking import chunk_text

ENCYCLOPEDIA = " ".join(
    f"The town of {town} lies on the river {river}. Its market sells {ware} every {day}."
    for town, river, ware, day in (("Quenby", "Sull", "copper kettles", "Tuesday"),
                                   ("Varnholm", "Ebra", "blue wool", "Friday"),
                                   ("Porthavel", "Mire", "salted fish", "Sunday"),
                                   ("Korsa", "Velt", "glass beads", "Monday")) * 3)


@pytest.fixture()
def cycles(tmp_path, migrated_sqlite_url):
    made = make_cycles(tmp_path, migrated_sqlite_url, documents_chunk_tokens=32, documents_chunk_overlap=8,
                       documents_probe_percent=30)
    yield made
    made.close()


def _tokenizer(cycles):
    from workers.base_model import resolve_base_model
    from workers.learning.models import load_tokenizer

    return load_tokenizer(resolve_base_model(cycles.settings, cycles.store))


def test_chunks_overlap_cover_the_text_and_end_at_sentences(cycles):
    tokenizer = _tokenizer(cycles)
    chunks = chunk_text(ENCYCLOPEDIA, tokenizer, size=32, overlap=8)
    assert len(chunks) > 5 and all(c.tokens <= 32 for c in chunks)
    # Consecutive windows share tokens, and together they hold every token of the text.
    for before, after in zip(chunks, chunks[1:]):
        assert after.start_token < before.start_token + before.tokens
    assert chunks[-1].start_token + chunks[-1].tokens == len(tokenizer.encode(ENCYCLOPEDIA, add_special_tokens=False))
    # A window ends at a sentence break in its second half when there is one (a fixed cut would not).
    assert chunks[0].text == "The town of Quenby lies on the river Sull."
    assert sum(c.text.rstrip().endswith(".") for c in chunks[:-1]) >= len(chunks[:-1]) // 3
    with pytest.raises(ValueError, match="overlap"):
        chunk_text(ENCYCLOPEDIA, tokenizer, size=16, overlap=16)


def test_ingest_makes_a_document_dataset_and_training_learns_it(cycles):
    added = add_documents(cycles.sessions, cycles.store, [DocumentText("Towns", ENCYCLOPEDIA, "towns.txt")],
                          [QAPair("What does Quenby's market sell?", "copper kettles", "Towns")])
    context = cycles.context({"document_ids": added.added})
    result = ingest_job.run(context)
    assert result["status"] == "ingested" and result["qa_pairs"] == 1 and result["holdout"] == 1
    rows = list(iter_dataset_rows(cycles.store, result["manifest"]))
    chunks = [r for r in rows if r.get("text")]
    assert {r["split"] for r in chunks} == {"train", "probe"} and 0 < result["probe"] < len(rows)
    assert [r["prompt"] for r in rows if r["split"] == "holdout"] == ["What does Quenby's market sell?"]
    # The views (names and rule-made questions about sentences) are taught beside the chunks, made from
    # the text alone: none is the held-out QA pair.
    views = [r for r in rows if r.get("view")]
    assert {r["split"] for r in views} == {"train", "probe"} and "Tell me about Quenby." in {r["prompt"] for r in views}
    # A view is train only when its sentences lie whole in train chunks (replay draws train rows only).
    train_text = " | ".join(r["text"] for r in chunks if r["split"] == "train")
    assert all(r["response"].split(". ")[-1].rstrip(".") in train_text for r in views if r["split"] == "train")
    assert "The town of Quenby lies on the river what?" in {r["prompt"] for r in views}
    assert "Quenby's market sells copper kettles every what?" in {r["prompt"] for r in views}  # "Its" resolved
    assert "What does Quenby's market sell?" not in {r["prompt"] for r in views}
    assert len(rows) == len(chunks) + len(views) + 1
    with session_scope(cycles.sessions) as session:
        assert session.get(Document, added.added[0]).dataset_id == result["dataset_id"]
        assert session.get(Dataset, result["dataset_id"]).kind == "documents"
    assert ingest_job.run(context)["dataset_id"] == result["dataset_id"]  # a retry returns its dataset
    assert ingest_job.run(cycles.context({}))["status"] == "skipped"  # nothing left to ingest
    with pytest.raises(NotFound, match="no document"):
        ingest_job.run(cycles.context({"document_ids": [999]}))

    from workers.learning.formatting import IGNORE_INDEX, encode_rows

    samples = encode_rows(chunks[:2] + [rows[-1]], _tokenizer(cycles), 64)
    assert samples[0].labels[0] == IGNORE_INDEX and samples[0].labels[1:] == samples[0].input_ids[1:]
    assert samples[2].prompt_len > 1  # the QA row is still a chat row with its answer span

    trained = cycles.train(result["dataset_id"], train={"epochs": 8, "batch_size": 8, "learning_rate": 1e-2,
                                                         "checkpoint_every": 1000, "warmup_steps": 0})
    curve = cycles.adapter(trained["adapter_id"]).metadata_["train"]["loss_curve"]
    assert curve[-1] < curve[0] * 0.9, curve
