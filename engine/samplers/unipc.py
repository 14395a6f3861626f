"""UniPC (Zhao et al. 2023, arXiv:2302.04867) as AUTOMATIC1111 >= 1.6 runs it by default
(modules/sd_samplers_timesteps_impl.py `unipc`, modules/models/diffusion/uni_pc): the multistep
predictor-corrector with the B(h) = h variant ("bh1"), data prediction, order 3 with lower orders on the
first and last steps, the corrector after every step but the last, on A1111's "time_uniform" grid.

The grid (`grid()`): N = len(ddim.timesteps(steps)) (A1111 hands UniPC the DDIM grid's length), times
t = linspace(1, 0.001, N + 1); the UNet sees t_model = (t - 1/1000) * 1000 = linspace(999, 0, N + 1), and the
noise schedule is log alpha_t = 0.5 * log alpha_bar interpolated linearly between training timesteps (UniPC's
`NoiseScheduleVP('discrete')`). The solver is written here in terms of those noise levels: every coefficient
(alpha_t, sigma_t, lambda_t = log(alpha_t / sigma_t)) follows from the variance-exploding sigma = sigma_t /
alpha_t of each grid point, so the sampler takes `sigmas` like the others, plus the grid's model times.
It works in the variance-preserving scale (x starts as unit noise) and makes N denoiser calls.
"""

from __future__ import annotations

import torch

from engine.samplers.common import Denoiser, StepCallback


def grid(n: int, alphas_cumprod: torch.Tensor, t_max: float = 999.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas, model times), both descending, n + 1 values: model times linspace(t_max, 0, n + 1) and their
    sigmas by UniPC's log-alpha interpolation. txt2img: n = len(ddim.timesteps(steps)), t_max = 999; A1111's
    img2img starts at the last scheduled DDIM timestep (its t_start = timesteps[-1] / 1000 + 1/1000)."""
    if n < 1:
        raise ValueError(f"UniPC needs at least one step, got {n}")
    t_model = torch.linspace(t_max, 0.0, n + 1, dtype=torch.float64)
    log_alpha = 0.5 * alphas_cumprod.double().log()
    low = t_model.floor().long().clamp(max=len(log_alpha) - 2)
    frac = t_model - low
    lmc = log_alpha[low] + frac * (log_alpha[low + 1] - log_alpha[low])  # np.interp on t_k = (k + 1) / 1000
    sigmas = ((1 - (2 * lmc).exp()) ** 0.5 / lmc.exp()).float()
    return sigmas, t_model.float()


def _call(
    denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor, t_model: torch.Tensor | None
) -> torch.Tensor:
    """x0 from the sigma-space denoiser for a VP-scaled x (its UNet input x * c_in is x itself)."""
    s_in = x.new_ones([x.shape[0]])
    x_ve = x * (1 + sigma.double() ** 2).sqrt().item()
    if t_model is None:
        return denoiser(x_ve, sigma * s_in)
    return denoiser(x_ve, sigma * s_in, timestep=t_model * s_in)


@torch.no_grad()
def sample_unipc(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: StepCallback | None = None,
    timesteps: torch.Tensor | None = None,
    order: int = 3,
    lower_order_final: bool = True,
) -> torch.Tensor:
    """`sigmas`: the grid's N + 1 sigmas descending (no trailing 0; `grid()`); `timesteps`: their model
    times, passed to the denoiser as `timestep=` so the UNet sees A1111's exact t (without them the denoiser
    maps sigma to t itself). Order is capped at N (A1111 asserts order < steps instead)."""
    steps = len(sigmas) - 1
    if steps < 1:
        raise ValueError("UniPC needs at least two grid points")
    order = min(order, steps)
    s64 = sigmas.double()
    alpha = 1 / (1 + s64**2).sqrt()  # VP alpha_t, sigma_t = sigma * alpha_t, lambda = -log sigma
    lam = -s64.log()

    def model(k: int, x_k: torch.Tensor) -> torch.Tensor:
        return _call(denoiser, x_k, sigmas[k], None if timesteps is None else timesteps[k])

    prev_models = [model(0, x)]
    prev_k = [0]
    for k in range(1, steps + 1):
        if k < order:
            step_order = k  # warm-up: lower orders while the history fills
        else:
            step_order = min(order, steps + 1 - k) if lower_order_final else order
        use_corrector = k < steps
        x, model_x = _bh1_update(
            x,
            prev_models,
            prev_k,
            k,
            step_order,
            alpha,
            s64 * alpha,
            lam,
            use_corrector,
            lambda x_k, k=k: model(k, x_k),
        )
        if callback is not None:
            callback(
                {
                    "x": x,
                    "i": k - 1,
                    "sigma": sigmas[k - 1],
                    "sigma_hat": sigmas[k - 1],
                    "denoised": model_x if model_x is not None else prev_models[-1],
                }
            )
        prev_models.append(model_x)
        prev_k.append(k)
        if len(prev_models) > order:
            prev_models.pop(0)
            prev_k.pop(0)
    return x


def _bh1_update(x, prev_models, prev_k, k, order, alpha, sigma_vp, lam, use_corrector, model_at):
    """One multistep UniPC step to grid point k (UniPC `multistep_uni_pc_bh_update`, predict_x0, bh1):
    the UniP predictor from the last `order` x0 estimates, then, if `use_corrector`, the model at the new
    point and the UniC corrector. Returns (x_k, the model's x0 at x_k or None)."""
    k0 = prev_k[-1]
    m0 = prev_models[-1]
    h = lam[k] - lam[k0]
    rks, d1s = [], []
    for i in range(1, order):
        ki = prev_k[-(i + 1)]
        rk = ((lam[ki] - lam[k0]) / h).item()
        rks.append(rk)
        d1s.append((prev_models[-(i + 1)] - m0) / rk)
    rks.append(1.0)
    rks_t = torch.tensor(rks, dtype=torch.float64)

    hh = -h  # data prediction
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh  # bh1
    rows, b = [], []
    factorial = 1
    for i in range(1, order + 1):
        rows.append(rks_t ** (i - 1))
        b.append((h_phi_k * factorial / b_h).item())
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    big_r = torch.stack(rows)
    b_t = torch.tensor(b, dtype=torch.float64)

    sigma_ratio = (sigma_vp[k] / sigma_vp[k0]).item()
    a_t = alpha[k].item()
    coef = (a_t * b_h).item()
    x_base = sigma_ratio * x - (a_t * h_phi_1).item() * m0
    if d1s:
        rhos_p = [0.5] if order == 2 else torch.linalg.solve(big_r[:-1, :-1], b_t[:-1]).tolist()
        pred_res = sum(r * d for r, d in zip(rhos_p, d1s))
        x_t = x_base - coef * pred_res
    else:
        x_t = x_base
    if not use_corrector:
        return x_t, None
    rhos_c = [0.5] if order == 1 else torch.linalg.solve(big_r, b_t).tolist()
    model_t = model_at(x_t)
    corr_res = sum(r * d for r, d in zip(rhos_c[:-1], d1s)) if d1s else 0
    x_t = x_base - coef * (corr_res + rhos_c[-1] * (model_t - m0))
    return x_t, model_t
