"""Document strategies on the tiny model: the sparse gate lets only the chosen units change (every other
unit bit-identical), sparse memory forgets less than plain LoRA at the same document loss, ttt's
artifact loads in stock PEFT as the blended model, retrieval finds the chunk and changes no weight, and
the comparison harness fills its table."""

from __future__ import annotations

import hashlib

import pytest
import torch

from workers.documents.background import BACKGROUND
from workers.documents.compare import compare, table
from workers.documents.lora_strategy import LoraStrategy
from workers.documents.retrieval import RetrievalStrategy
from workers.documents.sparse_memory import SparseMemoryStrategy, mlp_outputs, unit_columns
from workers.documents.strategy import chunk_rows
from workers.documents.ttt import TTTStrategy
from workers.learning.tiny import build_tiny_model, build_tokenizer

DOCUMENT = [
    "Quenby is a small town on the river Sull. It was founded by Ada Vornel, a ferryman.",
    "Quenby is famous for its copper kettles. Every May the town holds the Lisdro festival.",
    "The mayor of Quenby is Osric Tamkel. Traders carry the kettles along the river Sull.",
]
FAST = {"epochs": 2, "learning_rate": 5e-3, "rank": 4, "alpha": 8, "protect": False}


def _tiny():
    return build_tiny_model(0), build_tokenizer(0)


def _digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()


def _mean_loss(strategy, texts) -> float:
    from workers.learning.formatting import encode_rows

    model = strategy.model
    model.eval()
    losses = []
    with torch.no_grad():
        for sample in encode_rows(chunk_rows(texts), strategy.tokenizer, 128):
            ids = torch.tensor([sample.input_ids])
            losses.append(float(model(input_ids=ids, labels=ids).loss))
    return sum(losses) / len(losses)


def test_the_sparse_gate_changes_only_the_chosen_units():
    model, tokenizer = _tiny()
    down_before = {n: p.detach().clone() for n, p in model.named_parameters() if "mlp.down_proj" in n}
    gate_before = {n: p.detach().clone() for n, p in model.named_parameters() if "mlp.gate_proj" in n}
    strategy = SparseMemoryStrategy(model, tokenizer, top_units=4, background=BACKGROUND[:12], **FAST)
    report = strategy.learn(DOCUMENT)
    assert report["units_open"] == 4 * len(strategy.chosen) and report["units_share"] < 0.2
    moved = 0
    for name, (layer, lora_a) in unit_columns(strategy.model).items():
        chosen = set(strategy.chosen[layer].tolist())
        columns = lora_a.detach().abs().sum(0)
        assert all(columns[j] == 0 for j in range(columns.numel()) if j not in chosen), name  # exactly zero
        moved += int((columns > 0).sum())
    assert moved == report["units_open"]  # and every chosen column is in use
    # The effective weights: every unchosen unit's column is bit-identical to the base's.
    merged = strategy.model.merge_and_unload()
    weights = dict(merged.named_parameters())
    for name, before in down_before.items():
        layer = int(name.split(".layers.")[1].split(".")[0])
        after = weights[name].detach()
        chosen = set(strategy.chosen[layer].tolist())
        unchosen = [j for j in range(before.shape[1]) if j not in chosen]
        assert torch.equal(after[:, unchosen], before[:, unchosen])
        assert not torch.equal(after, before)
    for name, before in gate_before.items():  # the units' inputs are never trained
        assert torch.equal(weights[name], before)


def _pretrained_tiny():
    """The tiny model after some plain-text training on general prose: something to forget."""
    model, tokenizer = _tiny()
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    from workers.learning.formatting import encode_rows

    samples = encode_rows(chunk_rows(BACKGROUND), tokenizer, 128)
    model.train()
    for _ in range(30):
        for sample in samples:
            ids = torch.tensor([sample.input_ids])
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return model, tokenizer


