"""Stand-in executables for the tools that cannot be installed here (FreeSurfer, FSL, FastSurfer): each
checks its command line exactly, then runs ``body`` to write its outputs as the real tool would."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path


def write_standin(folder: Path, name: str, expected: list[str], body: str, preamble: str = "") -> Path:
    """An executable ``folder/name``. In ``expected``, "{tmp}" stands for the folder of the second
    argument (our wrappers work in a fresh temporary folder). ``preamble``: code shared by bodies."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text(
        f"#!{sys.executable}\nimport json, os, sys\nimport nibabel as nib\nimport numpy as np\n"
        f"expected = json.loads({json.dumps(expected)!r})\n"
        "tmp = os.path.dirname(sys.argv[2]) if len(sys.argv) > 2 else ''\n"
        "expected = [arg.replace('{tmp}', tmp) for arg in expected]\n"
        "if sys.argv[1:] != expected:\n"
        "    sys.exit(f'stand-in: argv {sys.argv[1:]} is not the expected {expected}')\n"
        f"{preamble}\n{body}"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script
