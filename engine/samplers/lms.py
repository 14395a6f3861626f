"""Linear multistep (k_diffusion/sampling.py `sample_lms`). A1111: "LMS".

x_{i+1} = x_i + sum_j c_j d_{i-j}, where c_j integrates the Lagrange basis polynomial of the last `order`
sigmas over [sigma_i, sigma_{i+1}]. k-diffusion integrates numerically (scipy.integrate.quad, epsrel 1e-4);
here the polynomial is expanded and integrated exactly in float64, which needs no scipy.
"""

from __future__ import annotations

import torch

from engine.samplers.common import Denoiser, StepCallback, to_d


def _poly_mul(a: list[float], b: list[float]) -> list[float]:
    """Product of two polynomials given as coefficient lists, lowest power first."""
    out = [0.0] * (len(a) + len(b) - 1)
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            out[i + j] += ai * bj
    return out


def lms_coefficient(order: int, t: list[float], i: int, j: int) -> float:
    """Integral over [t[i], t[i+1]] of the Lagrange basis polynomial that is 1 at t[i-j] and 0 at the other
    t[i-k], k < order (k-diffusion `linear_multistep_coeff`)."""
    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")
    poly = [1.0]
    for k in range(order):
        if k != j:
            denom = t[i - j] - t[i - k]
            poly = _poly_mul(poly, [-t[i - k] / denom, 1.0 / denom])

    def antiderivative(tau: float) -> float:
        return sum(c * tau ** (p + 1) / (p + 1) for p, c in enumerate(poly))

    return antiderivative(t[i + 1]) - antiderivative(t[i])


@torch.no_grad()
def sample_lms(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, callback: StepCallback | None = None,
               order: int = 4) -> torch.Tensor:
    s_in = x.new_ones([x.shape[0]])
    sigmas_f64 = [float(s) for s in sigmas.detach().cpu().double()]
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in)
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        cur_order = min(i + 1, order)
        coeffs = [lms_coefficient(cur_order, sigmas_f64, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    return x
