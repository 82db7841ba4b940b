"""The `evaluate` job: what a candidate adapter learnt and what it kept, as a metrics row."""
