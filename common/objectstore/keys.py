"""Object keys are relative, `/`-separated paths; anything that could escape a prefix is refused."""

from __future__ import annotations

import re

from common.errors import InvalidKey

# C0 and C1 control characters plus the Unicode line/paragraph separators: all invisible in logs.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_KEY_BYTES = 1024  # S3's limit


def validate_key(key: str) -> str:
    """Return `key` unchanged if safe, else raise InvalidKey naming the problem."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("object key must be a non-empty string")
    if _CONTROL.search(key):
        raise InvalidKey(f"object key {key!r} contains control characters")
    if key.startswith("/") or key.startswith("\\") or re.match(r"^[A-Za-z]:", key):
        raise InvalidKey(f"object key {key!r} must be relative, not absolute")
    if "\\" in key:
        raise InvalidKey(f"object key {key!r} must use '/' separators")
    parts = key.split("/")
    if any(part in {"..", "."} for part in parts):
        raise InvalidKey(f"object key {key!r} must not contain '.' or '..' segments")
    if any(part == "" for part in parts[:-1]) or key.endswith("/"):
        raise InvalidKey(f"object key {key!r} must not contain empty segments or end with '/'")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidKey(f"object key is longer than {MAX_KEY_BYTES} bytes")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a valid key optionally ending in '/'."""
    if prefix == "":
        return prefix
    validate_key(prefix.rstrip("/"))
    return prefix


def join(*parts: str) -> str:
    """Join key parts with '/', dropping empty parts and trailing slashes; the result is validated.

    A leading '/' is NOT stripped: `join("a", "/etc")` is refused (an absolute part is a bug, not a key).
    """
    return validate_key("/".join(p.rstrip("/") for p in parts if p))
