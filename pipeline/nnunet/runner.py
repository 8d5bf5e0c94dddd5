"""Running nnU-Net v2's own command lines with the folders, schedule and trainer the pipeline chooses."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from pipeline.core.config import Precision, SynthConfig, TrainConfig, TrainProfile
from pipeline.nnunet import plan_and_preprocess as forked_planning
from pipeline.runtime.executors import THREAD_VARIABLES
from pipeline.tools.base import run_command

# train.augmentation -> the trainer class (pipeline/nnunet/trainers)
TRAINER_BY_AUGMENTATION = {"nnunet": "nnUNetTrainerPipeline", "synthesis": "nnUNetTrainerPipelineSynthAug"}
TRAINER_DIR = Path(__file__).parent / "trainers"
CODE_ROOT = Path(__file__).parents[2]  # the folder holding this copy of ``pipeline``


def trainer_name(config: TrainConfig, device: str) -> str:
    """The trainer class that trains on ``device`` (its profile may set the augmentation)."""
    return TRAINER_BY_AUGMENTATION[config.trainer_augmentation(device)] + ("Online" if config.online_synthesis else "")


def loader_processes(config: TrainConfig, device: str, threads: int) -> int:
    """Processes that load and augment batches beside the training: the profile's number, else none for a
    deterministic run (augmentation in the training process, from its seeded generators) and one per core
    otherwise."""
    chosen = config.active_profile(device).loader_processes
    if chosen is not None:
        return chosen
    return 0 if config.deterministic else threads


def environment(raw: Path, preprocessed: Path, results: Path, threads: int, loader_processes: int = 0
                ) -> dict[str, str]:
    """The variables nnU-Net's commands get on top of their environment (``run_command`` merges them where the
    command runs, so a SLURM job keeps its own, CUDA_VISIBLE_DEVICES included): nnU-Net's folders, our trainers,
    and the core budget (``threads``; torch reads it at start). The schedule and seed travel in the plans
    (``adapt_plans``), so a model folder holds all it was trained with."""
    env = {name: str(threads) for name in THREAD_VARIABLES}
    env |= {
        "nnUNet_raw": str(raw.resolve()),
        "nnUNet_preprocessed": str(preprocessed.resolve()),
        "nnUNet_results": str(results.resolve()),
        "nnUNet_extTrainer": str(TRAINER_DIR),
        "nnUNet_def_n_proc": str(threads),  # nnU-Net's own process pools (default 8) within the core budget
        # nnU-Net's console scripts put .venv/bin first on sys.path, so the trainers would import whichever
        # ``pipeline`` is installed; a study folder's own copy (bench real) must run against itself
        "PYTHONPATH": os.pathsep.join(filter(None, [str(CODE_ROOT.resolve()), os.environ.get("PYTHONPATH")])),
    }
    if loader_processes:
        env["nnUNet_n_proc_DA"] = str(loader_processes)  # augmentation workers beside the training process
    return env


def command(name: str) -> str:
    """nnU-Net's entry point installed beside this Python."""
    return str(Path(sys.executable).parent / name)


def plan_and_preprocess(dataset_id: int, env: dict[str, str], processes: int) -> None:
    # -npfp: the integrity check and the fingerprint start 8 processes by default, each importing nnU-Net (and
    # torch): 20 s more per training on two cores (45 s instead of 24 s for a CI-sized set)
    # nnUNet_n_proc_DA: the planner's torch threads (0, a deterministic training's value, stops it)
    # forked_planning: nnU-Net's command, its pools forked (9 s less per planning on 2 cores)
    env = env | {"nnUNet_n_proc_DA": str(max(1, processes))}
    run_command([sys.executable, "-m", forked_planning.__name__, "-d", dataset_id, "-c", "2d",
                 "-np", processes, "-npfp", processes, "--verify_dataset_integrity"], "nnUNetv2_plan_and_preprocess",
                env, progress=re.compile(r"^\d+:|Fingerprint|Preprocessing|plans"))


def adapt_plans(plans_file: Path, profile: TrainProfile, seed: int | None, precision: Precision = "auto",
                online: dict | None = None) -> dict:
    """Apply a profile to nnU-Net's 2D plan: its batch size and network width, and its schedule, optimizer and
    learning rate, training seed (``pipeline``, read by ``pipeline/nnunet/trainers``; None: an unseeded run) and
    arithmetic (``precision``: the trainer resolves it on the machine that trains, and records the result as
    ``mixed_precision``); with online synthesis, the label maps and synthesis parameters its samples are drawn
    from (``online_plan``).

    Done between planning and training, so the plans copied beside the model (and used
    at prediction) describe the network that was really trained, and how.
    """
    plans = json.loads(plans_file.read_text())
    configuration = plans["configurations"]["2d"]
    configuration["pipeline"] = {"epochs": profile.epochs, "iterations_per_epoch": profile.iterations_per_epoch,
                                 "val_iterations_per_epoch": profile.val_iterations_per_epoch, "seed": seed,
                                 "precision": precision, "optimizer": profile.optimizer,
                                 "learning_rate": profile.learning_rate, "online": online}
    if profile.batch_size:
        configuration["batch_size"] = profile.batch_size
    if profile.base_features:
        arch = configuration["architecture"]["arch_kwargs"]
        planned = arch["features_per_stage"]
        scale = profile.base_features / planned[0]
        arch["features_per_stage"] = [max(1, round(features * scale)) for features in planned]
    plans_file.write_text(json.dumps(plans, indent=2))
    return configuration


def online_plan(segmented: Path, stripped: Path, harmonized: Path, synth: SynthConfig, seed: int) -> dict:
    """What an online trainer draws from: a combo's label maps, brains and reference levels (paths as given:
    relative to the study folder nnU-Net runs in), the synthesis parameters and the study's seed."""
    return {"folders": {"segmented": str(segmented), "stripped": str(stripped), "harmonized": str(harmonized)},
            "synth": synth.model_dump(mode="json"), "seed": seed}


def train(dataset_id: int, fold: str, device: str, env: dict[str, str], loader_processes: int, trainer: str
          ) -> None:
    if not loader_processes:
        # Augmentation in the training process itself, from the seeded generators: a CPU run repeats exactly.
        env = env | {"nnUNet_n_proc_DA": "0"}
    # --c: continue from the latest checkpoint when an interrupted run left one (else nnU-Net starts afresh)
    run_command([command("nnUNetv2_train"), dataset_id, "2d", fold, "-tr", trainer, "-device", device, "--c"],
                "nnUNetv2_train", env, progress=re.compile(r"Epoch \d|train_loss|val_loss|Pseudo dice|Epoch time"))
