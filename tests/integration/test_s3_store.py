"""One behaviour contract for every ObjectStore: the local folder and S3 (a real S3 server on loopback).

Each test runs against both implementations through the parametrized `store` fixture, so the two can
never drift apart. S3-only failure modes (credentials, an unreachable endpoint, multipart clean-up)
follow at the end.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from common.errors import (
    InvalidKey,
    ObjectNotFound,
    ObjectStorePermanent,
    ObjectStoreUnavailable,
    PermanentError,
    RetryableError,
)
from common.objectstore import LocalObjectStore, ObjectStore, open_store
from common.objectstore.artifacts import (
    MANIFEST,
    download_artifact,
    is_complete,
    latest_artifact,
    list_complete_artifacts,
    publish_artifact,
    read_manifest,
)
from common.objectstore.s3 import MIN_PART_SIZE, S3ObjectStore
from common.settings import load_settings
from tests.support.servers import free_port, wait_for_port

pytestmark = pytest.mark.integration

PART = MIN_PART_SIZE  # the S3 store under test uses the smallest legal part to keep objects small
CHUNK = 1 << 20


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    request.getfixturevalue("s3_env")  # CONTINUUM_STORAGE_URL=s3://<fresh bucket>/continuum + credentials
    return S3ObjectStore.from_settings(load_settings(), part_size=PART)


def _chunks(total: int, seed: int = 0):
    """`total` pseudo-random bytes, generated a chunk at a time so the test itself holds little."""
    for index in range(0, total, CHUNK):
        block = hashlib.sha256(f"{seed}-{index}".encode()).digest()
        yield (block * (CHUNK // len(block)))[: min(CHUNK, total - index)]


def _digest(total: int, seed: int = 0) -> str:
    digest = hashlib.sha256()
    for chunk in _chunks(total, seed):
        digest.update(chunk)
    return digest.hexdigest()


# -- basic operations ------------------------------------------------------------------------------


def test_put_get_exists_delete_roundtrip(store):
    store.put_bytes("a/b.txt", b"hello")
    assert store.get_bytes("a/b.txt") == b"hello"
    assert store.exists("a/b.txt")
    assert not store.exists("a/c.txt")
    store.put_bytes("a/b.txt", b"replaced")
    assert store.get_bytes("a/b.txt") == b"replaced"
    store.delete("a/b.txt")
    assert not store.exists("a/b.txt")
    store.delete("a/b.txt")  # deleting a missing key is not an error


def test_missing_key_raises_object_not_found(store):
    with pytest.raises(ObjectNotFound):
        store.get_bytes("nope/missing.bin")
    with pytest.raises(ObjectNotFound):
        with store.open_read("nope/missing.bin"):
            pass
    with pytest.raises(ObjectNotFound):
        store.get_file("nope/missing.bin", "/dev/null")


def test_list_is_sorted_filtered_by_prefix_and_relative(store):
    for key in ["data/b/2", "data/a/1", "data/a/0", "database", "other/x"]:
        store.put_bytes(key, key.encode())
    assert list(store.list("data/")) == ["data/a/0", "data/a/1", "data/b/2"]
    assert list(store.list("data")) == ["data/a/0", "data/a/1", "data/b/2", "database"]
    assert list(store.list("data/a/")) == ["data/a/0", "data/a/1"]
    assert list(store.list()) == ["data/a/0", "data/a/1", "data/b/2", "database", "other/x"]
    assert list(store.list("absent/")) == []
    assert store.delete_prefix("data/") == 3
    assert list(store.list()) == ["database", "other/x"]


def test_list_pages_through_more_than_one_page(store):
    # S3 returns at most 1000 keys per page: 1005 keys need a second page.
    keys = [f"many/{i:05d}" for i in range(1005)]
    if isinstance(store, S3ObjectStore):
        # Seed with the raw client: 1005 separate put_object round-trips would only slow the test.
        for key in keys:
            store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}", Body=b"")
    else:
        for key in keys:
            store.put_bytes(key, b"")
    assert list(store.list("many/")) == keys
    assert store.delete_prefix("many/") == 1005
    assert list(store.list("many/")) == []


@pytest.mark.parametrize(
    "key", ["../escape", "a/../../b", "/etc/passwd", "a/./b", "a\x00b", "a\nb", "tab\there", "a//b", "dir/", ""]
)
def test_unsafe_keys_are_refused_everywhere(store, key):
    for operation in (
        lambda: store.put_bytes(key, b"x"),
        lambda: store.get_bytes(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(InvalidKey):
            operation()
    assert list(store.list()) == []


# -- streaming -------------------------------------------------------------------------------------


def test_streamed_write_and_read_of_a_multipart_object_keep_memory_bounded(store):
    total = 3 * PART + 12345  # more than two parts, with a short tail part
    tracemalloc.start()
    try:
        with store.open_write("big/object.bin") as writer:
            for chunk in _chunks(total):
                writer.write(chunk)
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        digest = hashlib.sha256()
        size = 0
        with store.open_read("big/object.bin") as reader:
            while chunk := reader.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == total
    assert digest.hexdigest() == _digest(total)
    # Holding the whole object would need >= `total` (~15 MiB); streaming holds about one part.
    assert write_peak < 2.5 * PART, f"streamed write peaked at {write_peak / 2**20:.1f} MiB"
    assert read_peak < 0.5 * total, f"streamed read peaked at {read_peak / 2**20:.1f} MiB"


def test_object_appears_only_when_the_write_completes(store):
    with store.open_write("staged/obj") as writer:
        for chunk in _chunks(2 * PART + 1):
            writer.write(chunk)
        assert not store.exists("staged/obj"), "a half-written object must not be visible"
    assert store.exists("staged/obj")


def test_failed_write_leaves_nothing_and_keeps_the_previous_version(store):
    store.put_bytes("keep/obj", b"version 1")
    with pytest.raises(RuntimeError, match="boom"):
        with store.open_write("keep/obj") as writer:
            for chunk in _chunks(2 * PART + 1):
                writer.write(chunk)
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with store.open_write("fresh/obj") as writer:
            writer.write(b"partial")
            raise RuntimeError("boom")
    assert store.get_bytes("keep/obj") == b"version 1"
    assert not store.exists("fresh/obj")
    assert list(store.list()) == ["keep/obj"]
    if isinstance(store, S3ObjectStore):
        uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
        assert uploads == [], "the failed multipart upload must be aborted"


def test_text_wrapper_over_writer_roundtrips(store):
    # Closing a TextIOWrapper closes the stream it wraps; the store must still publish on clean exit.
    with store.open_write("text/lines.txt") as raw:
        with io.TextIOWrapper(raw, encoding="utf-8") as text:
            text.write("héllo\nwörld\n")
    with store.open_read("text/lines.txt") as raw, io.TextIOWrapper(raw, encoding="utf-8") as text:
        assert text.read() == "héllo\nwörld\n"


def test_put_file_and_get_file_stream_local_files(store, tmp_path):
    source = tmp_path / "src.bin"
    with open(source, "wb") as fh:
        for chunk in _chunks(2 * PART + 7, seed=3):
            fh.write(chunk)
    store.put_file("files/src.bin", str(source))
    target = tmp_path / "dst.bin"
    store.get_file("files/src.bin", str(target))
    assert target.read_bytes() == source.read_bytes()


# -- artifacts (manifest last) ---------------------------------------------------------------------


class FailsOnSecondFile(ObjectStore):
    """A real store whose `put_file` fails on the 2nd call: a crash in the middle of an upload."""

    def __init__(self, inner: ObjectStore):
        self.inner = inner
        self.url = inner.url
        self.calls = 0

    def put_file(self, key, path):
        self.calls += 1
        if self.calls == 2:
            raise ObjectStoreUnavailable("simulated connection loss mid-artifact")
        self.inner.put_file(key, path)

    def put_bytes(self, key, data):
        self.inner.put_bytes(key, data)

    def get_bytes(self, key):
        return self.inner.get_bytes(key)

    def open_read(self, key):
        return self.inner.open_read(key)

    def open_write(self, key):
        return self.inner.open_write(key)

    def list(self, prefix=""):
        return self.inner.list(prefix)

    def exists(self, key):
        return self.inner.exists(key)

    def delete(self, key):
        self.inner.delete(key)


def _artifact_files(folder: Path, tag: str) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in ["adapter_config.json", "adapter_model.safetensors", "nested/extra.txt"]:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"{tag}:{name}".encode() * 100)
        files[name] = path
    return files


def test_publish_writes_manifest_last_and_download_verifies(store, tmp_path):
    files = _artifact_files(tmp_path / "v1", "v1")
    manifest = publish_artifact(store, "adapters/v0001", files, {"base_model": "tiny"})
    assert manifest["base_model"] == "tiny"
    assert set(manifest["files"]) == set(files)
    assert manifest["files"]["adapter_config.json"]["sha256"] == hashlib.sha256(
        files["adapter_config.json"].read_bytes()
    ).hexdigest()
    assert read_manifest(store, "adapters/v0001") == json.loads(store.get_bytes(f"adapters/v0001/{MANIFEST}"))
    out = download_artifact(store, "adapters/v0001", tmp_path / "download")
    for name, path in files.items():
        assert (out / name).read_bytes() == path.read_bytes()

    # A file replaced after publication no longer matches its manifest: the download refuses it.
    store.put_bytes("adapters/v0001/adapter_model.safetensors", b"tampered")
    with pytest.raises(PermanentError, match="does not match its manifest"):
        download_artifact(store, "adapters/v0001", tmp_path / "download2")


def test_upload_failing_mid_artifact_leaves_no_manifest_and_latest_skips_it(store, tmp_path):
    publish_artifact(store, "adapters/v0001", _artifact_files(tmp_path / "v1", "v1"))
    failing = FailsOnSecondFile(store)
    with pytest.raises(ObjectStoreUnavailable):
        publish_artifact(failing, "adapters/v0002", _artifact_files(tmp_path / "v2", "v2"))
    assert failing.calls == 2
    assert list(store.list("adapters/v0002/")) == ["adapters/v0002/adapter_config.json"]  # debris, no manifest
    assert not is_complete(store, "adapters/v0002")
    assert list_complete_artifacts(store, "adapters") == ["adapters/v0001"]
    assert latest_artifact(store, "adapters") == "adapters/v0001"
    with pytest.raises(ObjectNotFound, match="manifest missing"):
        download_artifact(store, "adapters/v0002", tmp_path / "partial")

    # The retried job republishes the same prefix and only then does it become latest.
    publish_artifact(store, "adapters/v0002", _artifact_files(tmp_path / "v2", "v2"))
    assert latest_artifact(store, "adapters") == "adapters/v0002"


def test_unreadable_source_file_leaves_no_manifest(store, tmp_path):
    files = _artifact_files(tmp_path / "v1", "v1")
    files["zz_missing.bin"] = tmp_path / "does-not-exist.bin"
    with pytest.raises(FileNotFoundError):
        publish_artifact(store, "fisher/v0001", files)
    assert not is_complete(store, "fisher/v0001")
    assert latest_artifact(store, "fisher") is None


def test_republishing_a_complete_artifact_never_removes_or_replaces_it(store, tmp_path):
    """A registered row may point at a complete artifact: re-publishing its prefix (a retry, a stale
    attempt) must leave its manifest and files exactly as they were — never a moment without one."""
    first = publish_artifact(store, "datasets/d1", _artifact_files(tmp_path / "a", "a"))
    before = {key: store.get_bytes(key) for key in store.list("datasets/d1/")}
    spy = FailsOnSecondFile(store)
    again = publish_artifact(spy, "datasets/d1", _artifact_files(tmp_path / "b", "b"))
    assert again == first and spy.calls == 0
    assert {key: store.get_bytes(key) for key in store.list("datasets/d1/")} == before
    assert is_complete(store, "datasets/d1")
    download_artifact(store, "datasets/d1", tmp_path / "check")  # still verifies


def test_manifest_name_and_unsafe_names_are_refused(store, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with pytest.raises(PermanentError, match="reserved"):
        publish_artifact(store, "a/v1", {MANIFEST: path})
    with pytest.raises(PermanentError, match="reserved"):
        publish_artifact(store, "a/v1", {"sub/" + MANIFEST: path})
    with pytest.raises(InvalidKey):
        publish_artifact(store, "a/v1", {"../evil": path})
    assert list(store.list()) == []


def test_download_refuses_a_manifest_naming_paths_outside_the_folder(store, tmp_path):
    store.put_bytes("evil/v1/" + MANIFEST, json.dumps({"files": {"../../escape": {"size": 1, "sha256": "0"}}}).encode())
    with pytest.raises(InvalidKey):
        download_artifact(store, "evil/v1", tmp_path / "dest")
    assert not (tmp_path / "escape").exists()


# -- S3 only: configuration and failure translation ----------------------------------------------


def test_open_store_from_settings_applies_and_strips_the_prefix(s3_env, s3_server, s3_bucket):
    store = open_store(load_settings())
    assert isinstance(store, S3ObjectStore)
    assert store.url == f"s3://{s3_bucket}/continuum"
    store.put_bytes("x/y", b"1")
    raw = s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [item["Key"] for item in raw] == ["continuum/x/y"]
    assert list(store.list()) == ["x/y"]


def test_standard_aws_variables_are_used_when_continuum_ones_are_absent(s3_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("CONTINUUM_STORAGE_URL", f"s3://{s3_bucket}")
    monkeypatch.setenv("CONTINUUM_S3_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    store = open_store(load_settings())
    assert store.client.meta.region_name == "eu-west-1"
    assert store.client.meta.config.s3["addressing_style"] == "path"  # MinIO-style endpoints
    store.put_bytes("k", b"v")
    assert s3_server.client().get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"v"


def test_missing_bucket_is_permanent_and_names_the_fix(s3_env, monkeypatch):
    monkeypatch.setenv("CONTINUUM_STORAGE_URL", "s3://no-such-bucket-here/p")
    store = open_store(load_settings())
    with pytest.raises(ObjectStorePermanent, match="CONTINUUM_STORAGE_URL") as info:
        store.put_bytes("k", b"v")
    assert not isinstance(info.value, RetryableError)


def test_unreachable_endpoint_is_retryable(s3_env, monkeypatch):
    closed_port = free_port()  # bound and released: nothing listens there
    monkeypatch.setenv("CONTINUUM_S3_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    store = S3ObjectStore.from_settings(load_settings(), max_attempts=2)
    for operation in (lambda: store.get_bytes("k"), lambda: store.put_bytes("k", b"v"), lambda: list(store.list())):
        with pytest.raises(ObjectStoreUnavailable, match="CONTINUUM_S3_ENDPOINT_URL") as info:
            operation()
        assert isinstance(info.value, RetryableError)


@pytest.fixture(scope="module")
def authenticating_s3_endpoint():
    """A second S3 server that checks signatures against its own (empty) key store, like real S3."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_bad_credentials_are_permanent_and_name_the_fix(authenticating_s3_endpoint, monkeypatch):
    monkeypatch.setenv("CONTINUUM_STORAGE_URL", "s3://some-bucket/p")
    monkeypatch.setenv("CONTINUUM_S3_ENDPOINT_URL", authenticating_s3_endpoint)
    monkeypatch.setenv("CONTINUUM_S3_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    monkeypatch.setenv("CONTINUUM_S3_SECRET_ACCESS_KEY", "not-a-valid-secret")
    store = S3ObjectStore.from_settings(load_settings())
    for operation in (lambda: store.get_bytes("k"), lambda: store.put_bytes("k", b"v"), lambda: store.exists("k")):
        with pytest.raises(ObjectStorePermanent, match="CONTINUUM_S3_ACCESS_KEY_ID|access denied") as info:
            operation()
        assert not isinstance(info.value, RetryableError)
