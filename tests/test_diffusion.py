"""weightgen.diffusion: diffusers' schedules, the (masked) epsilon / x0 loss, seeded DDPM/DDIM
sampling, the 1D conv denoiser, EMA and the shared training loop."""
from __future__ import annotations

import logging
import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from weightgen.diffusion import ConvDenoiser1d, Diffusion, make_ema, timestep_embedding, train_steps
from weightgen.diffusion.loop import ema_decay


def _alpha_bar(d: Diffusion, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """ᾱ_t broadcast to ``like``: read from diffusers' scheduler, the reference the code uses."""
    a = d.train_scheduler.alphas_cumprod.to(like.dtype)[t]
    return a.view(-1, *([1] * (like.dim() - 1)))


def _eps_oracle(d: Diffusion, x0: torch.Tensor):
    """The perfect epsilon predictor for data that is always ``x0``."""
    def denoise(x_t, t):
        a = _alpha_bar(d, t, x_t)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()
    return denoise


def _v_oracle(d: Diffusion, x0: torch.Tensor):
    """The perfect v predictor (v = sqrt(abar) eps - sqrt(1 - abar) x0) for data that is always ``x0``."""
    eps = _eps_oracle(d, x0)

    def denoise(x_t, t):
        a = _alpha_bar(d, t, x_t)
        return a.sqrt() * eps(x_t, t) - (1 - a).sqrt() * x0
    return denoise


def _oracle(d: Diffusion, x0: torch.Tensor):
    """The perfect predictor of ``d``'s kind for data that is always ``x0``."""
    if d.prediction == "sample":
        return lambda x, t: x0
    return _eps_oracle(d, x0) if d.prediction == "epsilon" else _v_oracle(d, x0)


class Counter:
    """A denoiser that counts its calls and returns ``fn(x, t)``."""

    def __init__(self, fn):
        self.fn, self.calls, self.timesteps = fn, 0, []

    def __call__(self, x, t):
        self.calls += 1
        self.timesteps.append(int(t[0]))
        return self.fn(x, t)


# -- schedules ----------------------------------------------------------------------------

def test_schedulers_are_diffusers_with_the_published_schedule():
    d = Diffusion()
    assert d.timesteps == 1000
    for name, cls in (("ddpm", DDPMScheduler), ("ddim", DDIMScheduler)):
        s = d.scheduler(name)
        assert type(s) is cls
        assert s.config.num_train_timesteps == 1000
        assert s.config.beta_schedule == "linear"
        assert s.config.clip_sample is False  # parameters are not images in [-1, 1]
        assert s.config.prediction_type == "epsilon"
        assert len(s.betas) == 1000
        torch.testing.assert_close(s.betas, torch.linspace(1e-4, 2e-2, 1000))
    assert type(d.train_scheduler) is DDPMScheduler
    x0 = Diffusion(prediction="sample")
    assert x0.scheduler("ddim").config.prediction_type == "sample"
    assert x0.train_scheduler.config.prediction_type == "sample"
    with pytest.raises(ValueError, match=r"unknown sampler 'euler'.*ddpm, ddim"):
        d.scheduler("euler")
    v = Diffusion(prediction="v_prediction")
    assert v.scheduler("ddim").config.prediction_type == "v_prediction"
    assert v.scheduler("ddpm").config.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="'epsilon', 'sample' \\(x0\\) or 'v_prediction', got 'mu'"):
        Diffusion(prediction="mu")


