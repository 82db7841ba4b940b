"""Tell a vLLM-compatible server about a promotion: load the new adapter, then unload the old one.

`POST {url}/v1/load_lora_adapter {"lora_name": "<name>@v<N>", "lora_path": …}` and
`POST {url}/v1/unload_lora_adapter {"lora_name": …}`. Failures are retryable: the promotion itself is
already durable, and a retried promote job skips straight to the hot-swap.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from common.db.models import Adapter
from common.errors import RetryableError


def lora_name(adapter: Adapter) -> str:
    return f"{adapter.name}@v{adapter.version}"


def _post(url: str, payload: dict, timeout: float) -> None:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise RetryableError(f"hot-swap call {url} failed ({exc}): check CONTINUUM_HOT_SWAP_URL and the server") from exc


def hot_swap(base_url: str, new: Adapter, old: Adapter | None, timeout: float) -> list[str]:
    """Load `new`, then unload `old` (if any and different). Returns the calls made, for the result."""
    base = base_url.rstrip("/")
    _post(f"{base}/v1/load_lora_adapter", {"lora_name": lora_name(new), "lora_path": new.uri}, timeout)
    calls = [f"load {lora_name(new)}"]
    if old is not None and old.id != new.id:
        try:
            _post(f"{base}/v1/unload_lora_adapter", {"lora_name": lora_name(old)}, timeout)
            calls.append(f"unload {lora_name(old)}")
        except RetryableError as exc:  # the new one serves already; a stale old one only costs memory
            calls.append(f"unload {lora_name(old)} failed: {exc}")
    return calls
