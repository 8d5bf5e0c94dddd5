"""Running nnU-Net v2's own command lines with the folders and trainer the pipeline chooses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.config import TrainConfig
from pipeline.tools.base import run_command

TRAINER = "nnUNetTrainerPipeline"
TRAINER_DIR = Path(__file__).parent / "nnunet_trainers"


def environment(raw: Path, preprocessed: Path, results: Path, config: TrainConfig, seed: int) -> dict[str, str]:
    env = dict(os.environ)
    env |= {
        "nnUNet_raw": str(raw.resolve()),
        "nnUNet_preprocessed": str(preprocessed.resolve()),
        "nnUNet_results": str(results.resolve()),
        "nnUNet_extTrainer": str(TRAINER_DIR),
    }
    profile = config.active_profile()
    env |= {
        "PIPELINE_EPOCHS": str(profile.epochs),
        "PIPELINE_ITERATIONS": str(profile.iterations_per_epoch),
        "PIPELINE_VAL_ITERATIONS": str(profile.val_iterations_per_epoch),
        "PIPELINE_BATCH_SIZE": str(profile.batch_size or ""),
    }
    if config.deterministic:
        # One data-augmentation process, seeded: a CPU run repeats exactly.
        env |= {"PIPELINE_SEED": str(seed), "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1"}
    return env


def command(name: str) -> str:
    """nnU-Net's entry point installed beside this Python."""
    return str(Path(sys.executable).parent / name)


def plan_and_preprocess(dataset_id: int, env: dict[str, str], processes: int) -> None:
    run_command([command("nnUNetv2_plan_and_preprocess"), "-d", dataset_id, "-c", "2d",
                 "-np", processes, "--verify_dataset_integrity"], "nnUNetv2_plan_and_preprocess", env)


def train(dataset_id: int, fold: str, device: str, env: dict[str, str]) -> None:
    run_command([command("nnUNetv2_train"), dataset_id, "2d", fold, "-tr", TRAINER, "-device", device],
                "nnUNetv2_train", env)


def predict(images: Path, output: Path, dataset_id: int, fold: str, device: str, env: dict[str, str],
            tta: bool) -> None:
    args = [command("nnUNetv2_predict"), "-i", images, "-o", output, "-d", dataset_id, "-c", "2d",
            "-f", fold, "-tr", TRAINER, "-device", device, "-npp", 1, "-nps", 1]
    if not tta:
        args.append("--disable_tta")
    run_command(args, "nnUNetv2_predict", env)
