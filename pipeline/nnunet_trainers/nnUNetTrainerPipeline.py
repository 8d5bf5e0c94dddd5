"""nnU-Net trainer with the schedule of a ``train.profiles`` entry.

nnU-Net finds it through the ``nnUNet_extTrainer`` environment variable, which
``pipeline.stages.train`` sets to this folder; the profile arrives through
``PIPELINE_*`` environment variables so nnU-Net's own command lines stay unchanged.
"""

import os

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerPipeline(nnUNetTrainer):  # noqa: N801 - nnU-Net looks trainers up by this name
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 - nnU-Net's signature
        seed = os.environ.get("PIPELINE_SEED")
        if seed is not None:  # deterministic runs: same weights, same sampling
            torch.manual_seed(int(seed))
            np.random.seed(int(seed))
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("PIPELINE_EPOCHS", self.num_epochs))
        self.num_iterations_per_epoch = int(os.environ.get("PIPELINE_ITERATIONS", self.num_iterations_per_epoch))
        self.num_val_iterations_per_epoch = int(
            os.environ.get("PIPELINE_VAL_ITERATIONS", self.num_val_iterations_per_epoch)
        )
        self.save_every = max(1, min(self.save_every, self.num_epochs // 2 or 1))

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        # The pipeline's evaluate stage measures Dice on held-out synthetic and real slices;
        # nnU-Net's own sliding-window validation over the training fold would only cost time.
        self.print_to_log_file("validation skipped: the pipeline's evaluate stage measures Dice")