def _train_to(train, loss_now, target: float, most: int = 60) -> int:
    for epoch in range(1, most + 1):
        train()
        if loss_now() <= target:
            return epoch
    raise AssertionError(f"never reached document loss {target} (at {loss_now()})")


def test_sparse_memory_forgets_less_than_plain_lora_at_the_same_document_loss():
    import copy

    model, tokenizer = _pretrained_tiny()
    general, held_out = list(BACKGROUND[:16]), list(BACKGROUND[16:])  # calibration / forgetting probe
    # Bare strategies (no question views, no base protection): the gate is the only difference.
    options = {"epochs": 1, "learning_rate": 1e-2, "rank": 8, "alpha": 16, "views": False, "questions": False,
               "protect": False}
    lora = LoraStrategy(copy.deepcopy(model), tokenizer, target_modules=("down_proj",), **options)
    sparse = SparseMemoryStrategy(copy.deepcopy(model), tokenizer, top_units=16, background=general, **options)
    before = _mean_loss(lora, held_out)
    target = 0.8 * _mean_loss(lora, DOCUMENT)
    sparse.open_units(DOCUMENT)
    lora_epochs = _train_to(lambda: lora.train(DOCUMENT), lambda: _mean_loss(lora, DOCUMENT), target)
    sparse_epochs = _train_to(lambda: sparse.train_gated(DOCUMENT), lambda: _mean_loss(sparse, DOCUMENT), target)
    lora_forgot = _mean_loss(lora, held_out) - before
    sparse_forgot = _mean_loss(sparse, held_out) - before
    # The same LoRA on the same modules, with and without the gate: what the gate alone is worth. On this
    # dense tiny MLP it is a modest effect (0.19 vs 0.23 when written); without the gate it is none.
    assert sparse_forgot < 0.9 * lora_forgot, (sparse_forgot, lora_forgot, sparse_epochs, lora_epochs)


def test_ttt_learns_the_last_quarter_blended_and_loads_in_stock_peft(tmp_path):
    from peft import PeftModel

    model, tokenizer = _tiny()
    layers = model.config.num_hidden_layers
    strategy = TTTStrategy(model, tokenizer, alpha_start=0.9, alpha_decay=0.2, alpha_floor=0.6, **FAST)
    trained = {n for n, p in strategy.model.named_parameters() if p.requires_grad}
    assert trained and all(f".layers.{layers - 1}." in n for n in trained)  # 4 layers: the last one
    first = strategy.learn(DOCUMENT)
    second = strategy.learn(DOCUMENT[:1])
    assert (first["alpha_while_learning"], second["alpha_while_learning"], strategy.blend) == (0.9, 0.7, 0.6)
    ids = torch.tensor([tokenizer.encode(DOCUMENT[0], add_special_tokens=False)])
    strategy.model.eval()
    with torch.no_grad():
        blended = strategy.model(input_ids=ids).logits
        with strategy.model.disable_adapter():
            frozen = strategy.model(input_ids=ids).logits
    strategy.save(tmp_path / "ttt")
    loaded = PeftModel.from_pretrained(build_tiny_model(0), str(tmp_path / "ttt"))
    loaded.eval()
    with torch.no_grad():
        again = loaded(input_ids=ids).logits
    assert torch.allclose(again, blended, atol=1e-5) and not torch.allclose(blended, frozen, atol=1e-4)


def test_retrieval_finds_the_chunk_and_changes_no_weight(tmp_path):
    model, tokenizer = _tiny()
    before = _digest(model)
    strategy = RetrievalStrategy(model, tokenizer, top_k=1, logit_bias=5.0)
    strategy.learn(DOCUMENT)
    prompt, found = strategy.prompt_for("Who is the mayor of Quenby?")
    assert found == [2] and DOCUMENT[2] in prompt
    assert strategy.prompt_for("Why is the sky blue?") == ("Why is the sky blue?", [])  # nothing relevant
    assert len(strategy.answer(["Who is the mayor of Quenby?", "Why is the sky blue?"], 6)) == 2
    assert _digest(model) == before
    strategy.save(tmp_path / "index")
    loaded = RetrievalStrategy.load(model, tokenizer, tmp_path / "index")
    assert loaded.prompt_for("Who is the mayor of Quenby?") == (prompt, found)


