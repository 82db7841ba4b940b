"""A local-folder ObjectStore: the embedded default, and a real alternative to S3 in tests.

Objects hold feedback and models, so they are private to the user running continuum: folders are
created 0700 and objects 0600 (the embedded home is one user's; distributed mode uses S3).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from common.errors import ObjectNotFound, ObjectStorePermanent, ObjectStoreUnavailable
from common.objectstore.base import ObjectStore
from common.objectstore.keys import validate_key, validate_prefix

_TMP_SUFFIX = ".continuum-partial"


def _private_dirs(path: Path) -> None:
    """mkdir -p with mode 0700 for every folder it creates (mkdir's `mode` only covers the last)."""
    if path.is_dir():
        return
    _private_dirs(path.parent)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass  # another writer made it meanwhile


class LocalObjectStore(ObjectStore):
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    @contextmanager
    def _os_errors(self, key: str, writing: bool = False) -> Iterator[None]:
        try:
            yield
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            # A folder cannot be both a key and a prefix ("a" and "a/b"); S3 allows it, a disk does not.
            if writing:
                raise ObjectStorePermanent(
                    f"cannot write {key!r} in {self.url}: a key and a prefix of the same name collide ({exc.strerror})"
                ) from None
            raise ObjectNotFound(f"no object {key!r} in {self.url}") from None
        except FileNotFoundError:
            raise ObjectNotFound(f"no object {key!r} in {self.url}") from None
        except PermissionError as exc:
            raise ObjectStorePermanent(f"permission denied for {key!r} in {self.url}: {exc}") from None
        except OSError as exc:
            raise ObjectStoreUnavailable(f"local object store error for {key!r}: {exc}") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.open_write(key) as fh:
            fh.write(data)

    def get_bytes(self, key: str) -> bytes:
        with self._os_errors(key):
            return self._path(key).read_bytes()

    @contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        with self._os_errors(key):
            fh = open(self._path(key), "rb")
        with fh:
            yield fh

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        with self._os_errors(key, writing=True):
            _private_dirs(path.parent)
            if path.is_dir():
                raise IsADirectoryError(21, "is a prefix of other keys")
            # Write beside the target, then rename: readers never see a partial object.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                if not fh.closed:  # the caller (or a wrapper such as TextIOWrapper) may have closed it
                    fh.flush()
            with self._os_errors(key, writing=True):
                # mkstemp already makes the file 0600 (owner only): kept, objects hold user data.
                with open(tmp, "rb") as synced:
                    os.fsync(synced.fileno())  # durable before it becomes visible
                os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def list(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        # Walk only the deepest directory the prefix names, not the whole store.
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return iter(())
        keys = []
        for dirpath, _dirnames, filenames in os.walk(base):
            for name in filenames:
                if name.endswith(_TMP_SUFFIX):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            return  # a prefix, not an object: nothing stored under this exact key
        with self._os_errors(key):
            path.unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        count = super().delete_prefix(prefix)
        if prefix.endswith("/") and (self.root / prefix).is_dir():
            shutil.rmtree(self.root / prefix, ignore_errors=True)
        return count
