"""``python -m pipeline bench train``: where a training iteration's time goes on this machine, and how fast
the model learns to segment real slices, as JSON.

It trains nnU-Net in this process, as the train stage would (same planning, profile and trainer), on a
study's exported synthetic set (``data/nnunet_raw/<combo>``), timing each iteration's data loading and
augmentation apart from its forward and backward pass. After every ``--eval-every`` epochs it predicts the
study's real test heads with the network as it is, whole brains as the evaluate stage does
(``pipeline.evaluation``), and scores them against their labels: a time-to-Dice curve.

    python -m pipeline bench train --study . --combo atropos-deepbet [-S train.augmentation=synthesis]
"""

from __future__ import annotations

import contextlib
import importlib
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from pipeline.core.bids import Folders
from pipeline.core.config import Config, apply_overrides, parse_config
from pipeline.core.io import InputError
from pipeline.evaluation.dice import summarize
from pipeline.evaluation.heads import HeldOutHead, held_out_cases, load_held_out_head, predict_head, score_head
from pipeline.nnunet import runner
from pipeline.nnunet.models import nnunet_dataset
from pipeline.nnunet.predictor import SlicePredictor
from pipeline.runtime.devices import torch_device, training_mixed_precision
from pipeline.runtime.environ import scoped_environ
from pipeline.stages.acquire import Acquire
from pipeline.stages.harmonize import Harmonize
from pipeline.stages.segment_qc import SegmentQC
from pipeline.stages.strip import Strip

if TYPE_CHECKING:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

TRAINERS_MODULE = "pipeline.nnunet.trainers.nnUNetTrainerPipeline"  # the module of the trainers nnU-Net finds by name


def study_config(study: Path, overrides: list[str]) -> Config:
    params = apply_overrides(yaml.safe_load((study / "params.yaml").read_text()), overrides)
    return parse_config(params, f"{study / 'params.yaml'} with {overrides}")


def study_combo(study: Path, overrides: list[str], combo: str | None) -> str:
    """``combo``, or by default the study's first strategy (``segmenter-stripper``, as its params.yaml lists them)."""
    return combo or "-".join(study_config(study, overrides).combos()[0])


def study_folders(study: Path, combo: str) -> Folders:
    """Where a study keeps a combo's labels, brains and reference levels (the stages' outputs)."""
    segmenter, stripper = combo.split("-")
    return Folders(study / SegmentQC.labels(segmenter, stripper).out_dir(), study / Strip(stripper=stripper).out_dir(),
                   study / Harmonize().out_dir(), study / Acquire().out_dir())


def held_out_heads(study: Path, folders: Folders, config: Config) -> list[HeldOutHead]:
    """The study's real test heads, as its evaluate stage scores them."""
    return [load_held_out_head(case, folders, config.evaluate)
            for case in held_out_cases(study / Acquire().out_dir(), folders.segmented)]


def real_dice(trainer, heads: list[HeldOutHead], config: Config) -> dict[str, dict]:
    """The network as it is now on the study's real test heads, whole brains in 3D (and within the reference
    band): against the segmenter's labels (``real``) and, where the study has reference labels, against
    those (``external``)."""
    trainer.set_deep_supervision_enabled(False)  # as nnU-Net's own final validation predicts
    trainer.network.eval()
    segment = SlicePredictor.from_trainer(trainer, config.train.predict_precision, config.train.predict_window)
    rows = [row for head in heads for row in score_head(
        head, predict_head(segment, head, config.synth.size, config.synth.views), config.evaluate)]
    trainer.set_deep_supervision_enabled(True)
    trainer.network.train()
    kinds = ("real", "real_band", "external", "external_band")
    return {kind: summarize(selected) for kind in kinds if (selected := [r for r in rows if r["kind"] == kind])}


class TimedLoader:
    """nnU-Net's training data loader, the time of each ``next`` recorded."""

    def __init__(self, loader, seconds: list[float]) -> None:
        self.loader, self.seconds = loader, seconds

    def __next__(self):
        start = time.perf_counter()
        batch = next(self.loader)
        self.seconds.append(time.perf_counter() - start)
        return batch


class TimeUp(Exception):
    """The benchmark's training time is spent."""


