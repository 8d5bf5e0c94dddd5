"""nnU-Net's own ``nnUNetv2_plan_and_preprocess``, its worker pools started by fork instead of spawn (on Linux).

nnU-Net starts each of its three pools (integrity check, fingerprint, preprocessing) with
``multiprocessing.get_context("spawn")``: every worker is a new Python that imports torch and nnU-Net again, 9 s of
the 20 s a CI-sized dataset's planning takes on 2 cores. A forked worker starts with them imported. The workers of
these steps read, crop and normalise images with numpy and never run torch, so forking them is safe; the training's
data loaders are left as nnU-Net starts them. Elsewhere (macOS forks badly) nothing changes.

    python -m pipeline.nnunet.plan_and_preprocess -d 100 -c 2d -np 2 ...   (nnU-Net's arguments, unchanged)
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable


def forking(get_context: Callable) -> Callable:
    """``multiprocessing.get_context`` that answers a request for spawn with fork."""

    def get(method: str | None = None):
        return get_context("fork" if method == "spawn" else method)

    return get


def main() -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import plan_and_preprocess_entry

    if sys.platform == "linux":
        multiprocessing.get_context = forking(multiprocessing.get_context)
    plan_and_preprocess_entry()


if __name__ == "__main__":
    main()
