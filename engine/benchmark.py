"""`python -m engine.benchmark`: how fast the engine is here, and how it compares with diffusers.

Builds SD1.5-size models with random weights in-process (no checkpoint needed) and measures, for a 512x512
image with classifier-free guidance (UNet batch 2), in each precision the device runs natively:
seconds per UNet step, VAE decode, text encoding, cancel latency and preview cost. When diffusers is installed
its UNet2DConditionModel and AutoencoderKL are built from the very same weights and timed interleaved with
ours (medians of --runs), giving our/diffusers ratios. Then, each in a fresh process so the figures are
clean: loading a generated fp16 `.ckpt` of SD1.5 size (vs one warm read of the file) and the peak memory of
a 512x512 generation. `--tiled` also decodes 2048x2048 latents in tiles and reports that peak.

    python -m engine.benchmark                         # SD1.5 size, every native precision, 3 runs
    python -m engine.benchmark --precision bf16 --runs 5 --json bench.json
    python -m engine.benchmark --size tiny --runs 1    # seconds; checks the benchmark itself
    python -m engine.benchmark --mode fast             # fast mode (issue 14): 4/8 LCM steps, tiny/full decode

Timings on a busy machine are noise: the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from engine.devices import DTYPE_NAMES, cpu_has_native_bf16, resolve_device, resolve_dtype
from engine.measure import (
    FAST_STEPS,
    SHORT,
    TOME_RATIO,
    bench_fast,
    bench_precision,
    fast_summary,
    random_state,
    rel_diff,
    run_child,
    warm_read,
)

log = logging.getLogger(__name__)

SIDES = {"sd15": 512, "tiny": 128}  # default image side per model size (tiny: a quick self-check)
GB = 1024**3


def child(args: list[str]) -> dict[str, Any]:
    """Run `python -m engine.benchmark --child ...` in a fresh process; its last stdout line is JSON."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "engine.benchmark", "--child", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_times(path: Path, first_load_s: float, runs: int, args: list[str]) -> dict[str, Any]:
    """Load-to-ready against one warm read of the file, as medians over `runs` fresh processes.

    Each load (the memory child's is the first) is paired with a warm read timed next to it, so a drift
    in the machine's speed hits both sides of each ratio.
    """
    reads = [warm_read(path)]  # next to the memory child's load
    loads = [first_load_s]
    for _ in range(runs - 1):
        reads.append(warm_read(path))
        loads.append(child(["load", *args, "--checkpoint", str(path)])["load_s"])
    fresh = [r["warm_read_fresh_s"] for r in reads]
    return {
        "load_s": statistics.median(loads),
        "load_runs_s": loads,
        "warm_read_s": statistics.median(r["warm_read_s"] for r in reads),
        "warm_read_fresh_s": statistics.median(fresh),
        "load_vs_warm_read": statistics.median(t / r["warm_read_s"] for t, r in zip(loads, reads)),
        "load_vs_warm_read_fresh": statistics.median(t / f for t, f in zip(loads, fresh)),
    }


def default_precisions(device: torch.device) -> list[torch.dtype]:
    """Each precision the device runs natively: bf16 on CPUs with AVX512-BF16/AMX, fp16 on GPUs."""
    if device.type == "cpu":
        return [torch.float32, torch.bfloat16] if cpu_has_native_bf16() else [torch.float32]
    extra = [torch.bfloat16] if device.type == "cuda" and torch.cuda.is_bf16_supported() else []
    return [torch.float32, torch.float16, *extra]


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(
            ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")
        )
        flags = set(next(ln for ln in cpuinfo.splitlines() if ln.startswith("flags")).split())
        info["cpu_flags"] = [
            f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags
        ]
    except (OSError, StopIteration):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        info["diffusers"] = None
    if hasattr(os, "getloadavg"):
        info["load_average_start"] = os.getloadavg()[0]
    return info


def time_to_image(results: dict[str, dict[str, Any]], device: torch.device) -> dict[str, Any] | None:
    """App defaults (DPM++ 2M Karras, 25 steps, dtype auto) vs the original project's (DDPM, 80 steps, fp32),
    from the measured step, decode and encode times (a sampler's own arithmetic is negligible)."""
    auto = SHORT[resolve_dtype("auto", device)[0]]
    if auto not in results or "fp32" not in results:
        return None
    a, f = results[auto], results["fp32"]
    app = a["text_encode_s"] + 25 * a["unet_step_s"] + a["vae_decode_s"]
    original = f["text_encode_s"] + 80 * f["unet_step_s"] + f["vae_decode_s"]
    out = {
        "app_default_s": app,
        "app_precision": auto,
        "original_default_s": original,
        "speedup": original / app,
    }
    if "unet_step_s_diffusers" in f:
        out["original_with_diffusers_fp32_s"] = (
            f["text_encode_s"] + 80 * f["unet_step_s_diffusers"] + f["vae_decode_s_diffusers"]
        )
    return out


