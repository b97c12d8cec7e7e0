"""Distillation: teacher taps, the stage-1 / stage-2 losses, data, the trainer's resume and export, `dfkd distill`."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from dfkd.cli.distill import distill_command
from dfkd.data.digits import load_digits_split
from dfkd.data.image_folder import LabelledFolder, open_image_folder, write_image_folder
from dfkd.distill import AugmentConfig, DistillationLoss, DistillConfig, OptimConfig, train_student
from dfkd.distill.inputs.batch import BatchPrep
from dfkd.distill.inputs.loaders import labels_of, subset
from dfkd.distill.losses import teacher_affine
from dfkd.distill.taps import BlockTaps, Stage, TeacherTaps, default_stage, teacher_stages
from dfkd.models import Aligner
from dfkd.recipe_loader import build, load_recipe
from synth.config import LossWeights, Schedule, SynthesisConfig
from synth.run.engine import synthesize
from synth.shards.writer import write_shard
from synth.teachers.small_cnn import SmallBNCNN
from synth.teachers.sources import load_teacher

torch.set_num_threads(1)
STUDENT = "dearkd_pico_patch4_32"
NO_AUG = AugmentConfig(
    rand_augment=None, color_jitter=0.0, scale=(1.0, 1.0), hflip=0.0, mixup=0.0, cutmix=0.0, reprob=0.0, smoothing=0.0
)


@pytest.fixture(scope="session")
def shards(digits_teacher, tmp_path_factory) -> str:
    """40 synthesized 32-px images (4 per digit) with stored teacher logits."""
    out = tmp_path_factory.mktemp("shards")
    synthesize(
        SynthesisConfig(
            teacher=digits_teacher,
            classes="all",
            per_class=4,
            classes_per_batch=10,
            images_per_class=2,
            threads=1,
            device="cpu",
            schedule=Schedule(resolutions=(16, 32), iterations=(10, 10)),
            losses=LossWeights(bn=1.0),
        ),
        out,
    )
    return str(out)


@pytest.fixture(scope="session")
def digits_folders(tmp_path_factory) -> tuple[str, str]:
    """Real digits as PNG class folders: (train, test)."""
    split = load_digits_split()
    root = tmp_path_factory.mktemp("digits")
    return (
        str(write_image_folder(split.train_images, split.train_labels, root / "train")),
        str(write_image_folder(split.test_images, split.test_labels, root / "test")),
    )


def _config(shards, teacher, **kw) -> DistillConfig:
    base = dict(
        shards=shards,
        teacher=teacher,
        student=STUDENT,
        epochs=2,
        stage1_epochs=1,
        batch_size=8,
        workers=0,
        threads=1,
        device="cpu",
        drop_path=0.0,
        optim=OptimConfig(lr=0.02, warmup_epochs=0),
    )
    return DistillConfig(**{**base, **kw})


class Recorder:
    """A stub teacher: logits = fixed linear map of the per-channel image means; remembers its inputs."""

    def __init__(self, weight: torch.Tensor):
        self.weight, self.inputs = weight, []

    def __call__(self, x):
        self.inputs.append(x.clone())
        return x.mean(dim=(2, 3)) @ self.weight, []


def _run_cli(*args):
    """`dfkd distill ARGS` in-process (the command object itself, registered or not)."""
    return CliRunner().invoke(distill_command, [str(a) for a in args])


# ---------------------------------------------------------------- losses


def test_hard_soft_stored_losses_by_hand():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    z_cls, z_dist = torch.randn(4, 5), torch.randn(4, 5)
    target = F.one_hot(torch.tensor([0, 1, 2, 3]), 5).float() * 0.9 + 0.02
    teacher = Recorder(torch.randn(3, 5))
    t_logits = teacher(x)[0]
    ce_cls = -(target * z_cls.log_softmax(1)).sum(1).mean()

    hard = DistillationLoss("hard", teacher, w_dist=0.5)
    loss, parts = hard(x, (z_cls, z_dist), target, stage=1)
    ce_hard = -z_dist.log_softmax(1)[torch.arange(4), t_logits.argmax(1)].mean()
    torch.testing.assert_close(parts["dist"], ce_hard)
    torch.testing.assert_close(loss, ce_cls + 0.5 * ce_hard)

    tau = 2.0
    soft = DistillationLoss("soft", teacher, tau=tau)
    p = (t_logits / tau).softmax(1)
    kl = (p * (p.log() - (z_dist / tau).log_softmax(1))).sum(1).mean() * tau**2
    torch.testing.assert_close(soft(x, (z_cls, z_dist), target, stage=1)[1]["dist"], kl)

    stored = DistillationLoss("stored", None, tau=tau)
    q = torch.softmax(torch.randn(4, 5), 1)
    kl_q = (q * (q.log() - (z_dist / tau).log_softmax(1))).sum(1).mean() * tau**2
    loss, parts = stored(x, (z_cls, z_dist), target, stage=1, stored_probs=q)
    torch.testing.assert_close(parts["dist"], kl_q)
    torch.testing.assert_close(loss, ce_cls + kl_q)


def test_stage2_never_calls_teacher_and_uses_labels_on_both_heads():
    teacher = Recorder(torch.randn(3, 5))
    z_cls, z_dist = torch.randn(4, 5), torch.randn(4, 5)
    target = torch.softmax(torch.randn(4, 5), 1)
    loss_fn = DistillationLoss("hard", teacher, aligners=[Aligner(8, 3)])
    loss, parts = loss_fn(torch.randn(4, 3, 8, 8), (z_cls, z_dist), target, stage=2)
    assert teacher.inputs == [] and parts["hid"] == 0
    ce = lambda z: -(target * z.log_softmax(1)).sum(1).mean()  # noqa: E731
    torch.testing.assert_close(loss, ce(z_cls) + ce(z_dist))
    loss_fn(torch.randn(4, 3, 8, 8), (z_cls, z_dist), target, stage=1)
    assert len(teacher.inputs) == 1


def test_mixed_batch_hard_labels_come_from_teacher_on_the_same_mixed_image():
    torch.manual_seed(0)
    np.random.seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    s_mean, s_std, t_mean, t_std = (0.5,) * 3, (0.5,) * 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    augment = replace(NO_AUG, mixup=0.8, mix_prob=1.0, smoothing=0.1)
    prep = BatchPrep(s_mean, s_std, 5, augment, torch.device("cpu"), 8, tau=2.0)
    stored_logits = torch.randn(6, 5)
    batch = prep(images, labels, stored_logits)

    x01 = images.float() / 255
    diff = x01 - x01.flip(0)
    lam = float(((batch.inputs * 0.5 + 0.5 - x01.flip(0)) * diff).sum() / diff.square().sum())
    assert 0 < lam < 1
    torch.testing.assert_close(batch.inputs * 0.5 + 0.5, lam * x01 + (1 - lam) * x01.flip(0))
    smooth = F.one_hot(labels, 5).float() * 0.9 + 0.1 / 5
    torch.testing.assert_close(batch.target, lam * smooth + (1 - lam) * smooth.flip(0))
    probs = torch.softmax(stored_logits / 2.0, 1)
    torch.testing.assert_close(batch.stored_probs, lam * probs + (1 - lam) * probs.flip(0))

    teacher = Recorder(torch.randn(3, 5))
    loss_fn = DistillationLoss("hard", teacher, renorm=(s_mean, s_std, t_mean, t_std))
    z = torch.randn(6, 5)
    _, parts = loss_fn(batch.inputs, (z, z), batch.target, stage=1)
    mixed01 = lam * x01 + (1 - lam) * x01.flip(0)
    seen = teacher.inputs[0]
    torch.testing.assert_close(
        seen, (mixed01 - torch.tensor(t_mean).view(1, 3, 1, 1)) / torch.tensor(t_std).view(1, 3, 1, 1)
    )
    y_t = (seen.mean(dim=(2, 3)) @ teacher.weight).argmax(1)
    torch.testing.assert_close(parts["dist"], F.cross_entropy(z, y_t))


def test_function_matching_matches_teacher_on_the_mixed_view_with_both_heads_and_no_labels():
    torch.manual_seed(1)
    np.random.seed(1)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    prep = BatchPrep(
        (0.5,) * 3, (0.5,) * 3, 5, replace(NO_AUG, mixup=1.0, cutmix=1.0, mix_prob=1.0), torch.device("cpu"), 8
    )
    batch = prep(images, torch.tensor([0, 1, 2, 3, 4, 0]))
    assert not torch.equal(batch.inputs, prep.normalize(images))  # every batch is mixed
    teacher, tau = Recorder(torch.randn(3, 5)), 2.0
    loss_fn = DistillationLoss("function_matching", teacher, tau=tau, w_cls=0.5, a_hid=0.0)
    z_cls, z_dist = torch.randn(6, 5), torch.randn(6, 5)
    loss, parts = loss_fn(batch.inputs, (z_cls, z_dist), batch.target, stage=1)
    assert len(teacher.inputs) == 1 and torch.equal(teacher.inputs[0], batch.inputs)  # the very mixed view
    p = (teacher.inputs[0].mean(dim=(2, 3)) @ teacher.weight / tau).softmax(1)
    kl = lambda z: (p * (p.log() - (z / tau).log_softmax(1))).sum(1).mean() * tau**2  # noqa: E731
    torch.testing.assert_close(parts["cls"], kl(z_cls))
    torch.testing.assert_close(parts["dist"], kl(z_dist))
    torch.testing.assert_close(loss, 0.5 * kl(z_cls) + kl(z_dist))
    other_labels = torch.softmax(torch.randn(6, 5), 1)  # labels are not used at all
    torch.testing.assert_close(loss_fn(batch.inputs, (z_cls, z_dist), other_labels, stage=1)[0], loss)


def test_teacher_affine_maps_student_to_teacher_normalisation():
    x01 = torch.rand(2, 3, 4, 4)
    scale, shift = teacher_affine((0.5,) * 3, (0.5,) * 3, (0.1, 0.2, 0.3), (0.3, 0.2, 0.1))
    teacher_in = (x01 - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.3, 0.2, 0.1]).view(1, 3, 1, 1)
    torch.testing.assert_close((x01 - 0.5) / 0.5 * scale + shift, teacher_in)


def test_hidden_loss_flows_through_aligner_into_student_only(digits_teacher):
    torch.manual_seed(0)
    teacher = load_teacher(digits_teacher)
    stages = teacher_stages(teacher, 32)
    assert [s.module for s in stages] == ["stages.0.1", "stages.1.1", "stages.2.1"]
    assert [s.reduction for s in stages] == [1, 2, 4] and stages[2].hw == (8, 8)
    student = timm.create_model(STUDENT, num_classes=10)
    student.set_distilled_training(True)
    aligner = Aligner(student.embed_dim, stages[2].channels, stages[2].hw)
    taps = BlockTaps(student, [0])
    loss_fn = DistillationLoss("hard", TeacherTaps(teacher, [stages[2]]), [aligner], w_cls=0, w_dist=0)
    x = torch.randn(2, 3, 32, 32)
    loss, parts = loss_fn(x, student(x), torch.full((2, 10), 0.1), 1, taps.take(), student.patch_embed.grid_size)
    assert parts["hid"] > 0
    loss.backward()
    for p in (aligner.dw.weight, aligner.pw.weight, student.blocks[0].attn.v, student.patch_embed.proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    for p in (student.blocks[1].attn.qkv.weight, student.head.weight, student.head_dist.weight):  # after block 0
        assert p.grad is None or not p.grad.any()
    assert all(p.grad is None and not p.requires_grad for p in teacher.model.parameters())


def test_default_stage_matches_stride_else_nearest():
    stages = [Stage(f"s{i}", 8, (1, 1), r) for i, r in enumerate((2, 4, 8, 16, 32))]
    assert default_stage(stages, 16) == 3 and default_stage(stages, 4) == 1
    assert default_stage(stages, 12) == 3  # log-nearest: 16 is nearer to 12 than 8
    assert default_stage(stages[:2] + stages[3:], 8) == 2  # 4 and 16 tie: the deeper stage


def test_torchvision_stages_by_probe():
    import torchvision

    class Holder:
        model = torchvision.models.resnet18(num_classes=3).eval()

    stages = teacher_stages(Holder(), 64)
    assert [(s.module, s.reduction) for s in stages] == [
        ("relu", 2),
        ("layer1", 4),
        ("layer2", 8),
        ("layer3", 16),
        ("layer4", 32),
    ]


# ---------------------------------------------------------------- data


def test_image_folder_ids_and_seeded_stratified_subset(digits_folders):
    train, _ = digits_folders
    dataset = open_image_folder(train, 10)
    assert isinstance(dataset, LabelledFolder) and dataset.class_to_idx["7"] == 7 and len(dataset) == 1400
    labels = labels_of(dataset)
    small = subset(dataset, 0.1, seed=3)
    expected = sum(max(1, round(0.1 * n)) for n in np.bincount(labels))
    assert len(small) == expected
    assert np.array_equal(np.bincount(labels_of(small)), [max(1, round(0.1 * n)) for n in np.bincount(labels)])
    assert small.indices == subset(dataset, 0.1, seed=3).indices != subset(dataset, 0.1, seed=4).indices
    assert subset(dataset, 1.0, seed=3) is dataset


# ---------------------------------------------------------------- trainer


def test_teacher_runs_once_per_stage1_step_and_never_in_stage2(shards, digits_teacher, tmp_path, monkeypatch):
    calls = []
    head = SmallBNCNN.forward_head  # every teacher forward ends here: the plain one and timm's feature API alike
    monkeypatch.setattr(SmallBNCNN, "forward_head", lambda self, x, **kw: calls.append(len(x)) or head(self, x, **kw))
    per_epoch = []
    result = train_student(
        _config(shards, digits_teacher), tmp_path, on_epoch=lambda record: per_epoch.append(calls.count(8))
    )
    assert per_epoch == [40 // 8, 40 // 8]  # 5 teacher forwards in epoch 1 (stage 1), none in epoch 2
    assert result["pairs"] == ["0:2"] and result["hidden_kd"]  # last MHCA block, stride-4 stage for patch 4


def test_training_lowers_the_loss(shards, digits_teacher, tmp_path):
    config = _config(
        shards, digits_teacher, epochs=4, stage1_epochs=4, augment=NO_AUG, optim=OptimConfig(lr=0.3, warmup_epochs=0)
    )
    result = train_student(config, tmp_path)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and losses == sorted(losses, reverse=True) and losses[-1] < 0.9 * losses[0], losses
    assert result["final_loss"] == losses[-1]


CLI_ARGS = [
    "--student",
    STUDENT,
    "--epochs",
    "2",
    "--stage1-epochs",
    "1",
    "--batch-size",
    "8",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--workers",
    "0",
    "--lr",
    "0.02",
    "--warmup-epochs",
    "0.5",
    "--quiet",
]


def test_interrupt_and_resume_reproduce_the_uninterrupted_run(shards, digits_teacher, tmp_path):
    straight = _run_cli("--shards", shards, "--teacher", digits_teacher, *CLI_ARGS, "--out", tmp_path / "a", "--json")
    assert straight.exit_code == 0, straight.output

    def stop(record):
        raise KeyboardInterrupt

    config = _config(
        shards, digits_teacher, optim=OptimConfig(lr=0.02, warmup_epochs=0.5), augment=AugmentConfig(), drop_path=0.1
    )  # the same settings as CLI_ARGS: DeiT augmentations and stochastic depth on
    with pytest.raises(KeyboardInterrupt):
        train_student(config, tmp_path / "b", on_epoch=stop)
    assert (tmp_path / "b" / "checkpoint.pt").is_file() and not (tmp_path / "b" / "student.pth").exists()
    again = _run_cli("--shards", shards, "--teacher", digits_teacher, *CLI_ARGS, "--out", tmp_path / "b")
    assert again.exit_code == 2 and "pass --resume" in again.stderr
    resumed = _run_cli(
        "--shards", shards, "--teacher", digits_teacher, *CLI_ARGS, "--out", tmp_path / "b", "--resume", "--json"
    )
    assert resumed.exit_code == 0, resumed.output
    a = torch.load(tmp_path / "a" / "student.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "student.pth", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["stage"]) for r in records] == [(1, 1), (2, 2)]
    summary = json.loads(straight.stdout)
    assert summary["final_loss"] == json.loads(resumed.stdout)["final_loss"] == records[-1]["loss"]


def test_student_file_loads_with_timm_and_gives_identical_outputs(shards, digits_teacher, tmp_path):
    train_student(_config(shards, digits_teacher, epochs=1, stage1_epochs=1), tmp_path)
    info = json.loads((tmp_path / "student.json").read_text())
    assert info == {
        "model": STUDENT,
        "num_classes": 10,
        "input_size": 32,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "epochs": 1,
        "model_kwargs": {},
    }
    loaded = timm.create_model(
        info["model"], num_classes=info["num_classes"], checkpoint_path=str(tmp_path / "student.pth")
    ).eval()
    trained = timm.create_model(STUDENT, num_classes=10).eval()
    trained.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["student"])
    x = torch.randn(3, 3, 32, 32)
    assert not torch.equal(loaded(x), timm.create_model(STUDENT, num_classes=10).eval()(x))
    torch.testing.assert_close(loaded(x), trained(x), rtol=0, atol=0)


def test_image_folder_training_with_subset_and_validation(digits_folders, digits_teacher, tmp_path):
    train, test = digits_folders
    result = _run_cli(
        "--images",
        train,
        "--subset",
        "0.05",
        "--val-data",
        test,
        "--val-every",
        "1",
        "--teacher",
        digits_teacher,
        "--distillation",
        "soft",
        "--tau",
        "2",
        "--pairs",
        "1:1,0:2",
        *CLI_ARGS,
        "--out",
        tmp_path,
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images"] == 70 and 0 <= summary["val_top1"] <= 1 and summary["pairs"] == ["1:1", "0:2"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("val_top1" in r for r in records) and records[-1]["val_top1"] == summary["val_top1"]


def test_stored_logits_need_no_teacher(shards, tmp_path, monkeypatch):
    monkeypatch.setattr("dfkd.distill.build.load_teacher", lambda *a, **k: pytest.fail("teacher loaded"))
    result = _run_cli("--shards", shards, "--distillation", "stored", *CLI_ARGS, "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["hidden_kd"] is False and summary["pairs"] == [] and summary["distillation"] == "stored"


# ---------------------------------------------------------------- CLI errors


@pytest.fixture
def non_square_shards(tmp_path) -> str:
    out = tmp_path / "wide"
    out.mkdir()
    write_shard(
        out / "shard-000000.h5",
        np.zeros((4, 32, 16, 3), np.uint8),
        np.arange(4) % 2,
        np.arange(4),
        np.zeros((4, 10), np.float32),
        num_classes=10,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        teacher={},
        config={},
    )
    return str(out)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "shard directory"),
        ("classes", "has 4 classes but the shards"),
        ("non_square", "32x16 images; distillation needs square images"),
        ("input_size", "cannot be reconciled"),
        ("empty", "no shards"),
        ("pairs", "hidden pair '5:0': block must be in 0-1, stage in 0-2"),
    ],
)
def test_cli_errors_exit_2_with_one_line(
    case, message, shards, digits_teacher, random_teacher, non_square_shards, tmp_path
):
    args = {
        "missing": ["--shards", tmp_path / "nope", "--teacher", digits_teacher],
        "classes": ["--shards", shards, "--teacher", random_teacher],
        "non_square": ["--shards", non_square_shards, "--teacher", digits_teacher],
        "input_size": ["--shards", shards, "--teacher", digits_teacher, "--input-size", "30"],
        "empty": ["--shards", tmp_path, "--teacher", digits_teacher],
        "pairs": ["--shards", shards, "--teacher", digits_teacher, "--pairs", "5:0"],
    }[case]
    result = _run_cli(*args, *CLI_ARGS, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "out").exists()


RECIPES = sorted(
    p.name
    for pattern in ("dearkd_*.yaml", "df_dearkd_distill*.yaml")
    for p in (Path(__file__).parents[1] / "recipes").glob(pattern)
)


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_are_valid_distill_settings(name):
    config = build(DistillConfig, load_recipe(str(Path(__file__).parents[1] / "recipes" / name), "distill"))
    data_free = config.shards is not None  # synthesized data: function matching, no stage 2 (docs/method.md)
    assert (config.epochs, config.stage1) in ({(300, 300), (80, 80)} if data_free else {(300, 250), (1000, 800)})
    assert (config.loss.distillation == "function_matching") == data_free
    assert config.subset == {"10": 0.1, "25": 0.25, "50": 0.5}.get(name.removesuffix(".yaml")[-2:], 1.0)
