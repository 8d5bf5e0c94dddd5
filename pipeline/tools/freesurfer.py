"""FreeSurfer command-line tools (not installable from PyPI): found on PATH or in $FREESURFER_HOME/bin."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.config import SynthSRConfig
from pipeline.tools.base import Tool, run_command

FREESURFER_HINT = (
    "install FreeSurfer >= 7.4 (https://surfer.nmr.mgh.harvard.edu) and source SetUpFreeSurfer.sh"
)

SYNTHSR = Tool("synthsr", FREESURFER_HINT, executables=("mri_synthsr",), search_dirs_env=("FREESURFER_HOME",))


def synthsr(source: Path, target: Path, config: SynthSRConfig, threads: int) -> None:
    SYNTHSR.require()
    args = [SYNTHSR.find_executable("mri_synthsr"), "--i", source, "--o", target, "--threads", threads]
    if config.cpu:
        args.append("--cpu")
    target.parent.mkdir(parents=True, exist_ok=True)
    run_command(args, "mri_synthsr")
