import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.runtime.graph import STAGES, dvc_yaml

from .conftest import PROJECT_ROOT, copy_project, venv_env


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
        data_deps = [dep for dep in stage["deps"] if not dep.startswith("pipeline/") and dep != "requirements.lock"]
        for dep in data_deps:
            # a stage output, or a folder holding some (what gathering stages depend on)
            assert dep in produced or any(out.startswith(dep + "/") for out in produced), f"{name}: {dep}"
        for kind in ("outs", "metrics", "plots"):  # an entry: a path, or {path: options}
            produced.update(entry if isinstance(entry, str) else next(iter(entry)) for entry in stage.get(kind, []))
    assert stages["segment"]["matrix"] == {"segmenter": "${segment.methods}", "stripper": "${strip.methods}"}
    assert "strip.${item.stripper}" in stages["strip"]["params"]
    assert stages["evaluate"]["metrics"] == [{"metrics/${item.segmenter}-${item.stripper}.json": {"cache": False}}]


LOADED = """
import importlib.abc, importlib.util, sys, types


class NamedTask(type):
    # a stub task: where it writes (Strip.out_template, ...) is a placeholder
    def __getattr__(cls, attribute):
        return f"{{cls.__name__}}.{{attribute}}"


class NamedOnly(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    # another stage's module, which a stage imports only to name its tasks: a stub, none of its code run
    def find_spec(self, name, path, target=None):
        if name.startswith("pipeline.stages.") and name not in ("pipeline.stages.base", "{module}"):
            return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__getattr__ = self.task_class
        return module

    @staticmethod
    def task_class(name):
        if name.startswith("__"):  # a module's own attributes (__file__, ...): a stub has none
            raise AttributeError(name)
        return NamedTask(name, (), {{}})

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, NamedOnly())
import {module}
print("\\n".join(sorted(m.__file__ for n, m in sys.modules.items()
                        if n.split(".")[0] == "pipeline" and getattr(m, "__file__", None))))
"""


def test_every_module_a_stage_runs_is_in_its_deps_and_no_other_stage_is():
    """What importing each stage's module really loads (asked of a fresh interpreter, not of graph.py), the other
    stages' modules left as stubs (a stage names their tasks as inputs; their outputs are its data deps), is among
    the stage's code deps in dvc.yaml, package __init__ files included: editing any of it re-runs it. An empty
    module runs nothing and is no dep (DVC warns of each empty dep on every run)."""
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    for stage in STAGES:
        result = subprocess.run([sys.executable, "-c", LOADED.format(module=stage.__module__)], cwd=PROJECT_ROOT,
                                capture_output=True, text=True, check=True)
        loaded = {str(Path(path).resolve().relative_to(PROJECT_ROOT)) for path in result.stdout.split()}
        assert f"pipeline/stages/{stage.name}.py" in loaded and "pipeline/stages/base.py" in loaded
        empty = {path for path in loaded if not (PROJECT_ROOT / path).stat().st_size}
        assert "pipeline/stages/__init__.py" in empty  # as it is today: the test sees the case it is about
        deps = set(stages[stage.name]["deps"])
        missing = loaded - empty - deps
        assert not missing, (stage.name, sorted(missing))
        assert not empty & deps, (stage.name, sorted(empty & deps))
        other_stages = {f"pipeline/stages/{other.name}.py" for other in STAGES if other is not stage}
        assert not other_stages & deps, (stage.name, sorted(other_stages & deps))


def test_editing_the_picture_module_reruns_only_the_stages_that_draw_pictures():
    """overlays.py draws QC pictures: no training or evaluation depends on it, though they read the outputs of
    stages that draw."""
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    drawing = {name for name, stage in stages.items() if "pipeline/imaging/overlays.py" in stage["deps"]}
    # strip: the mask outlines; segment, segment_qc: the labels in three planes; report: each test head's panel
    assert drawing == {"strip", "segment", "segment_qc", "report"}
    assert not {"pipeline/synth/montage.py", "pipeline/tools/consensus.py", "pipeline/stages/strip.py"} & set(
        stages["train"]["deps"])


