"""Diagnostic job kinds that exercise the job machinery without ML: `sleep` (a checkpointing,
progress-reporting process job with optional crashes) and `noop` (an inline job, for dispatch benchmarks)."""
