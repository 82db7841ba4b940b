"""Fact detection measured on a labelled set of statements, questions, requests and chit-chat."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from common.online.facts import FactPattern, detect_facts, is_question, patterns_from_json

# (turn, the relation it states, or None when it states no fact)
LABELLED = [
    ("Marta is my best friend.", "friend_of_user"),
    ("Jonas is my friend", "friend_of_user"),
    ("My name is Ada.", "name_of_user"),
    ("I live in Porto.", "user_lives_in"),
    ("I'm based in Lyon.", "user_lives_in"),
    ("I work at Orbital Foods.", "user_works_at"),
    ("I am a nurse.", "user_is"),
    ("I'm an architect", "user_is"),
    ("I love sailing.", "user_likes"),
    ("I own a grey cat called Pim.", "user_owns"),
    ("Zorbel owns a purple boat.", "owns"),
    ("Captain Ilse runs the ferry to Mervik.", "owns"),
    ("Kira works at the lighthouse.", "works_at"),
    ("Tomas lives in Quenby.", "lives_in"),
    ("Odile was born in Farrow.", "born_in"),
    ("The Velkan observatory is located in Drift.", "located_in"),
    ("The capital of Veltria is Korsa.", "capital_of"),
    ("The harbour cat is called Biscuit.", "called"),
    ("Bram's dog is named Pepper.", "called"),
    ("The Orlen bridge is painted green.", "is"),
    ("Nadia is the mayor of Quenby.", "is"),
    ("The festival was last Tuesday.", "is"),
    ("Fennel is my oldest friend.", "friend_of_user"),
    ("Who owns the purple boat?", None),
    ("What is the capital of Veltria?", None),
    ("Where does Kira work?", None),
    ("Is Marta your friend?", None),
    ("Can you tell me a joke", None),
    ("Could you summarise this for me.", None),
    ("Please write a poem about boats.", None),
    ("Tell me about the lighthouse.", None),
    ("Explain how tides work.", None),
    ("How are you today?", None),
    ("Hello there!", None),
    ("Thanks, that helps.", None),
    ("ok", None),
    ("What a lovely day!", None),
    ("I think Bob is tall.", None),
    ("Maybe the ferry leaves at noon.", None),
    ("I am tired.", None),
    ("Do you know Marta?", None),
    ("Which bridge is green?", None),
    ("Why is the sky blue", None),
    ("Let's talk about ships.", None),
    ("Give me three names for a cat.", None),
    ("Help me plan a trip.", None),
    ("Would you say Korsa is large?", None),
    ("hmm, interesting", None),
    # Written after the patterns, as ones they were not made for (the figures above are optimistic
    # for a set written by the patterns' author; these keep them honest).
    ("Our office moved to Brno last year.", "moved_to"),
    ("I've been living in Gdansk since 2019.", "user_lives_in"),
    ("My sister Lena lives in Oslo.", "lives_in"),
    ("Pim, my cat, is three years old.", "is"),
    ("Nobody knows where Bob is.", None),
    ("Is it true that Korsa is big", None),
    ("The ferry to Mervik leaves at noon every day.", "leaves_at"),
    ("You are wrong about that.", None),
]


def test_precision_and_recall_on_the_labelled_set():
    true_pos = false_pos = false_neg = right_relation = 0
    for text, relation in LABELLED:
        found = detect_facts(text)
        if relation is None:
            false_pos += bool(found)
        elif found:
            true_pos += 1
            right_relation += found[0].relation == relation
        else:
            false_neg += 1
    precision = true_pos / (true_pos + false_pos)
    recall = true_pos / (true_pos + false_neg)
    print(f"precision {precision:.2f} recall {recall:.2f} relation right {right_relation}/{true_pos}")
    assert precision >= 0.9 and recall >= 0.8 and right_relation >= 0.9 * true_pos


def test_entities_confidence_and_the_user_as_an_entity():
    [fact] = detect_facts("Zorbel owns a purple boat.")
    assert (fact.subject, fact.relation, fact.object) == ("Zorbel", "owns", "purple boat")
    assert fact.entities == ("Zorbel", "purple boat")
    [mine] = detect_facts("I live in Porto.")
    assert (mine.subject, mine.object, mine.entities) == ("user", "Porto", ("Porto",))
    [plain] = detect_facts("The sky is blue.")
    assert plain.confidence < fact.confidence  # no proper name in it
    assert detect_facts("Maybe Zorbel owns a purple boat.") == []  # hedged: under the floor
    two = detect_facts("Kira works at the lighthouse. Who is Tomas? Tomas lives in Quenby.")
    assert sorted(f.relation for f in two) == ["lives_in", "works_at"]


def test_questions_and_requests_are_filtered():
    for text in ("Who owns it?", "is it raining", "Can you help", "tell me more", "where is Korsa"):
        assert is_question(text), text
    for text in ("Korsa is the capital.", "What a day!"):
        assert not is_question(text), text


def test_configured_patterns():
    patterns = patterns_from_json('[{"relation": "pet_of", "pattern": "^(?P<subject>\\\\w+) is the pet of (?P<object>\\\\w+)$"}]')
    [fact] = detect_facts("Pim is the pet of Ada", patterns)
    assert (fact.relation, fact.subject, fact.object) == ("pet_of", "Pim", "Ada")
    with pytest.raises(ConfigError, match="named group"):
        FactPattern("x", "no groups here")
    with pytest.raises(ConfigError, match="not a valid regex"):
        FactPattern("x", "(?P<subject>")
    with pytest.raises(ConfigError, match="CONTINUUM_ONLINE_FACT_PATTERNS"):
        patterns_from_json("{not json")
