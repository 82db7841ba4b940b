"""Beat: start the pipeline on its schedule, and run the sweep (lease reaper + pipeline
reconciliation, `common.orchestration.reaper.sweep`). The schedule is plain data.

Schedules are 5-field cron strings (UTC; Celery's crontab field syntax, day-of-week 0/7 = Sunday,
and both day fields must match) or `@every <N>s` (ticks at multiples of N seconds since the epoch).
Every beat computes the same ticks from the clock, and a run's key is (schedule, tick): two beats
running at once create one run per tick — a unique key, not luck. A beat that starts within
`catch_up` of a tick it missed fires it (the key makes a late duplicate harmless).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from common.errors import ConfigError
from common.ledger import utc_now
from common.settings import Settings

log = logging.getLogger("continuum.beat")
_EVERY = re.compile(r"^@every\s+(\d+)s$")


@dataclass(frozen=True)
class ScheduleEntry:
    """One schedule: a name (part of each run's key), when, and the pipeline parameters to run with."""

    name: str
    spec: str
    params: dict[str, Any] = field(default_factory=dict)


def schedule_from_settings(settings: Settings) -> list[ScheduleEntry]:
    entry = ScheduleEntry(settings.pipeline_schedule_name, settings.pipeline_schedule)
    latest_tick(entry.spec, utc_now())  # validate now, not at the first tick
    return [entry]


def _cron_fields(spec: str):
    from celery.schedules import crontab

    parts = spec.split()
    if len(parts) != 5:
        raise ConfigError(f"schedule {spec!r} must have 5 cron fields (min hour day month weekday) or be `@every <N>s`")
    minute, hour, day_of_month, month, day_of_week = parts
    try:
        cron = crontab(minute=minute, hour=hour, day_of_week=day_of_week, day_of_month=day_of_month,
                       month_of_year=month)
    except Exception as exc:  # noqa: BLE001 - celery raises several types for bad fields
        raise ConfigError(f"invalid cron schedule {spec!r}: {exc}") from None
    return cron


def latest_tick(spec: str, now: datetime) -> datetime:
    """The most recent tick at or before `now` (UTC, second precision for @every, minute for cron)."""
    now = now.astimezone(timezone.utc)
    every = _EVERY.match(spec.strip())
    if every:
        period = int(every.group(1))
        if period < 1:
            raise ConfigError("`@every <N>s` needs N >= 1")
        epoch = int(now.timestamp())
        return datetime.fromtimestamp(epoch - epoch % period, tz=timezone.utc)
    cron = _cron_fields(spec)
    day = now.replace(second=0, microsecond=0)
    for back in range(0, 366 * 5):  # five years covers every satisfiable cron (Feb 29 included)
        date = (day - timedelta(days=back)).date()
        weekday = (date.weekday() + 1) % 7  # crontab: 0 = Sunday
        if date.month not in cron.month_of_year or date.day not in cron.day_of_month or weekday not in cron.day_of_week:
            continue
        limit = (day.hour, day.minute) if back == 0 else (23, 59)
        times = [(h, m) for h in cron.hour for m in cron.minute if (h, m) <= limit]
        if times:
            hour, minute = max(times)
            return datetime(date.year, date.month, date.day, hour, minute, tzinfo=timezone.utc)
    raise ConfigError(f"cron schedule {spec!r} never fires")


class Beat:
    """The beat loop. `fire(entry, tick)` starts a run; `reap()` runs the lease reaper."""

    def __init__(
        self,
        entries: list[ScheduleEntry],
        fire: Callable[[ScheduleEntry, datetime], bool],
        reap: Callable[[], Any],
        reaper_interval: float,
        clock: Callable[[], datetime] = utc_now,
        catch_up: timedelta = timedelta(hours=1),
    ):
        self.entries = entries
        self.fire = fire
        self.reap = reap
        self.reaper_interval = reaper_interval
        self.clock = clock
        now = clock()
        # Fire a tick missed shortly before start; older ones are history.
        self.last_tick = {e.name: latest_tick(e.spec, now - catch_up) for e in entries}
        self.fired: list[tuple[str, datetime, bool]] = []

    def tick_once(self) -> None:
        now = self.clock()
        for entry in self.entries:
            tick = latest_tick(entry.spec, now)
            if tick > self.last_tick[entry.name]:
                created = self.fire(entry, tick)
                self.fired.append((entry.name, tick, created))
                self.last_tick[entry.name] = tick
                log.info("schedule %s tick %s: %s", entry.name, tick.isoformat(),
                         "started a pipeline run" if created else "run already started by another beat")

    def run(self, stop: threading.Event, poll_seconds: float = 1.0) -> None:
        next_reap = 0.0
        import time

        while not stop.is_set():
            try:
                self.tick_once()
                if time.monotonic() >= next_reap:
                    self.reap()
                    next_reap = time.monotonic() + self.reaper_interval
            except Exception as exc:  # noqa: BLE001 - a database blip must not stop the schedule
                log.warning("beat iteration failed (will retry): %s", exc)
            stop.wait(poll_seconds)


def beat_for(settings: Settings) -> Beat:
    """A Beat wired to the real pipeline and the sweep (reaper + pipeline reconciliation)."""
    from common.orchestration.pipeline import start_pipeline
    from common.orchestration.reaper import sweep
    from workers.dispatch import orchestrator_for

    orch = orchestrator_for(settings)

    def fire(entry: ScheduleEntry, tick: datetime) -> bool:
        _, created = start_pipeline(orch, schedule=entry.name, tick=tick, params=entry.params)
        return created

    def sweep_once() -> dict[str, Any]:
        found = sweep(orch)
        if any(found[k] for k in ("requeued", "dead", "resent")) or any(found["pipelines"].values()):
            log.info("sweep: %s", found)
        return found

    return Beat(schedule_from_settings(settings), fire, sweep_once, settings.reaper_interval_seconds)
