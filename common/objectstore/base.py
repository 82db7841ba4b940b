"""The ObjectStore interface every artifact goes through (local folder or S3).

Writes are atomic per object: a reader sees the old object or the whole new one, never a part.
Multi-file artifacts are published by `common.objectstore.artifacts`, which writes the manifest last.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import BinaryIO


class ObjectStore(abc.ABC):
    """Key/value blob storage. Keys are validated (`common.objectstore.keys.validate_key`)."""

    url: str

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing any previous object atomically."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The whole object; raises ObjectNotFound."""

    @abc.abstractmethod
    def open_read(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A streamed binary reader (constant memory); raises ObjectNotFound."""

    @abc.abstractmethod
    def open_write(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A streamed binary writer; the object appears only when the block exits without error."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with `prefix`, in lexicographic order."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; deleting a missing key is not an error."""

    def put_file(self, key: str, path: str) -> None:
        """Upload a local file, streamed."""
        with open(path, "rb") as src, self.open_write(key) as dst:
            while chunk := src.read(8 << 20):
                dst.write(chunk)

    def get_file(self, key: str, path: str) -> None:
        """Download `key` to a local file, streamed."""
        with self.open_read(key) as src, open(path, "wb") as dst:
            while chunk := src.read(8 << 20):
                dst.write(chunk)

    def delete_prefix(self, prefix: str) -> int:
        keys = list(self.list(prefix))
        for key in keys:
            self.delete(key)
        return len(keys)
