import subprocess
import sys

import yaml

from pipeline.graph import STAGES, dvc_yaml

from .conftest import PROJECT_ROOT


def test_committed_dvc_yaml_matches_the_luigi_graph():
    result = subprocess.run([sys.executable, "-m", "pipeline", "dvc-yaml", "--check"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_check_fails_when_dvc_yaml_is_stale(tmp_path):
    (tmp_path / "dvc.yaml").write_text(dvc_yaml().replace("data/raw", "data/old"))
    env_python = [sys.executable, "-m", "pipeline", "dvc-yaml", "--check"]
    result = subprocess.run(env_python, cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(PROJECT_ROOT)})
    assert result.returncode == 1
    assert "out of date" in result.stderr


def test_every_stage_deps_are_upstream_outs():
    stages = yaml.safe_load(dvc_yaml())["stages"]
    assert list(stages) == [stage.name for stage in STAGES]
    produced: set[str] = set()
    for name, stage in stages.items():
        data_deps = [dep for dep in stage["deps"] if not dep.startswith("pipeline/")]
        for dep in data_deps:
            # a stage output, or a folder holding some (what gathering stages depend on)
            assert dep in produced or any(out.startswith(dep + "/") for out in produced), f"{name}: {dep}"
        produced.update(stage["outs"])
        for kind in ("metrics", "plots"):
            produced.update(path for entry in stage.get(kind, []) for path in entry)
    assert stages["segment"]["matrix"] == {"segmenter": "${segment.methods}", "stripper": "${strip.methods}"}
    assert "strip.${item.stripper}" in stages["strip"]["params"]
    assert stages["evaluate"]["metrics"] == [{"metrics/${item.segmenter}-${item.stripper}.json": {"cache": False}}]
