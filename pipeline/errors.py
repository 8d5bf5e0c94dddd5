"""What a user can fix (an input, a parameter, a missing or failing tool): these errors become one message naming
the file or key, not a traceback, however the pipeline is driven (``python -m pipeline``, Luigi, DVC)."""

from __future__ import annotations


def user_errors() -> tuple[type[Exception], ...]:
    from pipeline.config import ConfigError, UndeclaredParameter
    from pipeline.executors import JobFailed
    from pipeline.io import InputError
    from pipeline.labels import UnknownLabel
    from pipeline.subjects import SubjectFailed
    from pipeline.tools.base import ToolFailed, ToolMissing

    return (ConfigError, InputError, UnknownLabel, SubjectFailed, ToolFailed, ToolMissing, FileNotFoundError,
            UndeclaredParameter, JobFailed)