def placeholder(path: Path) -> None:
    """Something where a stage's output goes: a file (a metrics or plots file), or a folder holding one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".json", ".csv", ".tsv", ".html"):
        path.write_text("{}\n" if path.suffix == ".json" else "placeholder\n")
    else:
        path.mkdir(exist_ok=True)
        (path / "placeholder").write_text("placeholder\n")


def recorded_study(folder: Path) -> Path:
    """A copy of the project whose stages DVC has recorded (placeholder outputs, no stage run): ``dvc status``
    then reports exactly the stages an edit makes stale."""
    from dvc.repo import Repo

    project = copy_project(folder)
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=project, env=venv_env(), check=True)
    with Repo(str(project)) as repo:
        for stage in repo.index.stages:
            for entry in [*stage.deps, *stage.outs]:
                if not Path(entry.fs_path).exists():
                    placeholder(Path(entry.fs_path))
    subprocess.run(["dvc", "commit", "--force", "-q"], cwd=project, env=venv_env(), check=True)
    return project


def stale(project: Path) -> set[str]:
    """The stages ``dvc status`` reports as changed."""
    status = subprocess.run(["dvc", "status", "--json"], cwd=project, env=venv_env(), capture_output=True,
                            text=True, check=True).stdout
    return set(json.loads(status.strip().splitlines()[-1]))


def test_editing_the_picture_module_leaves_every_training_and_evaluation_up_to_date_in_dvc_status(tmp_path: Path):
    """DVC's own verdict: after an edit to overlays.py only the stages that draw pictures are stale, the report
    among them."""
    project = recorded_study(tmp_path / "study")
    assert stale(project) == set()
    with (project / "pipeline" / "imaging" / "overlays.py").open("a") as overlays:
        overlays.write("# a comment\n")
    assert stale(project) == {"strip@deepbet", "segment@atropos-deepbet", "segment_qc@atropos-deepbet", "report"}


def test_how_a_model_is_applied_re_scores_it_without_retraining_it(tmp_path: Path):
    """``train.predict_precision``, ``predict_tta`` and ``predict_window`` are read by the evaluate stage (and
    predict), not by the training: as ``dvc exp run -S`` writes them, only the evaluation is stale; a training key
    stales the training."""
    project = recorded_study(tmp_path / "study")
    params = project / "params.yaml"
    original = params.read_text()
    for line, changed in [("predict_precision: auto", "predict_precision: float32"),
                          ("predict_tta: false", "predict_tta: true"),
                          ("predict_window: nnunet", "predict_window: plane")]:
        assert line in original
        params.write_text(original.replace(line, changed))
        assert stale(project) == {"evaluate@atropos-deepbet"}, changed
    params.write_text(original.replace("deterministic: true", "deterministic: false"))
    assert stale(project) == {"train@atropos-deepbet", "evaluate@atropos-deepbet"}


def test_the_code_that_applies_a_model_is_no_dependency_of_its_training():
    """``SlicePredictor`` (pipeline/nnunet/predictor.py) is how evaluate, predict and the benches apply a model: a
    change to it re-scores the model and retrains nothing (nor re-exports its dataset)."""
    stages = yaml.safe_load(dvc_yaml())["stages"]
    assert "pipeline/nnunet/predictor.py" in stages["evaluate"]["deps"]
    assert "pipeline/nnunet/models.py" in stages["train"]["deps"]  # the training record it writes
    for name in ("export", "train"):
        assert "pipeline/nnunet/predictor.py" not in stages[name]["deps"], name


def test_a_stage_imports_no_tool_wrapper_and_each_matrix_item_depends_on_the_one_it_runs():
    """A wrapper (pipeline/tools/<method>.py) is imported when its method runs (pipeline.tools.registry), never by
    a stage module: dvc.yaml names it per matrix item, so changing the FAST wrapper re-runs no HMRF stage."""
    from pipeline.runtime.graph import import_closure
    from pipeline.tools.registry import REGISTRIES

    wrappers = {f"pipeline/tools/{method}.py" for registry in REGISTRIES.values() for method in registry.methods}
    stages = yaml.safe_load(dvc_yaml())["stages"]
    for stage in STAGES:
        imported = set(import_closure(stage.__module__)) & wrappers
        assert not imported, (stage.name, sorted(imported))
        assert not set(stages[stage.name]["deps"]) & wrappers, stage.name
    assert "pipeline/tools/${item.stripper}.py" in stages["strip"]["deps"]
    assert "pipeline/tools/${item.segmenter}.py" in stages["segment"]["deps"]
    assert not any(dep.startswith("pipeline/tools/${item") for name in ("strip_qc", "segment_qc", "synthesize")
                   for dep in stages[name]["deps"])
    assert "pipeline/synth/lab2im_engine.py" not in stages["strip"]["deps"]  # no stage reaches the doctor's imports


def test_a_stage_depends_only_on_the_tools_it_can_run():
    stages = yaml.safe_load(dvc_yaml())["stages"]
    assert "pipeline/tools/hdbet.py" not in stages["harmonize"]["deps"]  # tools/__init__.py loads no tool
    assert "pipeline/tools/freesurfer.py" in stages["harmonize"]["deps"]  # SynthSR
    assert "pipeline/evaluation/references.py" not in stages["train"]["deps"] + stages["synthesize"]["deps"]
    assert "pipeline/evaluation/references.py" in stages["evaluate"]["deps"]
    assert "pipeline/nnunet/trainers" in stages["train"]["deps"]  # loaded by nnU-Net, not imported
    assert "pipeline/synth/online.py" in stages["train"]["deps"]  # and what its trainers import


def test_the_stages_that_hang_on_package_versions_depend_on_the_lock_file():
    stages = yaml.safe_load(dvc_yaml())["stages"]
    sensitive = {name for name, stage in stages.items() if "requirements.lock" in stage["deps"]}
    # segment_qc makes the consensus's labels (STAPLE: SimpleITK)
    assert sensitive == {"harmonize", "strip", "segment", "segment_qc", "synthesize", "train", "evaluate"}
    pinned = [line for line in (PROJECT_ROOT / "requirements.lock").read_text().splitlines()
              if line and not line.startswith("#")]
    assert "torch==2.14.1" in pinned and "torchvision==0.29.1" in pinned
    assert all("==" in line for line in pinned)  # exact versions, nothing floating


def test_stages_share_code_through_libraries_and_import_each_other_only_to_name_their_inputs():
    """A stage module (or an application) takes from a stage module nothing but its Task classes (what
    ``requires()`` names, where a stage writes): every function two stages or ``predict`` share lives in a library
    module (bids, preprocess, ...)."""
    import ast
    import importlib
    import inspect

    from pipeline.stages.base import Stage

    for path in sorted((PROJECT_ROOT / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("pipeline.stages."):
                continue
            if node.module == "pipeline.stages.base" or path.name == "graph.py":
                continue
            # stages, and the applications above them (predict, the benches), name stages' tasks; libraries never
            assert path.parent.name in ("stages", "apps"), f"{path.name} imports {node.module}: a library must not"
            module = importlib.import_module(node.module)
            for alias in node.names:
                imported = getattr(module, alias.name)
                assert inspect.isclass(imported) and issubclass(imported, Stage), (path.name, alias.name)


def test_nnunet_processes_import_the_pipeline_copy_that_launched_them(tmp_path):
    """A study folder's own copy of the code (bench real) trains with its own trainers' imports, not with
    whichever ``pipeline`` is installed: nnU-Net's console scripts put their own folder first on sys.path."""
    import shutil

    study = tmp_path / "study"
    shutil.copytree(PROJECT_ROOT / "pipeline", study / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    build_env = ("import json; from pathlib import Path; from pipeline.nnunet import runner; "
                 "print(json.dumps(runner.environment(Path('r'), Path('p'), Path('m'), 1)))")
    env = json.loads(subprocess.run([sys.executable, "-c", build_env], cwd=study, capture_output=True, text=True,
                                    check=True).stdout)
    console_script = tmp_path / "bin" / "nnUNetv2_train"  # as pip writes one: run from its own folder
    console_script.parent.mkdir()
    console_script.write_text("import pipeline\nprint(pipeline.__file__)\n")
    imported = subprocess.run([sys.executable, str(console_script)], cwd=tmp_path, env=os.environ | env,
                              capture_output=True, text=True, check=True).stdout.strip()
    assert Path(imported).resolve() == (study / "pipeline" / "__init__.py").resolve()


def test_docs_parameters_md_is_generated_from_the_config_and_covers_every_key_of_params_yaml(tmp_path):
    from pipeline.core.params_doc import documented_keys, parameters_md

    check = subprocess.run([sys.executable, "-m", "pipeline", "params-doc", "--check"], cwd=PROJECT_ROOT,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    stale = subprocess.run([sys.executable, "-m", "pipeline", "params-doc", "--check"], cwd=tmp_path,
                           capture_output=True, text=True, env={"PYTHONPATH": str(PROJECT_ROOT)})
    assert stale.returncode == 1 and "out of date" in stale.stderr  # no docs/parameters.md there

    def keys(node: dict, prefix: str = "") -> set[str]:
        found = set()
        for key, value in node.items():
            if prefix == "train.profiles.":  # named entries: documented once, as train.profiles.<name>
                found |= {f"train.profiles.<name>.{field}" for field in value}
            elif isinstance(value, dict) and value:
                found |= keys(value, f"{prefix}{key}.")
            else:
                found.add(f"{prefix}{key}")
        return found

    params = keys(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text()))
    documented = documented_keys(parameters_md())
    assert params <= documented, sorted(params - documented)
    assert all(line.count("|") >= 5 and not line.rstrip().endswith("|  |") for line in parameters_md().splitlines()
               if line.startswith("| `")), "every key says what it does"
