"""`retrieval`: the baseline that changes no weight — find the chunks a question is about, put them in
the prompt, and optionally lean the decoder toward their words.

The index is scikit-learn's TF-IDF over the chunks (word unigrams and bigrams, English stop words
removed, sublinear term frequency). A question gets the top-k chunks whose cosine similarity is at
least `min_score`: a question the documents say nothing about (a general one) gets no context and is
answered exactly as the base model would. With `logit_bias > 0`, the tokens of the retrieved chunks'
content words get that much added to their logits while answering (a `LogitsProcessor`).

The artifact is the chunks and the vectoriser's settings as JSON: the index is rebuilt from them on
load (deterministic, and nothing is unpickled).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workers.documents.strategy import DocumentStrategy, folder_size

VECTORIZER = {"ngram_range": (1, 2), "stop_words": "english", "sublinear_tf": True, "lowercase": True}
CONTEXT = "Use these notes to answer.\n\n{notes}\n\nQuestion: {question}"


class TfidfIndex:
    def __init__(self, chunks: Sequence[str]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.chunks = list(chunks)
        self.vectorizer = TfidfVectorizer(**VECTORIZER)
        self.matrix = self.vectorizer.fit_transform(self.chunks) if self.chunks else None

    def search(self, query: str, k: int, min_score: float) -> list[tuple[int, float]]:
        """(chunk index, cosine similarity), best first, at most k, each at least `min_score`."""
        if self.matrix is None:
            return []
        scores = (self.matrix @ self.vectorizer.transform([query]).T).toarray().ravel()  # rows are L2-normalised
        best = scores.argsort()[::-1][:k]
        return [(int(i), float(scores[i])) for i in best if scores[i] >= min_score and scores[i] > 0]


class _Bias:
    """Adds `amount` to the logits of `token_ids` (a transformers LogitsProcessor)."""

    def __init__(self, token_ids: set[int], amount: float):
        import torch

        self.ids = torch.tensor(sorted(token_ids), dtype=torch.long)
        self.amount = amount

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if len(self.ids):
            scores[:, self.ids.to(scores.device)] += self.amount
        return scores


class RetrievalStrategy(DocumentStrategy):
    name = "retrieval"
    changes_weights = False

    def __init__(self, model: Any, tokenizer: Any, top_k: int = 3, min_score: float = 0.1, logit_bias: float = 0.0,
                 **options: Any):
        super().__init__(model, tokenizer, **options)
        self.top_k, self.min_score, self.logit_bias = top_k, min_score, logit_bias
        self.chunks: list[str] = []
        self.index = TfidfIndex([])

    def learn(self, chunks: Sequence[str]) -> dict[str, Any]:
        self.chunks += list(chunks)  # documents accumulate in one index
        self.index = TfidfIndex(self.chunks)
        return {"chunks": len(self.chunks), "vocabulary": len(self.index.vectorizer.vocabulary_) if self.chunks else 0}

    def prompt_for(self, question: str) -> tuple[str, list[int]]:
        found = [i for i, _ in self.index.search(question, self.top_k, self.min_score)]
        if not found:
            return question, []
        return CONTEXT.format(notes="\n\n".join(self.chunks[i] for i in found), question=question), found

    def _bias_for(self, found: list[int]) -> _Bias | None:
        if not self.logit_bias or not found:
            return None
        analyse = self.index.vectorizer.build_analyzer()
        words = {w for i in found for w in analyse(self.chunks[i]) if " " not in w}
        ids = {t for w in words for variant in (w, " " + w, w.capitalize(), " " + w.capitalize())
               for t in self.tokenizer.encode(variant, add_special_tokens=False)[:1]}
        return _Bias(ids, self.logit_bias)

    def answer(self, questions: Sequence[str], max_new_tokens: int = 32) -> list[str]:
        from workers.learning.generation import generate_answers

        prompts = [self.prompt_for(q) for q in questions]
        if not self.logit_bias:
            return generate_answers(self.model, self.tokenizer, [{"prompt": p} for p, _ in prompts], max_new_tokens)
        from transformers import LogitsProcessorList

        answers = []
        for prompt, found in prompts:  # each question leans toward its own chunks' words
            bias = self._bias_for(found)
            answers += generate_answers(self.model, self.tokenizer, [{"prompt": prompt}], max_new_tokens,
                                        logits_processor=LogitsProcessorList([bias]) if bias else None)
        return answers

    def save(self, folder: Path) -> int:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "retrieval.json").write_text(json.dumps({
            "chunks": self.chunks, "vectorizer": {**VECTORIZER, "ngram_range": list(VECTORIZER["ngram_range"])},
            "top_k": self.top_k, "min_score": self.min_score, "logit_bias": self.logit_bias}))
        return folder_size(folder)

    @classmethod
    def load(cls, model: Any, tokenizer: Any, folder: Path) -> "RetrievalStrategy":
        saved = json.loads((Path(folder) / "retrieval.json").read_text())
        strategy = cls(model, tokenizer, top_k=saved["top_k"], min_score=saved["min_score"],
                       logit_bias=saved["logit_bias"])
        strategy.learn(saved["chunks"])
        return strategy