# -- loss -----------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_loss_is_the_mse_to_the_right_target(prediction):
    d = Diffusion(prediction=prediction)
    x0 = torch.randn(6, 2, 5, generator=torch.Generator().manual_seed(1))

    def half(x, t):
        return 0.5 * x

    got = d.loss(half, x0, generator=torch.Generator().manual_seed(7))
    # The same draws by hand: t, then noise, from the same seeded generator.
    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, 1000, (6,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    a = _alpha_bar(d, t, x0)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    target = {"epsilon": noise, "sample": x0, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0}[prediction]
    torch.testing.assert_close(got, ((0.5 * x_t - target) ** 2).mean())


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_loss_of_a_perfect_and_of_a_zero_predictor(prediction):
    d = Diffusion(prediction=prediction)
    x0 = 3 + torch.randn(64, 1, 16, generator=torch.Generator().manual_seed(0))
    assert d.loss(_oracle(d, x0), x0, generator=torch.Generator().manual_seed(0)).item() < 1e-6
    zero = d.loss(lambda x, t: torch.zeros_like(x), x0, generator=torch.Generator().manual_seed(0)).item()
    a = d.train_scheduler.alphas_cumprod.mean().item()  # E[v^2] = E[abar] E[eps^2] + E[1 - abar] mean(x0^2)
    expected = {"epsilon": 1.0, "sample": (x0**2).mean().item(),  # E[eps^2] = 1, or mean(x0^2) ~ 10
                "v_prediction": a + (1 - a) * (x0**2).mean().item()}[prediction]
    assert zero == pytest.approx(expected, rel=0.15)


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_masked_loss_ignores_masked_positions(prediction):
    d = Diffusion(prediction=prediction)
    x0 = torch.randn(8, 3, 10, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 10, dtype=torch.bool)  # (tokens, width): broadcast over the batch
    mask[0, 7:] = False
    mask[2, 4:] = False
    perfect = _oracle(d, x0)

    def garbage_on_padding(x, t):
        return torch.where(mask, perfect(x, t), torch.full_like(x, 1e3))

    masked = d.loss(garbage_on_padding, x0, mask=mask, generator=torch.Generator().manual_seed(3))
    unmasked = d.loss(garbage_on_padding, x0, generator=torch.Generator().manual_seed(3))
    assert masked.item() < 1e-6
    assert unmasked.item() > 1e4
    # A full mask is the plain mean; a per-sample mask (B, 1, 1) averages only the kept samples.
    full = d.loss(lambda x, t: 0.5 * x, x0, mask=torch.ones(3, 10), generator=torch.Generator().manual_seed(3))
    plain = d.loss(lambda x, t: 0.5 * x, x0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(full, plain)
    keep = torch.zeros(8, 1, 1)
    keep[:2] = 1

    def bad_after_two(x, t):
        out = perfect(x, t).clone()
        out[2:] = -1e3
        return out

    assert d.loss(bad_after_two, x0, mask=keep, generator=torch.Generator().manual_seed(3)).item() < 1e-6


# -- sampling -------------------------------------------------------------------------------

def _contracting(x, t):
    # A deterministic stand-in for a trained network that depends on x and t.
    return 0.3 * x + 1e-3 * t.float().view(-1, *([1] * (x.dim() - 1)))


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
def test_seeded_sampling_is_deterministic(sampler, eta):
    d = Diffusion(timesteps=100)
    shape = (3, 2, 9)

    def draw(seed):
        return d.sample(_contracting, shape, torch.Generator().manual_seed(seed), sampler=sampler, steps=20, eta=eta)

    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == shape
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_ddpm_stochasticity_comes_from_the_generator():
    # DDPM adds fresh noise every step: the same start with another generator state differs.
    d = Diffusion(timesteps=100)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = d.sample(_contracting, (2, 1, 4), g1, sampler="ddpm", steps=10)
    torch.manual_seed(123)  # the global RNG must play no part
    b = d.sample(_contracting, (2, 1, 4), g2, sampler="ddpm", steps=10)
    assert torch.equal(a, b)


def test_default_number_of_steps():
    d = Diffusion()  # T = 1000
    ddim = Counter(_contracting)
    d.sample(ddim, (1, 1, 4), torch.Generator().manual_seed(0), sampler="ddim")
    assert ddim.calls == 60
    assert ddim.timesteps[0] > ddim.timesteps[-1] == 0  # from noisy to clean
    assert len(set(ddim.timesteps)) == 60
    short = Diffusion(timesteps=40)
    ddpm = Counter(_contracting)
    short.sample(ddpm, (1, 1, 4), torch.Generator().manual_seed(0), sampler="ddpm")
    assert ddpm.calls == 40 and ddpm.timesteps == list(range(39, -1, -1))
    few = Counter(_contracting)
    d.sample(few, (1, 1, 4), torch.Generator().manual_seed(0), sampler="ddim", steps=7)
    assert few.calls == 7


def test_ddim_default_steps_with_fewer_than_60_timesteps():
    """DDIM's default of 60 steps is capped at T (diffusers refuses more steps than timesteps)."""
    d = Diffusion(timesteps=50)
    calls = Counter(_contracting)
    out = d.sample(calls, (2, 1, 4), torch.Generator().manual_seed(0), sampler="ddim")
    assert out.shape == (2, 1, 4)
    assert calls.calls == 50


@pytest.mark.parametrize("sampler,timesteps", [("ddim", 1000), ("ddpm", 100)])
@pytest.mark.parametrize("prediction", ["sample", "epsilon", "v_prediction"])
def test_oracle_denoiser_recovers_x0(sampler, timesteps, prediction):
    d = Diffusion(timesteps=timesteps, prediction=prediction)
    x0 = torch.linspace(-2, 2, 12).view(1, 1, 12).expand(4, 1, 12).contiguous()
    for target in (x0, x0 + 1):  # lands on whatever the oracle knows, not on a fixed point
        oracle = _oracle(d, target)
        out = d.sample(oracle, (4, 1, 12), torch.Generator().manual_seed(0), sampler=sampler)
        torch.testing.assert_close(out, target, atol=1e-3, rtol=1e-3)


# -- the denoiser ---------------------------------------------------------------------------

@pytest.mark.parametrize("in_channels,channels,cond_dim,length", [
    (1, (8,), 0, 3),
    (1, (8, 16), 0, 7),
    (1, (8, 16), 8, 10),
    (2, (4, 8, 16), 0, 33),
    (2, (8, 16), 8, 64),
    (1, (4, 4, 4), 8, 21),
])
def test_conv_denoiser_shapes_zero_init_and_conditioning(in_channels, channels, cond_dim, length):
    torch.manual_seed(0)
    net = ConvDenoiser1d(in_channels, channels, emb_dim=16, cond_dim=cond_dim)
    x = torch.randn(3, in_channels, length)
    t = torch.tensor([0, 17, 999])
    cond = torch.randn(3, cond_dim) if cond_dim else None
    out = net(x, t, cond)
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(x))  # starts as a zero predictor
    if cond_dim:
        with pytest.raises(ValueError, match="conditional"):
            net(x, t)
    # Once the output layer is non-zero, the prediction depends on x.
    nn.init.normal_(net.out.weight, std=0.5)
    out = net(x, t, cond)
    assert out.abs().sum() > 0
    assert not torch.allclose(net(x + torch.randn_like(x), t, cond), out)
    # Gradients reach the first layer.
    out.pow(2).mean().backward()
    assert net.inp.weight.grad is not None and net.inp.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("in_channels,channels,cond_dim", [(1, (8, 16), 8), (2, (4, 8, 16), 4)])
def test_denoiser_output_depends_on_timestep_and_condition(in_channels, channels, cond_dim):
    """The denoiser's output depends on the timestep and the condition: ConvBlock1d applies their
    embedding after its InstanceNorm (FiLM), which would subtract a per-channel constant added before it."""
    torch.manual_seed(0)
    net = ConvDenoiser1d(in_channels, channels, emb_dim=16, cond_dim=cond_dim)
    for p in net.parameters():  # a "trained" network: every weight non-trivial
        nn.init.normal_(p, std=0.3)
    x = torch.randn(3, in_channels, 24)
    t = torch.tensor([0, 17, 999])
    cond = torch.randn(3, cond_dim)
    out = net(x, t, cond)
    scale = out.abs().max()
    assert (net(x, t.flip(0), cond) - out).abs().max() > 1e-3 * scale, "output ignores the timestep"
    assert (net(x, t, cond + 1) - out).abs().max() > 1e-3 * scale, "output ignores the condition"


def test_timestep_embedding():
    t = torch.tensor([0, 1, 500, 999])
    for dim in (16, 17):
        e = timestep_embedding(t, dim)
        assert e.shape == (4, dim)
        assert torch.isfinite(e).all()
        assert len({tuple(r.tolist()) for r in e}) == 4  # distinct timesteps, distinct embeddings
    assert timestep_embedding(t, 17)[:, -1].abs().sum() == 0  # odd dim: zero-padded
    torch.testing.assert_close(timestep_embedding(torch.tensor([0]), 8), torch.tensor([[1.0] * 4 + [0.0] * 4]))


# -- EMA and the training loop ----------------------------------------------------------------

def test_make_ema():
    model = nn.Linear(3, 2)
    assert make_ema(model, None) is None
    assert make_ema(model, 0.0) is None
    ema = make_ema(model, 0.5)
    assert ema.module is not model and ema.module.weight is not model.weight
    ema.update_parameters(model)  # the first update takes the model as it is
    torch.testing.assert_close(ema.module.weight, model.weight)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight += 1.0
        model.bias.zero_()
    ema.update_parameters(model)  # 0.5 * ema + 0.5 * model
    torch.testing.assert_close(ema.module.weight, start + 0.5)
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module.weight, start + 0.75)
    torch.testing.assert_close(model.weight, start + 1.0)  # the model itself is untouched


