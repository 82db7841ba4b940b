"""Multi-file artifacts (datasets, adapters, Fisher, checkpoints) published with the manifest LAST, and
never modified once complete.

An artifact is a prefix holding files plus `manifest.json`. The manifest lists every file with its size
and sha256 and is written only after all files are uploaded, so "complete" == "has a manifest": a
crashed upload leaves files without a manifest, which readers (and `latest_artifact`) never choose.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.errors import ObjectNotFound, PermanentError
from common.objectstore.base import ObjectStore
from common.objectstore.keys import join, validate_key

MANIFEST = "manifest.json"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def publish_artifact(
    store: ObjectStore, prefix: str, files: dict[str, Path], manifest_extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Upload `files` (name → local path) under `prefix`, then write the manifest; returns the manifest.

    A complete artifact is immutable: when `prefix` already has a manifest, nothing is uploaded, nothing
    deleted, and the existing manifest is returned (a retry of the same publish is a no-op). Deleting
    that manifest to re-publish — what this did before — left a registered artifact without one for
    the whole upload. Writers that could race on one prefix must not share it: jobs publish under
    attempt-scoped prefixes (`JobContext.attempt_prefix`).
    """
    validate_key(prefix)
    reserved = {"prefix", "files", "created_at"} & set(manifest_extra or {})
    if reserved:
        raise PermanentError(f"manifest_extra may not set the reserved field(s) {sorted(reserved)}")
    for name in files:
        validate_key(name)
        if name.rsplit("/", 1)[-1] == MANIFEST:
            raise PermanentError(f"artifact file {name!r} may not be named {MANIFEST} (reserved for the manifest)")
    if is_complete(store, prefix):
        return read_manifest(store, prefix)
    entries = {}
    for name, path in sorted(files.items()):
        path = Path(path)
        # Hash first: the manifest must describe the bytes we upload, and an unreadable file fails early.
        entries[name] = {"size": path.stat().st_size, "sha256": _sha256_file(path)}
        store.put_file(join(prefix, name), str(path))
    manifest = {
        **(manifest_extra or {}),
        "prefix": prefix,
        "files": entries,
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
    store.put_bytes(join(prefix, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True).encode())
    return manifest


def read_manifest(store: ObjectStore, prefix: str) -> dict[str, Any]:
    """The manifest of a complete artifact; ObjectNotFound if the artifact is missing or incomplete."""
    try:
        manifest = json.loads(store.get_bytes(join(prefix, MANIFEST)))
    except ObjectNotFound:
        raise ObjectNotFound(f"no complete artifact at {prefix!r} (manifest missing)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PermanentError(f"artifact {prefix!r}: manifest is not valid JSON ({exc}); republish it") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise PermanentError(f"artifact {prefix!r}: manifest has no 'files' table; republish it")
    return manifest


def is_complete(store: ObjectStore, prefix: str) -> bool:
    """True once the artifact's manifest exists (it is written after every file)."""
    return store.exists(join(prefix, MANIFEST))


def download_artifact(store: ObjectStore, prefix: str, dest_dir: Path, verify: bool = True) -> Path:
    """Download a complete artifact's files into `dest_dir`, checking sizes and hashes."""
    manifest = read_manifest(store, prefix)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    for name, meta in manifest["files"].items():
        validate_key(name)  # a tampered manifest must not write outside dest_dir ("../x")
        target = dest_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        store.get_file(join(prefix, name), str(target))
        if verify and (target.stat().st_size != meta["size"] or _sha256_file(target) != meta["sha256"]):
            target.unlink(missing_ok=True)
            raise PermanentError(
                f"artifact {prefix!r}: {name} does not match its manifest size/sha256 (corrupt or replaced); republish it"
            )
    return dest_dir


def list_complete_artifacts(store: ObjectStore, parent: str) -> list[str]:
    """Prefixes directly under `parent` that have a manifest, in lexicographic order."""
    parent = parent.rstrip("/") + "/" if parent.strip("/") else ""
    prefixes = []
    for key in store.list(parent):
        rest = key[len(parent) :]
        if rest.count("/") == 1 and rest.endswith("/" + MANIFEST):
            prefixes.append(parent + rest[: -len(MANIFEST) - 1])
    return sorted(prefixes)


def latest_artifact(store: ObjectStore, parent: str) -> str | None:
    """The lexicographically greatest complete artifact under `parent` (zero-padded names sort by age)."""
    complete = list_complete_artifacts(store, parent)
    return complete[-1] if complete else None
