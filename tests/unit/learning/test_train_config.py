"""The train job's per-cycle config: sized to the base model, then settings, then the job's overrides."""

from __future__ import annotations

from common.settings import Settings
from workers.train.config import CYCLE_DEFAULTS, train_config


def test_a_pretrained_size_model_gets_fewer_epochs_than_the_random_tiny_one(tmp_path):
    settings = Settings(home=tmp_path)
    tiny = train_config(settings, {}, parameters=3_000_000)
    real = train_config(settings, {}, parameters=134_515_008)
    assert tiny.epochs == 40 and real.epochs == 8  # measured in bench/forgetting.py (README table)
    assert train_config(settings, {}).epochs == CYCLE_DEFAULTS["epochs"]  # size unknown: the plain defaults


def test_settings_and_job_overrides_beat_the_size_defaults(tmp_path):
    assert train_config(Settings(home=tmp_path, train_epochs=3), {}, parameters=134_515_008).epochs == 3
    assert train_config(Settings(home=tmp_path), {"epochs": 2}, parameters=134_515_008).epochs == 2


def test_suppression_margin_comes_from_settings_and_zero_means_unbounded(tmp_path):
    assert train_config(Settings(home=tmp_path), {}).suppression_margin == 2.0
    assert train_config(Settings(home=tmp_path, suppression_margin=0.5), {}).suppression_margin == 0.5
    assert train_config(Settings(home=tmp_path, suppression_margin=0), {}).suppression_margin is None
    assert train_config(Settings(home=tmp_path), {"suppression_margin": 1.0}).suppression_margin == 1.0