def run_fast(opts: argparse.Namespace, device: torch.device, precisions: list[torch.dtype]) -> dict[str, Any]:
    """`--mode fast`: measure.bench_fast in each precision, then fast mode against the default modes."""
    report: dict[str, Any] = {
        "mode": "fast",
        "machine": machine_info(device),
        "size": opts.size,
        "image": [opts.side, opts.side],
        "cfg_batch": 1,
        "runs": opts.runs,
        "results": {},
    }
    log.info("drawing random %s weights", opts.size)
    state = random_state(opts.size)
    auto = resolve_dtype("auto", device)[0]
    for dtype in precisions:  # whole generations in the precision the app picks (or the only one asked for)
        whole = dtype == auto or len(precisions) == 1
        report["results"][SHORT[dtype]] = bench_fast(state, device, dtype, opts.runs, opts.side, whole)
        gc.collect()
    report["fast_vs_default"] = fast_summary(report["results"], device)
    del state
    gc.collect()
    log.info("fast mode's memory (fresh process, an LCM-LoRA-size LoRA merged)")
    precision = SHORT[precisions[0]] if len(precisions) == 1 else "auto"  # as the whole generations
    report["memory"] = child(["fast", "--precision", precision, "--size", opts.size, "--side", str(opts.side),
                              "--device", str(device)])
    if hasattr(os, "getloadavg"):
        report["machine"]["load_average_end"] = os.getloadavg()[0]
    return report


def format_fast_report(r: dict[str, Any]) -> str:
    lines = _header(r, "fast mode (LCM sampler, guidance 1: UNet batch 1)")
    for name, x in r["results"].items():
        lines += ["", f"{name} (VAE {x['vae_precision']})"]
        for key, label in (("text_encode_s", "text encode (1 prompt)"), ("unet_step_batch1_s", "UNet step, batch 1"),
                           ("unet_step_batch2_s", "UNet step, batch 2 (CFG)"), ("taesd_decode_s", "TAESD decode"),
                           ("vae_decode_s", "VAE decode")):
            lines.append(f"  {label:30s}{x[key]:8.3f} s")
        lines.append(f"  {'TAESD preview':30s}{1000 * x['taesd_preview_s']:8.1f} ms  "
                     f"{100 * x['taesd_preview_fraction_of_step']:.1f}% of a step")
        for steps in FAST_STEPS if "generate_4_taesd_s" in x else ():
            lines.append(f"  {f'{steps} steps, tiny decode':30s}{x[f'generate_{steps}_taesd_s']:8.2f} s   "
                         f"{f'{steps} steps, full VAE decode':28s}{x[f'generate_{steps}_vae_s']:8.2f} s")
        if "generate_4_taesd_tome_s" in x:
            lines.append(f"  {'4 steps, tiny, token merging':30s}{x['generate_4_taesd_tome_s']:8.2f} s   "
                         f"(ratio {TOME_RATIO}, A1111's Token merging ratio)")
    m = r.get("memory")
    if m:
        note = "" if m["peak_reset"] else " (process peak)"
        lines += ["", (f"fast mode's memory, fresh process ({m['precision']}): weights {_gb(m['weights_bytes'])} "
                       f"(TAESD included), resident when ready {_gb(m['rss_ready'])}"),
                  (f"  LCM-LoRA-size LoRA ({m['lora_bytes'] / 1e6:.0f} MB) merged in {m['lora_apply_s']:.1f} s; "
                   f"originals kept {_gb(m['lora_originals_in_memory'])} in memory, "
                   f"{_gb(m['lora_originals_in_file'])} in a temporary file"),
                  (f"  peak over the merge and a 4-step generation {_gb(m['generation_peak'])}{note}: weights + "
                   f"{_gb(m['generation_peak'] - m['weights_bytes'])}")]
    t = r.get("fast_vs_default")
    if t:
        lines += ["", (f"time to an image ({t['precision']}): fast mode {t['fast_s']:.1f} s (full VAE decode "
                      f"{t['fast_vae_s']:.1f} s) vs app default (DPM++ 2M Karras, 25 steps) {t['app_default_s']:.1f} s: "
                      f"{t['vs_app_default']:.1f}x faster")]
        if "original_default_s" in t:
            lines.append(f"  vs the original project's default (DDPM, 80 steps, fp32) {t['original_default_s']:.1f} s: "
                         f"{t['vs_original_default']:.1f}x faster")
    return "\n".join(lines)


