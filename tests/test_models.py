"""DearKD student: MHCA, the aligner, timm registration and checkpoints."""

import pytest
import timm
import torch
from timm.layers import Attention
from torch import nn
from torch.nn import functional as F

from dfkd.models import Aligner, MHCAttention, attention_distance, attention_probs, patch_tokens

SMALL = ["dearkd_pico_patch4_32", "dearkd_nano_patch4_32", "deit_nano_patch4_32"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _local_mhca(num_heads: int, grid: int, prefix: int = 2, dim: int = 16) -> MHCAttention:
    """MHCA with zero content weights: attention is driven by the position term alone."""
    attn = MHCAttention(dim, num_heads, qkv_bias=True, grid_size=(grid, grid), num_prefix_tokens=prefix)
    nn.init.zeros_(attn.qkv.weight)
    nn.init.zeros_(attn.qkv.bias)
    return attn


@pytest.mark.parametrize("fused", [True, False])
def test_mhca_with_zero_v_equals_timm_attention(fused: bool) -> None:
    ref = Attention(32, num_heads=4, qkv_bias=True)
    mhca = MHCAttention(32, num_heads=4, qkv_bias=True, grid_size=(4, 4), num_prefix_tokens=2, locality_strength=0.0)
    assert torch.all(mhca.v == 0)
    mhca.qkv.load_state_dict(ref.qkv.state_dict())
    mhca.proj.load_state_dict(ref.proj.state_dict())
    ref.fused_attn = mhca.fused_attn = fused
    x = torch.randn(2, 18, 32)
    torch.testing.assert_close(mhca(x), ref(x), atol=1e-6, rtol=0)
    mhca.init_locality(1.0)
    assert not torch.allclose(mhca(x), ref(x), atol=1e-3)


def test_fused_and_explicit_paths_agree_with_gradients() -> None:
    attn = MHCAttention(32, num_heads=4, qkv_bias=True, grid_size=(4, 4), num_prefix_tokens=2)
    with torch.no_grad():
        attn.v.add_(torch.randn_like(attn.v))
    x = torch.randn(2, 18, 32)
    outs, grads = [], []
    for fused in (True, False):
        attn.fused_attn = fused
        attn.v.grad = None
        y = attn(x)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append(attn.v.grad.clone())
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)
    assert grads[0].abs().sum() > 0


def test_mhca_expresses_convolution_like_local_attention() -> None:
    grid, prefix, alpha = 5, 2, 20.0
    attn = _local_mhca(num_heads=1, grid=grid, prefix=prefix)
    dx, dy = 1, -1
    with torch.no_grad():
        attn.v[0] = -alpha * torch.tensor([1.0, -2 * dx, -2 * dy])
    probs = attention_probs(attn, torch.randn(1, prefix + grid * grid, 16))
    qx, qy = 2, 2
    query = prefix + qy * grid + qx
    assert probs[0, 0, query].argmax().item() == prefix + (qy + dy) * grid + (qx + dx)
    assert probs[0, 0, query].max() > 0.99