def test_ema_warmup_follows_diffusers_schedule():
    """With warmup the n-th update (after n so far) uses min(decay, (1 + n) / (10 + n)): early
    averages follow the model instead of its first weights; without it the decay is constant."""
    assert ema_decay(0.999, False, 0) == 0.999
    assert ema_decay(0.999, True, 1) == pytest.approx(2 / 11)
    assert ema_decay(0.999, True, 100) == pytest.approx(101 / 110)
    assert ema_decay(0.999, True, 10**6) == 0.999
    model = nn.Linear(3, 2)
    warm, cold = make_ema(model, 0.999, warmup=True), make_ema(model, 0.999)
    for ema in (warm, cold):
        ema.update_parameters(model)  # the first update copies the model
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight += 1.0
    for ema in (warm, cold):
        ema.update_parameters(model)
    torch.testing.assert_close(warm.module.weight, start + 9 / 11)  # 2/11 * start + 9/11 * (start + 1)
    torch.testing.assert_close(cold.module.weight, start + 0.001)


def test_a_fit_too_short_for_its_ema_is_warned_about(caplog):
    model = nn.Linear(2, 1)

    def loss_fn(step):
        return model.weight.pow(2).sum()

    with caplog.at_level(logging.WARNING, logger="weightgen.diffusion.loop"):
        train_steps(model, loss_fn, 3, lr=0.01, ema=make_ema(model, 0.999), show_progress=False, desc="RPG")
    assert "RPG: ema 0.999 over 3 steps" in caplog.text and "ema_warmup: true" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="weightgen.diffusion.loop"):
        train_steps(model, loss_fn, 3, lr=0.01, ema=make_ema(model, 0.999, warmup=True), show_progress=False)
        train_steps(model, loss_fn, 3, lr=0.01, ema=make_ema(model, 0.1), show_progress=False)
    assert "ema" not in caplog.text


