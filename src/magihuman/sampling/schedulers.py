"""Flow-matching noise schedule, FlowUniPC multistep update and distilled re-noise step (architecture.md §8).

* Forward process ``x_σ = (1 - σ)·x0 + σ·ε``; the DiT predicts the velocity ``v = ε - x0`` and never
  sees σ or t (architecture.md §8.1).
* The schedule is the reference's own (architecture.md §8.2): the first σ is ``shift(0.999)`` = 0.9998, not 1,
  and the timesteps are truncated, so N = 6 ends at t = 499 (below the t > 500 guidance switch).
  diffusers' ``UniPCMultistepScheduler`` gives 1.0 / 501 there, which is why the update is implemented
  here rather than configured from diffusers (architecture.md §8.2 (diffusers' UniPC)).
* :class:`FlowUniPCScheduler` is the order-2 "bh2" predictor-corrector in x0-prediction form, written
  from the step-by-step description of architecture.md §8.2 with its multiplication grouping, which makes it
  reproduce the reference to the last bit on CPU.
* :func:`renoise_step` is the distilled model's "predict x0, then re-noise" update (architecture.md §8.3).
* :func:`zero_snr_signal_noise` gives the variance-preserving DDPM coefficients that the super-resolution
  stage uses to partially re-noise the upsampled latent (architecture.md §10.2, §10.1).

All σ-derived scalars are 0-d float32 CPU tensors, as in the reference: a Python float (float64) in
their place would round differently in the last bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from magihuman.sampling.config import DEFAULT_SHIFT, SR_NOISE_INDEX

# Training grid of the flow-matching model (architecture.md §8.2: "train grid of 1000").
NUM_TRAIN_TIMESTEPS = 1000
# Order of the multistep UniPC solver (architecture.md §8.2).
SOLVER_ORDER = 2
# The predictor at order 2 uses this fixed weight for its one difference term instead of solving for
# it (architecture.md §8.2, "fixed ρ = 0.5, not solved"); the order-1 corrector uses it too (step 2).
FIXED_RHO = 0.5

# Scaled-linear DDPM betas of the ZeroSNR table: β = linspace(√start, √end, 1000)² (architecture.md §10.2).
DDPM_BETA_START = 0.00085
DDPM_BETA_END = 0.012


def flow_shift(sigma: torch.Tensor | np.ndarray | float, shift: float = DEFAULT_SHIFT):
    """Flow time shift ``s·σ / (1 + (s - 1)·σ)`` (architecture.md §8.1).

    Args:
        sigma: noise level(s) in [0, 1]; a float, NumPy array or tensor (any shape, any float dtype).
        shift: the shift s (> 0); 5.0 for the base and SR stages.

    Returns:
        The shifted σ, same type, shape and dtype as ``sigma``. It maps 0 to 0 and 1 to 1.

    Raises:
        ValueError: if ``shift`` is not a positive finite number.
    """
    _check_shift(shift)
    return shift * sigma / (1 + (shift - 1) * sigma)


def shifted_schedule(num_steps: int, shift: float = DEFAULT_SHIFT) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's shifted σ table and integer timesteps for ``num_steps`` steps (architecture.md §8.2).

    ``σ_max`` is the largest training σ, ``1 - 1/1000`` rounded to float32 (0.9990000128746033);
    ``σ_i = linspace(σ_max, 0, N + 1)[:-1]`` in float64, shifted by :func:`flow_shift`;
    ``t_i = trunc(1000·σ_i)`` from the float64 values; the σ table gets a final 0 and is cast to float32.

    Examples (tested): N = 8 gives t = 999, 972, 937, 892, 833, 749, 624, 416 and σ_0 = 0.9998;
    N = 6 gives ..., 713, 499 (truncation, not rounding).

    Args:
        num_steps: number of denoising steps N (>= 1).
        shift: flow time shift s (> 0).

    Returns:
        ``(sigmas, timesteps)``: ``sigmas`` float32 CPU ``[N + 1]`` decreasing from ~0.9998 to exactly 0;
        ``timesteps`` int64 CPU ``[N]`` in [0, 999].

    Raises:
        ValueError: if ``num_steps`` is not a positive integer or ``shift`` not a positive finite number.
    """
    _check_num_steps(num_steps)
    _check_shift(shift)
    sigma_max = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))
    sigmas = np.linspace(sigma_max, 0.0, num_steps + 1)[:-1]
    sigmas = flow_shift(sigmas, shift)
    timesteps = torch.from_numpy(sigmas * NUM_TRAIN_TIMESTEPS).to(torch.int64)  # truncation toward 0
    sigmas = torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32))
    return sigmas, timesteps


