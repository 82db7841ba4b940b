"""LocalObjectStore specifics (the shared contract with S3 lives in tests/integration/test_s3_store.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from common.errors import InvalidKey, ObjectNotFound, ObjectStorePermanent
from common.objectstore import LocalObjectStore, open_store
from common.settings import load_settings


@pytest.fixture
def store(tmp_path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


def test_objects_are_plain_files_under_the_root(store):
    store.put_bytes("a/b/c.txt", b"data")
    assert (store.root / "a" / "b" / "c.txt").read_bytes() == b"data"
    assert store.url == f"file://{store.root}"


def test_partial_write_is_invisible_and_cleaned_up(store):
    with pytest.raises(RuntimeError):
        with store.open_write("x/obj") as fh:
            fh.write(b"half")
            # While writing, only a hidden temporary file exists; list() does not show it.
            assert list(store.list()) == []
            assert not store.exists("x/obj")
            raise RuntimeError("crash mid-write")
    assert os.listdir(store.root / "x") == []  # the temporary file is gone


def test_written_objects_and_folders_are_private_to_the_owner(store):
    # Objects hold feedback and adapters: nobody but the owner may read them (issue 9).
    store.put_bytes("a/b/k", b"v")
    assert stat.S_IMODE((store.root / "a" / "b" / "k").stat().st_mode) == 0o600
    for folder in (store.root, store.root / "a", store.root / "a" / "b"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_key_and_prefix_of_the_same_name_collide_permanently(store):
    store.put_bytes("a/b", b"file")
    with pytest.raises(ObjectStorePermanent, match="collide"):
        store.put_bytes("a/b/c", b"under a file")
    store.put_bytes("d/e", b"nested")
    with pytest.raises(ObjectStorePermanent, match="collide"):
        store.put_bytes("d", b"over a folder")
    # Reading a prefix as if it were an object is simply "not found".
    with pytest.raises(ObjectNotFound):
        store.get_bytes("d")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("a/b/c")
    assert not store.exists("d")
    store.delete("d")  # a prefix is not an object: nothing to delete, no error
    assert store.get_bytes("d/e") == b"nested"


def test_list_walks_only_the_named_folder(store):
    store.put_bytes("x/1", b"")
    store.put_bytes("xy/2", b"")
    store.put_bytes("z/3", b"")
    assert list(store.list("x/")) == ["x/1"]
    assert list(store.list("x")) == ["x/1", "xy/2"]
    assert list(store.list("nope/deeper/")) == []


def test_delete_prefix_removes_the_folder(store):
    store.put_bytes("run/1/a", b"")
    store.put_bytes("run/1/b", b"")
    store.put_bytes("run/2/a", b"")
    assert store.delete_prefix("run/1/") == 2
    assert not (store.root / "run" / "1").exists()
    assert list(store.list()) == ["run/2/a"]


def test_root_cannot_be_escaped_through_keys(store, tmp_path):
    for key in ["../outside", "a/../../outside", "/tmp/outside"]:
        with pytest.raises(InvalidKey):
            store.put_bytes(key, b"x")
    assert not (tmp_path / "outside").exists()


def test_open_store_defaults_to_a_folder_under_home(tmp_path):
    store = open_store(load_settings())
    assert isinstance(store, LocalObjectStore)
    assert store.root == (tmp_path / "home" / "objects").resolve()


@pytest.mark.parametrize("form", ["absolute", "relative"])
def test_open_store_understands_file_urls(tmp_path, monkeypatch, form):
    monkeypatch.chdir(tmp_path)
    url = f"file://{tmp_path / 'abs-store'}" if form == "absolute" else "file://./rel-store"
    store = open_store(load_settings(storage_url=url))
    store.put_bytes("k", b"v")
    expected = tmp_path / ("abs-store" if form == "absolute" else "rel-store")
    assert Path(expected, "k").read_bytes() == b"v"
