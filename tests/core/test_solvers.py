"""Base solvers: convergence orders on the exact Gaussian ODE, agreement with diffusers, DEIS
coefficients against independent quadrature, NFE accounting and user errors."""
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from scipy.integrate import quad

import dode
from dode.errors import InvalidChoice, InvalidNFE
from dode.core.oracle import GaussianMixture
from dode.core.path import ModelPath
from dode.core.schedules import DiscreteVPSchedule, VESchedule, time_grid
from dode.core.sampling import solver_grid
from dode.core.solvers import SOLVERS, deis_coefficients

# Empirical global order on a logSNR grid, accounting for the lower-order start-up steps:
#  - one-step methods: their order (DPM-Solver-3 at NFE ≡ 2 mod 3, whose plan ends with a 2nd-order step);
#  - DPM-Solver++(3M): 2 — its first-order warm-up step in data form has an O(h²) local error;
#  - iPNDM: 2 — Adams–Bashforth weights for equal steps on a non-uniform grid (its 4th order on a
#    uniform σ grid is checked separately, against DEIS-3);
#  - DEIS tAB-r: r + 1 (its ε-form warm-up error vanishes at large σ, where ε is nearly constant);
#  - UniPC-p: p + 1 (the corrector UniC-p raises the order by one; the last, uncorrected predictor
#    step of order p has a local error O(h^{p+1})).
EXPECTED_ORDER = {"ddim": 1, "euler": 1, "dpm1": 1, "heun": 2, "dpm2": 2, "dpm3": 3, "dpmpp2m": 2,
                  "dpmpp3m": 2, "ipndm": 2, "deis1": 2, "deis2": 3, "deis3": 4,
                  "unipc2_bh1": 3, "unipc2_bh2": 3, "unipc3_bh1": 4, "unipc3_bh2": 4}


@pytest.fixture(scope="module")
def gaussian():
    torch.manual_seed(0)
    return GaussianMixture(torch.randn(1, 16), stds=[0.5], sigma_min=0.05, sigma_max=80.0)


def _nfe_for(name: str, steps: int) -> int:
    return {"dpm3": 3 * steps - 1, "dpm2": 2 * steps, "heun": 2 * steps}.get(name, steps)


def test_every_solver_is_tested_for_order():
    assert set(EXPECTED_ORDER) == set(SOLVERS)