def renoise_step(
    sample: torch.Tensor,
    velocity: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Distilled "predict x0, then re-noise" update (architecture.md §8.3, ``step_ddim``).

    ``x0 = x - σ_k·v``; ``x_{k+1} = σ_{k+1}·ε + (1 - σ_{k+1})·x0``. At the last step (σ_{k+1} = 0) this
    returns x0 (the ε drawn for it is multiplied by 0).

    Args:
        sample: ``x_k``, float32, any shape (video ``[B, 48, T, h, w]`` or audio ``[B, A, 64]``).
        velocity: predicted velocity ``v_k``, same shape and dtype as ``sample``.
        sigma: σ_k from the float32 σ table (a 0-d tensor or a float; floats are rounded to float32 first
            so that the arithmetic is the reference's).
        sigma_next: σ_{k+1}, likewise.
        noise: fresh ``ε_k ~ N(0, 1)``, same shape and dtype as ``sample``.

    Returns:
        ``x_{k+1}``, same shape, dtype and device as ``sample``.

    Raises:
        ValueError: if the shapes of ``velocity`` or ``noise`` differ from ``sample``'s.
    """
    _check_same_shape(sample, velocity=velocity, noise=noise)
    sigma, sigma_next = _as_fp32_scalar(sigma), _as_fp32_scalar(sigma_next)
    x0 = sample - sigma * velocity
    return sigma_next * noise + (1 - sigma_next) * x0


def zero_snr_sqrt_alphas_cumprod(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """``√ᾱ`` of the scaled-linear DDPM schedule rescaled to zero terminal SNR (architecture.md §10.2).

    β = linspace(√0.00085, √0.012, n)² and ᾱ = cumprod(1 - β) in float64; ``a = √ᾱ`` in float32;
    ``a ← (a - a[n-1])·(a[0] / (a[0] - a[n-1]))`` in float32, so ``a[0]`` is unchanged and ``a[n-1] = 0``.

    Args:
        num_train_timesteps: table length n (1000 in the reference).

    Returns:
        float32 CPU ``[n]``, decreasing from 0.9995749 to 0.

    Raises:
        ValueError: if ``num_train_timesteps`` is not an integer >= 2.
    """
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
    betas = torch.linspace(
        math.sqrt(DDPM_BETA_START), math.sqrt(DDPM_BETA_END), num_train_timesteps, dtype=torch.float64
    ) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).to(torch.float32)
    a = alphas_cumprod.sqrt()
    first, last = a[0].clone(), a[-1].clone()
    return (a - last) * (first / (first - last))


def zero_snr_signal_noise(index: int = SR_NOISE_INDEX) -> tuple[float, float]:
    """Signal and noise coefficients ``(a, √(1 - a²))`` of the ZeroSNR DDPM table (architecture.md §10.2, §10.1).

    The SR stage re-noises the upsampled latent as ``x·signal + ε·noise``. At the reference's index 220
    these are 0.8389104008674622 and 0.5442695617675781 (architecture.md §10.2, bit-exact float32 values).

    Args:
        index: DDPM timestep in [0, 999].

    Returns:
        ``(signal, noise)`` as Python floats holding float32 values exactly (so multiplying a float32
        tensor by them is the same as multiplying by the float32 scalars).

    Raises:
        ValueError: if ``index`` is not an integer in [0, 999].
    """
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"index must be an integer in [0, {NUM_TRAIN_TIMESTEPS - 1}], got {index!r}")
    signal = zero_snr_sqrt_alphas_cumprod()[index]
    noise = torch.sqrt(1 - signal * signal)
    return float(signal), float(noise)


class FlowUniPCScheduler(SchedulerMixin, ConfigMixin):
    """Order-2 "bh2" UniPC predictor-corrector for flow matching, x0-prediction form (architecture.md §8.2).

    One instance per latent stream and per denoising loop (video and audio each get their own,
    architecture.md §8.2). Usage::

        scheduler = FlowUniPCScheduler()
        scheduler.set_timesteps(32)
        for t in scheduler.timesteps:
            sample = scheduler.step(model_velocity(sample), sample)

    Per step k (``σ_k`` from :attr:`sigmas`, ``α = 1 - σ``, ``λ(σ) = log(1 - σ) - log(σ)``):

    1. ``M_k = x_k - σ_k·v_k``, the x0 prediction from the **uncorrected** sample;
    2. for k >= 1 the corrector rewrites ``x_k`` from the previous corrected sample with the order the
       predictor used at step k - 1 (1 at step 1, then 2; at order 2 a 2×2 system gives its weights);
    3. ``M_k`` joins a 2-deep history;
    4. predictor order ``min(2, N - k, k + 1)``: 1 at the first and the last step, 2 in between;
    5. the predictor moves the corrected ``x_k`` to ``σ_{k+1}`` (at order 2 with the fixed weight 0.5).
       The last step is first order with σ_N = 0 and returns ``M_{N-1}`` exactly (architecture.md §8.2).

    The scheduler interface follows diffusers (``set_timesteps``, ``step``, ``timesteps``, ``sigmas``,
    ``step_index``), but ``step`` takes ``(velocity, sample)`` and returns the next sample directly: the
    step index is internal, so no timestep lookup is needed (all timesteps are distinct anyway).

    Attributes:
        sigmas: float32 CPU ``[N + 1]`` σ table ending with 0 (kept on the CPU like the reference's).
        timesteps: int64 ``[N]`` on the device given to :meth:`set_timesteps`.
    """

    config_name = "scheduler_config.json"
    order = 1  # model evaluations per step (diffusers' meaning of `order`)
    init_noise_sigma = 1.0

    @register_to_config
    def __init__(self, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, shift: float = DEFAULT_SHIFT):
        if num_train_timesteps != NUM_TRAIN_TIMESTEPS:
            raise ValueError(
                f"num_train_timesteps must be {NUM_TRAIN_TIMESTEPS} (the reference's training grid), "
                f"got {num_train_timesteps!r}"
            )
        _check_shift(shift)
        self.sigmas: torch.Tensor | None = None
        self.timesteps: torch.Tensor | None = None
        self._reset_state()

    @property
    def step_index(self) -> int | None:
        """Index of the next step to run (0 after :meth:`set_timesteps`), ``None`` before it."""
        return self._step_index

    @property
    def num_inference_steps(self) -> int | None:
        """N, or ``None`` before :meth:`set_timesteps`."""
        return None if self.timesteps is None else len(self.timesteps)

    @property
    def this_order(self) -> int | None:
        """Predictor order used by the latest :meth:`step` (``None`` before the first step)."""
        return self._this_order

    def set_timesteps(
        self, num_inference_steps: int, shift: float | None = None, device: torch.device | str | None = None
    ) -> None:
        """Build the σ/timestep tables (:func:`shifted_schedule`) and reset the multistep state.

        Args:
            num_inference_steps: N (>= 1).
            shift: flow time shift; ``None`` uses the configured one (5.0 by default).
            device: where :attr:`timesteps` live; :attr:`sigmas` stay on the CPU.

        Raises:
            ValueError: for a non-positive step count or shift.
        """
        shift = self.config.shift if shift is None else shift
        sigmas, timesteps = shifted_schedule(num_inference_steps, shift)
        self.sigmas = sigmas
        self.timesteps = timesteps.to(device) if device is not None else timesteps
        self._reset_state()
        self._step_index = 0

    def step(self, velocity: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Run step k = :attr:`step_index` and advance it (architecture.md §8.2).

        Args:
            velocity: guided velocity ``v_k``, float32, same shape as ``sample``.
            sample: ``x_k``, float32, any shape (``[B, 48, T, h, w]`` video or ``[B, A, 64]`` audio),
                after any frame-0 overwrite; any device.

        Returns:
            ``x_{k+1}``, a new float32 tensor like ``sample``; the x0 prediction at the last step.

        Raises:
            RuntimeError: if :meth:`set_timesteps` was not called or all N steps were already taken.
            ValueError: if the shapes differ or the tensors are not float32.
        """
        if self._step_index is None:
            raise RuntimeError("call set_timesteps() before step()")
        num_steps = len(self.timesteps)
        if self._step_index >= num_steps:
            raise RuntimeError(f"all {num_steps} steps were taken; call set_timesteps() to start a new loop")
        _check_same_shape(sample, velocity=velocity)
        if sample.dtype != torch.float32 or velocity.dtype != torch.float32:
            raise ValueError(f"sample and velocity must be float32, got {sample.dtype} and {velocity.dtype}")

        k = self._step_index
        x0 = sample - self.sigmas[k] * velocity
        if k > 0:
            sample = self._correct(x0, order=self._this_order)
        self._x0_history = (self._x0_history + [x0])[-SOLVER_ORDER:]
        self._this_order = _predictor_order(k, num_steps)
        self._last_sample = sample
        next_sample = self._predict(sample, order=self._this_order)
        self._step_index = k + 1
        return next_sample

    def _reset_state(self) -> None:
        self._step_index: int | None = None
        self._this_order: int | None = None
        self._x0_history: list[torch.Tensor] = []
        self._last_sample: torch.Tensor | None = None

    def _predict(self, sample: torch.Tensor, order: int) -> torch.Tensor:
        """Predictor from σ_k to σ_{k+1} (architecture.md §8.2); ``sample`` is the corrected x_k."""
        k = self._step_index
        x0 = self._x0_history[-1]
        step = _ExponentialStep(self.sigmas[k], self.sigmas[k + 1], sample, x0)
        if order == 1:
            return step.base
        r = (_log_snr(self.sigmas[k - 1]) - step.lam_from) / step.h
        d = (self._x0_history[-2] - x0) / r
        return step.base - step.alpha_b_h * (FIXED_RHO * d)

    def _correct(self, x0: torch.Tensor, order: int) -> torch.Tensor:
        """Corrector of x_k from the stored x_{k-1} and ``M_k`` = ``x0`` (architecture.md §8.2)."""
        k = self._step_index
        prev_x0 = self._x0_history[-1]
        step = _ExponentialStep(self.sigmas[k - 1], self.sigmas[k], self._last_sample, prev_x0)
        d_now = x0 - prev_x0
        if order == 1:
            return step.base - step.alpha_b_h * (FIXED_RHO * d_now)
        r = (_log_snr(self.sigmas[k - 2]) - step.lam_from) / step.h
        d = (self._x0_history[-2] - prev_x0) / r
        rho = _corrector_weights(r, -step.h, step.phi, step.b_h, device=x0.device)
        return step.base - step.alpha_b_h * (rho[0] * d + rho[1] * d_now)


class _ExponentialStep:
    """The terms the predictor and the corrector share for a step from σ_a to σ_b (architecture.md §8.2):
    ``h = λ(σ_b) - λ(σ_a)``, ``φ = B = expm1(-h)``, ``α_b = 1 - σ_b`` and
    ``base = (σ_b/σ_a)·x - (α_b·φ)·x0``; ``alpha_b_h`` is ``α_b·B`` (grouping as the sheet writes it)."""

    def __init__(self, sigma_from: torch.Tensor, sigma_to: torch.Tensor, sample: torch.Tensor, x0: torch.Tensor):
        self.lam_from = _log_snr(sigma_from)
        self.h = _log_snr(sigma_to) - self.lam_from
        hh = -self.h
        self.phi = torch.expm1(hh)
        self.b_h = torch.expm1(hh)
        alpha_to = 1 - sigma_to
        self.base = sigma_to / sigma_from * sample - alpha_to * self.phi * x0
        self.alpha_b_h = alpha_to * self.b_h


def _predictor_order(step_index: int, num_steps: int) -> int:
    """``min(2, N - k, k + 1)``: warm-up at k = 0, lower-order final step (architecture.md §8.2)."""
    return min(SOLVER_ORDER, num_steps - step_index, step_index + 1)


def _log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """``λ(σ) = log(1 - σ) - log(σ)`` of a 0-d float32 σ (+inf at σ = 0) (architecture.md §8.2)."""
    return torch.log(1 - sigma) - torch.log(sigma)


def _corrector_weights(
    r: torch.Tensor, hh: torch.Tensor, phi: torch.Tensor, b_h: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """Solve ``[[1, 1], [r, 1]]·ρ = [b1, b2]`` in float32 for the order-2 corrector (architecture.md §8.2).

    ``b1 = (φ/hh - 1)/B`` and ``b2 = ((φ/hh - 1)/hh - 1/2)·2/B``. Returns ρ, float32 ``[2]`` on ``device``.
    """
    phi_1 = phi / hh - 1
    b1 = phi_1 / b_h
    b2 = (phi_1 / hh - 0.5) * 2 / b_h
    one = torch.ones((), dtype=torch.float32)
    lhs = torch.stack([torch.stack([one, one]), torch.stack([r, one])]).to(device)
    rhs = torch.stack([b1, b2]).to(device)
    return torch.linalg.solve(lhs, rhs)


def _as_fp32_scalar(value: torch.Tensor | float) -> torch.Tensor:
    """A σ as a 0-d float32 tensor (a Python float is rounded to float32 first)."""
    return torch.as_tensor(value, dtype=torch.float32)


def _check_num_steps(num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")


def _check_shift(shift: float) -> None:
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a positive finite number, got {shift!r}")


def _check_same_shape(sample: torch.Tensor, **others: torch.Tensor) -> None:
    for name, tensor in others.items():
        if tensor.shape != sample.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected the sample's {tuple(sample.shape)}")
