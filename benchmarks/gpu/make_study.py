"""A small copy of a finished oasis-manual study for a GPU machine (the device tool carries 64 MiB): its exported set,
a training head's label map, three held-out heads (stripped brains, masks, teacher's labels, the harmonized heads'
grids with their voxels zeroed) and their reference labels; no model (the GPU machine trains one).

    python benchmarks/gpu/make_study.py STUDY TARGET
"""

import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

PROJECT = Path(__file__).resolve().parents[2]
COMBO = "hmrf-deepbet"


def copy_grid_only(path: Path) -> None:
    """The harmonized head as scoring uses it: its grid (shape, affine); one voxel set, since a constant image is
    refused."""
    image = nib.load(path)
    voxels = np.zeros(image.shape, np.uint8)
    voxels[0, 0, 0] = 1
    nib.save(nib.Nifti1Image(voxels, image.affine), path)


def main(source: Path, target: Path, tests: int = 3) -> None:
    params = yaml.safe_load((source / "params.yaml").read_text())
    reference = Path(params["evaluate"]["reference_labels"])
    rows = (source / "data/raw/participants.tsv").read_text().splitlines()[1:]
    split = dict(row.split("\t") for row in rows if row)
    held_out = [subject for subject, kind in split.items() if kind == "test"][:tests]
    training = [subject for subject, kind in split.items() if kind == "train"][:1]
    if target.exists():
        shutil.rmtree(target)
    (target / "data/raw").mkdir(parents=True)
    for folder in ["data/nnunet_raw", "metrics", "data/strip_qc", "data/synthetic", "data/qc"]:
        shutil.copytree(source / folder, target / folder)
    rows = ["participant_id\tsplit"] + [f"{s}\ttest" for s in held_out] + [f"{s}\ttrain" for s in training]
    (target / "data/raw/participants.tsv").write_text("\n".join(rows) + "\n")
    shutil.copy(source / "data/raw/dataset_description.json", target / "data/raw")
    for subject in held_out + training:
        (target / f"data/raw/{subject}").mkdir()
        shutil.copy(source / f"data/raw/{subject}/{subject}_scans.tsv", target / f"data/raw/{subject}")
        folders = [f"data/segmented/{COMBO}"] + (["data/stripped/deepbet", "data/harmonized"] if subject in held_out
                                                  else [])
        for folder in folders:
            shutil.copytree(source / folder / subject, target / folder / subject)
    for grid in target.glob("data/harmonized/*/anat/*_desc-harmonized_T1w.nii.gz"):
        copy_grid_only(grid)
    for subject in held_out:
        shutil.copytree(reference / subject, target / "manual" / subject)
    for name in ["dseg.tsv", "dataset_description.json"]:
        shutil.copy(reference / name, target / "manual")
    study = yaml.safe_load((PROJECT / "params.yaml").read_text())  # today's parameters, the study's data
    study |= {"acquire": params["acquire"], "workers": 16}
    study["evaluate"]["reference_labels"] = "manual"
    (target / "params.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    shutil.copy(PROJECT / "luigi.cfg", target)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