@pytest.mark.parametrize("name", sorted(EXPECTED_ORDER))
def test_convergence_order_matches_theory(name, gaussian):
    noise = torch.randn(32, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    errors, nfes = [], []
    for steps in (40, 80, 160):
        nfe = _nfe_for(name, steps)
        plan = SOLVERS[name].plan(nfe, False)
        grid = time_grid(gaussian, len(plan) + 1, "logsnr")[:-1]  # ends at σ_min: exact solution known
        x = dode.sample(gaussian, noise, name, nfe, grid=grid)
        exact = gaussian.exact_solution(noise * grid[0].item(), grid[0].item(), grid[-1].item())
        errors.append(float((x - exact).norm() / exact.norm()))
        nfes.append(nfe)
    slope = -np.polyfit(np.log(nfes[1:]), np.log(errors[1:]), 1)[0]
    assert slope == pytest.approx(EXPECTED_ORDER[name], abs=0.25), (errors, slope)


def test_ipndm_is_adams_bashforth_4_on_a_uniform_grid(gaussian):
    """On equal σ steps of a VE model, iPNDM's fixed weights and DEIS-3's quadrature weights agree."""
    noise = torch.randn(8, 16, dtype=torch.float64)
    grid = torch.linspace(80, 1, 21, dtype=torch.float64)
    a = dode.sample(gaussian, noise, "ipndm", 20, grid=grid)
    b = dode.sample(gaussian, noise, "deis3", 20, grid=grid)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("schedule", ["vp", "ve"])
def test_deis_coefficients_are_exact_for_polynomials(schedule):
    """Σ_j C_ij p(t_{i−j}) = ∫ p(t(σ)) dσ over every step, for deg p ≤ r (≤ i during warm-up),
    against scipy's adaptive quadrature."""
    if schedule == "vp":
        sched = DiscreteVPSchedule.linear()
        model = GaussianMixture(torch.zeros(1, 1), [1.0]).as_vp(sched)
        sigmas = time_grid(model, 8, "time_uniform")
    else:
        sched = VESchedule(0.002, 80.0)
        sigmas = time_grid(GaussianMixture(torch.zeros(1, 1), [1.0]), 8, "edm")
    ts = sched.t(sigmas).numpy()
    t_of = lambda s: float(sched.t(torch.tensor([s], dtype=torch.float64)))  # noqa: E731
    rng = np.random.default_rng(0)
    for r in (1, 2, 3):
        table = deis_coefficients(tuple(sigmas.tolist()), sched, r)
        for i, row in enumerate(table):
            deg = min(i, r)
            assert len(row) == deg + 1
            scale = ts[0]
            p = np.polynomial.Polynomial(rng.normal(size=deg + 1))
            pt = lambda t: p(t / scale)  # noqa: E731
            approx = sum(c * pt(ts[i - j]) for j, c in enumerate(row))
            points = [float(v) for v in sched.sigma(torch.arange(math.ceil(ts[i + 1]), ts[i] + 1))] \
                if sched.discrete else None
            exact, _ = quad(lambda s: pt(t_of(s)), sigmas[i].item(), sigmas[i + 1].item(),
                            points=points, limit=500, epsabs=1e-13, epsrel=1e-12)
            assert approx == pytest.approx(exact, rel=1e-8, abs=1e-10), (r, i)


@pytest.fixture(scope="module")
def vp_mixture():
    torch.manual_seed(0)
    gm = GaussianMixture(torch.randn(3, 1, 4, 4), stds=[0.4, 0.5, 0.6])
    return gm, DiscreteVPSchedule.linear()


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("name", ["ddim", "dpmpp2m"])
def test_matches_diffusers_schedulers(name, steps, vp_mixture):
    gm, sched = vp_mixture
    common = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                  timestep_spacing="trailing")
    if name == "ddim":
        ref = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **common)
    else:
        ref = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **common)
    ref.set_timesteps(steps)
    eps = gm.eps_model(sched)
    noise = torch.randn(16, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x = noise.float()
    for t in ref.timesteps:
        x = ref.step(eps(x.double(), torch.full((16,), float(t))).float(), t, x).prev_sample
    # diffusers' "trailing" grid is dode's own integer time-uniform grid into σ = 0; both start from
    # x_T = noise in VP scale (x_VE = √(1 + σ_max²)·noise)
    ours = dode.sample(gm.as_vp(sched), noise, name, steps, grid="dode")
    torch.testing.assert_close(x.double(), ours, rtol=1e-5, atol=1e-5)


_UNIPC = [f"unipc{p}_{v}" for p in (2, 3) for v in ("bh1", "bh2")]


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("name", _UNIPC)
@pytest.mark.parametrize("end", ["zero", "sigma_min"])
def test_unipc_matches_diffusers(name, end, steps, vp_mixture):
    """UniPC against diffusers' UniPCMultistepScheduler (no lower-order steps at the end) on the trailing
    grid. Into σ = 0 the last step is dode's first-order one, i.e. diffusers' own x0 prediction there
    (its bh1 step into σ = 0 is NaN, B(h) = h = ∞ times 0; its ``lower_order_final`` would also lower
    the order of the step before it); into σ_min every step, last included, is UniPC-p."""
    gm, sched = vp_mixture
    order, variant = int(name[5]), name[-3:]
    ref = UniPCMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                  beta_end=0.02, timestep_spacing="trailing", solver_order=order,
                                  solver_type=variant, lower_order_final=False, final_sigmas_type=end)
    ref.set_timesteps(steps)
    eps = gm.eps_model(sched)
    noise = torch.randn(16, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x = noise.float()
    last = len(ref.timesteps) - 1 if end == "zero" else len(ref.timesteps)
    for t in ref.timesteps[:last]:
        x = ref.step(eps(x.double(), torch.full((16,), float(t))).float(), t, x).prev_sample
    if end == "zero":
        t = ref.timesteps[-1]
        x = ref.convert_model_output(eps(x.double(), torch.full((16,), float(t))).float(), sample=x)
        ours = dode.sample(gm.as_vp(sched), noise, name, steps, grid="dode")
    else:  # dode's state at σ_min in VE scale, diffusers' in VP scale
        ours = dode.sample(gm.as_vp(sched), noise, name, steps, grid=ref.sigmas.double())
        ours = ours / math.sqrt(1 + float(ref.sigmas[-1]) ** 2)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x.double(), ours, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("grid", ["edm", "logsnr", "time_uniform"])
def test_nfe_is_exact_and_samples_are_finite(name, grid, vp_mixture):
    gm, _ = vp_mixture
    for nfe in (1, 2, 3, 4, 5, 6, 7, 10):
        try:
            plan = SOLVERS[name].plan(nfe, True)
        except InvalidNFE:
            assert name == "heun" and nfe % 2 == 0
            continue
        path = ModelPath(gm)
        spec, sigmas, plan = solver_grid(gm, name, nfe, grid)
        x = spec.fn(path, torch.randn(4, 1, 4, 4, dtype=torch.float64) * 80, sigmas, plan)
        assert path.nfe == nfe and torch.isfinite(x).all()


def test_dpm_solver_order_plans():
    plan = SOLVERS["dpm3"].plan
    assert plan(10, False) == [3, 3, 3, 1] and plan(9, False) == [3, 3, 2, 1] and plan(11, False) == [3, 3, 3, 2]
    assert plan(11, True) == [3, 3, 3, 1, 1]  # a 2nd-order step cannot reach σ = 0
    assert SOLVERS["dpm2"].plan(7, True) == [2, 2, 2, 1]
    assert SOLVERS["heun"].plan(9, True) == [2, 2, 2, 2, 1]


def test_unknown_solver_lists_the_valid_ones(vp_mixture):
    with pytest.raises(InvalidChoice, match="unknown solver 'dpm4'; valid solvers: ddim, euler, heun"):
        dode.sample(vp_mixture[0], torch.randn(2, 1, 4, 4), "dpm4", 10)


def test_invalid_nfe_states_the_valid_values(vp_mixture):
    with pytest.raises(InvalidNFE, match=r"valid NFE are odd \(1, 3, 5"):
        dode.sample(vp_mixture[0], torch.randn(2, 1, 4, 4), "heun", 10)
    with pytest.raises(InvalidNFE, match="at least 1"):
        dode.sample(vp_mixture[0], torch.randn(2, 1, 4, 4), "ddim", 0)
    assert issubclass(InvalidNFE, ValueError)
