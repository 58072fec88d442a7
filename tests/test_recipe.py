"""The README's CPU quick start (`python recipe.py`) at smoke size, so that it cannot rot; and the output check
that decides whether the recipe's continuation counts as music."""
import glob
import json
import math
import os

import numpy as np
import pytest

import toy
import recipe


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe") / "out"
    code = recipe.main(["--quick", "--out", str(out)])
    return code, out


def test_quick_recipe_writes_every_promised_file(quick_run):
    code, out = quick_run
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    for what, path in report["files"].items():
        for level in (0, 1, 2):  # "level_{0,1,2}" stands for three files, "item_*" for one per continuation
            expanded = path.replace("{0,1,2}", str(level))
            found = glob.glob(expanded)
            assert len(found) == (recipe.QUICK.samples if "item_*" in path else 1), f"{what}: {expanded} is missing"
    assert len(list((out / "toy").glob("toy_*.wav"))) == recipe.QUICK.songs
    for stage in recipe.STAGES:
        assert (out / "runs" / stage / "metrics.jsonl").is_file()


def test_quick_recipe_figures_are_finite(quick_run):
    _, out = quick_run
    report = json.loads((out / "report.json").read_text())
    assert set(report["spectral_convergence_db"]) == {"level_0", "level_1", "level_2"}
    figures = list(report["spectral_convergence_db"].values())
    for stage in ("top", "middle", "bottom"):
        bits = report["bits_per_token"][stage]
        figures += [bits["heldout"], bits["train"], bits["unigram_entropy"]]
        assert 0 < bits["heldout"] < 3 * bits["uniform"]
    for name in ("level_0", "level_1", "level_2", "heldout_song", "white_noise"):
        figures += list(report["output"][name].values())
    figures += [s["wall_s"] for s in report["stages"].values()] + [report["total_wall_s"]]
    assert all(math.isfinite(f) for f in figures), figures
    assert set(report["stages"]) == {"data", *recipe.STAGES, "sample", "measure"}


def test_output_check_tells_music_from_silence_noise_and_drift():
    rate = 44100
    song, _ = toy.toy_song([1, 0], 3.0, rate)
    rng = np.random.default_rng(0)
    assert recipe.judge(recipe.audio_figures(song, rate)) == []
    silence = np.zeros(3 * rate, dtype=np.float32)
    assert any("silent" in p for p in recipe.judge(recipe.audio_figures(silence, rate)))
    noise = 0.1 * rng.standard_normal(3 * rate)
    assert any("noise-like" in p for p in recipe.judge(recipe.audio_figures(noise, rate)))
    brown = np.cumsum(noise)  # coloured noise: low full-band flatness, yet noise
    brown = 0.1 * (brown - np.convolve(brown, np.ones(200) / 200, "same")) / np.abs(brown).max()
    assert any("noise-like" in p for p in recipe.judge(recipe.audio_figures(brown, rate)))
    drift = 0.05 + 0.001 * np.sin(2 * np.pi * 2 * np.arange(3 * rate) / rate)  # DC offset with a slow wobble
    assert any("rumble" in p for p in recipe.judge(recipe.audio_figures(drift, rate)))
    drone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(3 * rate) / rate)  # one steady tone
    assert any("static" in p for p in recipe.judge(recipe.audio_figures(drone, rate)))


def test_used_output_folder_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "something").write_text("x")
    assert recipe.main(["--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--out" in err and "not empty" in err
