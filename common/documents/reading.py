"""Reading documents and their QA pairs from disk, refusing what is not a document, before anything is stored.

`continuum documents add PATH…` takes files or folders of `.txt`, `.md` and `.jsonl` (one document per
line: `{"text": …, "title": …}`). Every file is read and checked first; one bad file refuses the whole
call with one line naming the file and the fix, so nothing is half-stored. In a folder, files with
other extensions are skipped and counted (a folder of notes often holds an image or two); a file named
explicitly with another extension is an error.

QA pairs (`--qa FILE.jsonl`): one `{"question": …, "answer": …}` per line, optionally `"document"` (the
title it is about); they are stored with the documents for evaluation and never trained on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ValidationError

EXTENSIONS = (".txt", ".md", ".jsonl")
_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class DocumentText:
    title: str
    text: str
    source: str  # the path (and line, for .jsonl) it came from

    @property
    def sha256(self) -> str:
        """The document's identity: adding the same text twice is a no-op, whatever its file name."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def size(self) -> int:
        return len(self.text.encode("utf-8"))


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str
    document: str | None = None  # the title of the document it asks about, when given


@dataclass
class ReadResult:
    documents: list[DocumentText]
    skipped: list[str] = field(default_factory=list)  # files in folders with other extensions


def _human(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size} bytes"


def _text_of(path: Path, max_bytes: int) -> str:
    size = path.stat().st_size
    if size > max_bytes:
        raise ValidationError(f"{path} is {_human(size)}, over CONTINUUM_DOCUMENTS_MAX_BYTES ({_human(max_bytes)}): "
                              f"split it or raise the limit")
    raw = path.read_bytes()
    if b"\x00" in raw[:_SNIFF_BYTES]:
        raise ValidationError(f"{path} is a binary file, not text: convert it to .txt or .md first")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{path} is not UTF-8 text (byte {exc.start}): convert it to UTF-8 first") from None
    if not text.strip():
        raise ValidationError(f"{path} is empty: nothing to learn from it")
    return text


def _title_of(path: Path, text: str) -> str:
    if path.suffix.lower() == ".md":
        for line in text.splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return path.stem.replace("_", " ").replace("-", " ").strip() or path.name


def _json_lines(path: Path, text: str, shape: str):
    """(line number, where, row) for each non-blank line; a line that is not JSON is refused naming `shape`."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield number, where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"{where} is not JSON ({exc.msg}): one {shape} object per line") from None


def _jsonl_documents(path: Path, text: str) -> list[DocumentText]:
    found = []
    for number, where, row in _json_lines(path, text, '{"text": …}'):
        body = row.get("text") if isinstance(row, dict) else None
        if not isinstance(body, str) or not body.strip():
            raise ValidationError(f"{where} has no \"text\" string: one {{\"text\": …, \"title\": …}} object per line")
        title = row.get("title")
        if title is not None and not isinstance(title, str):
            raise ValidationError(f"{where}: \"title\" must be a string")
        found.append(DocumentText(title=(title or f"{path.stem} {number}").strip(), text=body.strip(), source=where))
    if not found:
        raise ValidationError(f"{path} is empty: no documents in it")
    return found


def read_file(path: Path, max_bytes: int) -> list[DocumentText]:
    """The documents in one file (one, or one per line of a .jsonl); ValidationError names the fix."""
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise ValidationError(f"{path}: unknown extension {suffix or '(none)'!r}; continuum reads "
                              f"{', '.join(EXTENSIONS)} (convert it, or name the text file instead)")
    text = _text_of(path, max_bytes)
    if suffix == ".jsonl":
        return _jsonl_documents(path, text)
    return [DocumentText(title=_title_of(path, text), text=text.strip(), source=str(path))]


def read_documents(paths: list[Path], max_bytes: int) -> ReadResult:
    """Every document under `paths` (files, or folders read recursively in name order)."""
    result = ReadResult(documents=[])
    for path in paths:
        if not path.exists():
            raise ValidationError(f"{path} does not exist: name a file or a folder of {', '.join(EXTENSIONS)} files")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            chosen = [p for p in files if p.suffix.lower() in EXTENSIONS]
            result.skipped += [str(p) for p in files if p.suffix.lower() not in EXTENSIONS]
            if not chosen:
                raise ValidationError(f"{path} holds no {', '.join(EXTENSIONS)} files")
            for file in chosen:
                result.documents += read_file(file, max_bytes)
        else:
            result.documents += read_file(path, max_bytes)
    return result


def read_qa(path: Path) -> list[QAPair]:
    """QA pairs for evaluation: one {"question", "answer", "document"?} object per line."""
    if not path.is_file():
        raise ValidationError(f"QA file {path} does not exist")
    pairs = []
    for _number, where, row in _json_lines(path, path.read_text(encoding="utf-8"), '{"question", "answer"}'):
        if not isinstance(row, dict):
            raise ValidationError(f"{where} must be an object with \"question\" and \"answer\"")
        problems = [f"\"{k}\" must be a non-empty string" for k in ("question", "answer")
                    if not isinstance(row.get(k), str) or not row[k].strip()]
        if row.get("document") is not None and not isinstance(row.get("document"), str):
            problems.append("\"document\" must be a string (the document's title)")
        if problems:
            raise ValidationError(f"{where}: {'; '.join(problems)}")
        pairs.append(QAPair(row["question"].strip(), row["answer"].strip(), row.get("document")))
    if not pairs:
        raise ValidationError(f"QA file {path} holds no pairs")
    return pairs
