"""Shared fixtures: the real data beside the project (../shared/data), read in place, and the tiny study's upstream
stages, run once per test run and copied into the tests that need them. The fast tests run first, then the slow ones
(marked ``slow``); a failed fast test stops the run before the slow tier. Two pytest-xdist workers share the 2 cores
(pyproject.toml): the slow tests that share a module's fixtures run on one worker, the upstream study is built once
for both."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import luigi
import pytest
from filelock import FileLock

# Two workers' thread pools share the cores: OpenMP threads that spin while they wait (the default) take the cores
# from the other worker's threads, and two trainings at once then run about 5x slower; waiting threads that sleep
# cost nothing alone (measured: the same conv-net step alone 2.5 s either way, two at once 13.2 s spinning, 4.4 s
# sleeping). Set before torch is imported, and inherited by every stage the tests start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
DS000011 = SHARED_DATA / "ds000011"
LABEL_MAPS = SHARED_DATA / "synthseg-label-maps"
OASIS = SHARED_DATA / "oasis-manual"


@pytest.fixture(scope="session")
def ds000011() -> Path:
    if not DS000011.is_dir():
        pytest.skip(f"real test data not found at {DS000011}")
    return DS000011


@pytest.fixture(scope="session")
def oasis() -> Path:
    """Real skull-stripped brains with manual tissue labels (CC BY-NC: tests and benchmarks only)."""
    if not OASIS.is_dir():
        pytest.skip(f"real test data not found at {OASIS}")
    return OASIS


@pytest.fixture(scope="session")
def label_maps() -> Path:
    if not LABEL_MAPS.is_dir():
        pytest.skip(f"real label maps not found at {LABEL_MAPS}")
    return LABEL_MAPS


GROUPS_FOLDER = pytest.StashKey[Path]()


def is_slow(item: pytest.Item) -> bool:
    return item.get_closest_marker("slow") is not None


def study_group(item: pytest.Item) -> str | None:
    """The group of a slow test that uses a module's fixtures (its study): its module. One worker runs a group, so
    that the study is built once."""
    uses_module_fixture = any(definition.scope == "module"
                              for definitions in item._fixtureinfo.name2fixturedefs.values()
                              for definition in definitions)
    return item.module.__name__ if is_slow(item) and uses_module_fixture else None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Two tiers: every fast test first, then the slow ones, those that share a module's study first (the longest
    units of work: started early, they do not leave one worker running alone at the end). A worker writes each
    test's group for the scheduler (``StudyGroupScheduling``)."""
    items.sort(key=lambda item: (is_slow(item), is_slow(item) and study_group(item) is None))
    groups_file = getattr(config, "workerinput", {}).get("study_groups")
    if groups_file:
        groups = {item.nodeid: group for item in items if (group := study_group(item))}
        partial = Path(f"{groups_file}.{os.getpid()}")
        partial.write_text(json.dumps(groups))
        partial.replace(groups_file)  # both workers write the same groups: whole files only


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """pytest-xdist, in the controller: where the workers write the tests' groups."""
    if GROUPS_FOLDER not in node.config.stash:
        node.config.stash[GROUPS_FOLDER] = Path(tempfile.mkdtemp(prefix="pytest-groups-"))
    node.workerinput["study_groups"] = str(node.config.stash[GROUPS_FOLDER] / "groups.json")


