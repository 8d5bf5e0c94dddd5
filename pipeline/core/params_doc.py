"""``docs/parameters.md``: every key of ``params.yaml``, generated from ``pipeline/core/config.py`` (its types,
defaults, the comments beside each field and each section's docstring). ``python -m pipeline params-doc --check``
fails when the file is stale, as ``dvc-yaml --check`` does for ``dvc.yaml``."""

from __future__ import annotations

import ast
import inspect
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pipeline.core import config as config_module
from pipeline.core.config import Config

DOC = Path("docs/parameters.md")
HEADER = """# Parameters

Every key of `params.yaml`, generated from `pipeline/core/config.py` by `python -m pipeline params-doc` (CI checks it is
up to date). Change a key in `params.yaml`, or per experiment with `dvc exp run -S key=value`; a key or value the
configuration does not know stops with a message naming it. Each stage declares the keys it reads (its DVC params),
so changing one re-runs only the stages that read it.
"""
BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """The comments of each field in the model's source: the lines of comment just above it, and on its line."""
    lines = inspect.getsource(config_module).splitlines()
    node = next(n for n in ast.walk(ast.parse("\n".join(lines))) if isinstance(n, ast.ClassDef)
                and n.name == model.__name__)
    comments = {}
    for statement in node.body:
        if not isinstance(statement, ast.AnnAssign) or not isinstance(statement.target, ast.Name):
            continue
        above, row = [], statement.lineno - 2
        while row >= 0 and lines[row].strip().startswith("#"):
            above.insert(0, lines[row].strip().lstrip("# "))
            row -= 1
        trailing = [line.split("  # ", 1)[1] for line in lines[statement.lineno - 1:statement.end_lineno]
                    if "  # " in line]
        comments[statement.target.id] = " ".join(above + trailing)
    return comments


def type_text(annotation: object, field: FieldInfo) -> str:
    """A field's type as a reader wants it: choices, bounds, optional."""
    text = _annotation_text(annotation)
    bounds = [f"{BOUNDS[key]} {getattr(item, key)}" for item in field.metadata for key in BOUNDS
              if getattr(item, key, None) is not None]
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def _annotation_text(annotation: object) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{value}`" for value in args)
    if origin is typing.Annotated:
        return _annotation_text(args[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_annotation_text(arg) for arg in args).replace("NoneType", "null")
    if origin in (list, tuple, dict):
        inner = ", ".join(_annotation_text(arg) for arg in args if arg is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "null")


def default_text(value: object) -> str:
    if isinstance(value, BaseModel):
        return ""
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict):
        return ", ".join(f"`{name}`" for name in value) if value else "`{}`"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value}`"


def rows(model: type[BaseModel], prefix: str) -> tuple[list[str], list[tuple[str, type[BaseModel]]]]:
    """The table rows of a model's plain fields, and its sub-sections (prefix, model)."""
    comments, table, sections = field_comments(model), [], []
    hints = typing.get_type_hints(model, include_extras=True)
    for name, field in model.model_fields.items():
        key, annotation = f"{prefix}{name}", hints[name]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sections.append((key, annotation))
            continue
        values = typing.get_args(annotation)
        if typing.get_origin(annotation) is dict and isinstance(values[1], type) and issubclass(values[1], BaseModel):
            sections.append((f"{key}.<name>", values[1]))  # named entries of one kind (train.profiles)
        text = comments.get(name, "").replace("|", "\\|")
        default = "required" if field.is_required() else default_text(field.default)
        table.append(f"| `{key}` | {type_text(annotation, field)} | {default} | {text} |")
    return table, sections


def section(key: str, model: type[BaseModel], level: int) -> list[str]:
    table, sections = rows(model, f"{key}." if key else "")
    intro = inspect.cleandoc(model.__doc__) if model.__doc__ and model.__doc__ != BaseModel.__doc__ else ""
    out = [f"{'#' * level} {'`' + key + '`' if key else 'Top level'}", ""]
    out += [intro, ""] if intro else []
    if table:
        out += ["| key | type | default | what it does |", "| --- | --- | --- | --- |", *table, ""]
    for sub_key, sub_model in sections:
        out += section(sub_key, sub_model, min(level + 1, 4))
    return out


def parameters_md() -> str:
    return HEADER + "\n" + "\n".join(section("", Config, 2)).rstrip() + "\n"


def documented_keys(text: str) -> set[str]:
    """The keys a parameters page lists (its table rows' first cells)."""
    return {line.split("`")[1] for line in text.splitlines() if line.startswith("| `")}
