"""The `ingest` job: stored documents → a document dataset (chunks to learn, QA pairs to evaluate).

Each document's text is cut into token windows with the base model's tokenizer (`chunking.py`); each
chunk is a row `{"text": …}` that training learns as plain text (`workers/learning/formatting.py`).
A share of the chunks (`CONTINUUM_DOCUMENTS_PROBE_PERCENT`, by a hash of document and chunk) is `probe`:
taught in this cycle like the rest, never replayed later, so later versions are scored on it for
forgetting. The QA pairs about these documents (and those naming no document) are `holdout` rows: never
trained, they are what generalisation — answering questions about the document — is measured on.

Beside the chunks, each document is learnt in the views `CONTINUUM_DOCUMENTS_VIEWS` names
(`workers/documents/views.py`: its names as questions answered with its sentences, rule-made questions
about each sentence), in the split of the chunks they come from — a small instruct model trained on the
text alone learns to continue it, not to answer about it. They are made from the document's whole
sentences only, never from its QA pairs.

The dataset is published the export's way (shard, then manifest) and registered with the job's end in
one transaction, with each document pointing at it; a retried job finds its dataset and returns it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import or_, select

from common.db.engine import session_scope
from common.db.models import Dataset, Document, DocumentQA
from common.documents.store import read_text
from common.objectstore.artifacts import MANIFEST
from common.objectstore.keys import join
from workers.context import JobContext
from workers.export.shard import SCHEMA_VERSION, prompt_bucket, publish_rows
from workers.params import parse_params

DATASET_KIND = "documents"


class IngestJobParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    document_ids: list[int] | None = Field(
        None, description="Documents to ingest; default: every stored document no dataset holds yet.")
    chunk_tokens: int | None = Field(None, ge=16, le=4096, description="Override CONTINUUM_DOCUMENTS_CHUNK_TOKENS.")
    chunk_overlap: int | None = Field(None, ge=0, description="Override CONTINUUM_DOCUMENTS_CHUNK_OVERLAP.")


def _result(dataset: Dataset, documents: list[int]) -> dict[str, Any]:
    return {"status": "ingested", "dataset_id": dataset.id, "document_ids": documents, "rows": dataset.num_rows,
            "train": dataset.num_train, "holdout": dataset.num_holdout, "manifest": dataset.manifest_key}


def document_rows(document: Document, text: str, tokenizer: Any, size: int, overlap: int,
                  probe_percent: int) -> list[dict[str, Any]]:
    from workers.ingest.chunking import chunk_text

    rows = []
    for chunk in chunk_text(text, tokenizer, size, overlap):
        split = "probe" if prompt_bucket(f"{document.sha256}:{chunk.index}") < probe_percent else "train"
        rows.append({"feedback_id": 0, "prompt": "", "response": "", "text": chunk.text, "messages": None,
                     "feedback": "thumbs_up", "weight": 1.0, "unlikelihood": False, "split": split,
                     "content_hash": f"{document.sha256}:{chunk.index}", "document_id": document.id,
                     "title": document.title, "chunk": chunk.index, "tokens": chunk.tokens})
    return rows


def view_rows(document: Document, text: str, chunks: list[dict[str, Any]], views: str) -> list[dict[str, Any]]:
    """The document as questions (`views`: "names", "questions", both comma-separated), made from its whole
    sentences. A view is `train` only when every sentence it was made from lies whole in a train chunk;
    otherwise it is `probe` (taught now, never replayed), so replay cannot rehearse a probe chunk's facts."""
    from workers.documents.views import entity_rows, question_rows

    chosen = {v for v in views.split(",") if v}
    made = (entity_rows([text]) if "names" in chosen else []) + (question_rows([text]) if "questions" in chosen else [])
    train_text = [" ".join(c["text"].split()) for c in chunks if c["split"] == "train"]

    def split(row: dict[str, Any]) -> str:
        return "train" if all(any(s in t for t in train_text) for s in row["sources"]) else "probe"

    return [{"feedback_id": 0, **{k: v for k, v in row.items() if k != "sources"}, "unlikelihood": False,
             "split": split(row), "content_hash": f"{document.sha256}:view:{i}", "document_id": document.id,
             "title": document.title, "view": True} for i, row in enumerate(made)]


