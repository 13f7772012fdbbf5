"""Sampling protocols (issue 12): the D-ODE authors' grids, DPM-Solver as published, DEIS into σ = 0.

The reference DPM-Solver below is written from the published algorithm (Lu et al. 2022, Alg. 1–2 with
the official discrete-time schedule and ``time_uniform`` steps, in VP coordinates); it shares no code
with dode's VE-form solver.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import dode
from dode.core.oracle import GaussianMixture
from dode.core.protocols import Preset, Protocol, resolve
from dode.core.sampling import solver_grid
from dode.core.schedules import DiscreteVPSchedule
from dode.errors import InvalidChoice

T = 1000


@pytest.fixture(scope="module")
def vp():
    torch.manual_seed(0)
    gm = GaussianMixture(torch.randn(3, 1, 4, 4), stds=[0.4, 0.5, 0.6])
    return gm, gm.as_vp(DiscreteVPSchedule.linear())


def taus(den, solver, nfe, grid=None):
    spec, sigmas, plan = solver_grid(den, solver, nfe, grid)
    return plan, [round(v, 4) for v in den.schedule.t(sigmas).tolist()]


def test_paper_grids_are_the_authors(vp):
    """docs/protocol.md's worked examples: official DPM-Solver, th_deis and uniform_torch DDIM."""
    _, den = vp
    plan, tau = taus(den, "dpm3", 10)
    assert plan == [3, 3, 3, 1]
    assert [tau[i] for i in (0, 3, 6, 9, 10)] == [1000.0, 700.3, 400.6, 100.9, 1.0]  # outer points
    assert tau[1:3] == [900.1, 800.2] and tau[4:6] == [600.4, 500.5]  # inner stages, time-uniform
    plan, tau = taus(den, "dpm2", 5)
    assert plan == [2, 2, 1] and tau == [1000.0, 800.2, 600.4, 400.6, 200.8, 1.0]
    for name in ("ipndm", "deis3", "dpmpp2m"):  # th_deis: t_i = 999(1 − i/N) as index, τ = t + 1
        assert taus(den, name, 10)[1] == [round(1 + 999 * (1 - i / 10), 4) for i in range(11)]
    _, tau = taus(den, "ddim", 5)  # model evaluated at indices 800, 600, 400, 200, 0, then σ = 0
    assert tau == [801.0, 601.0, 401.0, 201.0, 1.0, 0.0]
    _, tau = taus(den, "ddim", 26)  # float32 linspace truncation: index 499, not 500
    assert 500.0 in tau and 501.0 not in tau
    # dode's own protocol: integer steps to σ = 0, fixed logSNR stages
    plan, tau = taus(den, "dpm3", 10, "dode")
    assert [tau[i] for i in (0, 3, 6, 9, 10)] == [1000.0, 750.0, 500.0, 250.0, 0.0]


def test_dpm_solver_skips_the_top_steps_the_official_schedule_clips():
    """The official NoiseScheduleVP drops the top steps with log-SNR < −5.1: 16 of the improved-DDPM
    cosine schedule's 4000 (ImageNet-64: the grid starts at τ = 3984), none of DDPM's linear one."""
    gm = GaussianMixture(torch.zeros(1, 4), [0.5])
    cosine = gm.as_vp(DiscreteVPSchedule.cosine())
    assert taus(cosine, "dpm3", 10)[1][:2] == [3984.0, 3585.7]
    assert taus(cosine, "ipndm", 10)[1][0] == 4000.0  # th_deis does not clip
    sigma_top = cosine.schedule.sigma(torch.tensor([3984.0, 3985.0], dtype=torch.float64))
    assert -math.log(sigma_top[0]) >= -5.1 > -math.log(sigma_top[1])
    assert taus(gm.as_vp(), "dpm3", 10)[1][0] == 1000.0


