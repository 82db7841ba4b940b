"""The `calibrate` job: sparse memory's per-unit activation statistics, an artifact with lineage."""
