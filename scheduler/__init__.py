"""Producer API, pipeline definition, beat schedule and the `continuum` CLI."""