def qa_rows(pairs: list[DocumentQA]) -> list[dict[str, Any]]:
    return [{"feedback_id": 0, "prompt": p.question, "response": p.answer, "messages": None, "feedback": "thumbs_up",
             "weight": 1.0, "unlikelihood": False, "split": "holdout", "content_hash": p.sha256, "qa_id": p.id,
             "document_id": p.document_id} for p in pairs]


def run(ctx: JobContext) -> dict[str, Any]:
    params = parse_params(ctx.params, IngestJobParams)
    settings = ctx.settings
    size = params.chunk_tokens or settings.documents_chunk_tokens
    overlap = settings.documents_chunk_overlap if params.chunk_overlap is None else params.chunk_overlap
    if overlap >= size:
        from common.errors import ValidationError

        raise ValidationError(f"chunk overlap ({overlap}) must be smaller than the chunk size ({size})")
    with session_scope(ctx.sessions) as session:
        done = session.scalars(select(Dataset).where(Dataset.job_id == ctx.job_id)).first()
        if done is not None:
            ids = list(session.scalars(select(Document.id).where(Document.dataset_id == done.id)))
            return _result(done, ids)
        query = select(Document).order_by(Document.id)
        query = query.where(Document.id.in_(params.document_ids)) if params.document_ids else \
            query.where(Document.dataset_id.is_(None))
        documents = list(session.scalars(query))
        if params.document_ids:
            missing = sorted(set(params.document_ids) - {d.id for d in documents})
            if missing:
                from common.errors import NotFound

                raise NotFound(f"no document(s) {missing}: list them with `continuum documents list`")
        ids = [d.id for d in documents]
        pairs = list(session.scalars(select(DocumentQA).where(
            or_(DocumentQA.document_id.in_(ids), DocumentQA.document_id.is_(None))).order_by(DocumentQA.id)))
        for row in documents + pairs:
            session.expunge(row)
    if not documents:
        with session_scope(ctx.sessions) as session:
            result = {"status": "skipped", "reason": "no documents to ingest: add some with `continuum documents add`"}
            ctx.finish(session, result, skipped=True)
        return result
    from workers.base_model import resolve_base_model
    from workers.learning.models import load_tokenizer

    tokenizer = load_tokenizer(resolve_base_model(settings, ctx.store))
    rows: list[dict[str, Any]] = []
    for index, document in enumerate(documents):
        text = read_text(ctx.store, document)
        chunks = document_rows(document, text, tokenizer, size, overlap, settings.documents_probe_percent)
        rows += chunks + view_rows(document, text, chunks, settings.documents_views)
        ctx.report_progress({"step": index + 1, "total": len(documents), "stage": "chunking"})
    rows += qa_rows(pairs)
    uid = f"documents-{ctx.job_id}"
    prefix = ctx.attempt_prefix(f"datasets/{uid}")
    chunking = {"chunk_tokens": size, "chunk_overlap": overlap, "probe_percent": settings.documents_probe_percent}
    sha256, counts = publish_rows(ctx.store, prefix, rows, DATASET_KIND, {
        "dataset_uid": uid, "job_id": ctx.job_id, "document_ids": ids, "policy": {"source": "documents", **chunking},
        "counts": {"documents": len(documents), "qa_pairs": len(pairs)}})
    with session_scope(ctx.sessions) as session:
        dataset = Dataset(uid=uid, kind=DATASET_KIND, uri=f"{ctx.store.url.rstrip('/')}/{prefix}",
                          manifest_key=join(prefix, MANIFEST), num_rows=len(rows), num_train=counts["train"],
                          num_holdout=counts["holdout"], sha256=sha256, schema_version=SCHEMA_VERSION,
                          policy={"source": "documents", **chunking}, job_id=ctx.job_id, state="ready")
        session.add(dataset)
        session.flush()
        for document_id in ids:
            session.get(Document, document_id).dataset_id = dataset.id
        result = {**_result(dataset, ids), "probe": counts["probe"], "qa_pairs": len(pairs),
                  "chunks": sum(1 for r in rows if r.get("text")), "views": sum(1 for r in rows if r.get("view"))}
        ctx.finish(session, result)
    return result
