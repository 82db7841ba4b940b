"""Documents in: what `continuum documents add` accepts and refuses (one line naming the fix), and the
store's rules (text before row, the same text once, QA titles resolved before anything is written)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from common.db import create_db_engine, session_factory, session_scope
from common.db.models import Document, DocumentQA
from common.documents.reading import read_documents, read_qa
from common.documents.store import add_documents, read_text, text_key
from common.errors import ValidationError
from common.objectstore.local import LocalObjectStore


def _write(path, content: bytes | str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_files_and_folders_are_read_with_titles(tmp_path):
    _write(tmp_path / "docs" / "harbour.md", "# The Harbour of Quenby\n\nThe harbour has three piers.\n")
    _write(tmp_path / "docs" / "sub" / "ferry_notes.txt", "The ferry leaves at dawn.")
    _write(tmp_path / "docs" / "photo.png", b"\x89PNG\x00\x00")
    _write(tmp_path / "docs" / "many.jsonl", "\n".join(json.dumps(r) for r in (
        {"text": "Korsa is the capital of Veltria.", "title": "Veltria"}, {"text": "Biscuit is the harbour cat."})))
    result = read_documents([tmp_path / "docs"], max_bytes=10_000)
    assert [d.title for d in result.documents] == ["The Harbour of Quenby", "Veltria", "many 2", "ferry notes"]
    assert result.skipped == [str(tmp_path / "docs" / "photo.png")]
    assert result.documents[0].text.startswith("# The Harbour") and result.documents[0].size > 0


@pytest.mark.parametrize("name, content, message", [
    ("a.pdf", "text", "unknown extension '.pdf'"),
    ("b.txt", b"abc\x00def", "is a binary file"),
    ("c.txt", b"\xff\xfe\xfa bad", "is not UTF-8 text"),
    ("d.md", "  \n\n ", "is empty"),
    ("e.txt", "x" * 2000, "over CONTINUUM_DOCUMENTS_MAX_BYTES"),
    ("f.jsonl", '{"text": "ok"}\nnot json\n', "f.jsonl:2 is not JSON"),
    ("g.jsonl", '{"body": "no text key"}\n', "g.jsonl:1 has no \"text\" string"),
])
def test_bad_files_are_refused_in_one_line(tmp_path, name, content, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(ValidationError) as refused:
        read_documents([path], max_bytes=1000)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_missing_paths_and_bad_qa_are_refused(tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        read_documents([tmp_path / "nowhere"], max_bytes=1000)
    _write(tmp_path / "empty" / "x.png", b"png")
    with pytest.raises(ValidationError, match="holds no .txt, .md, .jsonl files"):
        read_documents([tmp_path / "empty"], max_bytes=1000)
    qa = _write(tmp_path / "qa.jsonl", '{"question": "Where?", "answer": ""}\n')
    with pytest.raises(ValidationError, match=r"qa.jsonl:1: \"answer\" must be a non-empty string"):
        read_qa(qa)
    good = _write(tmp_path / "qa2.jsonl", '{"question": "Where?", "answer": "Quenby", "document": "Harbour"}\n')
    assert read_qa(good)[0].document == "Harbour"


def test_the_store_keeps_one_copy_and_writes_nothing_for_a_bad_qa_title(tmp_path, migrated_sqlite_url):
    sessions = session_factory(create_db_engine(migrated_sqlite_url))
    store = LocalObjectStore(tmp_path / "objects")
    path = _write(tmp_path / "harbour.md", "# Harbour\n\nThe harbour has three piers.")
    docs = read_documents([path], 1000).documents
    copy = _write(tmp_path / "copy.txt", "# Harbour\n\nThe harbour has three piers.")
    bad_qa = _write(tmp_path / "qa.jsonl", '{"question": "How many piers?", "answer": "three", "document": "Nope"}')
    with pytest.raises(ValidationError, match=r"name document\(s\) \['Nope'\]"):
        add_documents(sessions, store, docs, read_qa(bad_qa))
    with session_scope(sessions) as session:
        assert session.scalar(select(func.count()).select_from(Document)) == 0
    assert not store.exists(text_key(docs[0].sha256))
    qa = read_qa(_write(tmp_path / "qa2.jsonl", '{"question": "How many piers?", "answer": "three", "document": "Harbour"}'))
    first = add_documents(sessions, store, docs, qa)
    again = add_documents(sessions, store, read_documents([copy], 1000).documents, qa)  # same text, other name
    assert len(first.added) == 1 and first.qa_added == 1
    assert again.added == [] and again.existing == first.added and again.qa_existing == 1
    with session_scope(sessions) as session:
        stored = session.scalars(select(Document)).one()
        assert read_text(store, stored) == docs[0].text
        assert session.scalars(select(DocumentQA)).one().document_id == stored.id
