"""The `train` job: continue the lineage's adapter on a new dataset with the continual recipe."""
