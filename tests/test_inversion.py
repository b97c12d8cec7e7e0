"""Numerics of the fast inversion path: BN statistics, TV, fused Adam, clamp, and the compile option."""

import warnings

import pytest
import timm
import torch

import synth  # noqa: F401  (registers dfkd_cnn_tiny)
from synth.config import LossWeights, Schedule
from synth.inversion import invert as inversion
from synth.inversion import step
from synth.inversion.invert import invert_batch
from synth.inversion.terms import BNStatisticsLoss, bn_stat_distance, channel_stats, tv_prior
from synth.teachers.sources import load_teacher

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def teacher(random_teacher):
    return load_teacher(random_teacher)


def _labels():
    return torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def _reference_tv(x):
    return (
        torch.linalg.vector_norm(x[:, :, :, :-1] - x[:, :, :, 1:])
        + torch.linalg.vector_norm(x[:, :, :-1, :] - x[:, :, 1:, :])
        + torch.linalg.vector_norm(x[:, :, 1:, :-1] - x[:, :, :-1, 1:])
        + torch.linalg.vector_norm(x[:, :, :-1, :-1] - x[:, :, 1:, 1:])
    )


def test_channel_stats_match_var_mean_in_value_and_gradient():
    x = (torch.randn(4, 5, 6, 7, dtype=torch.float64) * 3 + 2).requires_grad_(True)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    stats = channel_stats(x)
    torch.testing.assert_close(stats, torch.stack((mean, var)))
    weights = torch.randn(2, 5, dtype=torch.float64)
    (g_ref,) = torch.autograd.grad((torch.stack((mean, var)) * weights).sum(), x)
    (g_new,) = torch.autograd.grad((channel_stats(x) * weights).sum(), x)
    torch.testing.assert_close(g_new, g_ref)
    assert torch.autograd.gradcheck(channel_stats, (torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True),))


def test_channel_stats_channels_last_and_bf16():
    x = torch.randn(4, 8, 5, 5) * 2 + 1
    ref = channel_stats(x)
    torch.testing.assert_close(channel_stats(x.contiguous(memory_format=torch.channels_last)), ref)
    low = x.to(torch.bfloat16)
    got = channel_stats(low)
    assert got.dtype == torch.float32  # fp32 statistics from bf16 activations
    var, mean = torch.var_mean(low.float(), dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(got, torch.stack((mean, var)), rtol=1e-5, atol=1e-5)
    xl = low.clone().requires_grad_(True)
    channel_stats(xl).sum().backward()
    assert xl.grad.dtype == torch.bfloat16 and torch.isfinite(xl.grad.float()).all()


@pytest.mark.parametrize("ratio", [1000.0, 3000.0])
@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_stats_keep_precision_when_the_mean_dwarfs_the_spread(ratio, channels_last):
    # E[x^2] - mean^2 in fp32 loses about mean^2/var * 1e-7 relative: 0.5% at mean/std 1000, 100% near 3000.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 6, 9, 9, generator=g) + ratio * torch.linspace(-1, 1, 6).view(1, 6, 1, 1).sign()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    var, mean = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
    stats = channel_stats(x)
    torch.testing.assert_close(stats[1].double(), var, rtol=1e-5, atol=0)
    torch.testing.assert_close(stats[0].double(), mean, rtol=1e-6, atol=0)
    xg = x.clone().requires_grad_(True)
    channel_stats(xg)[1].sum().backward()
    xd = x.double().requires_grad_(True)
    torch.var_mean(xd, dim=(0, 2, 3), correction=0)[0].sum().backward()
    torch.testing.assert_close(xg.grad.double(), xd.grad, rtol=1e-2, atol=1e-2 * xd.grad.abs().max().item())


def test_bn_stat_distance_equals_var_mean_formula():
    x = torch.randn(8, 4, 5, 5) * 1.5 + 0.3
    rm, rv = torch.randn(4), torch.rand(4) + 0.5
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    expected = torch.linalg.vector_norm(mean - rm) + torch.linalg.vector_norm(var - rv)
    assert bn_stat_distance(x, rm, rv).item() == pytest.approx(expected.item(), rel=1e-5)


def test_bn_loss_gradient_matches_autograd_through_var_mean():
    torch.manual_seed(0)
    model = timm.create_model("dfkd_cnn_tiny", num_classes=4).train()
    with torch.no_grad():
        model(torch.randn(8, 3, 16, 16))  # non-trivial running statistics
    model.eval().requires_grad_(False)
    layers = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    x0 = torch.randn(4, 3, 16, 16)

    inputs = []
    handles = [layer.register_forward_hook(lambda m, i, o: inputs.append((m, i[0]))) for layer in layers]
    x_ref = x0.clone().requires_grad_(True)
    model(x_ref)
    for h in handles:
        h.remove()
    ref = sum(
        (10.0 if k == 0 else 1.0)
        * (
            torch.linalg.vector_norm(torch.var_mean(t, (0, 2, 3), correction=0)[1] - m.running_mean)
            + torch.linalg.vector_norm(torch.var_mean(t, (0, 2, 3), correction=0)[0] - m.running_var)
        )
        for k, (m, t) in enumerate(inputs)
    )
    ref.backward()

    loss = BNStatisticsLoss(layers, first_multiplier=10.0)
    x_new = x0.clone().requires_grad_(True)
    model(x_new)
    new = loss.loss()
    new.backward()
    loss.remove()
    assert new.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(x_new.grad, x_ref.grad, rtol=1e-4, atol=1e-7)


def test_tv_prior_gradient_equals_autograd_of_slices():
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    (g_ref,) = torch.autograd.grad(_reference_tv(x), x)
    (g_new,) = torch.autograd.grad(tv_prior(x), x)
    assert tv_prior(x).item() == pytest.approx(_reference_tv(x).item())
    torch.testing.assert_close(g_new, g_ref)
    assert torch.autograd.gradcheck(tv_prior, (torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True),))
    flat = torch.ones(1, 3, 4, 4, requires_grad=True)  # all differences zero: zero gradient, not NaN
    tv_prior(flat).backward()
    assert torch.equal(flat.grad, torch.zeros_like(flat))


