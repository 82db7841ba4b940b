"""The learning engine: continual LoRA training of a causal LM on feedback rows, as a library.

Modules are imported directly (``from workers.learning.training import fit``); nothing heavy is
imported here so that ``import workers.learning`` stays cheap and torch-free.
"""
