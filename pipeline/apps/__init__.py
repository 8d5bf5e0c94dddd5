"""What a user runs beside the study: ``predict`` on new heads, and the benchmarks (``bench_real``,
``bench_train``, ``bench_synth``) that print JSON."""
