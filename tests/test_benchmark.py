"""The benchmark runs end to end on the tiny models and reports every figure (no timing asserts: those
belong to the machine, see docs/benchmarks.md)."""

from __future__ import annotations

import json

import pytest

from engine import benchmark


def test_tiny_benchmark_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert benchmark.main(["--size", "tiny", "--runs", "2", "--precision", "fp32", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["size"] == "tiny" and report["runs"] == 2 and report["machine"]["torch"]
    fp32 = report["results"]["fp32"]
    for key in ("unet_step_s", "vae_decode_s", "text_encode_s", "preview_s", "preview_fraction_of_step",
                "cancel_latency_s", "cancel_latency_max_s", "cancel_fraction_of_step", "load_s",
                "load_vs_warm_read", "weights_bytes", "generation_peak"):
        assert fp32[key] is not None and fp32[key] >= 0, key
    # diffusers is a test dependency, so the comparison ran too, on the same weights
    assert fp32["unet_step_s_ratio"] > 0 and fp32["vae_decode_s_ratio"] > 0
    assert fp32["unet_rel_diff_vs_diffusers"] < 1e-4
    assert fp32["generation_peak"] > fp32["weights_bytes"] > 0
    assert report["checkpoint_bytes"] > 0 and fp32["warm_read_s"] > 0 and fp32["warm_read_fresh_s"] > 0
    # load to ready: the memory child's load, then one more in a fresh process, each against a warm read
    assert len(fp32["load_runs_s"]) == 2 and min(fp32["load_runs_s"]) <= fp32["load_s"] <= max(fp32["load_runs_s"])
    printed = capsys.readouterr().out
    assert "UNet step" in printed and "ours/diffusers" in printed


def test_bad_arguments_exit_cleanly():
    with pytest.raises(SystemExit) as e:
        benchmark.main(["--precision", "fp8"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        benchmark.main(["--runs", "0"])