def test_presets_resolve_per_model_family(vp):
    gm, den = vp
    assert resolve(None, "heun", gm) == Protocol("edm", "zero", "logsnr")  # EDM part: ρ grid to σ = 0
    assert resolve(None, "dpm3", gm) == Protocol("edm", "zero", "logsnr")
    assert resolve(None, "dpm3", den) == Protocol("time_uniform", "sigma_min", "grid", -5.1)
    assert resolve(None, "deis3", den) == Protocol("time_uniform", "sigma_min", "grid")
    assert resolve("logsnr", "dpm3", den) == Protocol("logsnr", "sigma_min", "grid", -5.1)
    assert resolve(Preset("paper", endpoint="zero"), "dpm3", den) == Protocol("time_uniform", "zero", "grid", -5.1)
    assert resolve("dode", "ddim", den) == Protocol("time_uniform", "zero", "logsnr")
    with pytest.raises(InvalidChoice, match="unknown protocol 'authors'; valid protocols: paper, dode"):
        Preset("authors")
    with pytest.raises(InvalidChoice, match="unknown endpoint 'one'; valid: zero, sigma_min"):
        Preset(endpoint="one")
    with pytest.raises(InvalidChoice, match="unknown grid 'cosine'; valid: time_uniform"):
        dode.sample(den, torch.randn(2, 1, 4, 4), "ddim", 5, grid="cosine")


# ------------------------------------------------------------------ the published algorithm, VP form
class OfficialDiscreteVP:
    """DPM-Solver's discrete NoiseScheduleVP: log α piecewise linear in t on t_k = (k + 1)/T."""

    def __init__(self, betas: np.ndarray):
        self.t_array = (np.arange(len(betas)) + 1) / len(betas)
        self.log_alpha_array = 0.5 * np.cumsum(np.log1p(-betas))

    def log_alpha(self, t: float) -> float:
        return float(np.interp(t, self.t_array, self.log_alpha_array))

    def sigma(self, t: float) -> float:
        return math.sqrt(-math.expm1(2 * self.log_alpha(t)))

    def lam(self, t: float) -> float:
        return self.log_alpha(t) - math.log(self.sigma(t))


