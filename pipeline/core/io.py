"""Reading and atomic writing of images, tables and JSON.

Every writer goes through a temporary file in the destination's folder and an
``os.replace``: a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

HEAD_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh")  # what a head may be stored as (NIfTI, FreeSurfer)


def image_stem(path: Path) -> str:
    """A file's name without its image suffix (``head.nii.gz`` -> ``head``)."""
    name = Path(path).name
    return next((name.removesuffix(suffix) for suffix in (*HEAD_SUFFIXES, ".png") if name.endswith(suffix)), name)


class InputError(ValueError):
    """An input file is unusable; the message names the subject and the file."""


@contextlib.contextmanager
def atomic_path(final: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; move it into place only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; it replaces ``final`` only on success.

    Temporary folders a killed run left behind for the same ``final`` are removed first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fingerprint_file(final: Path) -> Path:
    """Where ``resumable_dir`` keeps the fingerprint of the work it resumes for ``final``."""
    return Path(final).parent / f".{Path(final).name}.partial" / ".fingerprint"


@contextlib.contextmanager
def resumable_dir(final: Path, fingerprint: str) -> Iterator[Path]:
    """Like ``atomic_dir``, but the work folder survives a crash for the next run to resume.

    The work folder is reused only by a run with the same ``fingerprint`` (what the stage
    reads); any other run starts afresh.
    """
    final = Path(final)
    stamp = fingerprint_file(final)
    work = stamp.parent
    if work.exists() and not (stamp.is_file() and stamp.read_text() == fingerprint):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
    yield work
    stamp.unlink()
    if final.exists():
        shutil.rmtree(final)
    os.replace(work, final)


VOXEL_MM_DECIMALS = 3  # voxel sizes are compared to the micrometre


def voxel_sizes_mm(image: nib.spatialimages.SpatialImage) -> np.ndarray:
    """The header's voxel sizes, rounded to ``VOXEL_MM_DECIMALS``: headers carry float32 and scanner arithmetic
    (a 3 mm slice can read 2.9999955), and every comparison of voxel sizes should see 3."""
    return np.round(np.array(image.header.get_zooms()[:3], dtype=float), VOXEL_MM_DECIMALS)


def load_nifti(path: Path, subject: str = "?") -> nib.Nifti1Image:
    """Load a 3D image (NIfTI, or a FreeSurfer .mgz/.mgh) fully as NIfTI, with a clear error for anything
    unusable."""
    path = Path(path)
    where = f"subject {subject}, file {path}"
    if not path.is_file():
        raise InputError(f"{where}: file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{where}: file is empty")
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except (OSError, EOFError, gzip.BadGzipFile, nib.filebasedimages.ImageFileError, ValueError) as error:
        raise InputError(f"{where}: not a readable NIfTI image ({error})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{where}: expected a 3D image, got shape {data.shape}")
    if min(data.shape) < 16:
        raise InputError(f"{where}: field of view too small ({data.shape} voxels)")
    if not np.all(np.isfinite(data)):
        raise InputError(f"{where}: contains NaN or infinite voxels")
    zooms = voxel_sizes_mm(image)
    if zooms.min() <= 0.05 or zooms.max() > 10.0:
        raise InputError(f"{where}: implausible voxel size {tuple(zooms.tolist())} mm")
    if float(np.ptp(data)) == 0.0:
        raise InputError(f"{where}: image is constant")
    header = image.header if isinstance(image, nib.Nifti1Image) else None  # an MGH header does not carry over
    return nib.Nifti1Image(np.asarray(data), image.affine, header)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, dtype: type | None = None) -> None:
    array = np.asarray(array, dtype=dtype) if dtype else np.asarray(array)
    image = nib.Nifti1Image(array, affine)
    image.header.set_data_dtype(array.dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_path(Path(path), suffix=".nii.gz") as tmp:
        nib.save(image, str(tmp))


def save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(Path(path), suffix=".png") as tmp:
        Image.fromarray(np.asarray(array, dtype=np.uint8)).save(tmp, format="PNG")


def load_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def write_json(data: object, path: Path) -> None:
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_text(text: str, path: Path) -> None:
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text)


def write_tsv(rows: list[dict], path: Path, separator: str = "\t") -> None:
    """Write rows of a table as TSV (columns in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    lines = [separator.join(columns)]
    lines += [separator.join(_cell(row.get(col)) for col in columns) for row in rows]
    write_text("\n".join(lines) + "\n", path)


def write_csv(rows: list[dict], path: Path) -> None:
    write_tsv(rows, path, separator=",")


def read_tsv(path: Path) -> list[dict[str, str]]:
    header, *lines = Path(path).read_text(encoding="utf-8-sig").splitlines()  # a spreadsheet may write a BOM
    columns = header.split("\t")
    return [dict(zip(columns, line.split("\t"), strict=False)) for line in lines if line.strip()]


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("\t", " ").replace("\n", " | ")  # one cell, one line (e.g. a tool's output tail)
