"""`python main.py generate ...` / `inkpunk generate ...`: one generation from the terminal, no Qt.

Writes PNGs carrying A1111-style `parameters` text and draws its own progress bar on stderr from the engine's
step callback. Bad arguments get one line on stderr and exit code 2; a checkpoint that can't be loaded, 1.
`--from-png FILE` takes every parameter from an image's metadata (ours, A1111's, ComfyUI's, ...: see
inkpunk_studio.metadata); flags given explicitly override them, and what the file records but cannot be restored
(a sampler or schedule we lack) is printed as a warning, with the default used instead named.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import engine

# The generation flags and their defaults (None in argparse, so an explicit flag is told from a default and
# overrides what --from-png read). dest -> default.
DEFAULTS: dict[str, Any] = {
    "prompt": None, "negative_prompt": "", "seed": None, "steps": 25, "cfg": 7.5, "sampler": "dpmpp_2m",
    "schedule": "automatic", "width": 512, "height": 512, "strength": 0.75, "clip_skip": 1, "rng": "cpu",
    "variation_seed": None, "variation_strength": 0.0, "ensd": 0, "emphasis": "original",
    "ngms": 0.0, "ngms_all_steps": False, "skip_early_cfg": 0.0,  # A1111's uncond skips
}
DEFAULTS["token_merging_ratio"] = 0.0  # A1111's token merging (engine.tome)
RNG_CHOICES = ("cpu", "nv")
EMPHASIS_CHOICES = ("original", "no_norm", "ignore", "none", "comfy")  # engine.request.EMPHASIS_MODES


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one clear line (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="inkpunk generate", description="Generate an image with an SD1.x checkpoint.")
    p.add_argument("--checkpoint", required=True, type=Path, help=".ckpt or .safetensors SD1.x checkpoint")
    p.add_argument("--from-png", type=Path, default=None, metavar="FILE",
                   help="take all parameters from an image's metadata; other flags given override them")
    p.add_argument("--prompt", help="required unless --from-png gives one")
    p.add_argument("--negative-prompt")
    p.add_argument("--seed", type=int, help="default: a random seed (printed)")
    p.add_argument("--steps", type=int, help="default: 25")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale (default: 7.5)")
    p.add_argument("--sampler", choices=(*engine.SAMPLERS, *engine.LEGACY_NAMES), metavar="SAMPLER",
                   help=f"one of {', '.join(engine.SAMPLERS)} (default: dpmpp_2m; the old combined names such as "
                        "dpmpp_2m_karras still work)")
    p.add_argument("--schedule", choices=engine.SCHEDULE_NAMES,
                   help="sigma schedule (default: automatic, the sampler's A1111 default)")
    p.add_argument("--width", type=int, help="default: 512")
    p.add_argument("--height", type=int, help="default: 512")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--init-image", type=Path, default=None, help="img2img: start from this picture")
    p.add_argument("--strength", type=float, help="img2img: 0 keeps the picture, 1 ignores it (default: 0.75)")
    p.add_argument("--clip-skip", type=int, help="use an earlier CLIP layer, 1..12 (default: 1)")
    p.add_argument("--rng", choices=RNG_CHOICES,
                   help="noise source: cpu (default) or nv, A1111's GPU/NV noise reproduced on any device")
    p.add_argument("--variation-seed", type=int, help="seed of the variation noise (default: random)")
    p.add_argument("--variation-strength", type=float, help="how much variation noise to blend in, 0..1 (default: 0)")
    p.add_argument("--ensd", type=int, help="A1111's eta noise seed delta (default: 0)")
    p.add_argument("--emphasis", choices=EMPHASIS_CHOICES, help="how (weights) apply (default: original)")
    # A1111's uncond skips (engine.denoiser.CFGDenoiser.skips_uncond): faster, and needed to reproduce
    # images that record them (None when not given, so --from-png's value stands)
    p.add_argument("--ngms", type=float, help="A1111's Negative Guidance minimum sigma: skip the negative prompt on "
                   "every other step below this sigma; faster, changes the image (default: 0, off)")
    p.add_argument("--ngms-all-steps", action="store_const", const=True, default=None,
                   help="with --ngms: skip on every step below the sigma, not every other one")
    p.add_argument("--skip-early-cfg", type=float, help="A1111's Skip Early CFG: ignore the negative prompt for "
                   "this fraction of the first steps, 0..1 (default: 0, off)")
    p.add_argument("--token-merging-ratio", type=float, metavar="RATIO",
                   help="A1111's token merging, 0 <= RATIO < 1: faster steps for a little detail (default: 0, off)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    p.add_argument("--out", required=True, type=Path, help="output .png (batches add -1, -2, ...)")
    return p


class ProgressBar:
    """A one-line terminal progress bar fed by engine.StepEvent."""

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream if stream is not None else sys.stderr
        self.width = width

    def __call__(self, event) -> None:
        if self.stream is None:
            return
        done = int(self.width * event.step / event.total)
        per_step = event.elapsed / event.step
        left = per_step * (event.total - event.step)
        bar = "#" * done + "." * (self.width - done)
        self.stream.write(f"\r[{bar}] {event.step}/{event.total}  {per_step:.2f} s/step  {left:.0f} s left ")
        if event.step == event.total:
            self.stream.write("\n")
        self.stream.flush()


def _fail(code: int, message: str) -> int:
    print(f"inkpunk generate: error: {message}", file=sys.stderr)
    return code


def _output_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{k + 1}{out.suffix}") for k in range(count)]


def _from_png(path: Path, args: argparse.Namespace) -> dict[str, Any] | str:
    """The flag values an image's metadata gives (warnings printed), or an error message."""
    from inkpunk_studio.metadata import read_params

    if not path.is_file():
        return f"--from-png: no file at {path}"
    meta = read_params(path)
    if meta is None:
        return f"--from-png: {path.name} has no generation parameters"
    for note in meta.notes:
        print(f"inkpunk generate: warning: {path.name}: {note}", file=sys.stderr)
    values = {"prompt": meta.prompt, "negative_prompt": meta.negative_prompt, "seed": meta.seed, "steps": meta.steps,
              "cfg": meta.cfg_scale, "width": meta.width, "height": meta.height, "clip_skip": meta.clip_skip,
              "rng": meta.rng, "ensd": meta.ensd, "emphasis": meta.emphasis, "variation_seed": meta.variation_seed,
              "variation_strength": meta.variation_strength, "ngms": meta.s_min_uncond,
              "ngms_all_steps": meta.s_min_uncond_all, "skip_early_cfg": meta.skip_early_cond}
    values["token_merging_ratio"] = meta.token_merging_ratio
    if meta.strength is not None:
        values["strength"] = meta.strength
    if meta.sampler is not None:
        values["sampler"] = meta.sampler
        if meta.schedule is not None:
            values["schedule"] = meta.schedule
    fallback = "sampler" if meta.sampler is None else "schedule" if meta.schedule is None else None
    if fallback is not None and getattr(args, fallback) is None:
        print(f"inkpunk generate: warning: {path.name}: using {fallback} {DEFAULTS[fallback]} instead "
              f"(give --{fallback} to choose)", file=sys.stderr)
    return values


