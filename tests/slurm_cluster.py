"""Throw-away one-node SLURM cluster for tests and CI (Debian ``slurm-wlm`` + ``munge``, no systemd).

Usage::

    from tests.slurm_cluster import one_node_cluster, slurm_unavailable_reason

    reason = slurm_unavailable_reason()          # None when a cluster can be started here
    with one_node_cluster(tmp_path / "slurm", cpus=2) as env:
        os.environ.update(env)                   # or monkeypatch.setenv(k, v) for each item
        subprocess.run(["sbatch", "--wait", "--wrap", "hostname"], check=True)

Everything (config, munge key and socket, state, spool, logs, pid files) lives under ``workdir``.
The daemons run in the foreground (``-F``/``-D``) as children of this Python process, so they are
stopped by pid, reaped, and never outlive the context (they also get SIGTERM through
PR_SET_PDEATHSIG if this process dies abruptly).  Requires root: slurmd must run as root to launch
jobs, and the config sets SlurmUser=root so that no ``slurm`` user is needed.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "SlurmUnavailable",
    "SlurmStartError",
    "slurm_unavailable_reason",
    "one_node_cluster",
]

log = logging.getLogger(__name__)
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "sinfo", "squeue", "scontrol", "scancel")
NODE = "localhost"


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be started on this machine (binaries missing, not root, ...)."""


class SlurmStartError(RuntimeError):
    """A daemon was started but the cluster did not come up; the message carries its log tail."""


def slurm_unavailable_reason() -> str | None:
    """Cheap check (no process is started): why a one-node cluster cannot run here, or None."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "SLURM needs Linux"
    missing = [b for b in DAEMONS + CLIENTS if shutil.which(b, path=_sbin_path()) is None]
    if missing:
        return (
            f"SLURM binaries not found: {', '.join(missing)} "
            "(install them with: apt-get install -y slurm-wlm munge)"
        )
    if os.geteuid() != 0:
        return "starting a one-node SLURM cluster needs root (slurmd must run as root)"
    return None


def _sbin_path() -> str:
    # munged/slurmctld/slurmd live in /usr/sbin, which a non-login root shell may lack on PATH.
    parts = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(parts + [p for p in ("/usr/sbin", "/sbin") if p not in parts])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_total_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise SlurmUnavailable("cannot read MemTotal from /proc/meminfo")


def _tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(lines[-n:]) or f"({path} is empty)"


def _pdeathsig() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# sacct stand-in: submitit polls `sacct -o JobID,State,NodeList --parsable2 -j ID ...` for job states.
# Without accounting (no slurmdbd) real sacct exits 1 ("Slurm accounting storage is disabled"), and a job
# that dies without writing its result pickle (timeout, scancel, OOM kill) then stays UNKNOWN and
# job.result() waits forever.  This answers the same query from slurmctld's memory (squeue), which keeps
# finished jobs for MinJobAge seconds.
_SACCT_SHIM = r"""#!/bin/bash
# sacct stand-in written by cluster.py (accounting_storage/none): answers from squeue.
fields=JobID,State,NodeList; ids=()
while [ $# -gt 0 ]; do
  case "$1" in
    -o|--format) fields="$2"; shift 2;;
    --format=*) fields="${1#*=}"; shift;;
    -j|--jobs) ids+=("$2"); shift 2;;
    --jobs=*) ids+=("${1#*=}"); shift;;
    -p|-P|--parsable|--parsable2|-n|--noheader|-X|--allocations|-a|--allusers) shift;;
    *) echo "sacct (cluster.py stand-in): unsupported option $1; accounting is disabled" >&2; exit 1;;
  esac
done
fmt=""; IFS=, read -ra fl <<<"$fields"
for f in "${fl[@]}"; do
  case "${f,,}" in
    jobid) c=%i;; jobname) c=%j;; state) c=%T;; nodelist) c=%N;; partition) c=%P;;
    elapsed) c=%M;; reason) c=%r;; user) c=%u;; *) c=%Z;;
  esac
  fmt+="${fmt:+|}$c"