def test_local_init_covers_a_3x3_kernel() -> None:
    grid, prefix = 5, 2
    attn = _local_mhca(num_heads=9, grid=grid, prefix=prefix, dim=18)
    attn.init_locality(alpha=20.0)
    probs = attention_probs(attn, torch.randn(1, prefix + grid * grid, 18))
    centre = prefix + 2 * grid + 2
    peaks = probs[0, :, centre, prefix:].max(-1)
    offsets = [(p % grid - 2, p // grid - 2) for p in peaks.indices.tolist()]
    assert set(offsets) == {(x, y) for x in (-1, 0, 1) for y in (-1, 0, 1)}
    expected_v = -20.0 * torch.tensor([(1.0, -2 * dx, -2 * dy) for dx, dy in offsets])
    torch.testing.assert_close(attn.v.detach(), expected_v)  # v^(h) = -alpha (1, -2 D_x, -2 D_y)
    # shifted heads peak sharply; the centre head ties its own patch with the 2 prefix keys (all logit 0)
    assert sorted(peaks.values.tolist())[0] == pytest.approx(1 / 3, abs=1e-3)
    assert sorted(peaks.values.tolist())[1] > 0.99


def test_prefix_tokens_get_no_position_term() -> None:
    prefix = 2
    attn = MHCAttention(16, num_heads=4, grid_size=(3, 3), num_prefix_tokens=prefix, locality_strength=3.0)
    bias = attn.position_bias()
    assert bias.shape == (4, prefix + 9, prefix + 9)
    assert torch.all(bias[:, :prefix] == 0) and torch.all(bias[:, :, :prefix] == 0)
    assert bias[:, prefix:, prefix:].abs().sum() > 0
    x = torch.randn(2, prefix + 9, 16)
    y1 = attn(x)
    with torch.no_grad():
        attn.v.add_(torch.randn_like(attn.v))
    y2 = attn(x)
    torch.testing.assert_close(y1[:, :prefix], y2[:, :prefix])  # prefix queries see no position term
    assert not torch.allclose(y1[:, prefix:], y2[:, prefix:])


def test_attention_distance_definition() -> None:
    probs = torch.zeros(1, 1, 3, 3)
    probs[..., 0] = 1.0  # every query on a 1x3 grid attends to patch 0: distances 0, 1, 2
    assert attention_distance(probs, (1, 3), num_prefix_tokens=0).item() == pytest.approx(1.0)


def test_local_init_makes_mhca_blocks_more_local() -> None:
    model = timm.create_model("dearkd_pico_patch4_32").eval()
    dist = model.attention_distances(torch.randn(2, 3, 32, 32))
    assert dist.shape == (2, 2)
    assert dist[0].mean() < 0.5 * dist[1].mean()  # block 0 is MHCA, block 1 plain MHSA


@pytest.mark.parametrize("teacher_hw", [(8, 8), (4, 4), (16, 12)])
def test_aligner_matches_teacher_shape(teacher_hw) -> None:
    aligner = Aligner(32, 24, teacher_hw=teacher_hw)
    out = aligner(torch.randn(2, 64, 32), (8, 8))
    assert out.shape == (2, 24, *teacher_hw)
    assert torch.all(out >= 0)


def test_patch_tokens_and_intermediates_share_the_grid_layout() -> None:
    model = timm.create_model("dearkd_pico_patch4_32").eval()
    x = torch.randn(2, 3, 32, 32)
    final, inter = model.forward_intermediates(x, indices=[0, 1], norm=True)
    assert final.shape == (2, 2 + 64, 32) and len(inter) == 2 and inter[0].shape == (2, 32, 8, 8)
    tokens = patch_tokens(model.forward_features(x), model.num_prefix_tokens)
    torch.testing.assert_close(tokens.transpose(1, 2).reshape(2, 32, 8, 8), inter[1])
    aligner = Aligner(32, 8)
    torch.testing.assert_close(aligner(tokens, model.grid_size), aligner(inter[1]))


def test_hidden_mse_through_aligner_trains_student_not_teacher() -> None:
    student = timm.create_model("dearkd_pico_patch4_32", num_classes=3)
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU()).requires_grad_(False)
    aligner = Aligner(student.embed_dim, 8, teacher_hw=(16, 16))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feat = teacher(x)
    (tokens,) = student.forward_intermediates(x, indices=[0], output_fmt="NLC", intermediates_only=True)
    F.mse_loss(aligner(tokens, student.grid_size), feat).backward()
    for p in (
        student.patch_embed.proj.weight,
        student.blocks[0].attn.v,
        student.blocks[0].attn.qkv.weight,
        aligner.dw.weight,
        aligner.pw.weight,
        aligner.norm.weight,
    ):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert student.blocks[1].attn.qkv.weight.grad is None  # after the paired block: untouched
    assert feat.grad is None and all(p.grad is None for p in teacher.parameters())


def test_registration_and_small_variants() -> None:
    assert set(timm.list_models("dearkd*")) >= {
        "dearkd_tiny_patch16_224",
        "dearkd_small_patch16_224",
        "dearkd_base_patch16_224",
        "dearkd_nano_patch4_32",
        "dearkd_pico_patch4_32",
    }
    assert timm.list_models("deit_nano_patch4_32") == ["deit_nano_patch4_32"]
    x = torch.randn(2, 3, 32, 32)
    for name, num_mhca in zip(SMALL, (1, 4, 0)):
        model = timm.create_model(name, num_classes=7)
        assert model.num_mhca == num_mhca and model.num_prefix_tokens == 2 and model.patch_size == 4
        assert model.grid_size == (8, 8) and model.pretrained_cfg["input_size"] == (3, 32, 32)
        kinds = [isinstance(b.attn, MHCAttention) for b in model.blocks]
        assert kinds == [i < num_mhca for i in range(len(model.blocks))]
        model.train()
        assert model(x).shape == (2, 7)  # distilled training off: averaged heads
        model.set_distilled_training(True)
        cls_logits, dist_logits = model(x)
        assert cls_logits.shape == dist_logits.shape == (2, 7)
        model.eval()
        out = model(x)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 7)
        feats = model.forward_features(x)
        torch.testing.assert_close(out, (model.head(feats[:, 0]) + model.head_dist(feats[:, 1])) / 2)