def test_adam_matches_reference_adam():
    schedule = Schedule(lr=0.25, betas=(0.5, 0.9), eps=1e-8)
    x0 = torch.randn(4, 3, 8, 8)
    fast, ref = x0.clone().requires_grad_(True), x0.clone().requires_grad_(True)
    opt_fast = inversion._adam(fast, schedule)
    opt_ref = torch.optim.Adam([ref], lr=0.25, betas=(0.5, 0.9), eps=1e-8, foreach=False, fused=False)
    g = torch.Generator().manual_seed(0)
    for it in range(30):
        grad = torch.randn(x0.shape, generator=g)
        for opt, p in ((opt_fast, fast), (opt_ref, ref)):
            opt.param_groups[0]["lr"] = inversion.learning_rate(0.25, it, 30)
            p.grad = grad.clone()
            opt.step()
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_clamp_keeps_every_teacher_input_in_the_valid_pixel_range(teacher):
    low, high = teacher.pixel_bounds()
    seen = []
    handle = teacher.model.register_forward_pre_hook(lambda m, i: seen.append(i[0].detach().clone()))
    try:
        invert_batch(
            teacher,
            _labels(),
            LossWeights(),
            Schedule(resolutions=(16, 32), iterations=(4, 4), lr=5.0),
            torch.Generator().manual_seed(0),
        )
    finally:
        handle.remove()
    assert len(seen) == 9  # 8 iterations and the final forward
    for inp in seen[:-1]:
        assert (inp >= low - 1e-6).all() and (inp <= high + 1e-6).all()
    assert any(((inp - low).abs() < 1e-6).any() for inp in seen)  # lr 5 pushes pixels onto the bounds


def test_hooks_are_removed_and_final_forward_runs_without_them(teacher):
    invert_batch(
        teacher,
        _labels(),
        LossWeights(),
        Schedule(resolutions=(32,), iterations=(2,)),
        torch.Generator().manual_seed(0),
    )
    assert all(not layer._forward_hooks for layer in teacher.bn_layers)
    assert not teacher.classifier._forward_pre_hooks


def _run(teacher, **kwargs):
    return invert_batch(
        teacher,
        _labels(),
        LossWeights(),
        Schedule(resolutions=(16,), iterations=(3,)),
        torch.Generator().manual_seed(3),
        **kwargs,
    )


def _assert_same(a, b):
    assert torch.equal(a.images, b.images)
    torch.testing.assert_close(a.logits, b.logits)
    assert a.losses == pytest.approx(b.losses, rel=1e-5)


def test_compile_unavailable_falls_back_to_eager_with_one_warning(teacher, monkeypatch):
    eager = _run(teacher)
    monkeypatch.setattr(step, "_COMPILED", {})

    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning, match="torch.compile is unavailable"):
        first = _run(teacher, compile=True)
    _assert_same(first, eager)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the failure is remembered: no second warning
        _assert_same(_run(teacher, compile=True), eager)


def test_compile_failing_at_first_call_falls_back_to_eager(teacher, monkeypatch):
    eager = _run(teacher)
    monkeypatch.setattr(step, "_COMPILED", {})

    def failing(*args, **kwargs):
        raise RuntimeError("inductor: C++ compiler not found")

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: failing)
    with pytest.warns(UserWarning, match="running eagerly"):
        _assert_same(_run(teacher, compile=True), eager)


def test_compiled_step_traces_hooks_and_custom_backwards_without_recompiling(teacher, monkeypatch):
    from torch._dynamo.utils import counters

    monkeypatch.setattr(step, "_COMPILED", {})
    torch._dynamo.reset()
    eager = [_run(teacher) for _ in range(2)]
    first = _run(teacher, compile="aot_eager")  # AOTAutograd traces forward and backward, no C++ compiler
    graphs = counters["stats"]["unique_graphs"]
    second = _run(teacher, compile="aot_eager")  # new hooks, same graph: no recompilation per batch
    assert counters["stats"]["unique_graphs"] == graphs
    _assert_same(first, eager[0])
    _assert_same(second, eager[1])
    torch._dynamo.reset()


def test_precompiled_model_argument_still_fires_the_hooks(teacher):
    torch._dynamo.reset()
    eager = _run(teacher)
    compiled = _run(teacher, model=torch.compile(teacher.model, backend="aot_eager"))
    _assert_same(compiled, eager)
    torch._dynamo.reset()
