"""Celery app and one package per job kind; the torch code lives here."""
