"""Object storage behind one interface: a local folder (embedded) or S3-compatible (distributed)."""

from __future__ import annotations

from urllib.parse import urlsplit

from common.objectstore.base import ObjectStore
from common.objectstore.keys import join, validate_key
from common.objectstore.local import LocalObjectStore
from common.objectstore.s3 import S3ObjectStore  # boto3 itself is imported only when a client is built
from common.settings import Settings


def open_store(settings: Settings) -> ObjectStore:
    """The store the settings name: `file://PATH` or `s3://bucket/prefix`."""
    url = settings.resolved_storage_url
    parts = urlsplit(url)
    if parts.scheme == "file":
        return LocalObjectStore(parts.netloc + parts.path)  # file://./rel or file:///abs
    return S3ObjectStore.from_settings(settings)


def check_store(settings: Settings, timeout: float = 3.0) -> None:
    """Raise the store's one-line error (naming the setting to fix) unless it answers within about
    `timeout` seconds: one try, a short connect timeout. Commands call it before starting work."""
    url = settings.resolved_storage_url
    if urlsplit(url).scheme == "file":
        store: ObjectStore = open_store(settings)
    else:
        store = S3ObjectStore.from_settings(settings, max_attempts=1, connect_timeout=timeout)
    store.exists("continuum-reachability-check")


__all__ = ["check_store", "LocalObjectStore", "ObjectStore", "S3ObjectStore", "join", "open_store", "validate_key"]
