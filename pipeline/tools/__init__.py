"""Registries of the methods each stage can use, each backed by one Tool."""

from __future__ import annotations

from pipeline.tools import deepbet, freesurfer, hmrf
from pipeline.tools.base import Tool

HARMONIZERS: dict[str, Tool | None] = {"builtin": None, "synthsr": freesurfer.SYNTHSR}
STRIPPERS: dict[str, Tool] = {"deepbet": deepbet.TOOL}
SEGMENTERS: dict[str, Tool] = {"hmrf": hmrf.TOOL}


def all_tools() -> dict[str, dict[str, Tool | None]]:
    return {"harmonize": HARMONIZERS, "strip": STRIPPERS, "segment": SEGMENTERS}
