"""What a crashed training resumes from: only work done on the same input files and the same parameters it reads
(the killed-and-resumed training itself: tests/test_crash.py)."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import luigi
import pytest
import yaml

from pipeline.core.config import Config, parse_config
from pipeline.core.io import fingerprint_file
from pipeline.stages.base import what_changed
from pipeline.stages.train import Train

from .conftest import PROJECT_ROOT

RAW_PARAMS = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def config_with(**sections: dict) -> Config:
    """The project's params.yaml with ``sections`` merged in (one level deep)."""
    raw = copy.deepcopy(RAW_PARAMS)
    for key, value in sections.items():
        raw[key] = raw[key] | value if isinstance(value, dict) else value
    return parse_config(raw)


@pytest.fixture
def train(tmp_path: Path, monkeypatch) -> Train:
    """A training whose upstream outputs exist (a file in each folder, each metrics and plots file) under tmp_path."""
    monkeypatch.chdir(tmp_path)
    task = Train(segmenter="hmrf", stripper="deepbet")
    for target in luigi.task.flatten(task.input()):
        path = Path(target.path)
        file = path if path.suffix in (".json", ".csv") else path / "sub-01.txt"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(f"what {path} holds\n")
    return task


def test_a_parameter_the_training_does_not_read_keeps_its_fingerprint(train: Train):
    config = config_with()
    assert "evaluate" not in train.params() and "workers" not in train.params()
    assert not any(key.startswith("train.predict_") for key in train.params())  # how the model is applied
    elsewhere = config_with(workers=config.workers + 1, evaluate={"band_mm": config.evaluate.band_mm + 1},
                            train={"predict_precision": "float32", "predict_tta": True, "predict_window": "plane"})
    assert train.fingerprint(elsewhere) == train.fingerprint(config)


def test_what_changed_names_the_parameter_and_the_input_file(train: Train):
    config = config_with()
    before = json.dumps(train.fingerprint(config), sort_keys=True)
    assert what_changed(before, train.fingerprint(config_with(train={"deterministic": not config.train.deterministic}))
                        ) == ["parameter train.deterministic changed"]
    altered = Path("data/harmonized/sub-01.txt")
    altered.write_text("another head\n")
    Path("data/harmonized/sub-02.txt").write_text("a new head\n")
    assert what_changed(before, train.fingerprint(config)) == [
        "input data/harmonized/sub-01.txt changed", "input data/harmonized/sub-02.txt added"]
    assert what_changed(json.dumps([{"segmenter": "hmrf"}, {}]), train.fingerprint(config)) == [
        "its work was fingerprinted by an earlier version of the pipeline"]


def test_the_log_says_whether_the_interrupted_work_is_resumed_and_why_not(train: Train, caplog):
    config = config_with()
    stamp = fingerprint_file(train.out_dir())
    stamp.parent.mkdir(parents=True)
    stamp.write_text(train.resume_or_restart(config, "train hmrf deepbet"))  # what a crashed run leaves
    with caplog.at_level(logging.INFO, logger="pipeline"):
        assert train.resume_or_restart(config, "train hmrf deepbet") == stamp.read_text()
    assert "[train hmrf deepbet] resuming the interrupted run's work" in caplog.text
    caplog.clear()
    Path(train.input_dir("nnunet_raw"), "sub-01.txt").write_text("a new synthetic set\n")
    with caplog.at_level(logging.INFO, logger="pipeline"):
        assert train.resume_or_restart(config, "train hmrf deepbet") != stamp.read_text()
    assert "starting afresh" in caplog.text
    assert "input data/nnunet_raw/hmrf-deepbet/sub-01.txt changed" in caplog.text
