"""Measurements for `python -m engine.benchmark`: timers, peak memory, models built from one state dict
(ours and diffusers'), and the per-precision and fresh-process phases of the benchmark."""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.checkpoint import LoadedModels, build, infer_configs, split_state_dict
from engine.clip import TextEncoder
from engine.devices import release_freed_memory, resolve_device, resolve_dtype
from engine.errors import Cancelled
from engine.pipeline import Pipeline, load_pipeline
from engine.preview import latent_preview
from engine.request import GenerationRequest
from engine.tokenizer import Tokenizer
from engine.unet import UNet
from engine.vae import SCALING_FACTOR, VAE

PROMPT = "nvinkpunk portrait of a fox in a trench coat, neon ink splashes, highly detailed"
SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

log = logging.getLogger(__name__)


# --- measuring ----------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], Any]], runs: int, device: torch.device) -> dict[str, list[float]]:
    """One warm-up call each, then `runs` rounds alternating which goes first, so load drifts hit all."""
    names = list(fns)
    for name in names:
        timed(fns[name], device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(runs):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(fns[name], device))
    return times


def _status_bytes(field: str) -> int | None:
    """VmHWM / VmRSS of this process from /proc (Linux), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss() -> int | None:
    """Peak resident memory of this process so far (since the last reset_peak()), in bytes."""
    value = _status_bytes("VmHWM")
    if value is None:
        try:
            import resource
        except ImportError:  # Windows
            return None
        scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return value


def reset_peak() -> bool:
    """Restart the VmHWM high-water mark (Linux: /proc/self/clear_refs '5'); False where impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --- models -----------------------------------------------------------------------------------------------


def random_state(size: str) -> dict[str, torch.Tensor]:
    """A random fp16 LDM-layout state dict of `size` (as an fp16 checkpoint file holds)."""
    from engine.testing import ldm_state_dict

    return ldm_state_dict(size, dtype=torch.float16, seed=0)


def our_models(
    state: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype, vae_dtype: torch.dtype
) -> LoadedModels:
    """Exactly what load_models() builds from a file holding `state` (state itself is left intact)."""
    parts = split_state_dict(state)
    te, unet, vae = infer_configs(parts)
    kw = {"device": device}
    return LoadedModels(
        build(TextEncoder, te, parts["text_encoder"], dtype=dtype, what="text encoder", **kw),
        build(UNet, unet, parts["unet"], dtype=dtype, what="UNet", **kw),
        build(VAE, vae, parts["vae"], dtype=vae_dtype, what="VAE", **kw),
        te,
        unet,
        vae,
        Path("random-weights"),
    )


def diffusers_models(
    state: dict[str, torch.Tensor],
    models: LoadedModels,
    device: torch.device,
    dtype: torch.dtype,
    vae_dtype: torch.dtype,
) -> tuple[Any, Any] | None:
    """diffusers' UNet and VAE holding the same weights (converted by its own single-file converters)."""
    try:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from diffusers.loaders.single_file_utils import (
            convert_ldm_unet_checkpoint,
            convert_ldm_vae_checkpoint,
        )
    except ImportError:
        return None
    u, v = models.unet_config, models.vae_config
    unet_config = {
        "sample_size": 64,
        "in_channels": u.in_channels,
        "out_channels": u.out_channels,
        "layers_per_block": u.num_res_blocks,
        "block_out_channels": [u.model_channels * m for m in u.channel_mult],
        "cross_attention_dim": u.context_dim,
        "attention_head_dim": u.num_heads,
        "norm_num_groups": 32,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in u.attention_levels],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(u.attention_levels)],
    }
    widths = [v.channels * m for m in v.channel_mult]
    vae_config = {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": v.z_channels,
        "block_out_channels": widths,
        "layers_per_block": v.num_res_blocks,
        "norm_num_groups": 32,
        "down_block_types": ["DownEncoderBlock2D"] * len(widths),
        "up_block_types": ["UpDecoderBlock2D"] * len(widths),
    }
    out = []
    for cls, config, convert, want in (
        (UNet2DConditionModel, unet_config, convert_ldm_unet_checkpoint, dtype),
        (AutoencoderKL, vae_config, convert_ldm_vae_checkpoint, vae_dtype),
    ):
        with torch.device("meta"):  # no slow random init of weights that are replaced anyway
            model = cls(**config)
        converted = {k: t.to(device, want) for k, t in convert(state, config).items()}
        model.load_state_dict(converted, strict=True, assign=True)
        out.append(model.eval().requires_grad_(False))
    return out[0], out[1]


