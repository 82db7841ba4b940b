"""Shared foundation: settings, database models, object store, job ledger, schemas, errors.

Nothing in this package imports torch: the producer, the beat and the io workers stay light.
"""