def test_train_steps_reduces_a_quadratic_and_updates_ema():
    torch.manual_seed(0)
    model = nn.Linear(4, 1, bias=False)
    frozen = nn.Parameter(torch.ones(2), requires_grad=False)
    model.register_parameter("frozen", frozen)
    target = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    ema = make_ema(model, 0.9)
    start_ema = ema.module.weight.detach().clone()

    def loss_fn(step):
        return ((model.weight - target) ** 2).sum()

    first = loss_fn(0).item()
    losses = train_steps(model, loss_fn, 300, lr=0.05, ema=ema, show_progress=False)
    assert len(losses) == 300 and losses[0] == pytest.approx(first)
    assert losses[-1] < 1e-2 * first
    torch.testing.assert_close(model.weight.detach(), target, atol=0.05, rtol=0)
    assert torch.equal(model.frozen, torch.ones(2))
    assert not torch.equal(ema.module.weight, start_ema)
    assert (ema.module.weight - target).abs().max() < 0.5
    assert model.training


def test_train_steps_names_the_step_of_a_nan_loss():
    model = nn.Linear(2, 1)
    calls = []

    def loss_fn(step):
        calls.append(step)
        loss = model.weight.pow(2).sum()
        return loss * math.nan if step == 3 else loss

    with pytest.raises(FloatingPointError, match=r"my model: loss became nan at step 3"):
        train_steps(model, loss_fn, 10, lr=1e-2, desc="my model", show_progress=False)
    assert calls == [0, 1, 2, 3]
    assert torch.isfinite(model.weight).all()  # the bad step was never applied
    with pytest.raises(FloatingPointError, match="at step 0"):
        train_steps(model, lambda s: model.weight.sum() * math.inf, 5, lr=1e-2, show_progress=False)


