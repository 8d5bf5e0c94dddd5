"""One small interface for every external tool the pipeline wraps.

A tool is either a Python package (checked by import) or a command-line program
(checked on PATH, or under a configured folder). When a method is asked for but
its tool is missing, ``require`` stops with a message saying what to install:
nothing is ever substituted, so every result is labelled with the tool that made it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class ToolMissing(RuntimeError):
    """A requested tool is not installed; the message says how to install it."""


class ToolFailed(RuntimeError):
    """A tool ran and failed; the message carries its command line and output tail."""


@dataclass(frozen=True)
class Availability:
    available: bool
    detail: str  # where it was found, or why it is missing


@dataclass(frozen=True)
class Tool:
    """What a method needs installed: Python modules and/or executables."""

    name: str
    install_hint: str
    modules: tuple[str, ...] = ()
    executables: tuple[str, ...] = ()
    search_dirs_env: tuple[str, ...] = ()  # e.g. FREESURFER_HOME: look in $VAR/bin too

    def find_executable(self, program: str) -> str | None:
        found = shutil.which(program)
        if found:
            return found
        for var in self.search_dirs_env:
            root = os.environ.get(var)
            candidate = Path(root, "bin", program) if root else None
            if candidate and candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        return None

    def check(self) -> Availability:
        missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
        missing += [p for p in self.executables if self.find_executable(p) is None]
        if missing:
            return Availability(False, f"not found: {', '.join(missing)}; {self.install_hint}")
        found = [self.find_executable(p) for p in self.executables] + [f"python module {m}" for m in self.modules]
        return Availability(True, ", ".join(str(f) for f in found))

    def require(self) -> None:
        availability = self.check()
        if not availability.available:
            raise ToolMissing(f"{self.name} was requested but is missing ({availability.detail})")


def run_command(args: Sequence[str], tool: str, env: dict[str, str] | None = None,
                progress: re.Pattern[str] | None = None) -> None:
    """Run a tool's command line (a list, never a shell string), streaming its output to the log.

    Lines matching ``progress`` (all lines when it is None) are logged at INFO, the rest at
    DEBUG. ``env`` holds variables set on top of this process's environment. A failure raises ToolFailed with
    the command line and the last lines of output.
    """
    args = [str(arg) for arg in args]
    env = None if env is None else os.environ | env
    log.info("running %s", " ".join(args))
    tail: deque[str] = deque(maxlen=20)
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                level = logging.INFO if progress is None or progress.search(line) else logging.DEBUG
                log.log(level, "  %s: %s", tool, line)
    if process.returncode != 0:
        raise ToolFailed(f"{tool} failed (exit {process.returncode}): {' '.join(args)}\n" + "\n".join(tail))
