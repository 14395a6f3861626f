"""Child process for the queue's kill test: queues jobs (and removes and reorders some) in a loop.

Usage: PYTHONPATH=<repo> python tests/queue_writer_child.py DB_PATH START_SEED
Prints ``add <id> <seed>`` once a job is on disk (after ``JobQueue.flush``) and ``del <id>`` once a removal
is; a killed child has lost nothing it printed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from inkpunk_studio.queue import JobQueue
from inkpunk_studio.worker import GenerationParams


def main() -> None:
    path, seed = Path(sys.argv[1]), int(sys.argv[2])
    queue = JobQueue(path)
    while True:
        init = Image.new("RGB", (8, 8), (seed % 256, 7, 9)) if seed % 2 else None
        params = GenerationParams(prompt=f"kill test {seed}, ünïcode 猫", seed=seed, width=64, height=64,
                                  init_image=init, loras=((Path(f"/models/lora/{seed}.safetensors"), 0.5, 0.75),))
        job = queue.add(params, f"/out/{seed}")
        if seed % 3 == 0:
            queue.reorder(list(reversed(queue.ids())))
        if seed % 5 == 0:
            queue.remove(job.id)
            queue.flush()
            sys.stdout.write(f"del {job.id}\n")
        else:
            queue.flush()
            sys.stdout.write(f"add {job.id} {seed}\n")
        sys.stdout.flush()
        seed += 1


if __name__ == "__main__":
    main()
