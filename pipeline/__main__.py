"""Command line: ``python -m pipeline {run,dvc-yaml,plan,params-doc,doctor,predict,bench}``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

DVC_YAML = Path("dvc.yaml")


class StageFailures:
    """The errors that failed the stages of one ``run``, by kind, counted in shared memory: with ``--workers``
    above 1, Luigi runs each stage in a forked process."""

    def __init__(self) -> None:
        import multiprocessing

        self.counts = multiprocessing.Array("i", 2)  # [an input, parameter or tool error; anything else]

    def __call__(self, task: object, error: BaseException | str) -> None:
        from pipeline.core.errors import user_errors

        with self.counts.get_lock():
            self.counts[0 if isinstance(error, user_errors()) else 1] += 1

    @contextlib.contextmanager
    def counted(self) -> Iterator[None]:
        """Count the failures of the stages Luigi runs within."""
        import luigi

        events = (luigi.Event.FAILURE, luigi.Event.BROKEN_TASK, luigi.Event.PROCESS_FAILURE, luigi.Event.TIMEOUT)
        for event in events:
            luigi.Task.event_handler(event)(self)
        try:
            yield
        finally:
            for event in events:
                luigi.Task.remove_event_handler(event, self)

    def exit_status(self) -> int:
        """2 when every failure was the user's to fix (an input, parameter or tool), as for the other commands;
        1 when anything else failed (a bug: its traceback is logged)."""
        return 2 if self.counts[0] and not self.counts[1] else 1


def cmd_run(args: argparse.Namespace) -> int:
    import luigi

    from pipeline.core.config import load_config
    from pipeline.runtime.graph import BY_NAME, All

    if args.stage == "all":
        task = All()
    else:
        stage = BY_NAME[args.stage]
        missing = [key for key in stage.matrix if getattr(args, key) is None]
        if missing:
            print(f"error: stage {args.stage} needs --{' --'.join(missing)}", file=sys.stderr)
            return 2
        task = stage(**{key: getattr(args, key) for key in stage.matrix})
    load_config()  # a wrong parameter stops here, in one line, before Luigi schedules anything
    scheduler = {"scheduler_host": args.scheduler_host, "scheduler_port": args.scheduler_port} \
        if args.scheduler_host else {"local_scheduler": True}
    failures = StageFailures()
    with failures.counted():
        result = luigi.build([task], workers=args.workers, detailed_summary=True,
                             log_level="WARNING" if args.debug else "CRITICAL", **scheduler)
    if not result.scheduling_succeeded:
        # the failing stage has said why (pipeline.stages.base); Luigi's summary only with --debug
        if args.debug:
            print(result.summary_text, file=sys.stderr)
        return failures.exit_status()
    return 0


def cmd_dvc_yaml(args: argparse.Namespace) -> int:
    from pipeline.runtime.graph import dvc_yaml

    text = dvc_yaml()
    if args.check:
        if not DVC_YAML.is_file() or DVC_YAML.read_text() != text:
            print("dvc.yaml is out of date with the Luigi graph: run `python -m pipeline dvc-yaml`", file=sys.stderr)
            return 1
        print("dvc.yaml matches the Luigi graph")
        return 0
    DVC_YAML.write_text(text)
    print(f"wrote {DVC_YAML}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from pipeline.apps.plan import cluster_plan
    from pipeline.core.bids import read_cases
    from pipeline.core.config import load_config

    heads = args.heads
    if heads is None:
        raw = Path("data/raw")
        if not (raw / "participants.tsv").is_file():
            print("error: no acquired study here (data/raw): give --heads N", file=sys.stderr)
            return 2
        heads = len(read_cases(raw))
    print(json.dumps(cluster_plan(load_config(), heads), indent=2))
    return 0


def cmd_params_doc(args: argparse.Namespace) -> int:
    from pipeline.core.params_doc import DOC, parameters_md

    text = parameters_md()
    if args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC} is out of date with pipeline/core/config.py: run `python -m pipeline params-doc`",
                  file=sys.stderr)
            return 1
        print(f"{DOC} matches pipeline/core/config.py")
        return 0
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from pipeline.core.config import PARAMS_FILE, Config, ConfigError, load_config
    from pipeline.tools.doctor import all_tools, missing_tools

    try:  # params.yaml decides some tools (e.g. SynthStrip with a model file)
        config = load_config() if PARAMS_FILE.is_file() else Config()
    except ConfigError as error:
        print(f"warning: {error}; showing the tools of the default configuration", file=sys.stderr)
        config = Config()
    for stage, methods in all_tools(config.strip).items():
        for method, tool in methods.items():
            if tool is None:
                state, detail = "available", "built in"
            else:
                availability = tool.check()
                state, detail = ("available" if availability.available else "missing"), availability.detail
            print(f"{stage:<10} {method:<12} {state:<10} {detail}")
    if args.configured:
        missing = missing_tools(config)
        for line in missing:
            print(f"error: params.yaml needs {line}", file=sys.stderr)
        return 1 if missing else 0
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pipeline.apps.predict import predict

    fold = args.fold if args.fold in (None, "all") else int(args.fold)
    executor = None
    if args.executor == "slurm":  # the cluster's settings: executor.slurm of the params.yaml here, or its defaults
        from pipeline.core.config import PARAMS_FILE, Config, ExecutorConfig, load_config

        config = load_config() if PARAMS_FILE.is_file() else Config()
        executor = ExecutorConfig(kind="slurm", slurm=config.executor.slurm)
    predict(Path(args.model), Path(args.input), Path(args.output), slices=args.slices, device=args.device,
            tta=args.tta, precision=args.precision, window=args.window, fold=fold, allow_non_t1=args.allow_non_t1,
            executor=executor)
    return 0


def cmd_bench_synth(args: argparse.Namespace) -> int:
    import json

    from pipeline.apps.bench_synth import run_benchmark

    print(json.dumps(run_benchmark(args.labels, args.n, args.device), indent=2))
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    import json

    from pipeline.apps.bench_train import benchmark, study_combo

    max_seconds = args.minutes * 60 if args.minutes else None
    combo = study_combo(Path(args.study), args.set, args.combo)
    print(json.dumps(benchmark(Path(args.study), combo, args.set, args.eval_every, args.compile, max_seconds),
                     indent=2))
    return 0


def cmd_bench_predict(args: argparse.Namespace) -> int:
    import json

    from pipeline.apps.bench_predict import benchmark

    print(json.dumps(benchmark(Path(args.model), Path(args.input), args.device, args.batch_size, args.precision,
                               args.window), indent=2))
    return 0


def cmd_bench_strip(args: argparse.Namespace) -> int:
    import json

    from pipeline.apps.bench_strip import benchmark

    print(json.dumps(benchmark(Path(args.input), args.method), indent=2))
    return 0


def cmd_bench_device(args: argparse.Namespace) -> int:
    import json

    from pipeline.apps.bench_device import benchmark
    from pipeline.apps.bench_train import study_combo

    combo = study_combo(Path(args.study), args.set, args.combo)
    print(json.dumps(benchmark(Path(args.study), combo, args.seconds, args.set), indent=2))
    return 0


def cmd_bench_real(args: argparse.Namespace) -> int:
    import json
    import tempfile

    from pipeline.apps.bench_real import benchmark

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-real-"))
    reference = Path(args.reference) if args.reference else None
    result = benchmark(Path(args.bids_root), reference, args.subjects, args.test_fraction, workdir, args.set)
    print(json.dumps(result, indent=2))
    return 0


def cmd_bench_cross_site(args: argparse.Namespace) -> int:
    import json
    import tempfile

    from pipeline.apps.bench_cross_site import CONDITIONS, TEST_ROOT, TRAIN_ROOT, benchmark

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-cross-site-"))
    test_root = Path(args.test_root) if args.test_root else TEST_ROOT
    reference = Path(args.reference) if args.reference else test_root / "derivatives" / "manual"
    train_root = Path(args.train_root) if args.train_root else TRAIN_ROOT
    result = benchmark(train_root, test_root, reference, workdir, train_subjects=args.train_subjects,
                       test_subjects=args.test_subjects, train_test_fraction=args.train_test_fraction,
                       conditions=args.conditions or list(CONDITIONS), scheme=args.reference_scheme, device=args.device,
                       overrides=args.set)
    print(json.dumps(result, indent=2))
    return 0


PRECISION_HELP = ("the network's arithmetic (as train.predict_precision): auto: mixed where the device computes it "
                  "natively (float16 on a GPU; bfloat16 on a CPU with AVX-512 BF16 or AMX, about twice as fast "
                  "there), else float32; float32: nnU-Net's own CPU arithmetic; mixed: always (on a CPU without "
                  "bfloat16, emulated and far slower)")
WINDOW_HELP = ("the tiles a slice goes through the network in (as train.predict_window): nnunet: nnU-Net's sliding "
               "window, label for label its own prediction; plane: each slice whole (on a CPU about 0.7 of the time)")


def parser() -> argparse.ArgumentParser:
    from typing import get_args

    from pipeline.core.config import Precision, StripMethod, Window
    from pipeline.runtime.graph import BY_NAME

    main = argparse.ArgumentParser(prog="synthseg-pipeline", description=__doc__)
    main.add_argument("--debug", action="store_true", help="show the traceback of an error, and the warnings of the "
                      "libraries the pipeline calls")
    commands = main.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a stage (and what it needs) with Luigi")
    run.add_argument("stage", choices=["all", *BY_NAME], help="the stage to bring up to date (all: the study)")
    run.add_argument("--segmenter", help="a per-combo stage's segmenter (default: every one in params.yaml)")
    run.add_argument("--stripper", help="a per-stripper or per-combo stage's stripper (default: every one)")
    run.add_argument("--workers", type=int, default=1, help="Luigi workers: stages run side by side")
    run.add_argument("--scheduler-host", help="a luigid central scheduler (default: a local scheduler)")
    run.add_argument("--scheduler-port", type=int, default=8082, help="the luigid scheduler's port")
    run.set_defaults(func=cmd_run)
    dvc = commands.add_parser("dvc-yaml", help="write dvc.yaml from the Luigi graph")
    dvc.add_argument("--check", action="store_true", help="exit 1 when dvc.yaml is out of date")
    dvc.set_defaults(func=cmd_dvc_yaml)
    plan = commands.add_parser("plan", help="what the study would submit to SLURM (executor.slurm), as JSON; "
                                            "runs nothing")
    plan.add_argument("--heads", type=int, help="heads in the study (default: those acquired in data/raw)")
    plan.set_defaults(func=cmd_plan)
    params_doc = commands.add_parser("params-doc", help="write docs/parameters.md from pipeline/core/config.py")
    params_doc.add_argument("--check", action="store_true", help="exit 1 when docs/parameters.md is out of date")
    params_doc.set_defaults(func=cmd_params_doc)
    doctor = commands.add_parser("doctor", help="list every method and whether its tool is available")
    doctor.add_argument("--configured", action="store_true",
                        help="exit 1, naming each, when a method params.yaml asks for is missing")
    doctor.set_defaults(func=cmd_doctor)
    predict = commands.add_parser("predict",
                                  help="segment a head (.nii, .nii.gz, .mgz, .mgh), a PNG slice or a folder")
    predict.add_argument("--model", required=True, help="a trained model folder, models/<segmenter>-<stripper>")
    predict.add_argument("--input", required=True,
                         help="a T1 head (.nii, .nii.gz, .mgz, .mgh), a .png slice, or a folder")
    predict.add_argument("--output", required=True, help="folder for the label maps")
    predict.add_argument("--slices", choices=["brain", "reference"], default="brain",
                         help="brain: every plane of the brain in each of the model's views, fused (default); "
                              "reference: only the axial plane at the "
                              "head's reference level (the seed project's single slice)")
    predict.add_argument("--allow-non-t1", action="store_true",
                         help="segment a head whose contrast is not T1-like (flagged in tissue_volumes.tsv) "
                              "instead of refusing it")
    predict.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                         help="auto: the GPU when torch sees one")
    predict.add_argument("--tta", action="store_true", help="nnU-Net's test-time mirroring, over the axes its trainer "
                         "allows (never in sagittal slices)")
    predict.add_argument("--precision", choices=get_args(Precision), default="auto", help=PRECISION_HELP)
    predict.add_argument("--window", choices=get_args(Window), default="nnunet", help=WINDOW_HELP)
    predict.add_argument("--executor", choices=["local", "slurm"], default="local",
                         help="slurm: each head as a SLURM job with a GPU (executor.slurm of the params.yaml here)")
    predict.add_argument("--fold", choices=["all", "0", "1", "2", "3", "4"],
                         help="the model's fold (default: the one it was trained on)")
    predict.set_defaults(func=cmd_predict)
    bench = commands.add_parser("bench", help="benchmarks that print JSON figures").add_subparsers(
        dest="what", required=True)
    synth = bench.add_parser("synth", help="synthesis speed")
    synth.add_argument("--labels", help="a 1 mm label volume (default: "
                       "../shared/data/synthseg-label-maps/training_seg_01.nii.gz)")
    synth.add_argument("--n", type=int, default=200, help="slices to synthesize")
    synth.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    synth.set_defaults(func=cmd_bench_synth)
    train = bench.add_parser("train", help="seconds per training iteration, and real Dice against training time")
    train.add_argument("--study", default=".", help="a study folder after dvc repro (default: here)")
    train.add_argument("--combo", help="segmenter-stripper: which exported set to train on (default: the study's "
                                        "first, as its params.yaml lists the methods)")
    train.add_argument("--eval-every", type=int, default=2,
                       help="score the real test heads (whole brains, 3D) every N epochs")
    train.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a params.yaml override, as dvc exp run -S (repeatable)")
    train.add_argument("--compile", action="store_true",
                       help="torch.compile the network (nnU-Net compiles on CUDA only); its compile time is reported")
    train.add_argument("--minutes", type=float, help="stop at the first epoch's end past this much training time "
                                                     "(scored then); default: the profile's whole schedule")
    train.set_defaults(func=cmd_bench_train)
    bench_predict = bench.add_parser("predict", help="planes per second and seconds per whole head of a trained model")
    bench_predict.add_argument("--model", required=True, help="a trained model folder, models/<segmenter>-<stripper>")
    bench_predict.add_argument("--input", required=True, help="a T1 head, or a folder of them")
    bench_predict.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                               help="auto: the GPU when torch sees one")
    bench_predict.add_argument("--batch-size", type=int, help="tiles a network call (default: sized to the device; "
                                                              "1: one at a time, as nnU-Net predicts an image)")
    bench_predict.add_argument("--precision", choices=get_args(Precision), default="auto", help=PRECISION_HELP)
    bench_predict.add_argument("--window", choices=get_args(Window), default="nnunet", help=WINDOW_HELP)
    bench_predict.set_defaults(func=cmd_bench_predict)
    bench_strip = bench.add_parser("strip", help="each skull stripper's seconds, brain volume and agreement on heads")
    bench_strip.add_argument("--input", required=True, help="a T1 head, or a folder of them")
    bench_strip.add_argument("--method", action="append", choices=sorted(get_args(StripMethod)), required=True,
                             help="a stripper (repeat for several)")
    bench_strip.set_defaults(func=cmd_bench_strip)
    device = bench.add_parser("device", help="synthesis, prediction and training on this machine's device, "
                                             "about --seconds each")
    device.add_argument("--study", default=".", help="a study folder after dvc repro (default: here)")
    device.add_argument("--combo", help="segmenter-stripper: the model and set to use (default: the study's first)")
    device.add_argument("--seconds", type=float, default=60.0, help="about how long each benchmark runs")
    device.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a params.yaml override for the training, as dvc exp run -S (repeatable)")
    device.set_defaults(func=cmd_bench_device)
    real = bench.add_parser("real", help="a study on real scans scored against reference labels")
    real.add_argument("--bids-root", required=True, help="a BIDS folder of real T1w scans")
    real.add_argument("--reference", help="a BIDS derivative of their reference labels (without: dice.real only)")
    real.add_argument("--subjects", nargs="*", default=[], help="subject labels (default: every subject)")
    real.add_argument("--test-fraction", type=float, default=0.4, help="share of subjects held out")
    real.add_argument("--workdir", help="the study's folder, reused between runs (default: a new temporary one)")
    real.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a params.yaml override, as dvc exp run -S (repeatable)")
    real.set_defaults(func=cmd_bench_real)
    cross = bench.add_parser("cross-site", help="train at one site, score another site's heads (clean and degraded) "
                                                "against its reference labels")
    cross.add_argument("--train-root", help="the training site's BIDS folder (default: ../shared/data/ds000011 "
                                            "beside the project)")
    cross.add_argument("--train-subjects", nargs="*", default=[], help="its subjects (default: every one)")
    cross.add_argument("--train-test-fraction", type=float, default=0.2,
                       help="share of the training site held out for its own dice.real")
    cross.add_argument("--test-root", help="the test site's BIDS folder (default: ../shared/data/oasis-manual)")
    cross.add_argument("--test-subjects", nargs="*", default=[], help="its subjects (default: every one)")
    cross.add_argument("--reference", help="the test site's reference labels (default: TEST_ROOT/derivatives/manual)")
    cross.add_argument("--reference-scheme", choices=["table", "freesurfer"], default="table",
                       help="how the reference labels name tissues (evaluate.reference_scheme)")
    cross.add_argument("--conditions", nargs="+",
                       help="clean, <axial|coronal>-<mm>mm (thick slices), <axial|coronal>-<mm>mm-grid (a grid of "
                            "thick slices), bias, noise (default: clean, axial and coronal 3 and 5 mm, "
                            "coronal-1.5mm-grid, bias, noise)")
    cross.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="where the test heads are predicted")
    cross.add_argument("--workdir", help="the study's folder, reused between runs (default: a new temporary one)")
    cross.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a params.yaml override of the training study, as dvc exp run -S (repeatable)")
    cross.set_defaults(func=cmd_bench_cross_site)
    return main


def warnings_to_debug_log(debug: bool) -> None:
    """Python warnings (nnU-Net's, torch's, nibabel's FutureWarnings: the pipeline raises none) are not the user's
    to act on: they go to the log at debug level, which ``--debug`` shows."""
    log = logging.getLogger("pipeline.warnings")
    log.setLevel(logging.DEBUG if debug else logging.INFO)

    def to_debug(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: object = None,
                 line: str | None = None) -> None:
        log.debug("%s:%d: %s: %s", filename, lineno, category.__name__, message)

    warnings.showwarning = to_debug


def main(argv: list[str] | None = None) -> int:
    from pipeline.core.errors import user_errors

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("luigi-interface").setLevel(logging.WARNING)  # its "Loaded ['luigi.cfg']" is not the user's
    args = parser().parse_args(argv)
    warnings_to_debug_log(args.debug)
    # our stages report progress and errors themselves; Luigi's tracebacks only with --debug
    logging.getLogger("luigi-interface").setLevel(logging.WARNING if args.debug else logging.CRITICAL)
    try:
        return args.func(args)
    except user_errors() as error:
        if args.debug:
            raise
        print(f"error: {error} (python -m pipeline --debug ... shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
