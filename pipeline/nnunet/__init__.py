"""The nnU-Net v2 adapter: its command lines (``runner``), trained models and their records (``models``), and the
trainers nnU-Net loads by name (``trainers/``, through ``nnUNet_extTrainer``)."""
