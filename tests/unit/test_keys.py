"""Object keys: anything that could escape a prefix or hide in a log is refused."""

from __future__ import annotations

import re

import pytest

from common.errors import InvalidKey, PermanentError
from common.objectstore.keys import MAX_KEY_BYTES, join, validate_key, validate_prefix


@pytest.mark.parametrize(
    "key",
    [
        "datasets/000001/shard.jsonl.gz",
        "a",
        "adapters/default/v0001/adapter_model.safetensors",
        "unicodé/名前.txt",
        "dots.in.name/..hidden-but-not-parent",
        "x" * MAX_KEY_BYTES,
    ],
)
def test_safe_keys_pass_unchanged(key):
    assert validate_key(key) == key


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "non-empty"),
        ("..", "'..'"),
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("a/./b", "'.'"),
        ("/etc/passwd", "relative"),
        ("\\windows\\path", "relative"),
        ("C:/Users/x", "relative"),
        ("a\\b", "'/' separators"),
        ("a\x00b", "control"),
        ("line\nbreak", "control"),
        ("carriage\rreturn", "control"),
        ("tab\t", "control"),
        ("del\x7f", "control"),
        ("c1\x85control", "control"),
        ("unicode\u2028separator", "control"),
        ("a//b", "empty segments"),
        ("dir/", "end with '/'"),
        ("x" * (MAX_KEY_BYTES + 1), "longer than"),
        ("é" * (MAX_KEY_BYTES // 2 + 1), "longer than"),  # the limit is in UTF-8 bytes, not characters
    ],
)
def test_unsafe_keys_are_refused_with_the_reason(key, reason):
    with pytest.raises(InvalidKey, match=re.escape(reason)) as info:
        validate_key(key)
    assert isinstance(info.value, PermanentError)  # a bad key never succeeds on retry


def test_non_string_key_is_refused():
    with pytest.raises(InvalidKey):
        validate_key(None)  # type: ignore[arg-type]


def test_prefixes_may_be_empty_or_end_with_a_slash():
    assert validate_prefix("") == ""
    assert validate_prefix("datasets/") == "datasets/"
    assert validate_prefix("datasets/0") == "datasets/0"
    with pytest.raises(InvalidKey):
        validate_prefix("../")
    with pytest.raises(InvalidKey):
        validate_prefix("/abs/")


def test_join_drops_empty_parts_and_trailing_slashes():
    assert join("datasets/", "000001", "manifest.json") == "datasets/000001/manifest.json"
    assert join("", "a", "", "b") == "a/b"


@pytest.mark.parametrize("parts", [("a", "/etc/passwd"), ("a", "..", "b"), ("/root", "x"), ("a", "b\nc"), ()])
def test_join_refuses_parts_that_would_escape(parts):
    with pytest.raises(InvalidKey):
        join(*parts)
