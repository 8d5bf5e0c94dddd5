from pathlib import Path

import pytest
import yaml

from pipeline.core.config import Config, ConfigError, load_config, parse_config

from .conftest import PROJECT_ROOT


def test_committed_params_are_valid_and_complete():
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    config = parse_config(raw)
    # DVC names per-method keys (strip.<method>, segment.<method>): every one must be written out.
    for method in config.strip.methods:
        assert method in raw["strip"], f"params.yaml lacks strip.{method}"
    for method in config.segment.methods:
        assert method in raw["segment"], f"params.yaml lacks segment.{method}"


def test_defaults_fill_missing_sections():
    config = parse_config({"seed": 7})
    assert config.seed == 7
    assert config.strip.methods == Config().strip.methods


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"synth": {"n_trian": 5}}, "synth.n_trian"),
        ({"strip": {"methods": ["bet2000"]}}, "strip.methods.0"),
        ({"strip": {"methods": []}}, "strip.methods"),
        ({"synth": {"n_train": "many"}}, "synth.n_train"),
        ({"train": {"profile": "huge"}}, "train.profile"),
        ({"acquire": {"source": "ftp"}}, "acquire.source"),
        ({"bogus": 1}, "bogus"),
        ({"train": {"seeds": [1, 1]}}, "train.seeds"),
    ],
)
def test_invalid_params_name_the_key(raw, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        parse_config(raw)


def test_unknown_key_is_called_misspelled():
    with pytest.raises(ConfigError, match="unknown key 'synth.n_trian'"):
        parse_config({"synth": {"n_trian": 5}})


def test_top_level_must_be_a_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        parse_config([1, 2])


def test_load_config_reports_bad_yaml(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_combos_cover_every_pair():
    config = parse_config({"strip": {"methods": ["deepbet"]}, "segment": {"methods": ["hmrf"]}})
    assert config.combos() == [("hmrf", "deepbet")]


def test_the_training_seed_defaults_to_the_study_seed_and_can_be_varied_alone():
    config = parse_config({"seed": 42})
    assert config.train.training_seed(config.seed) == 42
    config = parse_config({"seed": 42, "train": {"seed": 7}})
    assert config.train.training_seed(config.seed) == 7


def test_train_seeds_lists_every_training_run_and_defaults_to_the_one_seed():
    assert parse_config({"seed": 42}).train.training_seeds(42) == [42]
    assert parse_config({"seed": 42, "train": {"seed": 7}}).train.training_seeds(42) == [7]
    assert parse_config({"train": {"seeds": [3, 1, 2]}}).train.training_seeds(42) == [3, 1, 2]


def test_the_training_runs_in_bfloat16_on_a_cpu_only_where_asked_or_native_and_a_gpu_never_in_float32():
    """train.precision: auto trains in mixed precision where the CPU computes bfloat16 natively (float32 elsewhere);
    the trainer's autocast turns a real convolution's arithmetic to bfloat16 on a CPU in mixed precision only, and
    float32 on a GPU (which nnU-Net trains in float16 whatever it is asked) is refused with what to set."""
    from types import SimpleNamespace

    import torch

    from pipeline.core.io import InputError
    from pipeline.nnunet.trainers.nnUNetTrainerPipeline import nnUNetTrainerPipeline
    from pipeline.runtime.devices import native_bfloat16_cpu, training_mixed_precision

    assert training_mixed_precision("auto", "cpu") is native_bfloat16_cpu()
    assert training_mixed_precision("mixed", "cpu") and not training_mixed_precision("float32", "cpu")
    assert training_mixed_precision("auto", "cuda") and training_mixed_precision("mixed", "cuda")
    with pytest.raises(InputError, match="set train.precision to auto or mixed"):  # one line, no traceback
        training_mixed_precision("float32", "cuda")
    assert parse_config({}).train.precision == "auto"

    conv, image = torch.nn.Conv2d(1, 4, 3), torch.rand(1, 1, 16, 16)
    for mixed, device, dtype in [(True, "cpu", torch.bfloat16), (False, "cpu", torch.float32),
                                 (True, "cuda", torch.float32)]:  # a GPU: nnU-Net's own float16 autocast, not this
        trainer = SimpleNamespace(mixed_precision=mixed, device=torch.device(device))
        with nnUNetTrainerPipeline.cpu_autocast(trainer):
            assert conv(image).dtype == dtype, (mixed, device)


def test_the_cpu_profiles_train_with_nnunets_adamw_and_the_gpu_and_standard_ones_with_its_sgd():
    """The profiles measured on CPUs (ci, quick, thorough) train with nnU-Net's AdamW, quick (and ci) from 0.002,
    thorough from nnU-Net's 0.001; gpu and standard keep nnU-Net's own SGD, from its own rate. The trainer's
    ``configure_optimizers`` builds the named one through nnU-Net's own code (the rate the plans make the trainer
    start from is checked on trained checkpoints: test_training, the e2e study)."""
    import torch

    from pipeline.nnunet.trainers.nnUNetTrainerPipeline import nnUNetTrainerPipeline, starting_rate

    profiles = parse_config({}).train.profiles
    assert {name: profile.optimizer for name, profile in profiles.items()} == {
        "ci": "adam", "quick": "adam", "thorough": "adam", "gpu": "sgd", "standard": "sgd"}
    assert {name: profile.learning_rate for name, profile in profiles.items()} == {
        "ci": 0.002, "quick": 0.002, "thorough": None, "gpu": None, "standard": None}
    # the rate each starts from, as the trainer resolves it (nnU-Net's own where the profile names none)
    assert {name: starting_rate(profile.model_dump(), 1e-2) for name, profile in profiles.items()} == {
        "ci": 2e-3, "quick": 2e-3, "thorough": 1e-3, "gpu": 1e-2, "standard": 1e-2}
    assert load_config(PROJECT_ROOT / "params.yaml").train.profiles == profiles
    trainer = object.__new__(nnUNetTrainerPipeline)  # its optimizer alone: no plans, no network planning
    trainer.network, trainer.weight_decay, trainer.num_epochs = torch.nn.Conv2d(1, 4, 3), 3e-5, 4
    trainer.device = torch.device("cpu")
    for name, rate, kind in [("adam", 1e-3, torch.optim.AdamW), ("sgd", 1e-2, torch.optim.SGD)]:
        trainer.optimizer_name, trainer.initial_lr = name, rate
        optimizer, schedule = trainer.configure_optimizers()
        group = optimizer.param_groups[0]
        assert type(optimizer) is kind and group["lr"] == rate, (name, optimizer)
        assert group.get("amsgrad", False) == (name == "adam") and group.get("nesterov", False) == (name == "sgd")
        assert group["fused"]  # torch's fused kernel, on the network's own weights
        assert all(a is b for a, b in zip(group["params"], trainer.network.parameters(), strict=True))
        schedule.step(3)
        assert optimizer.param_groups[0]["lr"] < rate  # nnU-Net's poly decay, both
    trainer.device = torch.device("mps")  # a device the fused optimizer was not measured on: nnU-Net's as it is
    assert not trainer.configure_optimizers()[0].param_groups[0]["fused"]


def test_the_auto_profile_is_quick_without_a_gpu_and_the_gpu_profile_with_one():
    """train.profile: auto (the default) trains the quick schedule on this machine, which has no GPU, and the gpu
    profile's network, batch and augmentation on one; naming a profile overrides it on either."""
    import torch

    from pipeline.nnunet.runner import loader_processes, trainer_name
    from pipeline.runtime.devices import torch_device

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: auto would choose the gpu profile here")
    config = load_config(PROJECT_ROOT / "params.yaml")
    device = torch_device(config.train.device)
    assert (config.train.profile, device, config.train.profile_name(device)) == ("auto", "cpu", "quick")
    assert config.train.active_profile(device) == config.train.profiles["quick"]
    assert (trainer_name(config.train, "cpu"), loader_processes(config.train, "cpu", 2)) == ("nnUNetTrainerPipeline", 0)
    assert config.train.profile_name("cuda") == "gpu"
    assert trainer_name(config.train, "cuda") == "nnUNetTrainerPipelineSynthAug"  # the gpu profile's augmentation
    chosen = parse_config({"train": {"augmentation": "nnunet"}})  # one place to choose: it wins over the profile
    assert trainer_name(chosen.train, "cuda") == trainer_name(chosen.train, "cpu") == "nnUNetTrainerPipeline"
    assert loader_processes(config.train, "cuda", 2) == config.train.profiles["gpu"].loader_processes
    named = parse_config({"train": {"profile": "standard"}})
    assert named.train.profile_name("cuda") == named.train.profile_name("cpu") == "standard"
    with pytest.raises(ConfigError, match="auto chooses between the profiles gpu and quick; train.profiles lacks gpu"):
        parse_config({"train": {"profiles": {"quick": {"epochs": 1, "iterations_per_epoch": 1,
                                                       "val_iterations_per_epoch": 1}}}})


def test_every_combo_has_its_own_nnunet_dataset_id_and_name():
    from typing import get_args

    from pipeline.core.config import SegmentMethod, StripMethod
    from pipeline.nnunet.models import nnunet_dataset

    datasets = [nnunet_dataset(seg, strip) for seg in get_args(SegmentMethod) for strip in get_args(StripMethod)]
    assert len({d.id for d in datasets}) == len({d.name for d in datasets}) == len(datasets) == 28
    assert all(100 <= d.id <= 999 and d.name.startswith(f"Dataset{d.id}_") for d in datasets)  # nnU-Net: 3 digits
    assert nnunet_dataset("samseg", "hdbet").name == "Dataset111_samseg_hdbet"


def params_missing_from(params: dict) -> list[str]:
    """The DVC params of dvc.yaml's stages (each matrix item's, for the methods ``params`` lists) that ``params``
    lacks: ``dvc repro`` stops on any of them (MissingParamsError)."""
    items = {"${item.stripper}": params["strip"]["methods"], "${item.segmenter}": params["segment"]["methods"]}
    missing = []
    for stage in yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"].values():
        for key in stage.get("params", []):
            template = next((item for item in items if item in key), None)
            for dotted in [key.replace(template, method) for method in items[template]] if template else [key]:
                node = params
                for part in dotted.split("."):
                    if not isinstance(node, dict) or part not in node:
                        missing.append(dotted)
                        break
                    node = node[part]
    return missing


def test_the_default_params_hold_every_param_dvc_yaml_names():
    assert not params_missing_from(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text()))
    assert params_missing_from({"strip": {"methods": ["deepbet"]}, "segment": {"methods": ["hmrf"]}})


def test_the_original_study_preset_is_valid_and_doctor_names_every_missing_tool_first(tmp_path: Path, monkeypatch,
                                                                                       capsys):
    import shutil

    from pipeline.__main__ import main

    preset = PROJECT_ROOT / "presets" / "original-study.yaml"
    config = load_config(preset)
    assert config.acquire.dataset == "ds002330" and config.harmonize.method == "synthsr"
    assert config.combos() == [(seg, strip) for seg in ("fastsurfer", "fast", "samseg", "synthseg")
                               for strip in ("synthstrip", "hdbet")]
    assert (config.synth.n_train, config.synth.n_test, config.train.profile) == (600, 60, "standard")
    assert not params_missing_from(yaml.safe_load(preset.read_text()))  # dvc repro reads each from params.yaml
    shutil.copy(preset, tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # none of FreeSurfer, FSL, FastSurfer here
    monkeypatch.delenv("FREESURFER_HOME", raising=False)
    monkeypatch.delenv("FSLDIR", raising=False)
    assert main(["doctor", "--configured"]) == 1
    errors = capsys.readouterr().err
    for needed in ("harmonize synthsr", "strip synthstrip", "segment fastsurfer", "segment fast:", "segment synthseg"):
        assert f"params.yaml needs {needed}" in errors, needed
    assert "strip hdbet" not in errors and "segment samseg" not in errors  # these are installed


def test_a_stage_reads_only_the_params_it_declares():
    """Stages read their configuration through a ParamsView of their DVC params: a read of anything else fails,
    so dvc.yaml's params cannot drift from what the code reads (every stage test and study run checks it)."""
    import pickle

    from pipeline.core.config import Config, ParamsView, UndeclaredParameter

    config = Config()
    view = ParamsView(config, frozenset({"seed", "synth", "strip.deepbet", "segment.methods", "strip.methods"}),
                      "example")
    assert view.seed == 42 and view.synth is config.synth and view.workers == config.workers  # workers: schedule
    assert view.strip.deepbet.threshold == 0.5  # a section declared in part: its declared parts
    with pytest.raises(UndeclaredParameter, match=r"stage example reads 'strip\.hdbet'"):
        view.strip.hdbet  # noqa: B018
    with pytest.raises(UndeclaredParameter, match="'evaluate'"):
        view.evaluate  # noqa: B018
    assert view.combos() == config.combos()  # a method reads through the view: segment.methods, strip.methods
    narrow = ParamsView(config, frozenset({"segment.methods"}), "example")
    with pytest.raises(UndeclaredParameter, match="'strip'"):
        narrow.combos()
    assert pickle.loads(pickle.dumps(view)).strip.deepbet == config.strip.deepbet  # to worker processes
    with pytest.raises(UndeclaredParameter):  # not a missing attribute: hasattr and getattr's default see it
        hasattr(view, "evaluate")
    with pytest.raises(UndeclaredParameter):
        getattr(view.strip, "hdbet", None)


def test_running_a_stage_that_reads_an_undeclared_param_fails(tmp_path: Path, monkeypatch):
    from typing import ClassVar

    from pipeline.core.config import UndeclaredParameter
    from pipeline.stages.base import Stage

    class Reads(Stage):
        name = "reads"
        param_keys: ClassVar[tuple[str, ...]] = ("seed",)
        out_template = "out"

        def build(self, out: Path, config) -> None:
            (out / "seed").write_text(str(config.seed))
            (out / "size").write_text(str(config.synth.size))

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 7\n")
    with pytest.raises(UndeclaredParameter, match=r"stage reads reads 'synth'"):
        Reads().run()
    assert not (tmp_path / "out").exists()  # nothing half-written
    Reads.param_keys = ("seed", "synth.size")
    Reads().run()
    assert (tmp_path / "out" / "size").read_text() == "256"


def test_the_configs_defaults_are_params_yaml():
    """One set of defaults: what pipeline/core/config.py assumes for a missing key is what params.yaml says."""
    import yaml

    from pipeline.core.config import Config

    assert Config() == parse_config(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text()))
