"""`python main.py generate ...` / `inkpunk generate ...`: one generation from the terminal, no Qt.

Writes PNGs carrying A1111-style `parameters` text and draws its own progress bar on stderr from the engine's
step callback. Bad arguments get one line on stderr and exit code 2; a checkpoint that can't be loaded, 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import engine


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one clear line (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="inkpunk generate", description="Generate an image with an SD1.x checkpoint.")
    p.add_argument("--checkpoint", required=True, type=Path, help=".ckpt or .safetensors SD1.x checkpoint")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--seed", type=int, default=None, help="default: a random seed (printed)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--sampler", default="dpmpp_2m", choices=[*engine.SAMPLERS, *engine.LEGACY_NAMES],
                   help="default: dpmpp_2m (with its Automatic schedule, Karras)")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--init-image", type=Path, default=None, help="img2img: start from this picture")
    p.add_argument("--strength", type=float, default=0.75, help="img2img: 0 keeps the picture, 1 ignores it")
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
    init_image = None
    if args.init_image is not None:
        try:
            init_image = fit_to_size(load_image(args.init_image), args.width, args.height)
        except ImageLoadError as exc:
            return _fail(2, f"--init-image: {exc}")
    try:
        req = engine.GenerationRequest(
            prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps, cfg_scale=args.cfg,
            width=args.width, height=args.height, seed=args.seed, sampler=args.sampler,
            batch_size=args.batch_size, init_image=init_image, strength=args.strength,
        )
    except ValueError as exc:
        return _fail(2, str(exc))

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

    for image, seed, path in zip(result.images, result.seeds, _output_paths(args.out, len(result.images))):
        params = ImageParams(
            prompt=req.prompt, negative_prompt=req.negative_prompt, steps=req.steps, sampler=req.sampler,
            cfg_scale=req.cfg_scale, seed=seed, width=req.width, height=req.height,
            strength=req.strength if req.is_img2img else None,
            model_name=pipe.model_name, model_hash=pipe.model_hash,
        )
        save_png(image, path, params)
        print(f"wrote {path} (seed {seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