done
(IFS='|'; echo "${fl[*]}")
[ ${#ids[@]} -eq 0 ] && exec squeue -h -t all -o "$fmt"
(IFS=,; exec squeue -h -t all -o "$fmt" -j "${ids[*]}")
"""


def _slurm_conf(w: Path, cpus: int, memory_mb: int, gpus: int, partition: str, cluster_name: str,
                ctld_port: int, slurmd_port: int, first_job_id: int = 1) -> str:
    gres = f" Gres=gpu:{gpus}" if gpus else ""
    return f"""\
# written by cluster.py: one-node test cluster, everything under {w}
ClusterName={cluster_name}
SlurmctldHost={NODE}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={w}/run/munge.socket
StateSaveLocation={w}/state
SlurmdSpoolDir={w}/spool
SlurmctldPidFile={w}/run/slurmctld.pid
SlurmdPidFile={w}/run/slurmd.pid
SlurmctldLogFile={w}/log/slurmctld.log
SlurmdLogFile={w}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={w}/log/jobcomp.log
SlurmctldTimeout=10
SlurmdTimeout=10
MessageTimeout=10
InactiveLimit=0
KillWait=5
Waittime=0
MinJobAge=3600
FirstJobId={first_job_id}
SlurmdParameters=config_overrides
{"GresTypes=gpu" if gpus else "# GresTypes=gpu (no GPU configured)"}
NodeName={NODE} CPUs={cpus} Sockets=1 CoresPerSocket={cpus} ThreadsPerCore=1 RealMemory={memory_mb}{gres} State=UNKNOWN
PartitionName={partition} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


def _gres_conf(w: Path, gpus: int) -> str:
    """gres.conf for ``gpus`` GPUs: the real /dev/nvidia* when present, else placeholder files.

    gres/gpu drops GPUs without File= ("Removing file-less GPU"), and the node then goes INVAL
    ("gres/gpu count reported lower than configured"). Regular files are accepted (slurmd logs
    "not a valid character or block device") and give scheduling-only fake GPUs: --gpus-per-node
    jobs are placed and get SLURM_GPUS_ON_NODE, but no CUDA_VISIBLE_DEVICES. Debian's build has no
    gpu/nvml plugin, so AutoDetect=nvml is not an option; list the devices explicitly.
    """
    real = [Path(f"/dev/nvidia{i}") for i in range(gpus)]
    if all(d.exists() for d in real):
        files = real
    else:
        (w / "dev").mkdir(exist_ok=True)
        files = [w / "dev" / f"fake-gpu{i}" for i in range(gpus)]
        for f in files:
            f.touch()
    return "".join(f"NodeName={NODE} Name=gpu File={f}\n" for f in files)


def _next_job_id(w: Path) -> int:
    """Continue job ids across restarts in the same workdir (state is wiped, so slurm would restart at 1
    and a reused submitit folder would pick up stale result pickles of an earlier job with the same id)."""
    last = 0
    try:
        for line in (w / "log" / "jobcomp.log").read_text(errors="replace").splitlines():
            if line.startswith("JobId="):
                last = max(last, int(line.split()[0][6:]))
    except (OSError, ValueError):
        pass
    return last + 1


def _kill_leftovers(w: Path) -> None:
    """Kill daemons a previous, abruptly ended run in this workdir left behind (matched by cmdline)."""
    for pidfile in (w / "run").glob("*.pid"):
        try:
            pid = int(pidfile.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if str(w) in cmdline and any(d in cmdline for d in DAEMONS):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _stepds(conf: Path) -> list[int]:
    """slurmstepd processes of this cluster (they inherit SLURM_CONF from our slurmd)."""
    pids = []
    marker = f"SLURM_CONF={conf}".encode()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if not (p / "cmdline").read_bytes().startswith(b"slurmstepd"):
                continue
            if marker in (p / "environ").read_bytes().split(b"\0"):
                pids.append(int(p.name))
        except OSError:
            continue
    return pids


def _stop(procs: list[tuple[str, subprocess.Popen]], timeout: float = 10.0) -> None:
    for _, proc in reversed(procs):  # slurmd, slurmctld, then munged
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


@contextlib.contextmanager
def one_node_cluster(
    workdir: Path,
    cpus: int = 2,
    memory_mb: int | None = None,
    *,
    gpus: int = 0,
    partition: str = "debug",
    cluster_name: str = "testcluster",
    sacct_shim: bool = True,
    start_timeout: float = 30.0,
) -> Iterator[dict[str, str]]:
    """Start munged + slurmctld + slurmd for a one-node cluster; yield the client environment.

    The yielded dict holds ``SLURM_CONF`` (and ``PATH`` with the sacct stand-in first when
    ``sacct_shim``); apply it to os.environ / subprocess env for sbatch, srun, squeue, submitit.
    ``memory_mb`` defaults to MemTotal; larger values are accepted (SlurmdParameters=config_overrides)
    so that ``--mem`` requests above the real memory are scheduled instead of rejected.
    ``gpus`` > 0 adds a gpu Gres (bound to /dev/nvidia* when they exist, else to placeholder files:
    scheduling-only fake GPUs).
    On exit every job is cancelled and every daemon started here is stopped and reaped.
    Raises SlurmUnavailable (cannot try) or SlurmStartError (tried, failed; includes log tails).
    """
    reason = slurm_unavailable_reason()
    if reason:
        raise SlurmUnavailable(reason)
    w = Path(workdir).resolve()
    if (w / "run").is_dir():
        _kill_leftovers(w)
    first_job_id = _next_job_id(w)
    for sub in ("state", "spool", "log", "run", "bin"):  # fresh state: no job recovery across runs
        shutil.rmtree(w / sub, ignore_errors=True)
        (w / sub).mkdir(parents=True)
        (w / sub).chmod(0o755)  # munged refuses group/world-writable socket/key dirs
    if len(str(w / "run" / "munge.socket")) > 100:
        raise SlurmUnavailable(f"workdir path too long for a unix socket (max ~100 chars): {w}")
    memory_mb = memory_mb or _mem_total_mb()
    conf = w / "slurm.conf"
    conf.write_text(_slurm_conf(w, cpus, memory_mb, gpus, partition, cluster_name,
                                _free_port(), _free_port(), first_job_id))
    gres = w / "gres.conf"  # slurm reads gres.conf next to slurm.conf
    if gpus:
        gres.write_text(_gres_conf(w, gpus))
    elif gres.exists():
        gres.unlink()
    key = w / "run" / "munge.key"
    key.write_bytes(os.urandom(128))  # = mungekey -c -b 1024; must be 0600/0400 and owned by munged's user
    key.chmod(0o600)

    sbin = _sbin_path()
    env = {"SLURM_CONF": str(conf)}
    if sacct_shim:
        shim = w / "bin" / "sacct"
        shim.write_text(_SACCT_SHIM)
        shim.chmod(0o755)
        env["PATH"] = os.pathsep.join([str(w / "bin"), os.environ.get("PATH", "/usr/bin:/bin")])
    daemon_env = {**os.environ, "PATH": sbin, "SLURM_CONF": str(conf)}
    commands = {
        "munged": ["munged", "-F", f"--socket={w}/run/munge.socket", f"--key-file={key}",
                   f"--pid-file={w}/run/munged.pid", f"--seed-file={w}/run/munged.seed",
                   "--num-threads=2"],
        "slurmctld": ["slurmctld", "-D", "-f", str(conf)],
        "slurmd": ["slurmd", "-D", "-N", NODE, "-f", str(conf)],
    }
    logs = {
        "munged": [w / "log" / "munged.out"],
        "slurmctld": [w / "log" / "slurmctld.log", w / "log" / "slurmctld.out"],
        "slurmd": [w / "log" / "slurmd.log", w / "log" / "slurmd.out"],
    }

    def failure(msg: str, culprit: str | None = None) -> SlurmStartError:
        parts = [msg]
        order = sorted(logs, key=lambda n: n != culprit)  # the failing daemon's log first
        for name in order:
            for p in logs[name]:
                if p.exists() and p.stat().st_size:
                    parts.append(f"--- tail of {p} ---\n{_tail(p)}")
        return SlurmStartError("\n".join(parts))

    procs: list[tuple[str, subprocess.Popen]] = []
    try:
        for name in DAEMONS:
            with open(w / "log" / f"{name}.out", "wb") as out:
                proc = subprocess.Popen(
                    [shutil.which(commands[name][0], path=sbin) or commands[name][0], *commands[name][1:]],
                    env=daemon_env, cwd=w, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,  # terminal Ctrl-C must not kill them before cleanup runs
                    preexec_fn=_pdeathsig,  # noqa: PLW1509 - the daemons die with this process
                )
            procs.append((name, proc))
            (w / "run" / f"{name}.popen.pid").write_text(f"{proc.pid}\n")
            if name == "munged":
                deadline = time.monotonic() + 10
                while not (w / "run" / "munge.socket").exists():
                    if proc.poll() is not None:
                        raise failure(f"munged exited with code {proc.returncode}", "munged")
                    if time.monotonic() > deadline:
                        raise failure("munged did not create its socket within 10 s")
                    time.sleep(0.05)

        client_env = {**os.environ, **env}
        deadline = time.monotonic() + start_timeout
        state = ""
        while True:
            for name, proc in procs:
                if proc.poll() is not None:
                    raise failure(f"{name} exited with code {proc.returncode} during start-up", name)
            r = subprocess.run(["sinfo", "-h", "-N", "-n", NODE, "-o", "%T|%E"], env=client_env,
                               capture_output=True, text=True)
            state = r.stdout.strip()
            if r.returncode == 0 and state.split("|")[0] == "idle":
                break
            if time.monotonic() > deadline:
                raise failure(f"node {NODE} not idle after {start_timeout:.0f} s "
                              f"(sinfo rc={r.returncode}, state|reason={state!r}, stderr={r.stderr.strip()!r})",
                              "slurmd")
            time.sleep(0.1)

        log.debug("cluster up: %s", env)
        yield env

    finally:
        if procs:
            client_env = {**os.environ, **env}
            alive = all(p.poll() is None for _, p in procs)
            if alive:  # cancel jobs so their slurmstepd/user processes go away with the cluster
                # Running jobs stay COMPLETING ~5 s (the srun step's slurmstepd retries MESSAGE_TASK_EXIT
                # to the killed srun); --signal=KILL, a smaller KillWait or MessageTimeout do not shorten it.
                t0 = time.monotonic()
                subprocess.run(["scancel", "-u", "root"], env=client_env, capture_output=True)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    r = subprocess.run(["squeue", "-h", "-t", "PD,R,CG,S,CF", "-o", "%i"], env=client_env,
                                       capture_output=True, text=True)
                    if r.returncode != 0 or not r.stdout.strip():
                        break
                    time.sleep(0.2)
                log.debug("jobs cancelled in %.2f s", time.monotonic() - t0)
            t0 = time.monotonic()
            _stop(procs)
            log.debug("daemons stopped in %.2f s", time.monotonic() - t0)
            conf_path = w / "slurm.conf"
            deadline = time.monotonic() + 10
            while _stepds(conf_path) and time.monotonic() < deadline:
                time.sleep(0.2)
            for pid in _stepds(conf_path):  # last resort; they were started by our slurmd
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for name, _ in procs:
                with contextlib.suppress(FileNotFoundError):
                    (w / "run" / f"{name}.popen.pid").unlink()