def test_progress_in_a_log_is_one_line_per_tenth(capsys):
    """Output that is not a terminal (captured here, as in a log file) gets plain lines while the
    job runs, not one bar at its end: ten for ten tenths, the last at 100%, with the loss."""
    model = nn.Linear(2, 1)
    train_steps(model, lambda s: model.weight.pow(2).sum(), 25, lr=1e-2, desc="toy")
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("toy loss ") and ": 3/25 (12%)" in lines[0]
    assert ": 25/25 (100%)" in lines[-1] and lines[-1].endswith("~0 s left")


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_train_steps_follows_its_lr_schedule(schedule):
    # A linear loss has a constant gradient, so each Adam step moves the weight by exactly the
    # step's learning rate: the moves read the schedule back.
    model = nn.Linear(1, 1, bias=False)
    seen = []

    def loss_fn(step):
        seen.append(model.weight.item())
        return model.weight.sum()

    steps, lr = 20, 0.1
    train_steps(model, loss_fn, steps, lr=lr, show_progress=False, lr_schedule=schedule)
    seen.append(model.weight.item())
    moves = [a - b for a, b in zip(seen, seen[1:])]
    want = [lr if schedule == "constant" else lr * (1 + math.cos(math.pi * k / steps)) / 2 for k in range(steps)]
    assert moves == pytest.approx(want, abs=1e-6)


def test_train_steps_rejects_an_unknown_lr_schedule():
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine, got 'linear'"):
        train_steps(nn.Linear(1, 1), lambda s: torch.zeros(()), 1, lr=0.1, show_progress=False, lr_schedule="linear")


def test_temperature_scales_the_starting_noise_of_deterministic_sampling(caplog):
    # A zero epsilon makes DDIM (eta 0) linear in its starting noise, so the result scales with it.
    d = Diffusion(timesteps=100)
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731

    def draw(temperature, sampler="ddim"):
        return d.sample(zero, (3, 1, 8), torch.Generator().manual_seed(0), sampler=sampler, steps=10,
                        temperature=temperature)

    full = draw(1.0)
    assert full.abs().max() > 0
    torch.testing.assert_close(draw(0.5), 0.5 * full)
    assert torch.equal(draw(0.0), torch.zeros_like(full))
    assert not caplog.records
    draw(0.5, "ddpm")  # per-step noise stays unscaled there: said, not hidden
    assert any("DDPM adds unscaled noise" in r.getMessage() for r in caplog.records)


def test_diffusion_from_spec_follows_the_config():
    from weightgen.config import DiffusionSpec

    d = Diffusion.from_spec(DiffusionSpec(timesteps=50, prediction="v_prediction"))
    assert d.timesteps == 50 and d.prediction == "v_prediction"
    assert d.train_scheduler.config.prediction_type == "v_prediction"
    torch.testing.assert_close(d.train_scheduler.betas, torch.linspace(1e-4, 2e-2, 50))  # DDPM's, at any T
