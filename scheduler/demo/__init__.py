"""`continuum demo`: full continual cycles on the embedded default, with synthetic feedback."""
