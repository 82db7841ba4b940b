"""`python -m scheduler …` runs the `continuum` CLI (same as the console script)."""

from scheduler.cli import main

if __name__ == "__main__":
    main()
