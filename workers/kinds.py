"""The job kinds (the table lives in `common.orchestration.kinds`) and `load_entry`, which imports a
kind's logic — only the process that runs a job calls it, so the worker parent never imports torch."""

from __future__ import annotations

from common.orchestration.kinds import ALL_QUEUES, DEVICE_QUEUES, KINDS, ML_QUEUES, ONLINE_QUEUE, Isolation, JobKind, job_kind

__all__ = ["ALL_QUEUES", "DEVICE_QUEUES", "KINDS", "ML_QUEUES", "ONLINE_QUEUE", "Isolation", "JobKind", "job_kind",
           "load_entry"]


def load_entry(kind: JobKind):
    """Import the kind's logic function (only in the process that runs it)."""
    import importlib

    module_name, _, function = kind.entry.partition(":")
    return getattr(importlib.import_module(module_name), function)