# --- phases -----------------------------------------------------------------------------------------------


def bench_precision(
    state: dict[str, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    runs: int,
    with_diffusers: bool,
    side: int = 512,
) -> dict[str, Any]:
    """Step, decode, encode, cancel and preview timings in one precision (ours and diffusers')."""
    vae_dtype = resolve_dtype(dtype, device)[1]
    models = our_models(state, device, dtype, vae_dtype)
    pipe = Pipeline(models, Tokenizer(), device, dtype, vae_dtype, models.path)
    res: dict[str, Any] = {"precision": SHORT[dtype], "vae_precision": SHORT[vae_dtype]}
    res.update(time_components(pipe, state, runs, with_diffusers, side))
    gc.collect()  # diffusers' models are gone
    log.info("%s: cancel latency", SHORT[dtype])
    res.update(cancel_latency(pipe, res["unet_step_s"], runs, side))
    return res


@torch.inference_mode()
def time_components(
    pipe: Pipeline, state: dict[str, torch.Tensor], runs: int, with_diffusers: bool, side: int = 512
) -> dict[str, Any]:
    device, dtype, vae_dtype = pipe.device, pipe.dtype, pipe.vae_dtype
    ref = diffusers_models(state, pipe.models, device, dtype, vae_dtype) if with_diffusers else None
    g = torch.Generator().manual_seed(0)
    lat = side // 8
    x = torch.randn(2, 4, lat, lat, generator=g).to(device, dtype)
    t = torch.tensor(500.0, device=device)
    context = pipe.encode_prompt(["", PROMPT]).to(dtype)
    z = (torch.randn(1, 4, lat, lat, generator=g) / SCALING_FACTOR).to(device, vae_dtype)
    res: dict[str, Any] = {}
    unet_fns = {"ours": lambda: pipe.unet(x, t, context)}
    vae_fns = {"ours": lambda: pipe.vae.decode(z)}
    if ref is not None:
        ref_unet, ref_vae = ref
        unet_fns["diffusers"] = lambda: ref_unet(x, t, encoder_hidden_states=context).sample
        vae_fns["diffusers"] = lambda: ref_vae.decode(z).sample
    for part, fns in (("unet_step_s", unet_fns), ("vae_decode_s", vae_fns)):
        log.info("%s: timing %s", SHORT[dtype], part)
        times = interleaved(fns, runs, device)
        for name, values in times.items():
            res[f"{part}_{name}_runs"] = values
        res[part] = statistics.median(times["ours"])
        if "diffusers" in times:
            res[f"{part}_diffusers"] = statistics.median(times["diffusers"])
            res[f"{part}_ratio"] = res[part] / res[f"{part}_diffusers"]
    ours = unet_fns["ours"]().float().cpu()
    res["_outputs"] = (ours, vae_fns["ours"]().float().cpu())  # compared across precisions by run()
    if ref is not None:  # same weights, same input: how far apart the two are in this precision
        res["unet_rel_diff_vs_diffusers"] = rel_diff(ours, unet_fns["diffusers"]().float().cpu())
        res["vae_rel_diff_vs_diffusers"] = rel_diff(res["_outputs"][1], vae_fns["diffusers"]().float().cpu())
    encode = [timed(lambda: pipe.encode_prompt(["", PROMPT]), device) for _ in range(max(3, runs) + 1)]
    res["text_encode_s"] = statistics.median(encode[1:])
    z_small = torch.randn(4, lat, lat, generator=g).to(device)
    previews = [timed(lambda: latent_preview(z_small), device) for _ in range(30)]
    res["preview_s"] = statistics.median(previews[5:])
    res["preview_fraction_of_step"] = res["preview_s"] / res["unet_step_s"]
    return res


def cancel_latency(pipe: Pipeline, step_s: float, runs: int, side: int = 512) -> dict[str, Any]:
    """Set the cancel event part-way through the second step of a real generate(); time until Cancelled."""
    latencies = []
    fractions = [0.5, 0.15, 0.85, 0.3, 0.7][: max(1, min(runs, 5))]
    for fraction in fractions:
        cancel = threading.Event()
        set_at: list[float] = []

        def fire(f: float = fraction, event: threading.Event = cancel, stamp: list[float] = set_at) -> None:
            time.sleep(f * step_s)
            stamp.append(time.perf_counter())
            event.set()

        def on_step(event: Any, f: float = fraction) -> None:
            if event.step == 1:
                threading.Thread(target=fire, daemon=True).start()

        req = GenerationRequest(prompt=PROMPT, steps=5, width=side, height=side, seed=1)
        try:
            pipe.generate(req, on_step=on_step, cancel=cancel)
        except Cancelled:
            latencies.append(time.perf_counter() - set_at[0])
        else:
            latencies.append(float("nan"))
    worst = max(latencies)
    return {
        "cancel_latency_s": statistics.median(latencies),
        "cancel_latency_max_s": worst,
        "cancel_fraction_of_step": worst / step_s,
    }


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def warm_read(path: Path) -> dict[str, float]:
    """Seconds to read the whole file once from the page cache (after a first read put it there):
    into one reused 64 MiB buffer (the bytes alone), and as `f.read()` into new memory (bytes + the
    allocation's page faults, what any loader of the whole file pays)."""
    buf = memoryview(bytearray(64 << 20))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
        times.append(time.perf_counter() - start)
    fresh = []
    for _ in range(2):
        start = time.perf_counter()
        data = path.read_bytes()
        fresh.append(time.perf_counter() - start)
        del data
    return {"warm_read_s": min(times[1:]), "warm_read_fresh_s": min(fresh)}


def run_child(opts: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: load (file or random weights), then one 512x512 generation; memory figures."""
    device = resolve_device(opts.device)
    out: dict[str, Any] = {"peak_reset": False}
    if opts.child == "tiled":
        return tiled_decode(opts, device)
    if opts.child == "fast":
        return fast_memory(opts, device)
    started = time.perf_counter()
    if opts.checkpoint:
        pipe = load_pipeline(opts.checkpoint, device=device, dtype=opts.precision)
        _sync(device)
        out["load_s"] = time.perf_counter() - started
        out["load_peak"] = peak_rss()
        if opts.child == "load":
            return out
    else:
        dtype, vae_dtype = resolve_dtype(opts.precision, device)
        models = our_models(random_state(opts.size), device, dtype, vae_dtype)
        gc.collect()
        pipe = Pipeline(models, Tokenizer(), device, dtype, vae_dtype, models.path)
    out["weights_bytes"] = sum(
        p.numel() * p.element_size() for m in (pipe.text_encoder, pipe.unet, pipe.vae) for p in m.parameters()
    )
    out["rss_ready"] = _status_bytes("VmRSS")
    out["peak_reset"] = reset_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pipe.generate(GenerationRequest(prompt=PROMPT, steps=2, width=opts.side, height=opts.side, seed=0))
    out["generation_peak"] = peak_rss()
    if device.type == "cuda":
        out["generation_peak_device"] = torch.cuda.max_memory_allocated(device)
    return out


def tiled_decode(opts: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Decode opts.tiled_side^2 pixels of random latents in tiles (engine.vae_tiled); time and peak memory."""
    import numpy as np

    from engine.config import VAEConfig
    from engine.testing import random_state_dict

    vae_dtype = resolve_dtype(opts.precision, device)[1]
    cfg = getattr(VAEConfig, opts.size)()
    with torch.device("meta"):
        shapes = VAE(cfg)
    state = random_state_dict(shapes, np.random.default_rng(0), torch.float16)
    vae = build(VAE, cfg, state, device=device, dtype=vae_dtype, what="VAE")
    gc.collect()
    out: dict[str, Any] = {"tiled_side": opts.tiled_side, "tiled_rss_before": _status_bytes("VmRSS")}
    out["peak_reset"] = reset_peak()
    lat = opts.tiled_side // 8
    z = torch.randn(1, 4, lat, lat).to(device, vae_dtype)
    with torch.inference_mode():
        out["tiled_decode_s"] = timed(lambda: vae.decode(z, tiled=True), device)
    out["tiled_peak"] = peak_rss()
    return out


# --- fast mode (issue 14) -----------------------------------------------------------------------------------

TOME_RATIO = 0.5  # token merging timed in fast mode: tomesd's default, the top of what A1111 users set
FAST_STEPS = (4, 8)  # LCM-LoRA's range (latent-consistency/lcm-lora-sdv1-5 README: 4-8 steps, guidance 1-2)


def random_taesd(device: torch.device, dtype: torch.dtype) -> Any:
    """TAESD for SD 1.x with seeded random weights (engine.testing), as load_taesd places it."""
    from engine.taesd import TinyAutoencoder
    from engine.testing import taesd_state_dict

    model = TinyAutoencoder()
    model.load_state_dict(taesd_state_dict(seed=0), strict=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return model.to(memory_format=torch.channels_last) if device.type in ("cpu", "cuda") else model


def bench_fast(
    state: dict[str, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    runs: int,
    side: int = 512,
    whole: bool = True,
) -> dict[str, Any]:
    """Fast mode in one precision: its parts (a batch-1 UNet step, as guidance 1 runs; one-prompt text
    encoding; TAESD and VAE decodes; a TAESD step preview) and whole `Pipeline.generate()` calls with the
    `lcm` sampler at guidance 1 for 4 and 8 steps, with the tiny and the full decoder (a step callback set, so
    the TAESD previews run as in the app, within their 5% budget). A few-step LoRA is merged into the
    weights (Pipeline.set_loras), so it costs nothing per step; random weights stand in for it. Also the
    default mode's batch-2 step, for the ratio, and the 4-step tiny-decoder image with token merging (A1111's
    option, engine.tome). Its memory is measured in a fresh process (fast_memory).
    `whole` False: the parts only (a precision the app would not pick, measured for the ratios)."""
    vae_dtype = resolve_dtype(dtype, device)[1]
    models = our_models(state, device, dtype, vae_dtype)
    pipe = Pipeline(models, Tokenizer(), device, dtype, vae_dtype, models.path)
    pipe.set_taesd(random_taesd(device, dtype))
    res: dict[str, Any] = {"precision": SHORT[dtype], "vae_precision": SHORT[vae_dtype]}
    g = torch.Generator().manual_seed(0)
    lat = side // 8
    with torch.inference_mode():
        x1 = torch.randn(1, 4, lat, lat, generator=g).to(device, dtype)
        x2 = torch.cat([x1, x1])
        t = torch.tensor(500.0, device=device)
        ctx1 = pipe.encode_prompt([PROMPT]).to(dtype)
        ctx2 = pipe.encode_prompt(["", PROMPT]).to(dtype)
        z = torch.randn(1, 4, lat, lat, generator=g).to(device)
        log.info("%s fast: timing the parts", SHORT[dtype])
        parts = interleaved({
            "unet_step_batch1_s": lambda: pipe.unet(x1, t, ctx1),
            "unet_step_batch2_s": lambda: pipe.unet(x2, t, ctx2),
            "taesd_decode_s": lambda: pipe.taesd.decode(z.to(dtype)),
            "vae_decode_s": lambda: pipe.vae.decode((z / SCALING_FACTOR).to(vae_dtype)),
        }, runs, device)
        res.update({name: statistics.median(values) for name, values in parts.items()})
        encode = [timed(lambda: pipe.encode_prompt([PROMPT]), device) for _ in range(max(3, runs) + 1)]
        res["text_encode_s"] = statistics.median(encode[1:])
        encode2 = [timed(lambda: pipe.encode_prompt(["", PROMPT]), device) for _ in range(max(3, runs) + 1)]
        res["text_encode_cfg_s"] = statistics.median(encode2[1:])
        previews = [timed(lambda: pipe.taesd.preview(z[0].to(dtype)), device) for _ in range(max(5, runs) + 2)]
        res["taesd_preview_s"] = statistics.median(previews[2:])
    res["taesd_preview_fraction_of_step"] = res["taesd_preview_s"] / res["unet_step_batch1_s"]
    if not whole:
        return res
    for steps in FAST_STEPS:
        for decoder in ("taesd", "vae"):
            req = GenerationRequest(prompt=PROMPT, steps=steps, width=side, height=side, seed=1, sampler="lcm",
                                    cfg_scale=1.0, decoder=decoder)
            log.info("%s fast: %d steps, %s decode", SHORT[dtype], steps, decoder)
            times = [timed(lambda r=req: pipe.generate(r, on_step=lambda _e: None), device)
                     for _ in range(runs + 1)]  # the first is a warm-up
            res[f"generate_{steps}_{decoder}_s"] = statistics.median(times[1:])
            res[f"generate_{steps}_{decoder}_runs_s"] = times[1:]
    req = GenerationRequest(prompt=PROMPT, steps=4, width=side, height=side, seed=1, sampler="lcm", cfg_scale=1.0,
                            decoder="taesd", token_merging_ratio=TOME_RATIO)
    log.info("%s fast: 4 steps, tiny decode, token merging %s", SHORT[dtype], TOME_RATIO)
    times = [timed(lambda: pipe.generate(req, on_step=lambda _e: None), device) for _ in range(runs + 1)]
    res["generate_4_taesd_tome_s"] = statistics.median(times[1:])
    res["generate_4_taesd_tome_runs_s"] = times[1:]
    return res


def fast_summary(results: dict[str, dict[str, Any]], device: torch.device) -> dict[str, Any] | None:
    """Fast mode (4 LCM steps, tiny decode, dtype auto) against the app's default mode (DPM++ 2M Karras,
    25 steps, CFG: batch-2 steps, dtype auto) and the original project's default (DDPM, 80 steps, fp32), the
    defaults from the measured parts, as time_to_image does."""
    auto = SHORT[resolve_dtype("auto", device)[0]]
    if "generate_4_taesd_s" not in results.get(auto, {}):
        return None
    a = results[auto]
    fast = a["generate_4_taesd_s"]
    default = a["text_encode_cfg_s"] + 25 * a["unet_step_batch2_s"] + a["vae_decode_s"]
    out = {"precision": auto, "fast_s": fast, "fast_vae_s": a["generate_4_vae_s"], "app_default_s": default,
           "vs_app_default": default / fast}
    if "fp32" in results:
        f = results["fp32"]
        original = f["text_encode_cfg_s"] + 80 * f["unet_step_batch2_s"] + f["vae_decode_s"]
        out.update(original_default_s=original, vs_original_default=original / fast)
    return out


def fast_memory(opts: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """In a fresh process, fast mode as the app runs it (dtype auto): the models, a TAESD, an LCM-LoRA-size
    LoRA merged at 1.0 (Pipeline.set_loras, which keeps the touched weights' originals for an exact restore),
    then a 4-step `lcm` generation at guidance 1 with the tiny decode. Peak RSS after loading, over both.
    The LoRA is engine.testing.few_step_lora at rank 64 in fp16: LCM-LoRA's layout and size (134.6 MB)."""
    from safetensors.torch import save_file

    from engine.testing import few_step_lora

    dtype, vae_dtype = resolve_dtype(opts.precision, device)
    models = our_models(random_state(opts.size), device, dtype, vae_dtype)
    pipe = Pipeline(models, Tokenizer(), device, dtype, vae_dtype, models.path)
    pipe.set_taesd(random_taesd(device, dtype))
    out: dict[str, Any] = {"precision": SHORT[dtype]}
    with tempfile.TemporaryDirectory(prefix="inkpunk-bench-") as tmp:
        path = Path(tmp) / "lcm-lora-like.safetensors"
        save_file(few_step_lora(models.unet, rank=64, dtype=torch.float16, up_scale=0.1), str(path))
        out["lora_bytes"] = path.stat().st_size
        gc.collect()
        release_freed_memory()  # the drawn random weights' freed memory would hide what fast mode adds
        out["weights_bytes"] = sum(
            p.numel() * p.element_size()
            for m in (pipe.text_encoder, pipe.unet, pipe.vae, pipe.taesd) for p in m.parameters()
        )
        out["rss_ready"] = _status_bytes("VmRSS")
        out["peak_reset"] = reset_peak()
        started = time.perf_counter()
        with torch.inference_mode():
            pipe.set_loras([(path, 1.0)])
        out["lora_apply_s"] = time.perf_counter() - started
        out["lora_originals_in_memory"], out["lora_originals_in_file"] = pipe._networks.loras.kept_bytes
        out["rss_lora"] = _status_bytes("VmRSS")
        out["lora_peak"] = peak_rss()
        req = GenerationRequest(prompt=PROMPT, steps=4, width=opts.side, height=opts.side, seed=0, sampler="lcm",
                                cfg_scale=1.0, decoder="taesd", loras=[(path, 1.0)])
        started = time.perf_counter()
        pipe.generate(req, on_step=lambda _e: None)
        out["generate_s"] = time.perf_counter() - started
        out["generation_peak"] = peak_rss()
        out["rss_end"] = _status_bytes("VmRSS")
    return out

