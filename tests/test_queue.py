"""The job queue model and its SQLite store: order, remove, reorder, pause, duplicate, persistence, a kill."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
from kill_child import run_and_kill
from PIL import Image

from inkpunk_studio.queue import JobQueue, decode_params, encode_params
from inkpunk_studio.worker import GenerationParams


def _params(n: int, **extra) -> GenerationParams:
    return GenerationParams(prompt=f"job {n}", seed=n, width=64, height=64, **extra)


def _prompts(queue: JobQueue) -> list[str]:
    return [job.params.prompt for job in queue.jobs]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "queue.sqlite3"


def test_encode_decode_keeps_every_field_and_the_init_image() -> None:
    init = Image.new("RGB", (16, 8), (10, 200, 30))
    params = GenerationParams(prompt="猫 <lora:ink:0.8>", negative_prompt="blurry", sampler="euler_a", steps=7,
                              cfg_scale=4.5, seed=None, width=128, height=64, batch_count=3, init_image=init,
                              strength=0.4, schedule="karras", clip_skip=2, variation_seed=99,
                              variation_strength=0.25, rng="nv", ensd=31337, emphasis="no_norm",
                              loras=((Path("/m/ink.safetensors"), 0.8, 0.6),), embeddings=("/m/e.pt",), vae="/m/v.pt")
    back = decode_params(*encode_params(params))
    assert back.to_dict() == params.to_dict()
    assert (back.loras, back.embeddings, back.vae) == (params.loras, params.embeddings, params.vae)
    assert back.init_image.size == (16, 8) and back.init_image.tobytes() == init.tobytes()
    with pytest.raises(ValueError, match="could not be read"):
        decode_params("[1, 2]", None)


def test_an_inpainting_job_keeps_its_mask() -> None:
    """A queued inpainting job restored after a restart still repaints only its mask, with its options."""
    init = Image.new("RGB", (16, 8), (10, 200, 30))
    mask = Image.new("L", (16, 8), 0)
    mask.paste(255, (4, 2, 9, 6))
    params = GenerationParams(prompt="a fox", width=16, height=8, init_image=init, strength=0.6, mask=mask,
                              mask_blur=9, masked_content="fill")
    back = decode_params(*encode_params(params))
    assert back.mask.mode == "L" and back.mask.tobytes() == mask.tobytes()
    assert (back.mask_blur, back.masked_content) == (9, "fill")
    assert decode_params(*encode_params(GenerationParams(prompt="plain"))).mask is None


def test_a_fast_mode_job_keeps_its_tiny_decoder() -> None:
    params = GenerationParams(prompt="fast", sampler="lcm", steps=4, cfg_scale=1.0, decoder="taesd",
                              taesd="/m/VAE-approx/taesd")
    back = decode_params(*encode_params(params))
    assert (back.sampler, back.steps, back.decoder, back.taesd) == ("lcm", 4, "taesd", "/m/VAE-approx/taesd")


def test_order_remove_reorder_move_and_pause_persist(db: Path) -> None:
    queue = JobQueue(db)
    assert queue.persistent and len(queue) == 0 and not queue.paused
    jobs = [queue.add(_params(n), "/out") for n in range(5)]
    assert _prompts(queue) == ["job 0", "job 1", "job 2", "job 3", "job 4"]
    assert queue.next_job() is jobs[0]
    assert queue.remove(jobs[2].id) and not queue.remove(jobs[2].id)
    queue.reorder([jobs[4].id, jobs[0].id])  # the rest keep their order after
    assert _prompts(queue) == ["job 4", "job 0", "job 1", "job 3"]
    queue.move(jobs[3].id, -2)
    queue.move(jobs[4].id, -1)  # already first
    assert _prompts(queue) == ["job 4", "job 3", "job 0", "job 1"]
    queue.set_paused(True)
    assert queue.next_job() is None
    queue.close()

    again = JobQueue(db)
    assert _prompts(again) == ["job 4", "job 3", "job 0", "job 1"] and again.paused
    assert [j.output_dir for j in again.jobs] == [Path("/out")] * 4
    again.set_paused(False)
    assert again.next_job().params.prompt == "job 4"
    again.close()
    assert not JobQueue(db).paused


def test_the_running_job_stays_first(db: Path) -> None:
    queue = JobQueue(db)
    a, b, c = (queue.add(_params(n), "/out") for n in range(3))
    queue.start(b.id)  # e.g. started after a reorder
    assert queue.ids() == [b.id, a.id, c.id] and queue.next_job() is None and queue.waiting() == 2
    queue.reorder([c.id, a.id, b.id])
    assert queue.ids() == [b.id, c.id, a.id]
    queue.move(c.id, -5)
    assert queue.ids()[0] == b.id
    queue.set_progress(0.5)
    assert queue.progress[b.id] == 0.5
    queue.remove(b.id)  # it ran
    assert queue.running_id is None and queue.next_job() is c
    queue.close()
    assert JobQueue(db).ids() == [c.id, a.id]


def test_duplicate_gets_a_new_seed_right_after_the_original(db: Path) -> None:
    queue = JobQueue(db)
    a = queue.add(_params(1, variation_seed=5, variation_strength=0.3), "/out")
    b = queue.add(_params(2), "/out")
    copy = queue.duplicate(a.id)
    assert queue.ids() == [a.id, copy.id, b.id]
    assert copy.params.seed != a.params.seed and copy.params.seed is not None
    assert copy.params.prompt == a.params.prompt and copy.params.variation_seed == 5
    assert copy.params is not a.params and a.params.seed == 1
    with pytest.raises(ValueError, match="no queued job"):
        queue.duplicate("nope")
    queue.close()
    assert [j.params.seed for j in JobQueue(db).jobs] == [1, copy.params.seed, 2]


def test_a_damaged_database_is_set_aside_and_an_unreadable_row_dropped(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not an sqlite database" * 100)
    queue = JobQueue(db)
    assert queue.persistent and len(queue) == 0 and "can't be used" in queue.notes[0]
    assert any(p.name.startswith("queue.sqlite3.damaged-") for p in db.parent.iterdir())
    queue.add(_params(1), "/out")
    queue.add(_params(2), "/out")
    queue.close()
    con = sqlite3.connect(db)
    con.execute("UPDATE jobs SET params = 'not json' WHERE position = 0")
    con.commit()
    con.close()
    again = JobQueue(db)
    assert _prompts(again) == ["job 2"] and "could not be read" in again.notes[0]


def test_a_killed_process_loses_no_confirmed_job_and_leaves_a_sound_database(db: Path) -> None:
    rng = random.Random(16)
    added: dict[str, int] = {}
    removed: set[str] = set()
    for round_ in range(3):
        for line in run_and_kill("queue_writer_child.py", [str(db), str(1000 * (round_ + 1))], rng):
            kind, job_id, *rest = line.split()
            if kind == "add":
                added[job_id] = int(rest[0])
            else:
                removed.add(job_id)
        con = sqlite3.connect(db)
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            con.close()
        queue = JobQueue(db)
        try:
            assert queue.notes == []
            jobs = {job.id: job for job in queue.jobs}
            for job_id, seed in added.items():
                job = jobs.get(job_id)
                assert job is not None, f"confirmed job {job_id} lost"
                assert job.params.seed == seed and job.params.prompt == f"kill test {seed}, ünïcode 猫"
                assert job.params.loras == ((Path(f"/models/lora/{seed}.safetensors"), 0.5, 0.75),)
                assert (job.params.init_image is not None) == bool(seed % 2)
                assert job.output_dir == Path(f"/out/{seed}")
            assert not removed & set(jobs)
        finally:
            queue.close()
    assert len(added) >= 3


def test_an_unusable_folder_keeps_the_queue_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    queue = JobQueue(blocker / "queue.sqlite3")
    assert not queue.persistent and "not saved" in queue.notes[-1]
    job = queue.add(_params(1), "/out")
    queue.flush()
    assert queue.next_job() is job and blocker.read_text() == "not a folder"
    queue.close()
