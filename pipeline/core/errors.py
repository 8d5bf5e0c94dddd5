"""What a user can fix (an input, a parameter, a missing or failing tool): these errors become one message naming
the file or key, not a traceback, however the pipeline is driven (``python -m pipeline``, Luigi, DVC)."""

from __future__ import annotations


def user_errors() -> tuple[type[Exception], ...]:
    from pipeline.core.config import ConfigError, UndeclaredParameter
    from pipeline.core.io import InputError
    from pipeline.core.labels import UnknownLabel
    from pipeline.runtime.executors import JobFailed
    from pipeline.runtime.subjects import SubjectFailed
    from pipeline.tools.base import ToolFailed, ToolMissing

    return (ConfigError, InputError, UnknownLabel, SubjectFailed, ToolFailed, ToolMissing, FileNotFoundError,
            UndeclaredParameter, JobFailed)
