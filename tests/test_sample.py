"""Tests for sample.py: window bookkeeping with a dummy prior, an end-to-end run with tiny models, bad inputs."""
import dataclasses
import shutil
import types

import numpy as np
import pytest
import soundfile
import torch

import data
import official
import prior
import sample
import train
import test_official  # its writer of official-format files: our keys -> the original's, Hyperparams in the pickle
import vqvae

K = 10_000  # the dummy's "codebook": large, so that token values name their absolute position


class DummyPrior:
    """Has the Prior.sample signature; emits token = absolute position mod K and records every call.

    It learns where its window starts from the label offset (raw samples), as a real top prior does.
    """

    def __init__(self, n_ctx, level=0, hop_lengths=(1,), **config):
        self.config = prior.PriorConfig(level=level, n_ctx=n_ctx, hop_lengths=hop_lengths, min_duration=0.0,
                                        **config)
        self.calls = []

    def build(self):  # sample_levels builds each level's prior when its turn comes
        return self

    def sample(self, y, upper=None, prime=None, length=None, sampling=None, generator=None, progress=None):
        start = int(y[0, prior.OFFSET]) // self.config.hop_length
        primed = 0 if prime is None else prime.shape[1]
        assert 0 <= primed < length <= self.config.n_ctx and isinstance(sampling, prior.Sampling)
        self.calls.append(dict(start=start, prime=prime, length=length, upper=upper, y=y.clone()))
        new = ((start + torch.arange(primed, length)) % K).expand(len(y), -1)  # (n, length - primed)
        if progress is not None:
            progress(new.numel())  # all at once; Prior.sample tells n after each position
        return new if prime is None else torch.cat([prime, new], dim=1)


SONG = sample.Song(samples=10_000_000)


def run_levels(total_samples, n_ctx=(64, 64, 32), hop_lengths=(2, 8, 32), prime=None, batch=2, levels=(2, 1, 0),
               settings=None):
    priors = {level: DummyPrior(n_ctx[level], level, hop_lengths) for level in levels}
    codes = [torch.zeros(batch, 0, dtype=torch.long) for _ in range(3)] if prime is None else prime
    done = list(sample.sample_levels(priors, codes, total_samples, hop_lengths, SONG,
                                     settings or sample.Settings(batch_size=1)))
    return codes, priors, done


@pytest.mark.parametrize("total", [1, 31, 32, 33, 64, 65, 100, 1000, 1001])
@pytest.mark.parametrize("n_ctx,hop_fraction", [(32, 0.125), (32, 0.5), (16, 1.0), (48, 0.3)])
def test_windows_cover_every_token_once(total, n_ctx, hop_fraction):
    dummy = DummyPrior(n_ctx)
    codes = [torch.zeros(3, 0, dtype=torch.long)]
    settings = sample.Settings(hop_fraction=(hop_fraction,), batch_size=2)
    told = []
    sample.sample_level(dummy, codes, 0, total, SONG, settings, progress=told.append)
    assert torch.equal(codes[0], (torch.arange(total) % K).expand(3, -1))  # exact, no gap, nothing shifted
    assert sum(told) == 3 * total  # every sampled token of every sample, once
    calls = dummy.calls[::2]  # two calls per window: batch 3 in pieces of 2
    assert sum(c["length"] - (0 if c["prime"] is None else c["prime"].shape[1]) for c in calls) == total
    assert calls[0]["prime"] is None  # the first window is ancestral
    for c in calls[1:]:  # later windows are primed with exactly the tokens they overlap (none if hop = n_ctx)
        primed = 0 if c["prime"] is None else c["prime"].shape[1]
        assert primed > 0 or hop_fraction == 1.0
        assert primed == 0 or torch.equal(c["prime"][0], torch.arange(c["start"], c["start"] + primed) % K)
        assert c["length"] == n_ctx
    if total >= n_ctx:
        hop = int(hop_fraction * n_ctx)
        starts = [c["start"] for c in calls]
        assert starts[-1] == total - n_ctx and all(s % hop == 0 for s in starts[:-1])
        assert all(c["prime"] is None or c["prime"].shape[1] == n_ctx - hop for c in calls[1:-1])


