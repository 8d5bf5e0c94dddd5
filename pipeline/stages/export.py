"""Stage 6 — export: a synthetic set in nnU-Net v2's raw format (2D PNG).

``data/nnunet_raw/<combo>/Dataset1SK_<segmenter>_<stripper>/``: imagesTr/CASE_0000.png, labelsTr/CASE.png,
imagesTs/, labelsTs/ and dataset.json. Each combo has its own dataset ID and name (``nnunet_dataset``), so
its model folder says which strategy it is wherever it goes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pipeline.core.config import Config
from pipeline.core.io import write_json
from pipeline.core.labels import LABEL_NAMES
from pipeline.nnunet.models import nnunet_dataset
from pipeline.stages.base import ComboStage, Stage
from pipeline.stages.synthesize import Synthesize

log = logging.getLogger("pipeline")


def export_split(source: Path, images_dir: Path, labels_dir: Path) -> int:
    images_dir.mkdir(parents=True)
    labels_dir.mkdir(parents=True)
    cases = sorted(path.stem for path in (source / "images").glob("*.png"))
    for case in cases:
        shutil.copyfile(source / "images" / f"{case}.png", images_dir / f"{case}_0000.png")
        shutil.copyfile(source / "labels" / f"{case}.png", labels_dir / f"{case}.png")
    return len(cases)


class Export(ComboStage):
    name = "export"
    out_template = "data/nnunet_raw/{segmenter}-{stripper}"

    def requires(self) -> dict[str, Stage]:
        return {"synthetic": Synthesize(**self.combo())}

    def build(self, out: Path, config: Config) -> None:
        synthetic = self.input_dir("synthetic")
        dataset = out / nnunet_dataset(self.segmenter, self.stripper).name
        n_train = export_split(synthetic / "train", dataset / "imagesTr", dataset / "labelsTr")
        n_test = export_split(synthetic / "test", dataset / "imagesTs", dataset / "labelsTs")
        write_json(
            {
                "name": f"synthetic {self.segmenter}-{self.stripper}",
                "channel_names": {"0": "T1w"},
                "labels": {name: value for value, name in LABEL_NAMES.items()},
                "numTraining": n_train,
                "file_ending": ".png",
            },
            dataset / "dataset.json",
        )
        log.info("export %s-%s: %d training and %d test cases", self.segmenter, self.stripper, n_train, n_test)
