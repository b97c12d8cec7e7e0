"""Every torchvision BN classifier works as a teacher (random weights, no download), and the embedding used by the
intra-divergence and triplet losses is the pooled penultimate feature, not a hidden layer of a multi-layer head."""

import pytest
import timm
import torch
import torch.nn as nn
import torchvision

from synth.common.errors import UserError
from synth.config import LossWeights, Schedule
from synth.inversion.invert import invert_batch
from synth.teachers.architectures import build_torchvision, torchvision_head_name
from synth.teachers.sources import IMAGENET_MEAN, IMAGENET_STD, load_teacher
from synth.teachers.teacher import EmbeddingTap, find_bn_layers, teacher_from_model
from synth.teachers.teacher import find_classifier_name as _classifier_name

# Models above this many parameters are skipped to keep the test fast (construction with random init alone takes
# seconds each): regnet_y_128gf/32gf/16gf, regnet_x_32gf/16gf, vgg*_bn, wide_resnet*, resnet101/152,
# resnext101_*, efficientnet_b5-b7, efficientnet_v2_m/l, maxvit_t, densenet161/201, ... The smaller members of
# each family exercise the same code.
MAX_PARAMS = 25e6
# The smallest input each architecture accepts, where 64 px is too small.
MIN_SIZE = {"inception_v3": 80}
# RegNet's builder computes block widths with tensors, so it cannot be built on the meta device to count its
# parameters; these are known to be far above MAX_PARAMS (39 M to 644 M) and are skipped without building them.
KNOWN_HUGE = {
    "regnet_y_128gf",
    "regnet_y_32gf",
    "regnet_y_16gf",
    "regnet_y_8gf",
    "regnet_x_32gf",
    "regnet_x_16gf",
    "regnet_x_8gf",
}


def _bn_classifiers() -> list[tuple[str, int]]:
    names = []
    for name in torchvision.models.list_models(module=torchvision.models):
        if name in KNOWN_HUGE:
            continue
        try:
            with torch.device("meta"):
                model = build_torchvision(name)
        except NotImplementedError:
            model = build_torchvision(name)
        if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
            names.append((name, sum(p.numel() for p in model.parameters())))
    return names


BN_CLASSIFIERS = _bn_classifiers()
SMALL = [name for name, count in BN_CLASSIFIERS if count <= MAX_PARAMS]


def test_the_bn_classifier_list_covers_the_families():
    assert {
        "googlenet",
        "inception_v3",
        "mobilenet_v3_small",
        "resnet18",
        "regnet_y_400mf",
        "densenet121",
        "efficientnet_b0",
        "shufflenet_v2_x0_5",
        "mnasnet0_5",
    } <= set(SMALL)


@pytest.mark.parametrize("name", SMALL)
def test_torchvision_bn_classifier_inverts_or_is_refused_cleanly(name):
    torch.manual_seed(0)
    model = build_torchvision(name, num_classes=4).eval().requires_grad_(False)
    size = MIN_SIZE.get(name, 64)
    classifier = _classifier_name(model)
    try:
        teacher = teacher_from_model(
            model,
            f"torchvision:{name}",
            IMAGENET_MEAN,
            IMAGENET_STD,
            size,
            classifier,
            head_name=torchvision_head_name(model, classifier),
        )
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    labels = torch.tensor([0, 0, 1, 1])
    result = invert_batch(
        teacher, labels, LossWeights(), Schedule(resolutions=(size,), iterations=(1,)), torch.Generator().manual_seed(0)
    )
    assert result.images.shape == (4, size, size, 3)
    assert all(torch.isfinite(torch.tensor(v)) for v in result.losses.values())


def test_googlenet_and_inception_load_torchvision_pretrained_layouts(tmp_path):
    # Torchvision's pretrained state_dicts hold the auxiliary heads; they are dropped, and the BN layers counted are
    # those an eval forward runs (the auxiliary heads' BN never runs, so the BN loss would wait for it forever).
    torch.manual_seed(0)
    state = torchvision.models.googlenet(num_classes=3, aux_logits=True, init_weights=False).state_dict()
    path = tmp_path / "googlenet.pth"
    torch.save(state, path)
    teacher = load_teacher("torchvision:googlenet", str(path))
    assert teacher.num_classes == 3 and teacher.model.transform_input and teacher.model.aux1 is None
    assert len(teacher.bn_layers) == len(find_bn_layers(teacher.model))
    assert torchvision.models.get_model("inception_v3", weights=None).AuxLogits is not None  # the plain build


@pytest.mark.parametrize("spec, head", [("mobilenet_v3_small", "classifier"), ("vgg11_bn", "classifier")])
def test_torchvision_embedding_is_the_heads_input(spec, head):
    torch.manual_seed(0)
    model = build_torchvision(spec, num_classes=4).eval()
    classifier = _classifier_name(model)
    assert classifier != head  # the last Linear sits inside a multi-layer head
    teacher = teacher_from_model(
        model, spec, IMAGENET_MEAN, IMAGENET_STD, 32, classifier, head_name=torchvision_head_name(model, classifier)
    )
    tap = EmbeddingTap(teacher.embedding_module)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        features = torch.flatten(model.avgpool(model.features(x)), 1)
    assert torch.allclose(tap.value, features)
    with torch.no_grad():
        assert torch.allclose(model.get_submodule(head)(tap.value), logits)


def test_timm_embedding_is_pre_logits():
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", num_classes=4).eval()
    cfg = model.pretrained_cfg
    teacher = teacher_from_model(
        model, "timm:mobilenetv3_small_050", IMAGENET_MEAN, IMAGENET_STD, 32, cfg["classifier"]
    )
    tap = EmbeddingTap(teacher.embedding_module)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x)
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
    assert torch.allclose(tap.value, pre_logits.flatten(1))
