"""Which accelerator this machine has: `python -m workers.device_probe` prints JSON.

Run in a short-lived process by `continuum worker`, so the long-lived worker parent never imports
torch (smaller, faster to start, and no CUDA context created before the pool forks).
"""

from __future__ import annotations

import json
import os
import sys


def probe() -> dict:
    """{"device": "cuda"|"mps"|"cpu", "memory_bytes": int|None, "name": str} — cuda > mps > cpu."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"device": "cuda", "memory_bytes": int(props.total_memory), "name": props.name,
                "count": torch.cuda.device_count()}
    mps = getattr(torch.backends, "mps", None)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    if mps is not None and mps.is_available():
        return {"device": "mps", "memory_bytes": memory, "name": "Apple MPS (unified memory)", "count": 1}
    return {"device": "cpu", "memory_bytes": memory, "name": "cpu", "count": os.cpu_count() or 1}


if __name__ == "__main__":
    json.dump(probe(), sys.stdout)