def _settings(args: argparse.Namespace) -> dict[str, Any] | str:
    """Defaults, then --from-png's values, then the flags given: the generation settings, or an error message."""
    values = dict(DEFAULTS)
    if args.from_png is not None:
        found = _from_png(args.from_png, args)
        if isinstance(found, str):
            return found
        values.update(found)
    values.update({k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None})
    if values["prompt"] is None:
        return "--prompt is required (or --from-png with an image that has one)"
    if args.sampler is not None and args.schedule is None and args.from_png is not None:
        values["schedule"] = "automatic"  # a new sampler from the command line: its own default schedule
    if values["variation_strength"] and values["variation_seed"] is None:
        values["variation_seed"] = random.randrange(2**32)  # A1111's -1: a random variation seed (printed)
        values["random_variation_seed"] = True
    return values


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["generate"]:  # `inkpunk generate ...` and `inkpunk ...` both work
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    from inkpunk_studio.imageload import ImageLoadError, fit_to_size, load_image
    from inkpunk_studio.metadata import ImageParams, save_png

    if args.out.suffix.lower() != ".png":
        return _fail(2, f"--out must be a .png file, got {args.out}")
    if not args.out.parent.is_dir():
        return _fail(2, f"the folder for --out does not exist: {args.out.parent}")
    if not args.checkpoint.is_file():  # the engine says what is there instead: nothing, a folder, a FIFO
        from engine.checkpoint import check_checkpoint_path

        try:
            check_checkpoint_path(args.checkpoint)
        except engine.CheckpointError as exc:
            return _fail(2, str(exc))
    v = _settings(args)
    if isinstance(v, str):
        return _fail(2, v)
    init_image = None
    if args.init_image is not None:
        try:
            init_image = fit_to_size(load_image(args.init_image), v["width"], v["height"])
        except (ImageLoadError, ValueError) as exc:
            return _fail(2, f"--init-image: {exc}")
    try:
        req = engine.GenerationRequest(
            prompt=v["prompt"], negative_prompt=v["negative_prompt"], steps=v["steps"], cfg_scale=v["cfg"],
            width=v["width"], height=v["height"], seed=v["seed"], sampler=v["sampler"], schedule=v["schedule"],
            batch_size=args.batch_size, init_image=init_image, strength=v["strength"], clip_skip=v["clip_skip"],
            rng=v["rng"], emphasis=v["emphasis"], variation_seed=v["variation_seed"],
            variation_strength=v["variation_strength"], ensd=v["ensd"],
            s_min_uncond=v["ngms"], s_min_uncond_all=v["ngms_all_steps"], skip_early_cond=v["skip_early_cfg"],
            token_merging_ratio=v["token_merging_ratio"],
        )
    except ValueError as exc:
        return _fail(2, str(exc))
    if v.get("random_variation_seed"):
        print(f"variation seed {req.variation_seed}", file=sys.stderr)

    started = time.perf_counter()
    try:
        pipe = engine.load_pipeline(args.checkpoint, device=args.device, dtype=args.precision)
    except ValueError as exc:  # device/precision not usable here
        return _fail(2, str(exc))
    except engine.CheckpointError as exc:
        return _fail(1, str(exc))
    print(f"loaded {pipe.model_name} on {pipe.device} ({str(pipe.dtype).removeprefix('torch.')}) "
          f"in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    try:
        result = pipe.generate(req, on_step=ProgressBar())
    except KeyboardInterrupt:
        return _fail(130, "interrupted; nothing was written")

    outputs = _output_paths(args.out, len(result.images))
    for k, (image, seed, path) in enumerate(zip(result.images, result.seeds, outputs)):
        variation = req.variation_strength != 0  # A1111: the variation seed counts up over a batch
        params = ImageParams(
            prompt=req.prompt, negative_prompt=req.negative_prompt, steps=req.steps, sampler=req.sampler,
            schedule=req.resolved_schedule, cfg_scale=req.cfg_scale, seed=seed, width=req.width,
            height=req.height, strength=req.strength if req.is_img2img else None, model_name=pipe.model_name,
            model_hash=pipe.model_hash, clip_skip=req.clip_skip, rng="nv" if req.rng == "gpu" else req.rng,
            ensd=req.ensd, emphasis=req.emphasis,
            variation_seed=req.variation_seed + k if variation else None,
            variation_strength=float(req.variation_strength) if variation else 0.0,
            token_merging_ratio=req.token_merging_ratio,
        )
        params.set_cfg_skips(result.cfg_skips)  # NGMS / Skip Early CFG: recorded when they skipped
        save_png(image, path, params)
        print(f"wrote {path} (seed {seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
