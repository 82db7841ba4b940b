"""The `fisher` job: the diagonal empirical Fisher of the current adapter, folded online across cycles."""
