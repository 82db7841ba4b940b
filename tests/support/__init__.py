"""Helpers for tests: real servers started on loopback, once per session."""
