"""`resources_for` caches per process by `id(settings)`: an id is only unique among live objects."""

from __future__ import annotations

import os

from common.settings import Settings
from workers import resources


def test_a_reused_id_never_returns_another_settings_resources(tmp_path, monkeypatch):
    old = Settings(home=tmp_path / "a")
    new = Settings(home=tmp_path / "b")
    # What a reused id looks like: the cache holds, under `new`'s id, the Resources built for `old`.
    monkeypatch.setitem(resources._cache, (os.getpid(), id(new)), resources.Resources(old))
    found = resources.resources_for(new)
    assert found.settings is new, "resources for another database/home were handed out"
    assert resources.resources_for(new) is found  # and it is cached from now on
