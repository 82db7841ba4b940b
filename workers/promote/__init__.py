"""The `promote` job: gate a candidate on its evaluation, move the `production` alias by
compare-and-set (every attempt recorded, append-only), optionally hot-swap the serving engine."""
