"""Sigma schedules for SD 1.x, as AUTOMATIC1111 v1.10 computes them with k-diffusion 0.0.16.

`ModelSchedule` is the model's own discrete noise schedule (ldm `DDPM.register_schedule` + k-diffusion
`external.DiscreteSchedule`): 1000 training noise levels, and the continuous map between a sigma and the
UNet timestep. `sigmas(name, steps)` builds a sampling schedule from it, each formula the one of
A1111's `modules/sd_schedulers.py` (which calls k-diffusion's `get_sigmas_*`), in float32 on the CPU as v1.10
does. Element-wise operations run on 0-d tensors where A1111 loops over Python scalars, because PyTorch's
vectorised and scalar `exp`/`log` may differ in the last bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

# Names (A1111's `Scheduler.name`, except "ddim_uniform" = A1111's "ddim" schedule, ComfyUI's
# "ddim_uniform", named apart from the DDIM sampler). Labels as A1111 writes them in "Schedule type:".
SCHEDULES: tuple[str, ...] = (
    "uniform", "karras", "exponential", "polyexponential", "sgm_uniform", "kl_optimal", "align_your_steps",
    "simple", "normal", "ddim_uniform",
)
SCHEDULE_LABELS: dict[str, str] = {
    "uniform": "Uniform", "karras": "Karras", "exponential": "Exponential",
    "polyexponential": "Polyexponential",
    "sgm_uniform": "SGM Uniform", "kl_optimal": "KL Optimal", "align_your_steps": "Align Your Steps",
    "simple": "Simple", "normal": "Normal", "ddim_uniform": "DDIM",
}
# Schedules with a rho parameter and its default (A1111 `Scheduler.default_rho`).
DEFAULT_RHO: dict[str, float] = {"karras": 7.0, "polyexponential": 1.0}

# Align Your Steps, SD 1.5 (A1111 sd_schedulers.get_align_your_steps_sigmas; NVIDIA's published values).
_AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)


def sd1_alphas_cumprod(downcast: bool = False) -> torch.Tensor:
    """SD 1.x's ᾱ_t, t = 0..999: ldm `make_beta_schedule("linear", 1000, 0.00085, 0.012)` (betas linear in
    sqrt space, float64), `np.cumprod(1 - betas)` in float64, stored as float32 (ldm `register_schedule`).

    `downcast=True` is A1111's "Downcast alphas_cumprod" (infotexts before v1.7.0-225): the buffer cast to
    float16, which moves the sigma range to [0.03125, 14.609375].
    """
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.tensor(np.cumprod(1.0 - betas.numpy(), axis=0), dtype=torch.float32)
    return alphas_cumprod.half() if downcast else alphas_cumprod


class ModelSchedule:
    """A model's discrete noise levels, k-diffusion `DiscreteEpsDDPMDenoiser` / `DiscreteSchedule`.

    `sigmas` (ascending, one per training timestep) = sqrt((1 - ᾱ) / ᾱ) in ᾱ's dtype; `log_sigmas`
    their log.
    """

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        if alphas_cumprod.ndim != 1 or alphas_cumprod.numel() < 2:
            shape = tuple(alphas_cumprod.shape)
            raise ValueError(f"alphas_cumprod must be a 1-D tensor of at least 2 values, got {shape}")
        if not alphas_cumprod.is_floating_point():
            raise ValueError(f"alphas_cumprod must be floating point, got {alphas_cumprod.dtype}")
        self.alphas_cumprod = alphas_cumprod.cpu()
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def sd1(cls, downcast: bool = False) -> ModelSchedule:
        """The SD 1.x schedule (shared, built once)."""
        return _sd1_schedule(downcast)

    @property
    def sigma_min(self) -> float:
        return self.sigmas[0].item()

    @property
    def sigma_max(self) -> float:
        return self.sigmas[-1].item()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The continuous timestep of `sigma`: piecewise linear in log sigma between the two neighbouring
        training levels, clamped to [0, 999] (k-diffusion `DiscreteSchedule.sigma_to_t`, quantize=False)."""
        sigma = torch.as_tensor(sigma)
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma at a continuous timestep: log-linear between the training levels
        (`DiscreteSchedule.t_to_sigma`)."""
        t = torch.as_tensor(t).float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp()

    def uniform(self, n: int) -> torch.Tensor:
        """`DiscreteSchedule.get_sigmas(n)`: n timesteps evenly spaced from 999 to 0, then a 0."""
        t = torch.linspace(len(self.sigmas) - 1, 0, n)
        return _append_zero(self.t_to_sigma(t))


@lru_cache(maxsize=2)
def _sd1_schedule(downcast: bool) -> ModelSchedule:
    return ModelSchedule(sd1_alphas_cumprod(downcast))


def sigma_to_t(sigma: torch.Tensor) -> torch.Tensor:
    """SD 1.x's `ModelSchedule.sigma_to_t`."""
    return ModelSchedule.sd1().sigma_to_t(sigma)


