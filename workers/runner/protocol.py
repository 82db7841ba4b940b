"""How a job process talks to its supervisor: exit codes, signals, and JSON lines on a pipe.

The child writes one JSON object per line to the file descriptor it was given:
`{"type": "progress", "data": {...}}`, then exactly one of `{"type": "result", "data": {...}}`,
`{"type": "error", "message": str, "retryable": bool}`, `{"type": "interrupted", "reason": str}` or
`{"type": "lease_lost", "message": str}` (the fenced final write was refused: record nothing).
"""

from __future__ import annotations

import json
import signal
from typing import Any

# sysexits.h values, so the meaning survives in shell logs.
EXIT_OK = 0
EXIT_PERMANENT = 65  # EX_DATAERR: retrying cannot help
EXIT_RETRYABLE = 70  # EX_SOFTWARE: an error that a retry may fix
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped on request after checkpointing

# Supervisor → child. SIGTERM (and SIGINT: a terminal's Ctrl-C) = checkpoint and hand the job back;
# SIGUSR1 = the job was cancelled, stop as soon as possible.
REQUEUE_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CANCEL_SIGNAL = signal.SIGUSR1

STOP_REQUEUE = "requeue"
STOP_CANCEL = "cancel"


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, default=str, separators=(",", ":")) + "\n").encode()


class LineReader:
    """Splits bytes read from the pipe into decoded messages (ignores lines that are not ours)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        messages = []
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and "type" in message:
                messages.append(message)
        return messages
