"""What this machine can run: every method's tool, checked (``python -m pipeline doctor``). Imports every
wrapper, so no stage imports it."""

from __future__ import annotations

from pipeline.core.config import CONSENSUS, Config, StripConfig
from pipeline.tools import freesurfer
from pipeline.tools.base import Tool
from pipeline.tools.registry import SEGMENTERS, STRIPPERS


def all_tools(strip: StripConfig | None = None) -> dict[str, dict[str, Tool | None]]:
    """Every method's tool; ``strip`` picks the tools that depend on the configuration (SynthStrip's)."""
    from pipeline.synth.lab2im_engine import TOOL as LAB2IM

    return {"harmonize": {"builtin": None, "synthsr": freesurfer.SYNTHSR},
            "strip": {method: STRIPPERS[method].tool_for(strip or StripConfig()) for method in STRIPPERS},
            "segment": {method: SEGMENTERS[method].tool for method in SEGMENTERS} | {CONSENSUS: None},
            "synthesize": {"builtin": None, "lab2im": LAB2IM}}


def configured_methods(config: Config) -> dict[str, list[str]]:
    """The methods a study's configuration runs, by stage."""
    return {"harmonize": [config.harmonize.method], "strip": list(config.strip.methods),
            "segment": list(config.segment.methods), "synthesize": [config.synth.engine]}


def missing_tools(config: Config) -> list[str]:
    """'stage method: what to install' for every configured method whose tool this machine lacks."""
    tools = all_tools(config.strip)
    missing = []
    for stage, methods in configured_methods(config).items():
        for method in methods:
            tool = tools[stage][method]
            availability = tool.check() if tool is not None else None
            if availability is not None and not availability.available:
                missing.append(f"{stage} {method}: {availability.detail}")
    return missing
