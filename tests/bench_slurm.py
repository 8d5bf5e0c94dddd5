"""Benchmark: the per-head stages of a small real study on the local process pool, then as SLURM array tasks on a
one-node cluster started on this machine (tests/slurm_cluster.py), with the same core budget both ways. Prints
JSON: each stage's wall seconds both ways and their ratio.

    .venv/bin/python -m tests.bench_slurm --heads 4 [--workdir /tmp/bench-slurm]

Needs root and Debian's slurm-wlm and munge (as .ci/run installs them). Run it alone: it takes both cores.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .conftest import PROJECT_ROOT, copy_project, set_params, venv_env
from .slurm_cluster import one_node_cluster, slurm_unavailable_reason

DS000011 = PROJECT_ROOT.parent / "shared" / "data" / "ds000011"
STAGE = ["run", "synthesize", "--segmenter", "hmrf", "--stripper", "deepbet"]  # every per-head stage before it
DONE = re.compile(r"\[(?P<stage>[a-z_]+(?: [a-z0-9_]+)*)\] done in (?P<wall>[\d.]+) s wall")
CORES = 2
PER_HEAD = ("harmonize", "strip", "segment", "synthesize")


def study(folder: Path, heads: int, slurm_folder: Path | None) -> Path:
    """A study of the first ``heads`` ds000011 subjects with the default settings; on SLURM, one CPU per head
    and ``CORES`` heads at once, as the local pool runs them (``workers: CORES``)."""
    project = copy_project(folder)
    subjects = [f"{n:02d}" for n in range(1, heads + 1)]
    set_params(project, acquire={"source": "bids", "bids_root": str(DS000011), "subjects": subjects,
                                 "test_fraction": 0.25}, workers=CORES)
    if slurm_folder is not None:
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["executor"] = {"kind": "slurm", "slurm": params["executor"]["slurm"] | {
            "partition": "debug", "cpus_per_task": 1, "mem_gb": 4.0, "max_parallel": CORES, "gpus": 0,
            "folder": str(slurm_folder)}}
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def run_stages(project: Path, env: dict[str, str]) -> dict:
    """Wall seconds of the whole command and of each stage it ran (from the stages' own log lines)."""
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pipeline", *STAGE], cwd=project, env=env, capture_output=True,
                            text=True)
    wall = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(f"{project}: the study failed:\n{result.stderr[-3000:]}")
    stages = {match["stage"]: float(match["wall"]) for match in DONE.finditer(result.stderr)}
    return {"wall_s": round(wall, 1), "stages_s": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--workdir", type=Path, help="kept afterwards (default: a temporary folder, removed)")
    args = parser.parse_args()
    reason = slurm_unavailable_reason()
    if reason:
        raise SystemExit(f"no SLURM cluster can be started here: {reason}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)  # munged wants every folder above its socket searchable
    try:
        local = run_stages(study(workdir / "local", args.heads, None), venv_env())
        with one_node_cluster(workdir / "cluster", cpus=CORES, memory_mb=65536) as cluster:
            env = venv_env() | cluster
            env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
            slurm = run_stages(study(workdir / "slurm", args.heads, workdir / "jobs"), env)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    per_head = [name for name in local["stages_s"] if name.split()[0] in PER_HEAD and name in slurm["stages_s"]]
    print(json.dumps({
        "heads": args.heads, "cores": CORES, "command": "python -m pipeline " + " ".join(STAGE),
        "local": local, "slurm": slurm,
        "per_head_stages_s": {"local": round(sum(local["stages_s"][n] for n in per_head), 1),
                              "slurm": round(sum(slurm["stages_s"][n] for n in per_head), 1)},
        "ratio_slurm_to_local": round(sum(slurm["stages_s"][n] for n in per_head)
                                      / sum(local["stages_s"][n] for n in per_head), 2),
    }, indent=2))


if __name__ == "__main__":
    main()