def pytest_unconfigure(config: pytest.Config) -> None:
    if GROUPS_FOLDER in config.stash:
        shutil.rmtree(config.stash[GROUPS_FOLDER], ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """pytest-xdist's scheduling by scope, a scope being a test's study group or the test alone (xdist's own
    ``loadgroup`` does not group under pytest 9: it renames an attribute pytest no longer reads)."""
    from xdist.scheduler import LoadScopeScheduling

    class StudyGroupScheduling(LoadScopeScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # the workers have collected (and written the groups) by the first call
                self.groups = json.loads((config.stash[GROUPS_FOLDER] / "groups.json").read_text())
            return self.groups.get(nodeid, nodeid)

    return StudyGroupScheduling(config, log)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """After the last fast test: stop if one failed, rather than spend the slow tier's minutes."""
    yield
    if nextitem is not None and not is_slow(item) and is_slow(nextitem) and item.session.testsfailed:
        item.session.shouldstop = f"{item.session.testsfailed} fast test(s) failed: the slow tests did not run"


COPIED = ["pipeline", "dvc.yaml", "params.yaml", "luigi.cfg", ".dvcignore", "requirements.lock"]


def copy_project(destination: Path) -> Path:
    """A fresh copy of the project's code and configuration, to run a study in."""
    import shutil

    destination.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, destination / name)
    return destination


def set_params(project: Path, **sections: dict) -> None:
    """Merge ``sections`` into the project's params.yaml (one level deep per section)."""
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    for key, value in sections.items():
        params[key] = params[key] | value if isinstance(value, dict) else value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


UPSTREAM_SUBJECTS = ["01", "02"]  # the session's study (``upstream_study``)
# tiny_study's fast settings, as dvc exp run -S keys: heads at 1.5 mm (a third of the voxels for every stage and
# prediction: what these studies check is how heads flow through the stages, not 1 mm anatomy), N4 (3 s less per
# head), and HMRF with few iterations as the segmenter (the cheapest; the default, Atropos, has its own tests)
TINY_SETTINGS = {"harmonize.voxel_size_mm": 1.5, "harmonize.n4_iterations": 10, "segment.methods": ["hmrf"],
                 "segment.hmrf.max_iterations": 3}


def tiny_study(project: Path, ds000011: Path, subjects: list[str], test_fraction: float = 0.5) -> None:
    """Real subjects, the fastest settings of every stage: a study that runs in minutes on 2 cores."""
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    for key, value in TINY_SETTINGS.items():
        *sections, name = key.split(".")
        folder = params
        for section in sections:
            folder = folder[section]
        folder[name] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    set_params(project,
               acquire={"source": "bids", "bids_root": str(ds000011), "subjects": subjects,
                        "test_fraction": test_fraction},
               synth={"n_train": 8, "n_test": 4},
               train={"profile": "ci"})


def venv_env() -> dict[str, str]:
    """The environment for subprocesses: this venv's ``python`` first on PATH, no DVC analytics."""
    import os
    import sys

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run_checked(args: list[str], cwd: Path) -> str:
    """Run a command in ``cwd`` (the venv's environment); its output, or a failure showing the output's end."""
    result = subprocess.run(args, cwd=cwd, env=venv_env(), capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout + result.stderr


def commit_all(repo: Path, message: str) -> None:
    run_checked(["git", "add", "-A"], repo)
    run_checked(["git", "commit", "-qm", message], repo)


UPSTREAM_TARGET = "segment@hmrf-deepbet"  # acquire -> harmonize -> strip -> segment


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A study that ``build`` makes once per test run, in the run's shared temporary folder: the first
    pytest-xdist worker to need it builds it, another one waits for it. Copy it (``copy_study``, ``copy_outputs``),
    never change it."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's folder, above each worker's own
    project, built = shared / name / "study", shared / name / "built"
    with FileLock(shared / f"{name}.lock"):
        if not built.exists():
            shutil.rmtree(project, ignore_errors=True)  # a build that failed in the other worker
            build(project)
            built.touch()
    return project


@pytest.fixture(scope="session")
def upstream_study(tmp_path_factory, ds000011: Path) -> Path:
    """The tiny study of sub-01 and sub-02 (one held out), run by ``dvc repro`` up to segmentation in a git + DVC repo
    with its dvc.lock committed."""
    return built_once(tmp_path_factory, "upstream", lambda project: build_upstream_study(project, ds000011))


def build_upstream_study(project: Path, ds000011: Path) -> None:
    copy_project(project)
    tiny_study(project, ds000011, UPSTREAM_SUBJECTS)
    run_checked(["git", "init", "-q"], project)
    run_checked(["git", "config", "user.email", "ci@example.org"], project)
    run_checked(["git", "config", "user.name", "ci"], project)
    run_checked(["dvc", "init", "-q"], project)
    commit_all(project, "study")
    log = run_checked(["dvc", "repro", UPSTREAM_TARGET], project)
    # the heads went through each stage two at a time (params.yaml's workers: 2), as tests comparing against it expect
    assert "2 subject(s), 2 at a time with 1 thread(s) each" in log, log[-3000:]
    commit_all(project, f"dvc repro {UPSTREAM_TARGET}")


@pytest.fixture(scope="session")
def full_study(tmp_path_factory, upstream_study: Path) -> Path:
    """The upstream study run by ``dvc repro`` to the end (synthesis, training, evaluation, the report), committed:
    built once per test run, for the tests of a finished study to read or to copy."""
    return built_once(tmp_path_factory, "full", lambda project: build_full_study(upstream_study, project))


def build_full_study(upstream_study: Path, project: Path) -> None:
    copy_study(upstream_study, project)
    log = run_checked(["dvc", "repro"], project)
    assert "Running stage 'acquire'" not in log and "Running stage 'synthesize@hmrf-deepbet'" in log, log[-3000:]
    commit_all(project, "baseline study")


def copy_study(study: Path, destination: Path) -> Path:
    """A copy of a study with its git history, dvc.lock and DVC cache: ``dvc repro`` takes its stages as done."""
    shutil.copytree(study, destination, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def stage_outputs(task: luigi.Task) -> set[str]:
    """The outputs (paths in the project) of a Luigi ``task`` and of every task upstream of it."""
    upstream = luigi.task.flatten(task.requires())
    return {target.path for target in task.output()}.union(*(stage_outputs(before) for before in upstream))


def copy_outputs(study: Path, project: Path, through: luigi.Task | None = None) -> None:
    """The outputs of ``through`` (a Luigi task; the study's segmentation by default) and of the stages upstream of it,
    copied from ``study`` into ``project``: a stage whose outputs exist is done, so ``python -m pipeline run`` goes on
    from there."""
    from pipeline.stages.segment import Segment

    for output in sorted(stage_outputs(through or Segment(segmenter="hmrf", stripper="deepbet"))):
        (project / output).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (study / output).is_dir() else shutil.copy2
        copy(study / output, project / output)


def first_and_last_rates(models: Path, dataset: str, flag: str) -> tuple[float, float]:
    """The learning rates of a trained model's first and last epochs, as its final checkpoint logged them; the
    optimizer's ``flag`` (SGD's nesterov, AdamW's amsgrad) must be set in its saved state."""
    import torch

    checkpoint = torch.load(next(models.glob(f"{dataset}/*/fold_all/checkpoint_final.pth")), weights_only=False)
    assert checkpoint["optimizer_state"]["param_groups"][0][flag] is True
    return checkpoint["logging"]["lrs"][0], checkpoint["logging"]["lrs"][-1]