def test_create_model_kwargs() -> None:
    plain = timm.create_model("dearkd_pico_patch4_32", num_mhca=0)
    assert plain.num_mhca == 0 and not any(isinstance(b.attn, MHCAttention) for b in plain.blocks)
    strong = timm.create_model("dearkd_pico_patch4_32", locality_strength=2.0)
    torch.testing.assert_close(strong.blocks[0].attn.v[0], torch.tensor([-2.0, 0.0, 0.0]))
    zero = timm.create_model("dearkd_pico_patch4_32", locality_strength=0.0)
    assert torch.all(zero.blocks[0].attn.v == 0)
    resized = timm.create_model("dearkd_pico_patch4_32")
    resized.set_input_size(img_size=(48, 48))
    assert resized.grid_size == (12, 12) and resized.blocks[0].attn.grid_size == (12, 12)
    assert resized.eval()(torch.randn(1, 3, 48, 48)).shape == (1, 10)


@pytest.mark.parametrize(
    "name, dim, heads, deit",
    [
        ("dearkd_tiny_patch16_224", 192, 12, "deit_tiny_distilled_patch16_224"),
        ("dearkd_small_patch16_224", 384, 12, "deit_small_distilled_patch16_224"),
        ("dearkd_base_patch16_224", 768, 16, "deit_base_distilled_patch16_224"),
    ],
)
def test_imagenet_variants(name: str, dim: int, heads: int, deit: str) -> None:
    model = timm.create_model(name, device="meta")
    count = sum(p.numel() for p in model.parameters())
    print(f"{name}: {count / 1e6:.2f}M parameters")
    assert model.embed_dim == dim and model.grid_size == (14, 14) and model.num_mhca == 8
    assert [b.attn.num_heads for b in model.blocks] == [heads] * 12
    assert [isinstance(b.attn, MHCAttention) for b in model.blocks] == [True] * 8 + [False] * 4
    assert (model.head.out_features, model.head_dist.out_features) == (1000, 1000)
    reference = sum(p.numel() for p in timm.create_model(deit, device="meta").parameters())
    assert count == reference + 8 * heads * 3  # DeiT-distilled plus v^(h) of the MHCA blocks


def test_checkpoint_round_trip(tmp_path) -> None:
    model = timm.create_model("dearkd_pico_patch4_32", num_classes=5).eval()
    with torch.no_grad():
        model.blocks[0].attn.v.add_(0.5)  # a trained v must survive the round trip
    assert not any(k.endswith(".rel") for k in model.state_dict())
    path = tmp_path / "student.pth"
    torch.save(model.state_dict(), path)
    loaded = timm.create_model("dearkd_pico_patch4_32", num_classes=5, checkpoint_path=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_bf16_autocast_forward() -> None:
    model = timm.create_model("dearkd_pico_patch4_32").eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 32, 32))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_mhca_position_vectors_get_no_weight_decay():
    from timm.optim import param_groups_weight_decay

    model = timm.create_model("dearkd_nano_patch4_32")
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    vs = [p for n, p in model.named_parameters() if n.endswith("attn.v")]
    assert len(vs) == model.num_mhca == 4 and all(p.ndim == 2 for p in vs)
    assert all(id(p) in no_decay for p in vs)
    assert {"pos_embed", "cls_token", "dist_token"} <= model.no_weight_decay()
