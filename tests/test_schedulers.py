"""Schedule tables, FlowUniPC update, re-noise step and ZeroSNR coefficients (architecture.md §8.1-§8.3, §10.2)."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from magihuman.sampling.schedulers import (
    FlowUniPCScheduler,
    flow_shift,
    renoise_step,
    shifted_schedule,
    zero_snr_signal_noise,
    zero_snr_sqrt_alphas_cumprod,
)

from conftest import golden_case

# architecture.md §8.2, the printed tables (timesteps; sigmas to 6 decimals, with the final 0).
TABLES = {
    32: (
        [999, 993, 986, 979, 972, 964, 955, 946, 937, 927, 916, 904, 892, 879, 865, 849, 833, 814, 795,
         773, 749, 723, 694, 661, 624, 583, 535, 480, 416, 340, 249, 138],
        [0.9998, 0.993386, 0.986634, 0.979518, 0.972006, 0.964065, 0.955657, 0.94674, 0.937265, 0.92718,
         0.916422, 0.904923, 0.892602, 0.879369, 0.865118, 0.849728, 0.833055, 0.814934, 0.795165, 0.773515,
         0.7497, 0.723379, 0.694136, 0.661453, 0.624687, 0.583022, 0.535408, 0.480473, 0.416389, 0.340661,
         0.2498, 0.138765, 0.0],
    ),
    8: (
        [999, 972, 937, 892, 833, 749, 624, 416],
        [0.9998, 0.972006, 0.937265, 0.892602, 0.833055, 0.7497, 0.624687, 0.416389, 0.0],
    ),
    5: ([999, 952, 882, 768, 555], [0.9998, 0.952154, 0.882093, 0.768935, 0.555247, 0.0]),
    6: (
        [999, 961, 908, 833, 713, 499],
        [0.9998, 0.961316, 0.908843, 0.833055, 0.713979, 0.4997, 0.0],
    ),
}


# ----------------------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("num_steps", sorted(TABLES))
def test_shifted_schedule_reproduces_the_fact_sheet_tables(num_steps):
    expected_t, expected_sigma = TABLES[num_steps]
    sigmas, timesteps = shifted_schedule(num_steps)
    assert timesteps.dtype == torch.int64 and sigmas.dtype == torch.float32
    assert timesteps.tolist() == expected_t
    assert sigmas.shape == (num_steps + 1,)
    assert sigmas[-1].item() == 0.0
    torch.testing.assert_close(sigmas, torch.tensor(expected_sigma), rtol=0, atol=1e-6)


def test_shifted_schedule_first_sigma_is_shifted_0999_not_one():
    sigmas, _ = shifted_schedule(32)
    assert sigmas[0].item() == pytest.approx(0.9997998476028442, abs=0)  # fp32(shift(fp32(0.999)))


def test_schedule_matches_golden_tables_bit_exact():
    golden = load_file(golden_case("sampler_distill") / "sampler.safetensors")
    sigmas, timesteps = shifted_schedule(8, 5.0)
    assert torch.equal(sigmas, golden["sigmas"])
    assert torch.equal(timesteps, golden["timesteps"])


def test_flow_shift_formula():
    assert flow_shift(0.0, 5.0) == 0.0
    assert flow_shift(1.0, 5.0) == 1.0
    assert flow_shift(0.5, 5.0) == pytest.approx(2.5 / 3.0)
    assert flow_shift(0.25, 1.0) == 0.25  # shift 1 is the identity


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_schedule_rejects_bad_step_counts(bad):
    with pytest.raises(ValueError, match="num_steps"):
        shifted_schedule(bad)


@pytest.mark.parametrize("bad", [0.0, -5.0, math.inf])
def test_schedule_rejects_bad_shift(bad):
    with pytest.raises(ValueError, match="shift"):
        shifted_schedule(8, bad)


# ----------------------------------------------------------------------------------------- UniPC


def _transcribed_unipc(x: torch.Tensor, velocities: list[torch.Tensor], sigmas: torch.Tensor) -> list[torch.Tensor]:
    """architecture.md §8.2 written out literally as one loop (independent of the scheduler's structure)."""
    n = len(velocities)
    lam = [torch.log(1 - s) - torch.log(s) for s in sigmas]
    m, outs, x_tilde, p_prev = [], [], None, None
    for k in range(n):
        v = velocities[k]
        mk = x - sigmas[k] * v
        if k >= 1:
            h = lam[k] - lam[k - 1]
            hh = -h
            phi = torch.expm1(hh)
            b = torch.expm1(hh)
            base = (sigmas[k] / sigmas[k - 1]) * x_tilde - ((1 - sigmas[k]) * phi) * m[k - 1]
            if p_prev == 1:
                x = base - ((1 - sigmas[k]) * b) * (0.5 * (mk - m[k - 1]))
            else:
                r = (lam[k - 2] - lam[k - 1]) / h
                d = (m[k - 2] - m[k - 1]) / r
                b1 = (phi / hh - 1) / b
                b2 = ((phi / hh - 1) / hh - 0.5) * 2 / b
                rho = torch.linalg.solve(
                    torch.tensor([[1.0, 1.0], [float(r), 1.0]]), torch.stack([b1, b2])
                )
                x = base - ((1 - sigmas[k]) * b) * (rho[0] * d + rho[1] * (mk - m[k - 1]))
        m.append(mk)
        p = min(2, n - k, k + 1)
        x_tilde = x
        h = lam[k + 1] - lam[k]
        hh = -h
        phi = torch.expm1(hh)
        b = torch.expm1(hh)
        base = (sigmas[k + 1] / sigmas[k]) * x - ((1 - sigmas[k + 1]) * phi) * mk
        if p == 1:
            x = base
        else:
            r = (lam[k - 1] - lam[k]) / h
            d = (m[k - 1] - mk) / r
            x = base - ((1 - sigmas[k + 1]) * b) * (0.5 * d)
        p_prev = p
        outs.append(x)
    return outs


def _run(scheduler: FlowUniPCScheduler, x: torch.Tensor, velocities) -> list[torch.Tensor]:
    outs = []
    for v in velocities:
        x = scheduler.step(v, x)
        outs.append(x)
    return outs


@pytest.mark.parametrize("num_steps", [5, 8])
def test_unipc_matches_literal_transcription_bit_exact(num_steps):
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(1, 48, 3, 4, 6, generator=gen)
    velocities = [torch.randn(x.shape, generator=gen) for _ in range(num_steps)]
    scheduler = FlowUniPCScheduler()
    scheduler.set_timesteps(num_steps)
    got = _run(scheduler, x, velocities)
    expected = _transcribed_unipc(x, velocities, scheduler.sigmas)
    for k, (a, b) in enumerate(zip(got, expected)):
        assert torch.equal(a, b), f"step {k}: max |diff| {(a - b).abs().max().item()}"


def test_unipc_predictor_orders_warm_up_and_lower_order_final():
    scheduler = FlowUniPCScheduler()
    scheduler.set_timesteps(8)
    x = torch.zeros(1, 9, 64)
    orders = []
    for _ in range(8):
        x = scheduler.step(torch.ones_like(x), x)
        orders.append(scheduler.this_order)
    assert orders == [1, 2, 2, 2, 2, 2, 2, 1]
    assert scheduler.step_index == 8


def test_unipc_last_step_returns_x0_prediction_exactly():
    gen = torch.Generator().manual_seed(7)
    scheduler = FlowUniPCScheduler()
    scheduler.set_timesteps(5)
    x = torch.randn(2, 9, 64, generator=gen)
    for _ in range(4):
        x = scheduler.step(torch.randn(x.shape, generator=gen), x)
    v = torch.randn(x.shape, generator=gen)
    expected = x - scheduler.sigmas[4] * v  # uncorrected sample, σ_{N-1}
    assert torch.equal(scheduler.step(v, x), expected)


def test_unipc_single_step_is_x0_prediction():
    scheduler = FlowUniPCScheduler()
    scheduler.set_timesteps(1)
    x, v = torch.randn(1, 9, 64), torch.randn(1, 9, 64)
    assert torch.equal(scheduler.step(v, x), x - scheduler.sigmas[0] * v)


@pytest.mark.parametrize("num_steps", [2, 5, 32])
def test_unipc_recovers_x0_of_a_straight_flow(num_steps):
    """With the exact velocity ``v = ε - x0`` every x0 prediction is x0, so the solver lands on it."""
    gen = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(1, 48, 2, 4, 6, generator=gen), torch.randn(1, 48, 2, 4, 6, generator=gen)
    scheduler = FlowUniPCScheduler()
    scheduler.set_timesteps(num_steps)
    sigma0 = scheduler.sigmas[0]
    x = sigma0 * eps + (1 - sigma0) * x0
    for _ in range(num_steps):
        x = scheduler.step(eps - x0, x)
    torch.testing.assert_close(x, x0, rtol=0, atol=2e-6)


def test_unipc_converges_faster_than_euler_on_a_curved_flow():
    """``dx/dσ = a·x`` (exact end point ``x_start·exp(-a·σ_0)``): UniPC's error drops by more than 4x from
    N = 16 to 32 (order 2) while the first-order Euler flow step only halves."""
    rate = 1.5

    def error(num_steps, euler=False):
        scheduler = FlowUniPCScheduler()
        scheduler.set_timesteps(num_steps)
        sigmas = scheduler.sigmas
        x_start = torch.full((1, 4), 0.3)
        x = x_start
        for k in range(num_steps):
            v = rate * x
            x = x + (sigmas[k + 1] - sigmas[k]) * v if euler else scheduler.step(v, x)
        exact = x_start * math.exp(-rate * float(sigmas[0]))
        return (x - exact).abs().max().item()

    assert error(32) < error(16) / 4
    assert error(32) < error(32, euler=True) / 4
    assert error(16, euler=True) / error(32, euler=True) < 2.5


def test_unipc_state_errors_and_reset():
    scheduler = FlowUniPCScheduler()
    x = torch.zeros(1, 9, 64)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        scheduler.step(x, x)
    scheduler.set_timesteps(2)
    with pytest.raises(ValueError, match="shape"):
        scheduler.step(torch.zeros(1, 9, 63), x)
    with pytest.raises(ValueError, match="float32"):
        scheduler.step(x.double(), x.double())
    first = scheduler.step(torch.ones_like(x), x)
    scheduler.step(torch.ones_like(x), first)
    with pytest.raises(RuntimeError, match="all 2 steps"):
        scheduler.step(x, x)
    scheduler.set_timesteps(2)
    assert scheduler.step_index == 0
    assert torch.equal(scheduler.step(torch.ones_like(x), x), first)


def test_unipc_scheduler_interface():
    scheduler = FlowUniPCScheduler()
    assert scheduler.step_index is None and scheduler.timesteps is None
    scheduler.set_timesteps(6, device="cpu")
    assert scheduler.timesteps.tolist() == TABLES[6][0]
    assert scheduler.num_inference_steps == 6 and scheduler.sigmas.shape == (7,)
    clone = FlowUniPCScheduler.from_config(scheduler.config)
    assert clone.config.shift == 5.0 and clone.config.num_train_timesteps == 1000
    with pytest.raises(ValueError, match="num_train_timesteps"):
        FlowUniPCScheduler(num_train_timesteps=500)


# ----------------------------------------------------------------------------------------- re-noise


def test_renoise_step_formula():
    gen = torch.Generator().manual_seed(11)
    x, v, eps = (torch.randn(1, 9, 64, generator=gen) for _ in range(3))
    sigma, sigma_next = torch.tensor(0.8330553770065308), torch.tensor(0.7496998310089111)
    x0 = x - sigma * v
    expected = sigma_next * eps + (1 - sigma_next) * x0
    assert torch.equal(renoise_step(x, v, sigma, sigma_next, eps), expected)
    # Python floats are rounded to float32 first, giving the same bits as the table's 0-d tensors.
    assert torch.equal(renoise_step(x, v, 0.8330553770065308, 0.7496998310089111, eps), expected)


def test_renoise_last_step_returns_x0():
    x, v, eps = torch.randn(1, 9, 64), torch.randn(1, 9, 64), torch.randn(1, 9, 64)
    sigma = torch.tensor(0.4163888096809387)
    assert torch.equal(renoise_step(x, v, sigma, torch.tensor(0.0), eps), x - sigma * v)


def test_renoise_rejects_mismatched_noise():
    x = torch.zeros(1, 9, 64)
    with pytest.raises(ValueError, match="noise"):
        renoise_step(x, x, 0.5, 0.25, torch.zeros(1, 9, 32))


# ----------------------------------------------------------------------------------------- ZeroSNR


def test_zero_snr_coefficients_bit_exact():
    signal, noise = zero_snr_signal_noise(220)
    assert signal == 0.8389104008674622  # architecture.md §10.2
    assert noise == 0.5442695617675781
    assert zero_snr_signal_noise() == (signal, noise)  # 220 is the default (noise_value)
    assert round(signal, 7) == 0.8389104 and round(noise, 7) == 0.5442696


def test_zero_snr_table_endpoints():
    a = zero_snr_sqrt_alphas_cumprod()
    assert a.shape == (1000,) and a.dtype == torch.float32
    assert a[0].item() == pytest.approx(0.9995749, abs=5e-8)
    assert a[999].item() == 0.0
    assert bool((a[1:] < a[:-1]).all())
    assert zero_snr_signal_noise(999) == (0.0, 1.0)


@pytest.mark.parametrize("bad", [-1, 1000, 2.0])
def test_zero_snr_index_range(bad):
    with pytest.raises(ValueError, match="index"):
        zero_snr_signal_noise(bad)
