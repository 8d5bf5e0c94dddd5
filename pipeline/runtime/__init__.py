"""How stages run: the Luigi/DVC graph, executors (local, SLURM), devices, per-subject loops."""