def official_dpm_solver(eps_model, sched: OfficialDiscreteVP, x: torch.Tensor, order: int, nfe: int):
    """Singlestep DPM-Solver, ``skip_type="time_uniform"`` from t = 1 to 1/T, no denoise to zero;
    returns the final state and the model inputs (x, t) of every evaluation."""
    t0 = 1 / T
    if order == 3:
        k = nfe // 3 + 1
        orders = {0: [3] * (k - 2) + [2, 1], 1: [3] * (k - 1) + [1], 2: [3] * (k - 1) + [2]}[nfe % 3]
    elif order == 2:
        orders = [2] * (nfe // 2) + [1] * (nfe % 2)
    else:
        orders = [1] * nfe
    ts = np.linspace(1.0, t0, nfe + 1)
    outer = ts[np.cumsum([0] + orders)]
    calls = []

    def eps(x_in, t):
        calls.append((x_in, t))
        return eps_model(x_in, torch.full((x_in.shape[0],), (t - t0) * T, dtype=torch.float64))

    la, sg = sched.log_alpha, sched.sigma
    for s, t, o in zip(outer[:-1], outer[1:], orders):
        h = sched.lam(t) - sched.lam(s)
        inner = np.linspace(s, t, o + 1)[1:-1]
        e_s = eps(x, s)
        if o == 1:
            x = math.exp(la(t) - la(s)) * x - sg(t) * math.expm1(h) * e_s
            continue
        s1 = inner[0]
        r1 = (sched.lam(s1) - sched.lam(s)) / h
        x1 = math.exp(la(s1) - la(s)) * x - sg(s1) * math.expm1(r1 * h) * e_s
        e_1 = eps(x1, s1)
        if o == 2:
            x = (math.exp(la(t) - la(s)) * x - sg(t) * math.expm1(h) * e_s
                 - 0.5 / r1 * sg(t) * math.expm1(h) * (e_1 - e_s))
            continue
        s2 = inner[1]
        r2 = (sched.lam(s2) - sched.lam(s)) / h
        phi_12, phi_22 = math.expm1(r2 * h), math.expm1(r2 * h) / (r2 * h) - 1
        x2 = (math.exp(la(s2) - la(s)) * x - sg(s2) * phi_12 * e_s
              - r2 / r1 * sg(s2) * phi_22 * (e_1 - e_s))
        e_2 = eps(x2, s2)
        phi_2 = math.expm1(h) / h - 1
        x = math.exp(la(t) - la(s)) * x - sg(t) * math.expm1(h) * e_s - 1 / r2 * sg(t) * phi_2 * (e_2 - e_s)
    return x, calls


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("nfe", [5, 6, 10, 20])
def test_dpm_solver_equals_the_published_algorithm(order, nfe, vp):
    """dode's dpm1/2/3 under the paper protocol vs the official algorithm: every model input and the
    final sample to 1e-5 relative (VE states mapped to VP by α = 1/√(1 + σ²))."""
    gm, den = vp
    betas = np.linspace(1e-4, 0.02, T)
    noise = torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    want, calls = official_dpm_solver(gm.eps_model(den.schedule), OfficialDiscreteVP(betas), noise, order, nfe)
    got, ours = dode.trajectory(den, noise, f"dpm{order}", nfe)
    assert len(ours) == len(calls) == nfe
    for call, (x_vp, t) in zip(ours, calls):
        assert den.schedule.t(torch.tensor(call.sigma, dtype=torch.float64)).item() == pytest.approx(T * t, rel=1e-12)
        torch.testing.assert_close(call.x / math.sqrt(1 + call.sigma**2), x_vp, rtol=1e-5, atol=1e-8)
    sigma_end = solver_grid(den, f"dpm{order}", nfe)[1][-1].item()
    torch.testing.assert_close(got / math.sqrt(1 + sigma_end**2), want, rtol=1e-5, atol=1e-8)


def test_dpm3_converges_at_third_order_under_the_paper_protocol():
    """Against the exact flow of a Gaussian from σ(τ = T) to σ(τ = 1); NFE ≡ 2 (mod 3), so the plan
    ends with a second-order step. The time-uniform grid ends at τ = 1, where λ = −log σ is steep: the
    last steps span λ-widths that shrink only logarithmically, so the asymptotic regime starts late
    (measured slopes 2.2, 2.3, 2.35, 2.45 from NFE 41 to 1343 with this oracle)."""
    torch.manual_seed(0)
    gm = GaussianMixture(torch.randn(1, 16), stds=[0.5])
    den = gm.as_vp()
    noise = torch.randn(32, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    errors, nfes = [], [1343, 2687]
    for nfe in nfes:
        sigmas = solver_grid(den, "dpm3", nfe)[1]
        s0, s1 = sigmas[0].item(), sigmas[-1].item()
        exact = gm.exact_solution(noise * math.sqrt(1 + s0**2), s0, s1)
        errors.append(float((dode.sample(den, noise, "dpm3", nfe) - exact).norm() / exact.norm()))
    slope = -np.polyfit(np.log(nfes), np.log(errors), 1)[0]
    assert slope >= 2.5, (errors, slope)


@pytest.mark.parametrize("name", ["ipndm", "deis1", "deis2", "deis3", "dpmpp2m", "dpmpp3m"])
def test_a_multistep_step_into_zero_is_first_order(name, vp):
    """The one rule: the step into σ = 0 returns the model's D at the last positive σ."""
    gm, _ = vp
    noise = torch.randn(4, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x, calls = dode.trajectory(gm, noise, name, 8)  # EDM grid into σ = 0
    assert calls[-1].sigma == pytest.approx(gm.sigma_min, rel=1e-12)
    torch.testing.assert_close(x, calls[-1].d, rtol=0, atol=0)


@pytest.mark.slow
def test_deis3_error_decreases_monotonically_up_to_nfe_320_on_the_edm_grid():
    """On the digits EDM network (rough near σ_min), against DEIS-3 at NFE 1280. Issue 12 measured the
    error growing with NFE (8.9e-3 at NFE 320) when DEIS-3 extrapolated into σ = 0."""
    from dode.models.digits import load_digits_model

    den = load_digits_model("digits-edm")
    noise = torch.randn(16, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = dode.sample(den, noise, "deis3", 1280)
        errors = [float((dode.sample(den, noise, "deis3", n) - ref).norm() / ref.norm())
                  for n in (10, 20, 40, 80, 160, 320)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-3, errors
