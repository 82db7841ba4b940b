"""What every orchestration call needs: settings, a session factory, the ledger and a job sender."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from common.ledger import JobLedger
from common.settings import Settings


class JobSender(Protocol):
    """Publishes the message for one job (`{"job_id": …}` to the task of `kind` on `queue`).

    Raises `common.errors.BrokerUnavailable` when the broker is down; the job row stays `queued` and
    the reaper sends it again later.
    """

    def send(self, job_id: str, kind: str, queue: str) -> None: ...


@dataclass
class Orchestrator:
    """The handles orchestration works with; built per process by `workers.dispatch.orchestrator_for`."""

    settings: Settings
    sessions: sessionmaker[Session]
    ledger: JobLedger
    sender: JobSender
