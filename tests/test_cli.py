"""The command line: every command and option explains itself, and the package's console script runs it."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.__main__ import parser

from .conftest import venv_env


def _subparsers(command: argparse.ArgumentParser) -> list[argparse._SubParsersAction]:
    return [action for action in command._actions if isinstance(action, argparse._SubParsersAction)]


def _commands(command: argparse.ArgumentParser, path: str = "") -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, command)]
    for group in _subparsers(command):
        for name, sub in group.choices.items():
            found += _commands(sub, f"{path} {name}".strip())
    return found


def test_every_command_and_option_has_help_text():
    commands = _commands(parser())
    assert {"run", "dvc-yaml", "doctor", "predict", "bench synth", "bench train", "bench real"} <= dict(commands).keys()
    for path, command in commands:
        for group in _subparsers(command):
            helped = {choice.dest for choice in group._choices_actions if choice.help}
            assert helped == set(group.choices), (path, set(group.choices) - helped)
        for action in command._actions:
            if not isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                assert action.help, f"'{path}' option {action.option_strings or action.dest} has no help"


def test_help_lists_every_command_and_the_console_script_runs_the_same_main():
    script = Path(sys.executable).parent / "synthseg-pipeline"
    listed = subprocess.run([str(script), "--help"], env=venv_env(), capture_output=True, text=True, check=True)
    for name in ("run", "dvc-yaml", "doctor", "predict", "bench"):
        assert name in listed.stdout
    modular = subprocess.run([sys.executable, "-m", "pipeline", "predict", "--help"], env=venv_env(),
                             capture_output=True, text=True, check=True)
    assert "--slices" in modular.stdout and "--allow-non-t1" in modular.stdout and "--tta" in modular.stdout
    assert "--precision {auto,float32,mixed}" in modular.stdout


def test_predict_and_bench_predict_pass_the_precision_and_window_they_are_given(monkeypatch, tmp_path: Path):
    """``--precision`` and ``--window`` reach the function that loads the model, for predict and bench predict."""
    import pipeline.apps.bench_predict
    import pipeline.apps.predict
    from pipeline.__main__ import main

    given = []
    monkeypatch.setattr(pipeline.apps.predict, "predict",
                        lambda *args, **kwargs: given.append((kwargs["precision"], kwargs["window"])))
    monkeypatch.setattr(pipeline.apps.bench_predict, "benchmark", lambda *args: given.append(args[-2:]) or {})
    paths = ["--model", str(tmp_path), "--input", str(tmp_path)]
    assert main(["predict", *paths, "--output", str(tmp_path / "out"), "--precision", "float32",
                 "--window", "plane"]) == 0
    assert main(["bench", "predict", *paths, "--precision", "mixed", "--window", "plane"]) == 0
    assert main(["predict", *paths, "--output", str(tmp_path / "out")]) == 0
    assert given == [("float32", "plane"), ("mixed", "plane"), ("auto", "nnunet")]


def _run_stage(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = venv_env() | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=project, env=env, capture_output=True,
                          text=True)


def test_a_stage_that_fails_on_an_input_or_a_parameter_says_why_in_one_line(tmp_path: Path):
    """How DVC and Luigi drive a stage (python -m pipeline run STAGE): a user's mistake is one line naming the
    file or key, exit status 2 (as every command's), no traceback; --debug shows Luigi's."""
    (tmp_path / "params.yaml").write_text(f"acquire:\n  source: bids\n  bids_root: {tmp_path / 'nowhere'}\n")
    result = _run_stage(tmp_path, "run", "harmonize")
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1 and f"bids: root folder {tmp_path / 'nowhere'} does not exist" in errors[0], errors
    assert "[acquire]" in errors[0]  # the stage that failed
    assert "Traceback" in _run_stage(tmp_path, "--debug", "run", "harmonize").stderr

    (tmp_path / "params.yaml").write_text("synth:\n  band_mm: 70\n")  # as dvc exp run -S synth.band_mm=70 writes it
    result = _run_stage(tmp_path, "run", "synthesize", "--segmenter", "hmrf", "--stripper", "deepbet")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: params.yaml: 'synth.band_mm'"), result.stderr


@pytest.mark.parametrize("workers", [1, 2], ids=["in-process", "forked-workers"])
def test_run_exits_2_on_a_bad_input_and_1_on_a_bug(tmp_path: Path, monkeypatch, caplog, workers: int):
    """The documented exit statuses of ``run``, whether Luigi runs the stage in this process or forks it (the
    forked stage's log stays in its process)."""
    from pipeline.__main__ import main
    from pipeline.stages.acquire import Acquire

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(f"acquire:\n  source: bids\n  bids_root: {tmp_path / 'nowhere'}\n")
    assert main(["run", "acquire", "--workers", str(workers)]) == 2
    assert workers > 1 or "bids: root folder" in caplog.text

    def bug(self, out: Path, config: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(Acquire, "build", bug)
    assert main(["run", "acquire", "--workers", str(workers)]) == 1
    assert workers > 1 or "unexpected failure" in caplog.text


def test_a_third_party_warning_in_predict_goes_to_the_debug_log(tmp_path: Path, monkeypatch, caplog, capsys):
    """``predict`` shows the user its own messages only: a library's FutureWarning raised on its way is logged at
    debug level, shown with ``--debug``, and never printed."""
    import logging
    import warnings

    from pipeline.__main__ import main
    from pipeline.apps import predict

    def warns(*args: object, **kwargs: object) -> None:
        warnings.warn("torch.load with weights_only=False is deprecated", FutureWarning, stacklevel=1)

    monkeypatch.setattr(predict, "predict", warns)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after the test
    caplog.set_level(logging.DEBUG)
    for debug in ([], ["--debug"]):
        caplog.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            assert main([*debug, "predict", "--model", str(tmp_path), "--input", str(tmp_path),
                         "--output", str(tmp_path / "out")]) == 0
        records = [record for record in caplog.records if "weights_only" in record.getMessage()]
        assert [record.levelno for record in records] == ([logging.DEBUG] if debug else [])
    assert "weights_only" not in capsys.readouterr().err


def test_plan_prints_what_the_original_study_would_submit_to_slurm_for_66_heads(tmp_path: Path):
    """A dry run: arrays of one task per head for the per-head stages, a GPU job per training and evaluation, the
    rest in the driving process, each with what it waits for."""
    import json
    import shutil

    shutil.copy(Path(__file__).resolve().parents[1] / "presets" / "original-study.yaml", tmp_path / "params.yaml")
    result = _run_stage(tmp_path, "plan", "--heads", "66")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    stages = {stage["stage"]: stage for stage in plan["stages"]}
    combos = 4 * 2  # FastSurfer, FAST, SAMSEG, SynthSeg x SynthStrip, HD-BET
    assert plan["array_tasks"] == 66 * (1 + 2 + combos + combos) and plan["gpu_jobs"] == 2 * combos
    assert stages["segment samseg hdbet"]["tasks"] == 66 and stages["segment samseg hdbet"]["kind"] == "array"
    assert stages["train samseg hdbet"]["kind"] == "gpu jobs" and stages["train samseg hdbet"]["gpus"] == 1
    assert stages["train samseg hdbet"]["after"] == ["export samseg hdbet", "harmonize", "segment samseg hdbet",
                                                     "segment_qc samseg hdbet", "strip hdbet"]
    assert stages["report"]["kind"] == "in the driving process"
