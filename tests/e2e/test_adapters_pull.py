"""`continuum adapters pull`: a published version comes out as a stock PEFT folder that
`PeftModel.from_pretrained` loads with the same weights, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from tests.integration.distributed.harness import REPO


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler", *args], cwd=REPO, env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)


def test_pull_production_gives_a_folder_stock_peft_loads(tmp_path):
    from peft import PeftModel

    from common.db import create_db_engine, session_factory, session_scope
    from common.db.migrate import upgrade
    from common.db.models import Adapter
    from common.objectstore import open_store
    from common.settings import load_settings
    from workers.learning.lora import LoraSettings, attach_adapter, publish_adapter
    from workers.learning.tiny import build_tiny_model
    from workers.promote.aliases import move_alias

    settings = load_settings()
    upgrade(settings.resolved_database_url)
    torch.manual_seed(0)
    model = attach_adapter(build_tiny_model(0), LoraSettings(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():  # a non-zero adapter, so loading it is visible in the logits
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    publish_adapter(open_store(settings), "adapters/default/job-1", model)
    engine = create_db_engine(settings.resolved_database_url)
    sessions = session_factory(engine)
    with session_scope(sessions) as session:
        row = Adapter(name="default", version=1, base_model="builtin:tiny", uri="file://x",
                      metadata_={"prefix": "adapters/default/job-1"})
        session.add(row)
        session.flush()
        adapter_id = row.id
    assert move_alias(sessions, "production", adapter_id, 0).succeeded
    engine.dispose()

    dest = tmp_path / "pulled"
    result = _cli("adapters", "pull", "production", str(dest), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["id"] == adapter_id and info["path"] == str(dest)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in dest.iterdir()}
    loaded = PeftModel.from_pretrained(build_tiny_model(0), str(dest)).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    torch.testing.assert_close(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)

    again = _cli("adapters", "pull", str(adapter_id), str(dest))  # never over an existing folder
    assert again.returncode != 0 and "already exists" in again.stderr and len(again.stderr.splitlines()) == 1
    missing = _cli("adapters", "pull", "staging", str(tmp_path / "other"))
    assert missing.returncode != 0 and "points at no adapter" in missing.stderr
    assert not (tmp_path / "other").exists()
