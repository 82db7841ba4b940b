"""Keep the served adapter where the alias points: poll the ledger, load a moved-to version, switch.

The alias (`production` by default) is read every `CONTINUUM_SERVE_POLL_SECONDS`. When it has moved
(a promotion or a rollback), the new version is downloaded outside any lock, loaded under its versioned
name, and the names the server follows (the alias and the lineage) switch to it; the old version is
unloaded once the requests that started on it have finished. A failed download or load leaves the
server answering with the version it had, and is retried at the next poll. A fixed adapter id
(`CONTINUUM_SERVE_ADAPTER=12`) is loaded once and never moves. A version a request names
(`default@v2`) is loaded on demand the same way.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import select

from common.db.engine import session_scope
from common.db.models import Adapter
from common.errors import NotFound
from workers.serve.engine import ChatEngine, Version, check_adapter_base

log = logging.getLogger("continuum.serve")


class Follower:
    """Loads adapter versions from the registry into a `ChatEngine` and follows the alias."""

    def __init__(self, engine: ChatEngine, sessions: Any, store: Any, target: str, scratch: Path):
        self.engine = engine
        self.sessions = sessions
        self.store = store
        self.target = target  # an alias name, or an adapter id as digits
        self.scratch = scratch
        self.last_error: str | None = None
        self.swaps = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._load_lock = threading.Lock()  # one download at a time (polls and on-demand loads)
        if not target.isdigit():
            engine.expect(target)  # `production` answers (with the base) before it points anywhere

    # ------------------------------------------------------------------ the alias

    def _target_adapter(self, session: Any) -> Adapter | None:
        if self.target.isdigit():
            adapter = session.get(Adapter, int(self.target))
            if adapter is None:
                raise NotFound(f"no adapter has id {self.target}: set CONTINUUM_SERVE_ADAPTER to an id from "
                               f"`continuum adapters list` or to an alias such as production")
            return adapter
        from workers.lineage import alias_target

        return alias_target(session, self.target)

    def poll(self) -> bool:
        """Check the alias once; True if the served version changed."""
        with session_scope(self.sessions) as session:
            adapter = self._target_adapter(session)
            if adapter is None:
                return False
            session.expunge(adapter)
        version = Version.of(adapter)
        current = self.engine.followed().get(self._names(version)[0])
        if current is not None and current.name == version.name:
            return False
        # Loaded and switched in one turn on the model: requests queued behind the load already hold
        # the old version, and those after it get the new one.
        before = self._ensure_loaded(adapter, follow=self._names(version))
        self.swaps += 1 if before is not None else 0
        log.warning("serving %s (adapter %s)%s", version.name, version.adapter_id,
                    f", was {before.name}" if before else "")
        return True

    def _names(self, version: Version) -> list[str]:
        """The names that mean the followed version: the alias (or the fixed id's lineage) and the lineage."""
        return [version.lineage] if self.target.isdigit() else [version.lineage, self.target]

    # ------------------------------------------------------------------ on demand

    def load_named(self, name: str) -> Version:
        """Load `lineage@vN` from the registry if it exists (NotFound otherwise)."""
        lineage, _, number = name.rpartition("@v")
        if not lineage or not number.isdigit():
            raise NotFound(f"model {name!r} is not served: ask for `base`, a lineage name or `lineage@vN`")
        with session_scope(self.sessions) as session:
            adapter = session.scalars(select(Adapter).where(Adapter.name == lineage,
                                                            Adapter.version == int(number))).first()
            if adapter is None:
                raise NotFound(f"model {name!r} is not served: no adapter {lineage} version {number} "
                               f"(`continuum adapters list`)")
            session.expunge(adapter)
        self._ensure_loaded(adapter)
        return Version.of(adapter)

    def _ensure_loaded(self, adapter: Adapter, follow: list[str] | None = None) -> Version | None:
        """Download and load `adapter` unless loaded; with `follow`, switch those names to it. Returns
        the version they meant before."""
        from common.objectstore.artifacts import read_manifest
        from workers.learning.lora import download_adapter
        from workers.lineage import adapter_prefix
        from workers.model_setup import check_safetensors_only

        version = Version.of(adapter)
        with self._load_lock:
            if self.engine.has(version.name):
                return self.engine.follow(follow, version) if follow else None
            check_adapter_base(adapter, self.engine.base_model)
            prefix = adapter_prefix(adapter)
            check_safetensors_only(read_manifest(self.store, prefix), f"{self.store.url}/{prefix}")
            self.scratch.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="adapter-", dir=self.scratch) as folder:
                path = download_adapter(self.store, prefix, Path(folder) / version.name.replace("@", "-"))
                return self.engine.load(version, path, follow=follow or ())

    # ------------------------------------------------------------------ the background thread

    def start(self, interval: float) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                self.poll_logged()

        self._thread = threading.Thread(target=loop, name="continuum-serve-follow", daemon=True)
        self._thread.start()

    def poll_logged(self) -> None:
        try:
            self.poll()
            self.last_error = None
        except Exception as exc:  # the server keeps answering with what it has; retried next poll
            message = f"{type(exc).__name__}: {exc}"
            if message != self.last_error:
                log.error("cannot follow %s: %s", self.target, message)
            self.last_error = message

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
