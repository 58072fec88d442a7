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
    png = out / "samples" / "spectrograms.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000  # a real picture


def test_quick_recipe_figures_are_finite(quick_run):
    _, out = quick_run
    report = json.loads((out / "report.json").read_text())
    assert set(report["spectral_convergence_db"]) == {"level_0", "level_1", "level_2"}
    figures = list(report["spectral_convergence_db"].values())
    for stage in ("top", "middle", "bottom"):
        bits = report["bits_per_token"][stage]
        figures += [bits["heldout"], bits["train"], bits["unigram_entropy"]]
        assert 0 < bits["heldout"] < 3 * bits["uniform"]
    names = ["level_0", "level_1", "level_2", "heldout_song", "white_noise", "upsampled_level_0", "upsampled_level_1"]
    for name in names + [f"true_codes_level_{level}" for level in range(3)]:
        figures += list(report["output"][name].values())
    figures += [s["wall_s"] for s in report["stages"].values()] + [report["total_wall_s"]]
    assert all(math.isfinite(f) for f in figures), figures
    assert set(report["stages"]) == {"data", *recipe.STAGES, "codes", "sample", "measure"}


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


def test_second_measure_fails_noise_and_drones_and_passes_music():
    """Onsets and tones, independent of the flatness: white and brown noise have neither, a chord drone has tones
    but no onsets, a train of noise bursts onsets but no tones; toy songs (not the recipe's) have both."""
    rate, n = 44100, 3 * 44100
    rng = np.random.default_rng(1)
    t = np.arange(n) / rate
    white = 0.1 * rng.standard_normal(n)
    brown = np.cumsum(rng.standard_normal(n))
    brown = 0.1 * (brown - np.convolve(brown, np.ones(2001) / 2001, "same")) / np.abs(brown).max()
    drone = sum(np.sin(2 * np.pi * f * h * t) / h for f in (220.0, 277.2, 329.6) for h in (1, 2, 3)) / 6
    bursts = white * (np.sin(2 * np.pi * 4 * t) > 0.7)  # hi-hat-like: four noise bursts a second
    for name, audio in [("white", white), ("brown", brown), ("drone", drone), ("bursts", bursts)]:
        f = recipe.audio_figures(audio, rate)
        tonal_ok, onset_ok = f["tonal_share"] >= recipe.TONAL_MIN, f["onset_db"] >= recipe.ONSET_MIN_DB
        assert not (tonal_ok and onset_ok), (name, f)
        assert not tonal_ok if name != "drone" else not onset_ok, (name, f)
    for name, audio in [("white", white), ("brown", brown), ("drone", drone)]:
        assert recipe.target_misses(recipe.audio_figures(audio, rate)), name
    for seed in range(12):  # toy songs measure flatness 0.07-0.23, onsets 3.0-7.3 dB, tonal share 0.72-0.94
        song, _ = toy.toy_song([seed, 0], 3.0, rate)
        f = recipe.audio_figures(song, rate)
        assert recipe.judge(f) == [] and recipe.target_misses(f) == [], (seed, f)
        assert f["onset_db"] >= 1.4 * recipe.ONSET_MIN_DB and f["tonal_share"] >= 1.4 * recipe.TONAL_MIN, (seed, f)


@pytest.mark.parametrize("flag,value", [("--scale", "0"), ("--scale", "-1"), ("--scale", "nan"), ("--scale", "inf"),
                                        ("--threads", "0"), ("--seed", "-1")])
def test_bad_flag_values_are_one_line_errors(tmp_path, capsys, flag, value):
    assert recipe.main(["--quick", "--out", str(tmp_path / "out"), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and flag in err and value in err, err
    assert not (tmp_path / "out").exists()  # nothing written


def test_jobs_at_once_print_prefixed_lines():
    import io
    out = io.StringIO()
    stream = recipe.Prefixed(out, "[top] ")
    print("step 1", file=stream)  # print writes the text and the newline separately
    stream.write("step 2\nstep")
    stream.write(" 3\n")
    assert out.getvalue() == "[top] step 1\n[top] step 2\n[top] step 3\n"


def test_a_user_error_in_a_job_at_once_stops_the_recipe_with_exit_code_2(tmp_path, capfd):
    clock = recipe.Clock()
    with pytest.raises(SystemExit) as stop:
        argv = ["--stage", "top", "--steps", "0", "--data", str(tmp_path), "--out", str(tmp_path / "top")]
        clock.run_at_once([("top", argv)], workers=1)
    assert stop.value.code == 2 and "[top] error: --steps 0" in capfd.readouterr().err
    assert not (tmp_path / "top").exists()  # nothing written


def test_music_target_is_missed_when_one_draw_is_a_drone_though_the_mean_passes():
    rate = 44100
    song, _ = toy.toy_song([1, 0], 3.0, rate)
    drone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(3 * rate) / rate)
    music, static = recipe.audio_figures(song, rate), recipe.audio_figures(drone, rate)
    assert recipe.target_misses(music, [music, music]) == []
    misses = recipe.target_misses(music, [music, static])
    assert len(misses) == 1 and misses[0].startswith("draw 1 is") and "static" in misses[0]
