"""A small built-in background corpus of general text: what "frequent everywhere" means for the sparse
memory strategy's TF-IDF over MLP units. Plain encyclopaedic prose on common topics, written for
continuum (nothing downloaded); `CONTINUUM_DOCUMENTS_BACKGROUND` (a folder of .txt/.md) adds a corpus of
the user's own, which makes the statistics fit their domain's everyday language."""

from __future__ import annotations

BACKGROUND = (
    "Water moves through the environment in a cycle. It evaporates from oceans and lakes, condenses into "
    "clouds, and falls back to the ground as rain or snow. Rivers carry much of it back to the sea.",
    "Plants make their own food through photosynthesis. Using sunlight, they turn carbon dioxide and water "
    "into sugar and release oxygen. Leaves are green because of the pigment chlorophyll.",
    "The heart is a muscle that pumps blood around the body. Arteries carry blood away from the heart and "
    "veins bring it back. A resting adult heart beats about sixty to one hundred times a minute.",
    "A year is the time the Earth takes to go around the Sun, a little more than 365 days. The tilt of the "
    "Earth's axis causes the seasons: summer in one hemisphere is winter in the other.",
    "Bread is made from flour, water, salt and yeast. The yeast ferments sugars in the dough and releases "
    "gas, which makes the bread rise. Baking sets the structure and browns the crust.",
    "Computers store information as bits, each either zero or one. Eight bits make a byte. Programs are "
    "instructions that the processor follows one step at a time, very quickly.",
    "Trains run on steel rails and can carry many passengers or heavy goods over long distances. Many "
    "modern trains are powered by electricity from overhead wires.",
    "The Moon orbits the Earth about once a month. It has no light of its own; it reflects sunlight. Its "
    "changing shape in the sky, from new moon to full moon, is called its phases.",
    "Bees collect nectar and pollen from flowers. While doing so they carry pollen from one flower to "
    "another, which helps plants produce seeds and fruit. Honey is made from nectar.",
    "A library lends books to the people who use it. Books are usually arranged by subject so that readers "
    "can find them, and a catalogue lists everything the library holds.",
    "Exercise strengthens the muscles, the heart and the lungs. Walking, swimming and cycling are common "
    "forms of exercise. Sleep and a varied diet also help keep the body healthy.",
    "Money is used to buy goods and services. Prices rise and fall with supply and demand. Banks keep "
    "savings safe and lend money to people and businesses, charging interest.",
    "Mountains form over millions of years as the plates of the Earth's crust push against each other. "
    "Wind, water and ice slowly wear them down again.",
    "A recipe lists the ingredients of a dish and the steps to prepare it. Measuring carefully and following "
    "the order of the steps usually gives the best result.",
    "Light travels faster than anything else, about three hundred thousand kilometres a second. Sound is "
    "much slower, which is why we see lightning before we hear thunder.",
    "Schools teach reading, writing and arithmetic, and subjects such as history, science and art. Teachers "
    "plan lessons and help students learn.",
    "The ocean covers most of the Earth's surface. It is salty because rivers carry dissolved minerals into "
    "it, and the water that evaporates leaves the salt behind.",
    "Birds have feathers, lay eggs and most of them can fly. Many birds migrate, travelling long distances "
    "each year between the places where they breed and where they spend the winter.",
    "A map shows a place from above, smaller than it really is. A scale tells how distances on the map "
    "compare with real distances, and a compass rose shows north.",
    "Electric current is a flow of charge through a conductor such as a copper wire. A battery provides "
    "the push, called voltage, and a switch opens or closes the circuit.",
    "Music is built from rhythm, melody and harmony. Instruments make sound by vibrating: strings, air in "
    "a tube, or a stretched skin on a drum.",
    "Farmers grow crops such as wheat, rice and maize, and raise animals for milk, eggs and meat. The "
    "weather and the soil decide what grows well in each place.",
    "Letters and emails are ways of sending a written message. A good message says clearly what it is "
    "about, who it is for, and what the writer would like to happen next.",
    "Volcanoes are openings in the Earth's crust where melted rock, gas and ash escape. When the melted "
    "rock reaches the surface it is called lava, and it cools into new rock.",
)


def background_texts(folder: str | None = None, max_bytes: int = 5_000_000) -> list[str]:
    """The built-in corpus, plus every document in `folder` when given."""
    texts = list(BACKGROUND)
    if folder:
        from pathlib import Path

        from common.documents.reading import read_documents

        texts += [d.text for d in read_documents([Path(folder)], max_bytes).documents]
    return texts