def test_the_harness_fills_one_row_per_strategy():
    qa = [("Who is the mayor of Quenby?", "Osric Tamkel"), ("What is Quenby famous for?", "copper kettles")]
    results = compare(_tiny, [DOCUMENT[:2], DOCUMENT[2:]], qa, ["retrieval", "lora"],
                      {"lora": FAST}, questions=[{"prompt": "What is two plus two?", "answers": ["4", "four"]}])
    assert [r.strategy for r in results] == ["retrieval", "lora"]
    retrieval, lora = results
    assert not retrieval.changes_weights and lora.changes_weights
    assert len(lora.learnt) == 2 and lora.learnt[0]["steps"] > 0  # one learn() per document
    assert lora.artifact_bytes > retrieval.artifact_bytes > 0
    assert all(0 <= r.qa_accuracy <= 1 and len(r.answers) == 2 for r in results)
    text = table(results)
    assert all(len(line) <= 80 for line in text.splitlines()) and "retrieval" in text
    with pytest.raises(ValueError, match="unknown strategies"):
        compare(_tiny, [DOCUMENT], qa, ["doc2lora"])


def test_a_document_is_learnt_as_text_and_as_questions_about_its_names():
    from workers.documents.views import document_rows, names_in

    assert names_in("Every May the town holds the Lisdro festival.") == ["May", "Lisdro"]
    assert names_in("It was founded by Ada Vornel, a ferryman.") == ["Ada Vornel"]
    rows = document_rows(DOCUMENT)
    assert [r["text"] for r in rows[:3]] == DOCUMENT  # the chunks as plain text first
    asked = {r["prompt"]: r["response"] for r in rows[3:]}
    assert "Quenby was founded by what?" in asked  # and the rule-made questions (the default)
    about = asked["Tell me about Quenby."]
    # Every sentence naming it, and the one after each ("It was founded by …" follows "Quenby is …").
    assert "It was founded by Ada Vornel" in about and "The mayor of Quenby is Osric Tamkel." in about
    assert "What do you know about Osric Tamkel?" in asked
    assert document_rows(DOCUMENT, views=False, questions=False) == rows[:3]


def test_rule_made_questions_ask_about_one_sentence_with_its_topic():
    from workers.documents.views import document_rows, question_rows, resolved_sentences

    resolved = resolved_sentences(DOCUMENT)
    # "It was founded by …" gets its topic back; "Every May …" does not make May the topic.
    assert resolved[1] == ("Quenby was founded by Ada Vornel, a ferryman.", "Quenby")
    assert resolved[3] == ("Every May the town holds the Lisdro festival.", "Quenby")
    asked = {}
    for row in question_rows(DOCUMENT):
        asked.setdefault(row["prompt"], set()).add(row["response"])
    assert asked["Quenby was founded by what?"] == {"Quenby was founded by Ada Vornel, a ferryman."}
    assert asked["Quenby is a small town on the river what?"] == {"Quenby is a small town on the river Sull."}
    # A sentence that does not name its topic is asked about with the topic in front.
    assert asked["About Quenby: Every May the town holds the what festival?"] == {
        "Every May the town holds the Lisdro festival."}
    assert asked["The mayor of Quenby is what?"] == {"The mayor of Quenby is Osric Tamkel."}
    assert all(len(answers) == 1 for answers in asked.values())  # one sentence answers each question
    assert all(r["response"] in " ".join(DOCUMENT).replace("It was", "Quenby was") for r in question_rows(DOCUMENT))
    with_questions = document_rows(DOCUMENT)
    assert len(with_questions) == len(document_rows(DOCUMENT, questions=False)) + len(question_rows(DOCUMENT))
