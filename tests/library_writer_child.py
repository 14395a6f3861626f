"""Child process for the kill test: adds favorites in a loop, printing each confirmed id.

Usage: PYTHONPATH=<repo> python tests/library_writer_child.py LIBRARY_FOLDER START_SEED
An id is printed (and flushed) only after ``Library.add`` returned, i.e. once it is confirmed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from inkpunk_studio.library import Library
from inkpunk_studio.metadata import ImageParams


def main() -> None:
    folder, seed = Path(sys.argv[1]), int(sys.argv[2])
    library = Library(folder)
    while True:
        colour = (seed * 37 % 256, seed * 91 % 256, seed * 13 % 256)
        params = ImageParams(prompt=f"nvinkpunk kill test {seed}, with, commas", seed=seed, width=64, height=64)
        fav = library.add(Image.new("RGB", (64, 64), colour), params)
        sys.stdout.write(f"{fav.id} {seed}\n")
        sys.stdout.flush()
        seed += 1


if __name__ == "__main__":
    main()