def test_released_window_starts():
    # 5b top prior, 60 s: 20672 top tokens, n_ctx 8192, hop 0.125 * 8192 = 1024
    starts = [start for start, _ in sample.windows(20672, 8192, 1024)]
    assert starts[:3] == [0, 1024, 2048] and starts[-1] == 20672 - 8192 and len(starts) == 14


def test_labels_per_window():
    codes, priors, _ = run_levels(total_samples=32 * 200, levels=(2,))
    for c in priors[2].calls:
        assert int(c["y"][0, prior.OFFSET]) == c["start"] * 32  # offset in raw samples
        assert int(c["y"][0, prior.LENGTH]) == 32 * 32  # the prior's window length in raw samples
        assert int(c["y"][0, prior.TOTAL]) == 10_000_000  # total length untouched


def test_upsampler_windows_get_exactly_the_codes_above():
    codes, priors, done = run_levels(total_samples=32 * 40)  # top 40, middle 160, bottom 640 tokens
    assert done == [2, 1, 0]
    for level in range(3):
        assert torch.equal(codes[level], (torch.arange(32 * 40 // (2, 8, 32)[level]) % K).expand(2, -1))
    assert all(c["upper"] is None for c in priors[2].calls)
    for level in (1, 0):
        for c in priors[level].calls:
            end = c["start"] + c["length"]
            assert c["start"] % 4 == 0 and end % 4 == 0
            assert torch.equal(c["upper"], codes[level + 1][:1, c["start"] // 4:end // 4])


def test_prime_codes_start_every_level():
    hop_lengths = (2, 8, 32)
    prime_samples = 32 * 37  # longer than a whole top window (32 tokens), so one window is skipped
    prime = [-1 - torch.arange(prime_samples // hop).expand(2, -1) for hop in hop_lengths]
    codes, priors, _ = run_levels(total_samples=32 * 90, prime=[p.clone() for p in prime])
    for level in range(3):
        total = 32 * 90 // hop_lengths[level]
        have = prime[level].shape[1]
        assert torch.equal(codes[level][:, :have], prime[level])  # the prime's codes, untouched
        assert torch.equal(codes[level][:, have:], (torch.arange(have, total) % K).expand(2, -1))
        first = priors[level].calls[0]  # the first window sampled is primed with the prime's codes
        assert torch.equal(first["prime"], prime[level][:1, first["start"]:])


def test_partial_window_with_prime():
    # total shorter than one context: one window, primed with the prime, sampling only the rest
    prime = [-1 - torch.arange(n).expand(1, -1) for n in (16, 4, 1)]
    codes, priors, _ = run_levels(total_samples=32 * 3, prime=[p.clone() for p in prime], batch=1)
    for level, total in enumerate((48, 12, 3)):
        assert codes[level].shape == (1, total)
        assert len(priors[level].calls) == 1 and priors[level].calls[0]["length"] == total
        assert torch.equal(priors[level].calls[0]["prime"], prime[level]) and codes[level][0, -1] == total - 1


def test_continue_skips_full_windows():
    codes, priors, _ = run_levels(total_samples=32 * 50, levels=(2,))
    first = len(priors[2].calls)
    more = [codes[0], codes[1], codes[2].clone()]
    codes2, priors2, _ = run_levels(total_samples=32 * 120, prime=more, levels=(2,))
    assert torch.equal(codes2[2], (torch.arange(120) % K).expand(2, -1))
    assert all(c["start"] + c["length"] > 50 for c in priors2[2].calls) and first > 0


# ---- end to end with tiny random models, through the command line ---------------------------------------

def save_checkpoint(path, stage, config, model):
    """A checkpoint in train.py's format (what build_model and read_checkpoint read)."""
    torch.save({"stage": stage, "step": 0, "config": dataclasses.asdict(config), "model": model.state_dict(),
                "ema": None, "optimizer": {}, "scaler": {}, "rng": [], "data_position": 0}, path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Random tiny VQ-VAE and priors saved as train.py checkpoints in runs/{vqvae,top,middle,bottom}/."""
    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    vq_config = vqvae.preset("tiny")
    paths = {"vqvae": root / "vqvae" / "ckpt_0000000.pt"}
    paths["vqvae"].parent.mkdir()
    save_checkpoint(paths["vqvae"], "vqvae", vq_config, vqvae.VQVAE(vq_config))
    for level, stage in ((2, "top"), (1, "middle"), (0, "bottom")):
        config = dataclasses.replace(prior.preset("tiny", level=level), codebook_size=vq_config.codebook_size)
        paths[stage] = root / stage / "ckpt_0000000.pt"
        paths[stage].parent.mkdir()
        save_checkpoint(paths[stage], stage, config, prior.Prior(config))
    return root, {k: str(v) for k, v in paths.items()}


def clip(path, seconds=0.03, rate=22050, channels=2, amplitude=0.5):
    t = np.arange(int(seconds * rate)) / rate
    audio = amplitude * np.sin(2 * np.pi * 440 * t)[:, None].repeat(channels, 1)  # (T, channels)
    soundfile.write(path, audio, rate)
    return str(path)


def run_cli(argv, capsys):
    code = sample.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


def test_primed_run_writes_every_level(models, tmp_path, capsys):
    runs, paths = models
    prime = clip(tmp_path / "clip.wav")  # stereo 22.05 kHz: downmixed and resampled to 44.1 kHz
    out = tmp_path / "out"
    code, err = run_cli(["--prime", prime, "--seconds", 0.06, "--n", 2, "--runs", runs, "--out", out], capsys)
    assert code == 0, err
    total = int(0.06 * 44100) // 128 * 128
    for level in range(3):
        for item in range(2):
            audio, rate = soundfile.read(out / f"level_{level}" / f"item_{item}.wav")
            assert rate == 44100 and audio.shape == (total,)
    saved = torch.load(out / "codes.pt", weights_only=True)
    assert saved["levels_done"] == [2, 1, 0] and saved["total_samples"] == total
    vq = train.build_model(torch.load(paths["vqvae"], weights_only=True))
    audio = data.load_audio(prime, 44100)
    expected = vq.encode(torch.from_numpy(audio[:len(audio) // 128 * 128]).view(1, -1, 1))
    for level, hop in enumerate((8, 32, 128)):
        assert saved["codes"][level].shape == (2, total // hop)
        assert torch.equal(saved["codes"][level][:, :expected[level].shape[1]], expected[level].expand(2, -1))


def test_top_only_then_upsample_then_continue(models, tmp_path, capsys):
    runs, _ = models
    out = tmp_path / "out"
    code, err = run_cli(["--seconds", 0.03, "--levels", 2, "--runs", runs, "--out", out, "--seed", 1], capsys)
    assert code == 0, err
    assert (out / "level_2" / "item_0.wav").exists() and not (out / "level_1").exists()
    top = torch.load(out / "codes.pt", weights_only=True)["codes"][2]
    code, err = run_cli(["--upsample", out / "codes.pt", "--runs", runs], capsys)
    assert code == 0, err
    saved = torch.load(out / "codes.pt", weights_only=True)
    assert saved["levels_done"] == [2, 1, 0] and torch.equal(saved["codes"][2], top)
    assert soundfile.info(str(out / "level_0" / "item_0.wav")).frames == 1280
    code, err = run_cli(["--continue", out / "codes.pt", "--seconds", 0.06, "--levels", 2, "--runs", runs], capsys)
    assert code == 0, err
    saved = torch.load(out / "codes.pt", weights_only=True)
    assert saved["codes"][2].shape == (1, 20) and torch.equal(saved["codes"][2][:, :10], top)
    assert saved["levels_done"] == [2]  # the lower levels are now too short: --upsample finishes them


def test_interrupted_run_keeps_finished_levels(models, tmp_path, capsys, monkeypatch):
    runs, _ = models
    out = tmp_path / "out"
    real_sample = prior.Prior.sample

    def interrupt_below_top(self, *args, **kwargs):
        if self.config.level < 2:
            raise KeyboardInterrupt
        return real_sample(self, *args, **kwargs)

    monkeypatch.setattr(prior.Prior, "sample", interrupt_below_top)
    code, err = run_cli(["--seconds", 0.03, "--runs", runs, "--out", out], capsys)
    assert code == 130 and "--continue" in err
    assert (out / "level_2" / "item_0.wav").exists()
    assert torch.load(out / "codes.pt", weights_only=True)["levels_done"] == [2]
    monkeypatch.setattr(prior.Prior, "sample", real_sample)
    code, err = run_cli(["--continue", out / "codes.pt", "--runs", runs], capsys)
    assert code == 0, err
    assert soundfile.info(str(out / "level_0" / "item_0.wav")).frames == 1280


# ---- bad input: one line naming the fix, exit code 2, no traceback --------------------------------------

def expect_user_error(argv, capsys, *words):
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert all(word in err for word in words), err


def test_no_checkpoints_says_what_to_do(tmp_path, capsys):
    expect_user_error(["--prime", tmp_path / "clip.wav", "--runs", tmp_path / "runs"], capsys, "README", "--official")


@pytest.mark.parametrize("case,words", [
    ("missing", ["no such file"]),
    ("unreadable", ["cannot read audio"]),
    ("empty", ["no audio"]),
    ("silent", ["silent"]),
    ("too_short", ["shorter than one top-level code"]),
    ("too_long", ["--seconds", "--prime-seconds"]),
])
def test_bad_prime(models, tmp_path, capsys, case, words):
    runs, _ = models
    path = tmp_path / "clip.wav"
    if case == "unreadable":
        path.write_bytes(b"not audio at all" * 10)
    elif case == "empty":
        soundfile.write(path, np.zeros((0, 1)), 44100)
    elif case == "silent":
        clip(path, amplitude=0.0)
    elif case == "too_short":
        clip(path, seconds=0.001)
    elif case == "too_long":
        clip(path, seconds=0.2)
    expect_user_error(["--prime", path, "--seconds", 0.1, "--runs", runs, "--out", tmp_path / "out"], capsys, *words)


def test_wrong_stage_checkpoint(models, tmp_path, capsys):
    runs, paths = models
    expect_user_error(["--runs", runs, "--middle", paths["top"], "--out", tmp_path / "out"], capsys,
                      "'top' checkpoint", "--top")


def test_vqvae_that_does_not_match_the_priors(models, tmp_path, capsys):
    runs, _ = models
    config = dataclasses.replace(vqvae.preset("tiny"), codebook_size=64)
    save_checkpoint(tmp_path / "other.pt", "vqvae", config, vqvae.VQVAE(config))
    expect_user_error(["--runs", runs, "--vqvae", tmp_path / "other.pt", "--out", tmp_path / "out"], capsys,
                      "codebook_size", "--vqvae")


def test_prior_trained_on_another_vqvae(models, tmp_path, capsys):
    runs, paths = models
    ckpt = torch.load(paths["top"], weights_only=True)
    vq_config = dataclasses.asdict(vqvae.preset("tiny"))  # what the models fixture saved: the pairing is right
    torch.save({**ckpt, "vqvae_config": vq_config}, tmp_path / "right.pt")
    code, err = run_cli(["--runs", runs, "--top", tmp_path / "right.pt", "--levels", 2, "--seconds", 0.03,
                         "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    torch.save({**ckpt, "vqvae_config": {**vq_config, "commit_weight": 0.5}}, tmp_path / "other.pt")
    expect_user_error(["--runs", runs, "--top", tmp_path / "other.pt", "--out", tmp_path / "b"], capsys,
                      "--top", "another VQ-VAE", "commit_weight", "--vqvae")


def test_unknown_flag_is_an_error():
    with pytest.raises(SystemExit) as e:
        sample.main(["--temprature", "0.9"])
    assert e.value.code == 2


def test_song_length_defaults_to_what_the_top_prior_knows(models, tmp_path, capsys):
    runs, paths = models
    ckpt = torch.load(paths["top"], weights_only=True)
    ckpt["config"]["min_duration"] = 1.0  # like 5b's 60 s: the timing labels need a song of at least 1 s
    torch.save(ckpt, tmp_path / "top.pt")
    argv = ["--seconds", 0.03, "--levels", 2, "--runs", runs, "--top", tmp_path / "top.pt"]
    code, err = run_cli(argv + ["--out", tmp_path / "a"], capsys)
    assert code == 0, err
    assert torch.load(tmp_path / "a" / "codes.pt", weights_only=True)["song"]["samples"] == 44100
    expect_user_error(argv + ["--out", tmp_path / "b", "--song-seconds", 0.5], capsys, "--song-seconds")


# ---- the released models (--official DIR --model NAME), with tiny stand-ins in the download layout ----------

_TINY = dict(n_ctx=64, prior_width=32, prior_depth=3, heads=2, attn_order=2, blocks=8, init_scale=1.0, t_bins=16)
TINY_RELEASE = {  # the released names, as tiny models with the released label tables (ids v2, v3)
    "vqvae": test_official.TINY_VQVAE,
    "upsampler_level_0": {**official.HPARAMS["upsampler_level_0"], **_TINY, "cond_width": 24, "cond_depth": 2,
                          "cond_dilation_cycle": 2},
    "upsampler_level_1": {**official.HPARAMS["upsampler_level_1"], **_TINY, "cond_width": 24, "cond_depth": 2,
                          "cond_dilation_cycle": 2},
    "1b_lyrics": {**official.HPARAMS["1b_lyrics"], **_TINY, "n_ctx": 48, "prior_width": 16, "prior_depth": 16,
                  "attn_order": 12, "n_tokens": 16, "min_duration": 0.5, "max_duration": 10.0},
    "5b": {**official.HPARAMS["5b"], **_TINY, "min_duration": 0.5, "max_duration": 10.0},
    "5b_lyrics": {**official.HPARAMS["5b_lyrics"], **_TINY, "prior_depth": 4, "attn_order": 6, "n_tokens": 16,
                  "prime_width": 24, "prime_depth": 2, "prime_heads": 2, "prime_attn_order": 2, "prime_blocks": 4,
                  "min_duration": 0.5, "max_duration": 10.0},
}


@pytest.fixture
def release(tmp_path_factory, monkeypatch):
    """DIR/5b/vqvae.pth.tar, DIR/5b/prior_level_{0,1}.pth.tar, DIR/{5b,5b_lyrics,1b_lyrics}/prior_level_2.pth.tar:
    random tiny models written in the original's format, with official.HPARAMS pointing the released names at them."""
    for name, hparams in TINY_RELEASE.items():
        monkeypatch.setitem(official.HPARAMS, name, hparams)
    root = tmp_path_factory.getbasetemp() / "release"
    if not root.exists():  # written once, read by every test (the HPARAMS patch is per test)
        torch.manual_seed(0)
        files = {relative: name for model in official.MODELS.values() for relative, name in model.values()}
        for relative, name in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if name == "vqvae":
                model = vqvae.VQVAE(official.vqvae_config(name))
                state = test_official.to_official(model, test_official.TO_OFFICIAL_VQVAE, ((".layers.", ".model."),))
            else:
                model = prior.Prior(official.prior_config(name))
                state = test_official.to_official(model, test_official.TO_OFFICIAL_PRIOR)
            test_official.official_file(path, state, {}, "legacy")  # the format of the released (torch 1.4) files
    return root


def test_official_release_samples_every_level(release, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(["--official", release, "--model", "1b_lyrics", "--seconds", 0.06, "--out", out], capsys)
    assert code == 0, err
    assert all(f"{n}/{n} [" in err for n in (20, 80, 320))  # each level's bar, per sampled token, completes
    for level in range(3):
        assert soundfile.info(str(out / f"level_{level}" / "item_0.wav")).frames == 2560
    saved = torch.load(out / "codes.pt", weights_only=True)
    assert saved["official"] == {"dir": str(release), "model": "1b_lyrics"} and saved["levels_done"] == [2, 1, 0]
    # the same models again; half precision: the blocks load in bfloat16, the rest stays float32
    code, err = run_cli(["--continue", out / "codes.pt", "--seconds", 0.09, "--levels", 2, "--dtype", "bfloat16"],
                        capsys)
    assert code == 0, err
    assert torch.load(out / "codes.pt", weights_only=True)["codes"][2].shape == (1, 31)


@pytest.mark.parametrize("model", ["5b", "5b_lyrics"])
def test_official_top_priors(release, tmp_path, capsys, model):
    code, err = run_cli(["--official", release, "--model", model, "--levels", 2, "--seconds", 0.03, "--artist",
                         "Alan Jackson", "--genre", "country", "--lyrics-text", "la " * 50, "--out", tmp_path], capsys)
    assert code == 0, err
    assert soundfile.info(str(tmp_path / "level_2" / "item_0.wav")).frames == 1280
    assert ("not conditioned on lyrics" in err) == (model == "5b")


def test_official_missing_file_names_its_url(release, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(release, partial)
    (partial / "5b" / "prior_level_2.pth.tar").unlink()
    expect_user_error(["--official", partial, "--model", "5b", "--out", tmp_path / "out"], capsys,
                      "5b/prior_level_2.pth.tar: missing", "https://openaipublic.azureedge.net/jukebox/models/5b/")
    expect_user_error(["--official", tmp_path, "--model", "1b_lyrics"], capsys, "vqvae.pth.tar: missing")
    expect_user_error(["--official", release], capsys, "--model")
    broken = tmp_path / "broken"
    shutil.copytree(release, broken)
    top = broken / "1b_lyrics" / "prior_level_2.pth.tar"
    top.write_bytes(top.read_bytes()[:1000])  # a cut download: read when level 2 starts
    expect_user_error(["--official", broken, "--model", "1b_lyrics", "--seconds", 0.03, "--out", tmp_path / "o"],
                      capsys, str(top), "not a readable checkpoint", "download it again")
    expect_user_error(["--official", release, "--model", "1b_lyrics", "--top", "x.pt"], capsys, "--official")


# ---- artist, genre and lyrics -----------------------------------------------------------------------------

def test_lyric_window_follows_every_sampling_window():
    text = "".join(chr(ord("a") + i % 26) for i in range(200))  # 200 characters of lyrics, 8 per window
    n = 8
    dummy = DummyPrior(n_ctx=32, hop_lengths=(4,), lyrics="merged", n_lyric_tokens=n, label_version=3,
                       max_genres=1, n_genres=604, n_artists=7898)
    tokens = data.tokenize_lyrics(text, 3)
    song = sample.Song(lyrics=text, samples=400)  # a 400-sample song: 100 tokens of this level
    sample.sample_level(dummy, [torch.zeros(1, 0, dtype=torch.long)], 0, 100, song,
                        sample.Settings(hop_fraction=(0.25,)))
    assert len(tokens) == 200
    windows = [c["y"][0, -n:].tolist() for c in dummy.calls]
    for c, window in zip(dummy.calls, windows):  # centred on each window's middle, as in training
        assert window == prior.lyric_window(tokens, n, 400, c["start"] * 4, 32 * 4)[0]
    firsts = [prior.lyric_window(tokens, n, 400, c["start"] * 4, 32 * 4)[1][0] for c in dummy.calls]
    assert len(windows) > 3 and firsts == sorted(set(firsts))  # the lyrics move on with every window


def test_artist_genre_lyrics_reach_every_window(release, tmp_path, capsys, monkeypatch):
    seen = []
    real_sample = prior.Prior.sample

    def spy(self, y, *args, **kwargs):
        seen.append((self.config, y.clone()))
        return real_sample(self, y, *args, **kwargs)

    monkeypatch.setattr(prior.Prior, "sample", spy)
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text("I met a traveller from an antique land, who said: two vast and trunkless legs of stone\n")
    out = tmp_path / "out"
    argv = ["--official", release, "--model", "1b_lyrics", "--artist", "Zac Brown Band", "--genre", "Country",
            "--lyrics", lyrics, "--seconds", 0.2, "--levels", 2, "--out", out]
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    tokens = data.tokenize_lyrics(lyrics.read_text(), 3)
    assert len(seen) > 3  # several top windows (68 tokens, n_ctx 48, hop 6)
    song = torch.load(out / "codes.pt", weights_only=True)["song"]["samples"]
    for config, y in seen:  # v3 ids (the HF port's test values) and the lyric window of each window
        assert (int(y[0, 3]), int(y[0, 4])) == (7169, 507)
        assert y[0, config.n_labels:].tolist() == prior.lyric_window(tokens, 16, song, int(y[0, 1]), int(y[0, 2]))[0]
    assert seen[0][1][0, -16:].tolist() != seen[-1][1][0, -16:].tolist()
    seen.clear()
    code, err = run_cli(["--upsample", out / "codes.pt", "--levels", 1], capsys)  # the stored song is kept
    assert code == 0, err
    assert seen and all((int(y[0, 3]), y[0, 4:9].tolist()) == (1069, [11, -1, -1, -1, -1]) for _, y in seen)  # v2


def test_unknown_artist_warns_with_the_closest_names(capsys):
    config = prior.preset("tiny", level=2)
    artist, genres, lyrics = sample.song_ids(config, sample.Song(artist="Zac Brwn Bnd", lyrics="la", samples=44100))
    assert artist == 0 and lyrics == []  # a prior without lyrics gets none
    err = capsys.readouterr().err
    assert err.startswith("warning: artist 'Zac Brwn Bnd'") and "zac_brown_band" in err and err.count("\n") == 1


def test_list_artists_and_genres(models, tmp_path, capsys):
    assert sample.main(["--list-artists", "zac brown", "--model", "1b_lyrics"]) == 0
    assert "7169\tzac brown band" in capsys.readouterr().out.splitlines()
    assert sample.main(["--list-genres", "country", "--model", "5b"]) == 0  # v2
    assert "11\tcountry" in capsys.readouterr().out.splitlines()
    runs, _ = models
    assert sample.main(["--list-genres", "--runs", str(runs)]) == 0  # the whole table of the top prior's version
    assert len(capsys.readouterr().out.splitlines()) == 1 + len(data.load_ids("genre", 2))
    expect_user_error(["--list-artists", "--runs", tmp_path], capsys, "--model")


def test_bad_label_flags(models, tmp_path, capsys):
    runs, _ = models
    expect_user_error(["--runs", runs, "--lyrics", tmp_path / "nope.txt", "--out", tmp_path / "o"], capsys,
                      "--lyrics", "no such file")
    expect_user_error(["--model", "5b", "--runs", runs], capsys, "--official")


BAD_FLAGS = [["--seconds", "0"], ["--seconds", "nan"], ["--seconds", "-1"], ["--song-seconds", "0"],
             ["--song-seconds", "inf"], ["--prime-seconds", "0"], ["--n", "0"], ["--top-k", "-1"],
             ["--top-p", "1.0"], ["--top-p", "-0.1"], ["--top-p", "nan"], ["--temperature", "0"],
             ["--temperature", "1,2"], ["--temperature", "warm"], ["--temperature", "nan"], ["--hop-fraction", "0"],
             ["--hop-fraction", "1.5,0.5,0.5"], ["--chunk-size", "0"], ["--batch-size", "0"], ["--seed", "-1"],
             ["--levels", "3"], ["--levels", "2,x"], ["--device", "cuda:7"], ["--device", "toaster"]]


@pytest.mark.parametrize("flag", BAD_FLAGS, ids=" ".join)
def test_every_numeric_flag_is_checked(models, tmp_path, capsys, flag):
    """Each bad value: one line naming the flag, exit code 2, and nothing written."""
    runs, _ = models
    out = tmp_path / "out"
    prime = ["--prime", clip(tmp_path / "clip.wav")] if flag[0] == "--prime-seconds" else []
    expect_user_error(["--runs", runs, "--out", out, *prime, *flag], capsys, flag[0])
    assert not out.exists()


def test_output_path_that_is_a_file(models, tmp_path, capsys):
    runs, _ = models
    (tmp_path / "taken").write_text("x")
    expect_user_error(["--runs", runs, "--seconds", 0.03, "--levels", 2, "--out", tmp_path / "taken"], capsys,
                      "--out", "cannot create")


def test_compile_falls_back_to_eager_with_one_warning(models, tmp_path, capsys, monkeypatch):
    """Where torch.compile cannot build (no compiler), --compile samples in eager mode after one warning line."""
    runs, _ = models

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")
    monkeypatch.setattr(torch, "compile", no_compiler)
    code, err = run_cli(["--runs", runs, "--seconds", 0.03, "--levels", 2, "--compile", "--out", tmp_path / "o"],
                        capsys)
    assert code == 0, err
    warnings_ = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings_) == 1 and "--compile" in warnings_[0] and "eager" in warnings_[0]
    assert (tmp_path / "o" / "level_2" / "item_0.wav").exists()
