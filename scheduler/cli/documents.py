"""`continuum documents`: add documents (and QA pairs about them), list them, learn them.

`add` reads and checks every file first (one bad file refuses the call, nothing stored), stores the
texts, then runs an `ingest` job that chunks them into a document dataset. `learn` runs the pipeline
on documents: ingest → calibrate → fisher → train → evaluate → promote, the same gate as a feedback
cycle; `--strategy` picks how the cycle learns (lora, sparse_memory, ttt).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from scheduler.cli.context import console, print_json, progress_console, state


def register(app: typer.Typer) -> None:
    documents = typer.Typer(help="Documents to learn from: add, list, learn.", no_args_is_help=True)
    app.add_typer(documents, name="documents")

    @documents.command("add")
    def add(
        paths: list[Path] = typer.Argument(..., help="Files or folders of .txt, .md and .jsonl ({\"text\", \"title\"} per line)."),
        qa: Optional[Path] = typer.Option(None, "--qa", help="QA pairs about them, JSONL of {\"question\", \"answer\", \"document\"?}: evaluation only."),
        chunk_tokens: Optional[int] = typer.Option(None, "--chunk-tokens", help="Override CONTINUUM_DOCUMENTS_CHUNK_TOKENS."),
        ingest: bool = typer.Option(True, "--ingest/--no-ingest", help="Run the ingest job (chunking) now."),
        wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the ingest job until it ends."),
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Store documents (the same text twice is one document) and chunk them into a dataset."""
        from common.documents.reading import read_documents, read_qa
        from common.documents.store import add_documents
        from common.objectstore import open_store
        from scheduler.jobwait import run_job

        settings = state.settings
        found = read_documents(list(paths), settings.documents_max_bytes)
        pairs = read_qa(qa) if qa is not None else []
        added = add_documents(state.sessions(), open_store(settings), found.documents, pairs)
        result: dict[str, Any] = {"added": added.added, "existing": added.existing, "qa_added": added.qa_added,
                                  "qa_existing": added.qa_existing, "skipped_files": found.skipped}
        if ingest and added.document_ids:
            params = {"document_ids": added.document_ids, **({"chunk_tokens": chunk_tokens} if chunk_tokens else {})}
            result["ingest"] = run_job(settings, "ingest", params, progress_console(json_output), wait=wait)
        if json_output:
            print_json(result)
            return
        console.print(f"{len(added.added)} document(s) added, {len(added.existing)} already stored; "
                      f"{added.qa_added} QA pair(s) added, {added.qa_existing} already stored", highlight=False)
        if found.skipped:
            console.print(f"[yellow]skipped {len(found.skipped)} file(s) that are not .txt/.md/.jsonl[/yellow]")
        ingested = result.get("ingest")
        if ingested and ingested.get("dataset_id"):
            console.print(f"dataset {ingested['dataset_id']}: {ingested.get('chunks', 0)} chunks and "
                          f"{ingested.get('views', 0)} questions made from them ({ingested.get('probe', 0)} of all "
                          f"probe), {ingested['holdout']} QA pairs held out; learn them with `continuum documents "
                          f"learn`", highlight=False)
        elif ingested:
            console.print(f"ingest job {ingested['job_id']} queued", highlight=False)

    @documents.command("list")
    def list_documents(
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Stored documents: title, size, the dataset holding their chunks."""
        from sqlalchemy import func, select

        from common.db.models import Document, DocumentQA

        with state.sessions()() as session:
            rows = session.scalars(select(Document).order_by(Document.id)).all()
            qa = dict(session.execute(select(DocumentQA.document_id, func.count()).group_by(DocumentQA.document_id)).all())
            listed = [{"id": d.id, "title": d.title, "bytes": d.size_bytes, "dataset_id": d.dataset_id,
                       "qa_pairs": qa.get(d.id, 0), "source": d.source} for d in rows]
        if json_output:
            print_json(listed)
            return
        if not listed:
            console.print("no documents yet: add some with `continuum documents add PATH`")
            return
        from rich.table import Table

        table = Table("id", "title", "bytes", "dataset", "QA", pad_edge=False)
        for d in listed:
            table.add_row(str(d["id"]), d["title"][:40], str(d["bytes"]), str(d["dataset_id"] or "–"), str(d["qa_pairs"]))
        console.print(table)

    @documents.command("learn")
    def learn(
        recipe: Optional[str] = typer.Option(None, "--recipe", help="Training recipe; default CONTINUUM_RECIPE."),
        strategy: Optional[str] = typer.Option(None, "--strategy", help="lora, sparse_memory or ttt; default "
                                               "CONTINUUM_DOCUMENTS_STRATEGY. A lineage keeps one strategy."),
        params: Optional[str] = typer.Option(None, "--params", help='JSON per-step overrides, e.g. {"train": {"train": {"epochs": 4}}}.'),
        wait: bool = typer.Option(False, "--wait", help="Follow the run with live progress until it ends."),
        timeout: float = typer.Option(3600, "--timeout", help="With --wait: stop following after this many seconds."),
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Learn the documents no dataset holds yet: ingest → calibrate → fisher → train → evaluate → promote."""
        from scheduler.cli.pipeline import start_and_follow
        from workers.documents.options import strategy_options

        steps = json.loads(params) if params else {}
        if recipe:
            steps.setdefault("train", {})["recipe"] = recipe
        if strategy:
            strategy_options(strategy)  # a wrong name fails here, in one line, before a run starts
            steps.setdefault("train", {})["strategy"] = strategy
        start_and_follow({"plan": "documents", "steps": steps}, wait, timeout, json_output)

    @documents.command("compare")
    def compare_strategies(
        docs: list[Path] = typer.Option(..., "--docs", help="Documents (files or folders), as for `add`."),
        qa: Path = typer.Option(..., "--qa", help="QA pairs about them (JSONL of {\"question\", \"answer\"})."),
        strategies: str = typer.Option("sparse_memory,ttt,retrieval,lora", "--strategies",
                                       help="Comma-separated: sparse_memory, ttt, retrieval, lora."),
        options: Optional[str] = typer.Option(None, "--options", help='JSON per strategy, e.g. {"lora": {"epochs": 12}}.'),
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Teach the same documents with each strategy and print one table: QA accuracy, general
        retention, forgetting ratio, learn and answer time, artifact size. Runs here, on the base model."""
        from common.documents.reading import read_documents, read_qa
        from common.errors import ValidationError
        from common.objectstore import open_store
        from workers.base_model import resolve_base_model
        from workers.documents.compare import compare, strategies as known, table
        from workers.ingest.chunking import chunk_text
        from workers.learning.device import select_device
        from workers.learning.models import load_model_and_tokenizer

        settings = state.settings
        names = [n.strip() for n in strategies.split(",") if n.strip()]
        unknown = sorted(set(names) - set(known()))
        if unknown:
            raise ValidationError(f"unknown strategies {unknown}; choose from {', '.join(known())}")
        found = read_documents(list(docs), settings.documents_max_bytes).documents
        pairs = [(p.question, p.answer) for p in read_qa(qa)]
        path = resolve_base_model(settings, open_store(settings))
        device = select_device(settings.device)

        def load():
            return load_model_and_tokenizer(path, device)

        _, tokenizer = load()
        chunked = [[c.text for c in chunk_text(d.text, tokenizer, settings.documents_chunk_tokens,
                                               settings.documents_chunk_overlap)] for d in found]
        out = progress_console(json_output)
        out.print(f"{len(found)} document(s), {sum(map(len, chunked))} chunks, {len(pairs)} questions; "
                  f"strategies {', '.join(names)}", highlight=False)
        results = compare(load, chunked, pairs, names, json.loads(options) if options else None,
                          progress=lambda r: out.print(f"  {r.strategy}: QA {r.qa_accuracy:.2f} "
                                                       f"(learnt in {r.learn_seconds:.0f} s)", highlight=False))
        figures = [{k: v for k, v in r.as_dict().items() if k != "answers"} for r in results]
        if json_output:
            print_json(figures)
        else:
            console.print(table(results), highlight=False, markup=False)
        _record(settings, found, len(pairs), figures, json.loads(options) if options else {})


def _record(settings, documents, questions: int, figures: list[dict], options: dict) -> None:
    """Keep the comparison for `continuum report` (one row; the figures only, not the answers). After the
    table is out: a database that cannot take it costs a warning, not the results."""
    import math
    import sys

    def finite(value):  # a diverged run's NaN loss is not JSON Postgres accepts
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [finite(v) for v in value]
        return value

    from common.db.engine import session_scope
    from common.db.models import DocumentComparison
    from workers.base_model import base_model_id

    try:
        with session_scope(state.sessions()) as session:
            session.add(DocumentComparison(
                base_model=base_model_id(settings), documents=[d.title for d in documents], questions=questions,
                results=finite(figures), options=finite({k: {o: v for o, v in (values or {}).items() if o != "base_rows"}
                                                         for k, values in options.items()})))
    except Exception as exc:  # noqa: BLE001 - the figures are printed; keeping them is a convenience
        print(f"warning: the comparison was not kept for `continuum report` ({type(exc).__name__}: "
              f"{str(exc).splitlines()[0][:200]}); run `continuum db upgrade` if the database is behind", file=sys.stderr)