def t_to_sigma(t: torch.Tensor) -> torch.Tensor:
    """SD 1.x's `ModelSchedule.t_to_sigma`."""
    return ModelSchedule.sd1().t_to_sigma(t)


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def _scalar_list(values: list[float | torch.Tensor]) -> torch.Tensor:
    # A1111 builds these schedules as `torch.FloatTensor(list_of_scalars)`
    return torch.tensor([float(v) for v in values], dtype=torch.float32)


# --- the schedules: f(n, sigma_min, sigma_max, rho, model) -> float32 tensor --------------------------------

def _karras(n: int, smin: float, smax: float, rho: float, model: ModelSchedule) -> torch.Tensor:
    # k-diffusion sampling.get_sigmas_karras (Karras et al. 2022, eq. 5)
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = smin ** (1 / rho)
    max_inv_rho = smax ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def _exponential(n: int, smin: float, smax: float, rho: float, model: ModelSchedule) -> torch.Tensor:
    # k-diffusion sampling.get_sigmas_exponential
    return _append_zero(torch.linspace(math.log(smax), math.log(smin), n).exp())


def _polyexponential(n: int, smin: float, smax: float, rho: float, model: ModelSchedule) -> torch.Tensor:
    # k-diffusion sampling.get_sigmas_polyexponential
    ramp = torch.linspace(1, 0, n) ** rho
    return _append_zero(torch.exp(ramp * (math.log(smax) - math.log(smin)) + math.log(smin)))


def _uniform(n: int, smin: float, smax: float, rho: float, model: ModelSchedule) -> torch.Tensor:
    # A1111 sd_schedulers.uniform = inner_model.get_sigmas(n); ignores the sigma range, as A1111 does
    return model.uniform(n)


def _normal(n: int, smin: float, smax: float, rho: float, model: ModelSchedule,
            sgm: bool = False) -> torch.Tensor:
    # A1111 sd_schedulers.normal_scheduler (and sgm_uniform): timesteps evenly spaced between the range's ends
    start = model.sigma_to_t(torch.tensor(smax))
    end = model.sigma_to_t(torch.tensor(smin))
    timesteps = torch.linspace(start, end, n + 1)[:-1] if sgm else torch.linspace(start, end, n)
    return _scalar_list([model.t_to_sigma(ts) for ts in timesteps] + [0.0])


def _sgm_uniform(n: int, smin: float, smax: float, rho: float, model: ModelSchedule) -> torch.Tensor:
    return _normal(n, smin, smax, rho, model, sgm=True)


def _simple(n: int, smin: float, smax: float, rho: float, model: ModelSchedule) -> torch.Tensor:
    # A1111 sd_schedulers.simple_scheduler (ComfyUI's "simple"): every (1000/n)-th training sigma from the top
    ss = len(model.sigmas) / n
    return _scalar_list([model.sigmas[-(1 + int(x * ss))] for x in range(n)] + [0.0])