def _header(r: dict[str, Any], what: str) -> list[str]:
    m = r["machine"]
    lines = [
        (
            f"Inkpunk Studio engine benchmark: {r['size']} models (random weights), {r['image'][0]}x{r['image'][1]}, "
            f"{what}, median of {r['runs']} run(s)"
        ),
        f"{m['device']}: {m.get('gpu') or m['cpu']} ({m['cores']} cores, {m['threads']} threads"
        + (f", {' '.join(m['cpu_flags'])}" if m.get("cpu_flags") else "")
        + f"); torch {m['torch']}"
        + (f", diffusers {m['diffusers']}" if m.get("diffusers") else ""),
    ]
    if "load_average_start" in m:
        lines.append(
            f"load average {m['load_average_start']:.2f} at start, {m.get('load_average_end', 0):.2f} at end"
        )
    return lines


def run(opts: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(opts.device)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    precisions = (
        [DTYPE_NAMES[p.strip().lower()] for p in opts.precision.split(",")]
        if opts.precision
        else default_precisions(device)
    )
    if opts.mode == "fast":
        return run_fast(opts, device, precisions)
    report: dict[str, Any] = {
        "machine": machine_info(device),
        "size": opts.size,
        "image": [opts.side, opts.side],
        "cfg_batch": 2,
        "runs": opts.runs,
        "results": {},
    }
    log.info("drawing random %s weights", opts.size)
    state = random_state(opts.size)
    for dtype in precisions:
        report["results"][SHORT[dtype]] = bench_precision(
            state, device, dtype, opts.runs, not opts.skip_diffusers, opts.side
        )
        gc.collect()
    common = ["--size", opts.size, "--side", str(opts.side), "--device", str(device)]
    with tempfile.TemporaryDirectory(prefix="inkpunk-bench-") as tmp:
        checkpoint = []
        if not opts.skip_load:
            path = Path(tmp) / f"random-{opts.size}.ckpt"
            log.info("writing %s", path)
            torch.save({"state_dict": state}, path)
            report["checkpoint_bytes"] = path.stat().st_size
            warm_read(path)  # puts the file in the page cache
            checkpoint = ["--checkpoint", str(path)]
        del state
        gc.collect()
        for dtype in precisions:
            log.info("%s: load and generation memory (fresh process)", SHORT[dtype])
            mem = child(["memory", "--precision", SHORT[dtype], *common, *checkpoint])
            if checkpoint:
                mem.update(load_times(path, mem["load_s"], opts.runs, ["--precision", SHORT[dtype], *common]))
            report["results"][SHORT[dtype]].update(mem)
    if opts.tiled:
        log.info("tiled decode of %dx%d", opts.tiled, opts.tiled)
        report["tiled"] = child(["tiled", "--precision", "auto", "--tiled-side", str(opts.tiled), *common])
    outputs = {name: x.pop("_outputs") for name, x in report["results"].items()}
    if "fp32" in outputs:  # the 16-bit precisions against fp32, same weights and inputs
        for name, (unet_out, vae_out) in outputs.items():
            if name != "fp32":
                report["results"][name]["unet_rel_diff_vs_fp32"] = rel_diff(unet_out, outputs["fp32"][0])
                report["results"][name]["vae_rel_diff_vs_fp32"] = rel_diff(vae_out, outputs["fp32"][1])
    report["time_to_image"] = time_to_image(report["results"], device)
    if hasattr(os, "getloadavg"):
        report["machine"]["load_average_end"] = os.getloadavg()[0]
    return report


def _gb(n: float | None) -> str:
    return "?" if n is None else f"{n / GB:.2f} GiB"


def format_report(r: dict[str, Any]) -> str:
    if r.get("mode") == "fast":
        return format_fast_report(r)
    lines = _header(r, f"CFG batch {r['cfg_batch']}")
    for name, x in r["results"].items():
        lines += ["", f"{name:26s}{'ours':>10s}{'diffusers':>12s}{'ours/diffusers':>16s}"]
        for key, label in (
            ("unet_step_s", "UNet step"),
            ("vae_decode_s", f"VAE decode ({x['vae_precision']})"),
        ):
            ref = f"{x[key + '_diffusers']:10.3f} s" if key + "_diffusers" in x else f"{'-':>12s}"
            ratio = f"{x[key + '_ratio']:16.2f}" if key + "_ratio" in x else ""
            lines.append(f"  {label:24s}{x[key]:8.3f} s{ref}{ratio}")
        lines.append(f"  {'text encode':24s}{x['text_encode_s']:8.3f} s")
        lines.append(
            f"  {'cancel latency (max)':24s}{x['cancel_latency_max_s']:8.3f} s"
            f"   {100 * x['cancel_fraction_of_step']:.1f}% of a step"
        )
        lines.append(
            f"  {'preview':24s}{1000 * x['preview_s']:8.3f} ms  {100 * x['preview_fraction_of_step']:.3f}% of a step"
        )
        for other in ("diffusers", "fp32"):
            if f"unet_rel_diff_vs_{other}" in x:
                lines.append(
                    f"  {'rel. diff vs ' + other:24s}  UNet {x[f'unet_rel_diff_vs_{other}']:.1e}, "
                    f"VAE {x[f'vae_rel_diff_vs_{other}']:.1e}"
                )
        if "load_s" in x:
            runs = x.get("load_runs_s", [x["load_s"]])
            lines.append(
                f"  {'load to ready':24s}{x['load_s']:8.2f} s   {x['load_vs_warm_read_fresh']:.2f}x a warm f.read() "
                f"of the {_gb(r['checkpoint_bytes'])} file ({x['warm_read_fresh_s']:.2f} s); "
                f"{len(runs)} fresh processes, {min(runs):.2f}-{max(runs):.2f} s"
            )
            lines.append(
                f"  {'':24s}{'':10s}   {x['load_vs_warm_read']:.2f}x reading it into one reused buffer "
                f"({x['warm_read_s']:.2f} s); peak during load {_gb(x['load_peak'])}"
            )
        if x.get("generation_peak") is not None:
            extra = x["generation_peak"] - x["weights_bytes"]
            note = "" if x["peak_reset"] else " (process peak, includes loading)"
            if "load_s" not in x:  # --skip-load: the weights were drawn in that process, whose heap keeps some
                note += " (random weights drawn in-process: an overestimate; drop --skip-load)"
            label = "{0}x{0} generation peak".format(r["image"][0])
            lines.append(
                f"  {label:24s}{_gb(x['generation_peak']):>10s}   weights "
                f"{_gb(x['weights_bytes'])} + {_gb(extra)}{note}"
            )
    if r.get("tiled"):
        t = r["tiled"]
        lines += [
            "",
            (
                f"tiled VAE decode {t['tiled_side']}x{t['tiled_side']}: {t['tiled_decode_s']:.1f} s, "
                f"peak {_gb(t['tiled_peak'])} (process before decode {_gb(t['tiled_rss_before'])})"
            ),
        ]
    if r.get("time_to_image"):
        t = r["time_to_image"]
        lines += [
            "",
            (
                f"time to an image: app default (DPM++ 2M Karras, 25 steps, {t['app_precision']}) "
                f"{t['app_default_s']:.1f} s vs original default (DDPM, 80 steps, fp32) "
                f"{t['original_default_s']:.1f} s: {t['speedup']:.1f}x faster"
            ),
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("sd15", "tiny"), default="sd15", help="model size (default: sd15)")
    p.add_argument("--mode", choices=("default", "fast"), default="default",
                   help="fast: fast mode's figures (4 and 8 LCM steps at guidance 1, TAESD or VAE decode)")
    p.add_argument(
        "--runs", type=int, default=3, help="timed runs per figure; medians are reported (default 3)"
    )
    p.add_argument(
        "--precision", default="", help="comma-separated, e.g. fp32,bf16 (default: each native one)"
    )
    p.add_argument("--side", type=int, default=0, help="image side in pixels (default: 512; tiny: 128)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--skip-load", action="store_true", help="no checkpoint file: skip load timing")
    p.add_argument("--skip-diffusers", action="store_true", help="do not time diffusers' models")
    p.add_argument(
        "--tiled",
        type=int,
        default=0,
        metavar="SIDE",
        help="also decode SIDE x SIDE pixels in tiles (e.g. 2048) and report its peak memory",
    )
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    p.add_argument("--child", choices=("memory", "load", "tiled", "fast"), help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--tiled-side", type=int, default=2048, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    opts.side = opts.side or SIDES[opts.size]
    if opts.side % 64 or not 64 <= opts.side <= 2048:
        p.error("--side must be a multiple of 64 from 64 to 2048")
    if opts.runs < 1:
        p.error("--runs must be at least 1")
    for name in filter(None, opts.precision.split(",")):
        if name.strip().lower() not in DTYPE_NAMES and not (opts.child and name == "auto"):
            p.error(f"unknown precision {name!r}: use fp32, bf16 or fp16")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    logging.basicConfig(level=logging.INFO if opts.verbose else logging.WARNING, format="%(message)s")
    if opts.child:
        sys.stdout.write(json.dumps(run_child(opts)) + "\n")
        return 0
    report = run(opts)
    sys.stdout.write(format_report(report) + "\n")
    if opts.json:
        opts.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
