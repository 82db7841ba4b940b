"""Learning from documents: every strategy on an invented encyclopedia, one table.

    python bench/documents.py                                   # the tiny model (minutes)
    python bench/documents.py --model PATH-or-registered-name   # e.g. SmolLM2-135M-Instruct
    python bench/documents.py --strategies retrieval,lora --json out.json

The encyclopedia is generated here (never downloaded): towns with made-up names, each an article of
five facts — its river, its founder, what it is famous for, its festival, its mayor — and a question
per fact worded unlike the article ("Who founded Quenby?" for "Quenby was founded by …"). Articles are
grouped into documents, chunked with the model's tokenizer like `continuum documents add` does, and
learnt one document after another by each strategy (`workers/documents/compare.py` has the measures).
Targets on SmolLM2 (the issue): the best weight-changing strategy answers ≥ 0.7 of the questions
with forgetting ratio ≤ 0.05 and general retention ≥ 0.95.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.forgetting import load  # noqa: E402

SYLLABLES = ("qua", "ven", "bor", "lis", "tam", "dro", "kel", "mir", "sa", "thu", "or", "pel", "zan", "rik", "vo",
             "ne", "gal", "dun", "ish", "ra")
FIRST_NAMES = ("Ada", "Tomas", "Ilse", "Odile", "Brenn", "Marta", "Kira", "Osric", "Nell", "Pavel", "Runa", "Edda")
WARES = ("copper kettles", "blue wool", "salted plums", "glass bells", "cedar boats", "black tea", "silver combs",
         "paper lanterns", "red clay pots", "honey cakes", "iron keys", "green cheese")
MONTHS = ("March", "April", "May", "June", "July", "August", "September", "October")


def _name(rng: random.Random, parts: int = 2) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


def encyclopedia(towns: int = 12, per_document: int = 3, seed: int = 0) -> tuple[list[str], list[tuple[str, str]]]:
    """(documents, QA pairs): `towns` articles grouped `per_document` to a document, five facts each."""
    rng = random.Random(seed)
    used: set[str] = set()

    def fresh(parts: int = 2) -> str:
        while True:
            name = _name(rng, parts)
            if name not in used:
                used.add(name)
                return name

    articles, qa = [], []
    wares = rng.sample(WARES, len(WARES))
    for i in range(towns):
        town, river, festival = fresh(), fresh(), fresh()
        founder = f"{rng.choice(FIRST_NAMES)} {fresh()}"
        mayor = f"{rng.choice(FIRST_NAMES)} {fresh()}"
        ware, month = wares[i % len(wares)], rng.choice(MONTHS)
        articles.append(
            f"{town} is a small town on the river {river}. It was founded by {founder}, a ferryman who settled "
            f"there long ago. Today {town} is famous for its {ware}, which traders carry along the river. "
            f"Every {month} the town holds the {festival} festival, with music in the square. The mayor of "
            f"{town} is {mayor}.")
        qa += [(f"On which river is {town}?", river), (f"Who founded {town}?", founder),
               (f"What is {town} famous for?", ware), (f"What festival does {town} hold?", festival),
               (f"Who is the mayor of {town}?", mayor)]
    documents = ["\n\n".join(articles[i:i + per_document]) for i in range(0, len(articles), per_document)]
    return documents, qa


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--strategies", default="sparse_memory,ttt,retrieval,lora")
    parser.add_argument("--towns", type=int, default=12)
    parser.add_argument("--chunk-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="STRATEGY.KEY=VALUE",
                        help="a strategy option, e.g. --set lora.epochs=12 --set sparse_memory.top_units=128")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from workers.documents.compare import compare, table
    from workers.ingest.chunking import chunk_text

    options: dict[str, dict] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        strategy, _, field = key.partition(".")
        options.setdefault(strategy, {})[field] = json.loads(value) if value[:1] in "[{\"" or value.replace(
            ".", "", 1).replace("-", "", 1).replace("e", "", 1).isdigit() else value
    documents, qa = encyclopedia(args.towns)
    _, tokenizer, label = load(args.model)
    chunked = [[c.text for c in chunk_text(d, tokenizer, args.chunk_tokens, 16)] for d in documents]
    print(f"{label}: {len(documents)} documents, {sum(map(len, chunked))} chunks of <= {args.chunk_tokens} tokens, "
          f"{len(qa)} questions; threads {args.threads}", flush=True)
    started = time.perf_counter()

    def loader():
        model, tok, _ = load(args.model)
        return model, tok

    def show(result) -> None:
        print(f"  {result.strategy}: QA {result.qa_accuracy:.2f}, retention {result.general_retention}, "
              f"forgetting {result.forgetting_ratio}, learn {result.learn_seconds:.0f} s", flush=True)

    results = compare(loader, chunked, qa, args.strategies.split(","), options, progress=show)
    print()
    print(table(results))
    print(f"\nQA acc: questions whose made-up answer is in the strategy's answer; retain: general questions the "
          f"base\nanswers right still right; forget: (before - after) / before on all general questions. "
          f"{time.perf_counter() - started:.0f} s in all.")
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in results], indent=2, default=str))


if __name__ == "__main__":
    main()
