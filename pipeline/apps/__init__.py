"""What a user runs beside the study: ``predict`` on new heads, ``plan`` (what a study would submit to SLURM),
and the benchmarks (``bench_real``, ``bench_train``, ``bench_synth``) that print JSON."""