def timed(trainer_class: type, heads: list[HeldOutHead], config: Config, eval_every: int, compile_network: bool,
          max_seconds: float | None = None) -> type:
    """The configured trainer, timing each iteration's data loading apart from its forward and backward pass and
    scoring the real test heads every ``eval_every`` epochs (that time not counted as training); nnU-Net's own
    ``run_training`` drives it. With ``compile_network`` the network is torch.compile'd once nnU-Net has built it
    (nnU-Net compiles only on a GPU); the first iteration, which compiles, is reported on its own. With
    ``max_seconds`` the training stops (``TimeUp``) at the first epoch's end past that much training time."""

    class Timed(trainer_class):
        def on_train_start(self) -> None:
            super().on_train_start()
            self.data_s, self.step_s, self.curve, self.scoring_s = [], [], [], 0.0
            self.dataloader_train = TimedLoader(self.dataloader_train, self.data_s)
            if compile_network:
                import torch

                self.network = torch.compile(self.network)
            self.started = time.perf_counter()

        def train_step(self, batch: dict) -> dict:
            start = time.perf_counter()
            outputs = super().train_step(batch)
            self.step_s.append(time.perf_counter() - start)
            return outputs

        def on_epoch_end(self) -> None:
            super().on_epoch_end()  # counts the epoch
            time_up = max_seconds is not None and time.perf_counter() - self.started - self.scoring_s > max_seconds
            if self.current_epoch % eval_every and self.current_epoch != self.num_epochs and not time_up:
                return
            start = time.perf_counter()
            dice = real_dice(self, heads, config)
            self.scoring_s += time.perf_counter() - start
            minutes = (time.perf_counter() - self.started - self.scoring_s) / 60
            self.curve.append({"epoch": self.current_epoch, "iterations": len(self.step_s),
                               "training_minutes": round(minutes, 2),
                               **{f"dice_{kind}": {k: None if v is None else round(v, 4) for k, v in scores.items()}
                                  for kind, scores in dice.items()}})
            print(f"bench train: epoch {self.current_epoch}, {minutes:.1f} min: {dice}", file=sys.stderr)
            if time_up:
                raise TimeUp

        def on_train_end(self) -> None:
            self.dataloader_train = self.dataloader_train.loader  # nnU-Net shuts its own loader down
            super().on_train_end()

    return Timed


def timings(trainer) -> dict:
    median = statistics.median
    data_s, step_s = trainer.data_s, trainer.step_s
    return {"data_and_augmentation_s": round(median(data_s), 3), "forward_backward_s": round(median(step_s), 3),
            "iteration_s": round(median(a + b for a, b in zip(data_s, step_s, strict=True)), 3),
            "first_iteration_s": round(data_s[0] + step_s[0], 1), "iterations": len(step_s)}


def train_timed(preprocessed: Path, config: Config, device: str, heads: list[HeldOutHead], eval_every: int,
                compile_network: bool, max_seconds: float | None, log_file: Path) -> nnUNetTrainer:
    """The timed trainer, trained as nnU-Net's get_trainer_from_args builds one (its prints to ``log_file``)."""
    import torch

    torch.set_num_threads(config.workers)
    trainer_class = getattr(importlib.import_module(TRAINERS_MODULE), runner.trainer_name(config.train, device))
    trainer_class = timed(trainer_class, heads, config, eval_every, compile_network, max_seconds)
    with open(log_file, "w") as log, contextlib.redirect_stdout(log):
        plans = json.loads((preprocessed / "nnUNetPlans.json").read_text()) | {"continue_training": False}
        dataset_json = json.loads((preprocessed / "dataset.json").read_text())
        trainer = trainer_class(plans, "2d", config.train.fold, dataset_json, device=torch.device(device))
        try:
            trainer.run_training()
        except TimeUp:
            trainer.on_train_end()  # nnU-Net's own end: the final checkpoint, its loaders shut down
    return trainer


def benchmark(study: Path, combo: str, overrides: list[str], eval_every: int, compile_network: bool = False,
              max_seconds: float | None = None) -> dict:
    import torch

    config = study_config(study, overrides)
    raw = study / "data" / "nnunet_raw" / combo
    if not raw.is_dir():
        raise InputError(f"bench train: {raw} is missing: run the study (dvc repro) first")
    folders = study_folders(study, combo)
    heads = held_out_heads(study, folders, config)
    device = torch_device(config.train.device)
    training_mixed_precision(config.train.precision, device)  # refused before planning, as the train stage does
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        loaders = runner.loader_processes(config.train, device, config.workers)
        env = runner.environment(raw, work / "preprocessed", work / "results", config.workers, loaders)
        dataset = nnunet_dataset(*combo.split("-"))
        runner.plan_and_preprocess(dataset.id, env, config.workers)
        seed = config.train.training_seed(config.seed) if config.train.deterministic else None
        online = runner.online_plan(folders.segmented, folders.stripped, folders.harmonized, config.synth,
                                    config.seed) \
            if config.train.online_synthesis else None
        plan = runner.adapt_plans(work / "preprocessed" / dataset.name / "nnUNetPlans.json",
                                  config.train.active_profile(device), seed, config.train.precision, online)
        # nnU-Net's variables (read when its modules load) for the training in this process only: the caller's
        # later commands keep their own environment
        with scoped_environ(env | {"nnUNet_n_proc_DA": str(loaders)}):
            trainer = train_timed(work / "preprocessed" / dataset.name, config, device, heads, eval_every,
                                  compile_network, max_seconds, work / "nnunet.log")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "study": str(study), "combo": combo, "overrides": overrides, "device": device,
        "threads": config.workers, "loader_processes": loaders, "profile": config.train.profile_name(device),
        **config.train.active_profile(device).model_dump(), "augmentation": config.train.trainer_augmentation(device),
        "compiled": compile_network, "mixed_precision": trainer.mixed_precision, "patch_size": plan["patch_size"],
        "features_per_stage": plan["architecture"]["arch_kwargs"]["features_per_stage"],
        "batch_size": plan["batch_size"], **timings(trainer), "peak_rss_mb": round(peak),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None,
        "time_to_dice": trainer.curve,
    }
