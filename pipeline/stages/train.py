"""Stage 7 — train: nnU-Net v2 2D on one exported synthetic set.

The schedule comes from ``train.profiles[train.profile]`` (``auto``: ``gpu`` on a GPU, ``quick`` on a CPU); the
device is the GPU when present (``train.device: auto``). ``models/<combo>/`` holds nnU-Net's results
folder and ``training.json`` (profile, device, seed, wall time). With ``train.seeds`` the stage trains once
per seed on the same synthetic set: the first seed's model in ``models/<combo>/``, each other one in
``models/<combo>/seed-<seed>/``.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from pipeline.core.config import Config, TrainConfig
from pipeline.core.io import write_csv
from pipeline.nnunet import runner
from pipeline.nnunet.models import (
    NnunetDataset,
    TrainingRecord,
    nnunet_dataset,
    seed_folders,
    trained_mixed_precision,
)
from pipeline.runtime.devices import job_device, training_mixed_precision
from pipeline.runtime.executors import job_threads, run_job
from pipeline.stages.base import ComboStage, Stage, package_versions
from pipeline.stages.export import Export
from pipeline.stages.harmonize import Harmonize
from pipeline.stages.segment_qc import SegmentQC
from pipeline.stages.strip import Strip
from pipeline.tools.registry import stripper_config

log = logging.getLogger("pipeline")


def training_curve(results: Path, dataset: str) -> list[dict]:
    """Per-epoch losses and nnU-Net's pseudo Dice, read from the final checkpoint's log."""
    import torch

    checkpoint = next(results.glob(f"{dataset}/*/fold_*/checkpoint_final.pth"))
    history = torch.load(checkpoint, map_location="cpu", weights_only=False)["logging"]
    return [
        {"epoch": epoch, "train_loss": train, "val_loss": val, "pseudo_dice": dice,
         "epoch_s": end - start}
        for epoch, (train, val, dice, start, end) in enumerate(zip(
            history["train_losses"], history["val_losses"], history["mean_fg_dice"],
            history["epoch_start_timestamps"], history["epoch_end_timestamps"], strict=True))
    ]


# ``train`` but how a trained model is applied (``train.predict_*``: the evaluate stage's and predict's): changing
# those re-scores a model, never retrains it
TRAINING_KEYS = tuple(f"train.{name}" for name in TrainConfig.model_fields if not name.startswith("predict_"))


class Train(ComboStage):
    name = "train"
    # synth: what online synthesis draws with; harmonize and the stripper's: what the record tells predict to do
    param_keys = ("seed", *TRAINING_KEYS, "synth", "harmonize", "strip.{stripper}", "strip.crop_margin_vox", "strip.qc")
    out_template = "models/{segmenter}-{stripper}"
    # an interrupted training continues from nnU-Net's latest checkpoint, on the same inputs and params only
    resumable = True
    curve_template = "metrics/{segmenter}-{stripper}-training.csv"  # DVC plots: the losses per epoch
    plots = {curve_template: {"x": "epoch", "y": "train_loss", "template": "linear"}}

    def requires(self) -> dict[str, Stage]:
        # the label maps, brains and levels: what online synthesis (train.online_synthesis) draws from
        return {"nnunet_raw": Export(**self.combo()), "segmented": SegmentQC.labels(**self.combo()),
                "qc": SegmentQC(**self.combo()), "stripped": Strip(stripper=self.stripper), "harmonized": Harmonize()}

    def build(self, out: Path, config: Config) -> None:
        device = job_device(config.train.device, config.executor)
        training_mixed_precision(config.train.precision, device)  # refused before planning; resolved where it trains
        preprocessed = out / "preprocessed"
        start = time.monotonic()
        log.info("train %s-%s: planning and preprocessing", self.segmenter, self.stripper)
        dataset = nnunet_dataset(self.segmenter, self.stripper)
        env = runner.environment(self.input_dir("nnunet_raw"), preprocessed, out, config.workers)
        runner.plan_and_preprocess(dataset.id, env, config.workers)
        seeds = config.train.training_seeds(config.seed)
        for seed, results in seed_folders(out, seeds):  # the first seed's wall time includes the planning
            self.train_once(results, preprocessed, dataset, seed, device, config)
            self.record(config, device, dataset.id, seed, seeds, time.monotonic() - start, results).write(results)
            start = time.monotonic()
        shutil.rmtree(preprocessed)  # an intermediate: the plans travel with each model
        write_csv(training_curve(out, dataset.name), self.plot_path(self.curve_template))

    def train_once(self, results: Path, preprocessed: Path, dataset: NnunetDataset, seed: int, device: str,
                   config: Config) -> None:
        profile = config.train.active_profile(device)
        threads = job_threads(config.executor, config.workers, gpu=True)
        loaders = runner.loader_processes(config.train, device, threads)
        env = runner.environment(self.input_dir("nnunet_raw"), preprocessed, results, threads, loaders)
        # the plans carry the seed: each seed's model folder gets its own copy when its training starts
        online = runner.online_plan(self.input_dir("segmented"), self.input_dir("stripped"),
                                    self.input_dir("harmonized"), config.synth,
                                    config.seed) if config.train.online_synthesis else None
        plan = runner.adapt_plans(preprocessed / dataset.name / "nnUNetPlans.json", profile,
                                  seed if config.train.deterministic else None, config.train.precision, online)
        log.info("train %s-%s: batch %d, patch %s, features %s", self.segmenter, self.stripper, plan["batch_size"],
                 plan["patch_size"], plan["architecture"]["arch_kwargs"]["features_per_stage"])
        log.info("train %s-%s: profile %s (%d epochs x %d iterations), seed %d, on %s, %d loader processes",
                 self.segmenter, self.stripper, config.train.profile_name(device), profile.epochs,
                 profile.iterations_per_epoch, seed, device, loaders)
        run_job(config.executor, f"train {self.segmenter}-{self.stripper} seed {seed}", runner.train, dataset.id,
                str(config.train.fold), device, env, loaders, runner.trainer_name(config.train, device))

    def record(self, config: Config, device: str, dataset_id: int, seed: int, seeds: list[int], wall_s: float,
               results: Path) -> TrainingRecord:
        trainer = runner.trainer_name(config.train, device)
        return TrainingRecord(
            profile=config.train.profile_name(device), schedule=config.train.active_profile(device),
            fold=config.train.fold,
            device=device, deterministic=config.train.deterministic, seed=seed, seeds=seeds, wall_s=round(wall_s, 1),
            trainer=trainer, mixed_precision=trained_mixed_precision(results, dataset_id, trainer),
            dataset_id=dataset_id, segmenter=self.segmenter,
            stripper=self.stripper, harmonize=config.harmonize, strip=stripper_config(config.strip, self.stripper),
            size=config.synth.size,
            levels=config.synth.levels, views=config.synth.views, versions=package_versions())