def _ddim_uniform(n: int, smin: float, smax: float, rho: float, model: ModelSchedule) -> torch.Tensor:
    # A1111 sd_schedulers.ddim_scheduler: training sigmas 1, 1+ss, 1+2ss, ... (ss = 1000 // n), descending
    ss = max(len(model.sigmas) // n, 1)
    sigs = [model.sigmas[x] for x in range(1, len(model.sigmas), ss)]
    return _scalar_list(sigs[::-1] + [0.0])


def _kl_optimal(n: int, smin: float, smax: float, rho: float, model: ModelSchedule) -> torch.Tensor:
    # A1111 sd_schedulers.kl_optimal (Sabour et al. 2024, "Align Your Steps", eq. 11). n + 1 values ending at
    # sigma_min, with no appended 0: A1111 samples it that way.
    alpha_min = torch.arctan(torch.tensor(smin))
    alpha_max = torch.arctan(torch.tensor(smax))
    step_indices = torch.arange(n + 1)
    return torch.tan(step_indices / n * alpha_min + (1.0 - step_indices / n) * alpha_max)


def _align_your_steps(n: int, smin: float, smax: float, rho: float, model: ModelSchedule) -> torch.Tensor:
    # A1111 sd_schedulers.get_align_your_steps_sigmas: the 11 SD 1.5 sigmas, log-linearly resampled to n
    if n == len(_AYS_SD15):
        return _scalar_list([*_AYS_SD15, 0.0])
    xs = np.linspace(0, 1, len(_AYS_SD15))
    ys = np.log(_AYS_SD15[::-1])
    new_ys = np.interp(np.linspace(0, 1, n), xs, ys)
    return torch.tensor(np.append(np.exp(new_ys)[::-1].copy(), [0.0]), dtype=torch.float32)


_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "uniform": _uniform, "karras": _karras, "exponential": _exponential, "polyexponential": _polyexponential,
    "sgm_uniform": _sgm_uniform, "kl_optimal": _kl_optimal, "align_your_steps": _align_your_steps,
    "simple": _simple, "normal": _normal, "ddim_uniform": _ddim_uniform,
}


def sigmas(name: str, steps: int, *, discard_penultimate: bool = False, sigma_min: float | None = None,
           sigma_max: float | None = None, rho: float | None = None,
           model: ModelSchedule | None = None) -> torch.Tensor:
    """The sampling sigmas of schedule `name` for `steps` steps: float32 on the CPU, descending, ending in 0
    (A1111 `KDiffusionSampler.get_sigmas`), `steps + 1` values.

    `discard_penultimate` (DPM2, DPM2 a, DPM++ 3M SDE, or the "Discard penultimate sigma" option) computes one
    more sigma and drops the next-to-last. `sigma_min`/`sigma_max` ("Schedule min/max sigma") default to the
    model's range and `rho` ("Schedule rho") to the schedule's own; as in A1111, schedules without such a
    parameter ignore it (uniform, simple, ddim_uniform and align_your_steps use neither range nor rho).
    `model` defaults to SD 1.x's schedule. KL Optimal, as in A1111, ends at sigma_min without the 0.
    """
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    for label, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("rho", rho)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{label} must be a positive number, got {value!r}")
    model = model if model is not None else ModelSchedule.sd1()
    smin = model.sigma_min if sigma_min is None else float(sigma_min)
    smax = model.sigma_max if sigma_max is None else float(sigma_max)
    if smin >= smax:
        raise ValueError(f"sigma_min ({smin}) must be below sigma_max ({smax})")
    n = steps + (1 if discard_penultimate else 0)
    out = _FUNCTIONS[name](n, smin, smax, DEFAULT_RHO.get(name, 1.0) if rho is None else float(rho), model)
    if discard_penultimate:
        out = torch.cat([out[:-2], out[-1:]])
    return out.to(torch.float32)
