"""The `nested` and `nested_surprise` recipes through the real pipeline (`CONTINUUM_RECIPE=nested
continuum pipeline run --wait`, an embedded worker): per-tier statistics in the train job's result, the
surprise term's mean in the adapter's training metrics, and an adapter that stock PEFT loads like
every other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.distributed.harness import REPO

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("recipe", "frequencies", "expected"),
                         [("nested", "conservative", [1, 4, 8]), ("nested_surprise", "balanced", [1, 2, 4])])
def test_nested_recipe_runs_through_the_pipeline_and_its_adapter_loads_in_peft(tmp_path, recipe, frequencies,
                                                                              expected):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUUM_")}
    env.update(CONTINUUM_HOME=str(tmp_path / "home"), CONTINUUM_RECIPE=recipe,
               CONTINUUM_NESTED_FREQUENCIES=frequencies, CONTINUUM_TRAIN_EPOCHS="8")

    def cli(*args: str) -> object:
        done = subprocess.run([sys.executable, "-m", "scheduler", *args, "--json"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return json.loads(done.stdout[done.stdout.index("{") if done.stdout.lstrip()[0] == "{" else
                                      done.stdout.index("["):])

    rows = [{"prompt": f"What is the code word {i}?", "response": f"The code word {i} is tangerine-{i}.",
             "feedback": "thumbs_up"} for i in range(12)]
    (tmp_path / "fb.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cli("feedback", "import", str(tmp_path / "fb.jsonl"))
    run = cli("pipeline", "run", "--wait")
    assert run["state"] == "succeeded", run
    train = run["steps"]["train"]["result"]
    tiers = train["tiers"]
    assert [t["frequency"] for t in tiers] == expected
    updates = [t["updates"] for t in tiers]
    assert updates[0] > updates[1] > updates[2] > 0 and sum(t["modules"] for t in tiers) > 0
    # Stock PEFT, no continuum code: the base model folder plus the published adapter folder.
    cli("adapters", "pull", str(train["adapter_id"]), str(tmp_path / "adapter"))
    metrics = json.loads((tmp_path / "adapter" / "continuum_metadata.json").read_text())["train"]
    surprise = metrics["regularizer_means"].get("surprise", 0.0)
    assert (surprise > 0) == (recipe == "nested_surprise"), metrics["regularizer_means"]
    probe = ("from peft import PeftModel; from transformers import AutoModelForCausalLM; import sys; "
             "m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[1]), sys.argv[2]); "
             "print(sum('lora_' in n for n, _ in m.named_parameters()))")
    base = Path(env["CONTINUUM_HOME"]) / "cache" / "models" / "builtin-tiny"
    loaded = subprocess.run([sys.executable, "-c", probe, str(base), str(tmp_path / "adapter")],
                            capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0 and int(loaded.stdout.strip().splitlines()[-1]) > 0, loaded.stderr[-2000:]
