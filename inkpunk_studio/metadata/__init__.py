"""Generation parameters in image files, both ways.

Writing uses the AUTOMATIC1111 ``parameters`` convention (read by A1111, Civitai and most tools): a PNG text
chunk, or for JPEG/WebP the EXIF UserComment. Reading understands the tools people share images from: the
A1111 family (A1111, Forge, reForge, SD.Next, Civitai, Tensor.Art, Yodayo, Stability Matrix), ComfyUI (PNG
chunks and JPEG/WebP EXIF), SwarmUI, InvokeAI 2 to 6, NovelAI, Fooocus and RuinedFooocus: one reader per
format in ``formats.READERS``. Reading never raises: malformed or missing metadata gives ``None``, and what a
file records but cannot be restored is left unset and named in ``ImageParams.notes``.
"""

from .files import (
    decode_user_comment,
    encode_user_comment,
    exif_bytes,
    export_image,
    png_bytes,
    read_params,
    save_png,
)
from .names import DISPLAY_NAMES, SAMPLER_LABELS, SCHEDULE_LABELS, sampler_from_a1111, split_legacy
from .params import ImageParams

__all__ = [
    "DISPLAY_NAMES", "SAMPLER_LABELS", "SCHEDULE_LABELS", "ImageParams", "decode_user_comment",
    "encode_user_comment", "exif_bytes", "export_image", "png_bytes", "read_params", "sampler_from_a1111",
    "save_png", "split_legacy",
]
