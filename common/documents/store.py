"""Storing documents and their QA pairs: the text in the object store first, then the row.

A document's text goes to `documents/<sha256>.txt` (one object, written whole), and only then its
row; the sha256 is unique, so a document added twice — again, or by two callers at once — is one row,
and a crash between the two writes leaves an object that the next add reuses. QA pairs name their
document by title; every title is resolved before anything is written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from common.db.engine import session_scope
from common.db.models import Document, DocumentQA
from common.documents.reading import DocumentText, QAPair
from common.errors import ValidationError
from common.objectstore.base import ObjectStore


@dataclass
class AddResult:
    added: list[int] = field(default_factory=list)  # ids of new documents
    existing: list[int] = field(default_factory=list)  # ids of documents already stored (no-op)
    qa_added: int = 0
    qa_existing: int = 0

    @property
    def document_ids(self) -> list[int]:
        return self.added + self.existing


def text_key(sha256: str) -> str:
    return f"documents/{sha256}.txt"


def _qa_hash(pair: QAPair) -> str:
    return hashlib.sha256(f"{pair.question}\x00{pair.answer}".encode()).hexdigest()


def _resolve_titles(session: Session, documents: list[DocumentText], qa: list[QAPair]) -> None:
    named = {p.document for p in qa if p.document}
    if not named:
        return
    known = {d.title for d in documents} | set(session.scalars(select(Document.title).where(Document.title.in_(named))))
    unknown = sorted(named - known)
    if unknown:
        raise ValidationError(f"QA pairs name document(s) {unknown} that are neither being added nor stored: "
                              f"use a document's title (the .md heading or the file name)")


def add_documents(sessions: sessionmaker[Session], store: ObjectStore, documents: list[DocumentText],
                  qa: list[QAPair] | None = None) -> AddResult:
    """Store the documents (text, then row) and the QA pairs; what exists already is left as it is."""
    qa = qa or []
    with session_scope(sessions) as session:
        _resolve_titles(session, documents, qa)
    result = AddResult()
    unique = {d.sha256: d for d in documents}  # the same text twice in one call is one document
    for sha, document in unique.items():
        with session_scope(sessions) as session:
            found = session.scalars(select(Document.id).where(Document.sha256 == sha)).first()
        if found is not None:
            result.existing.append(found)
            continue
        store.put_bytes(text_key(sha), document.text.encode("utf-8"))
        try:
            with session_scope(sessions) as session:
                row = Document(sha256=sha, title=document.title[:500], source=document.source[:1000],
                               size_bytes=document.size, text_key=text_key(sha))
                session.add(row)
                session.flush()
                result.added.append(row.id)
        except IntegrityError:  # another caller stored it meanwhile
            with session_scope(sessions) as session:
                result.existing.append(session.scalars(select(Document.id).where(Document.sha256 == sha)).one())
    with session_scope(sessions) as session:
        titles = {d.title: d.id for d in session.scalars(select(Document).where(Document.id.in_(result.document_ids)))}
        seen: set[str] = set()
        for pair in qa:
            digest = _qa_hash(pair)
            if digest in seen or session.scalars(select(DocumentQA.id).where(DocumentQA.sha256 == digest)).first() is not None:
                result.qa_existing += 1
                continue
            document_id = titles.get(pair.document) if pair.document else None
            if pair.document and document_id is None:
                document_id = session.scalars(select(Document.id).where(Document.title == pair.document)).first()
            seen.add(digest)
            session.add(DocumentQA(sha256=digest, document_id=document_id, question=pair.question, answer=pair.answer))
            result.qa_added += 1
    return result


def read_text(store: ObjectStore, document: Document) -> str:
    return store.get_bytes(document.text_key).decode("utf-8")
