"""data.py audio side: resampler, load_audio, the windows and the index, the code cache; toy.py songs and CLI."""
import dataclasses
import json
import math
import os
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

import data
import toy
import vqvae


def sine(freq, seconds, sample_rate, amplitude=0.5):
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def spectrum_db(x, sample_rate):
    """(frequencies, level in dB re a full-scale sine) of a Hann-windowed signal."""
    window = np.hanning(len(x))
    level = np.abs(np.fft.rfft(x * window)) / (window.sum() / 2)
    return np.fft.rfftfreq(len(x), 1 / sample_rate), 20 * np.log10(level + 1e-12)


@pytest.mark.parametrize("orig_sr,new_sr", [(48000, 44100), (22050, 44100), (44100, 16000), (44100, 44100)])
def test_resample_keeps_a_sines_frequency_and_level(orig_sr, new_sr):
    y = data.resample(sine(1000, 1.0, orig_sr), orig_sr, new_sr)
    assert y.dtype == np.float32 and len(y) == new_sr  # 1 s in, 1 s out
    freqs, level = spectrum_db(y[500:-500], new_sr)  # away from the zero-padded edges
    assert abs(freqs[level.argmax()] - 1000) <= new_sr / len(y[500:-500])  # the peak stays in the 1 kHz bin
    assert abs(np.sqrt(np.mean(y[500:-500] ** 2)) - 0.5 / np.sqrt(2)) < 0.005  # pass band is flat


@pytest.mark.parametrize("orig_sr,new_sr,freq", [(48000, 16000, 11000), (48000, 44100, 23000), (44100, 22050, 15000)])
def test_resample_does_not_alias(orig_sr, new_sr, freq):
    """A tone above the new Nyquist would fold back to new_sr - freq; the low-pass removes it instead."""
    y = data.resample(sine(freq, 0.5, orig_sr), orig_sr, new_sr)
    _, level = spectrum_db(y[1000:-1000], new_sr)
    assert level.max() < -6 - 60  # the input is at -6 dB (amplitude 0.5); aliases must be > 60 dB below it


def test_load_audio_downmixes_and_reads_only_the_crop(tmp_path):
    left, right = sine(440, 1.0, 48000), sine(660, 1.0, 48000, amplitude=0.25)
    sf.write(tmp_path / "stereo.flac", np.stack([left, right], 1), 48000, subtype="PCM_24")
    whole = data.load_audio(tmp_path / "stereo.flac", 44100)
    assert whole.dtype == np.float32 and whole.shape == (44100,)
    mono = data.resample((left + right) / 2, 48000, 44100)
    assert np.abs(whole - mono).max() < 1e-4  # 0.5/0.5 mix, then resampled (24-bit rounding only)
    crop = data.load_audio(tmp_path / "stereo.flac", 44100, start=12345, length=8000)
    assert np.abs(crop - whole[12345:12345 + 8000]).max() < 1e-6  # decoding a span == slicing the whole file
    assert len(data.load_audio(tmp_path / "stereo.flac", 44100, start=44000, length=8000)) == 100  # short at the end
    blended = data.load_audio(tmp_path / "stereo.flac", 44100, mix=np.float64(0.8))  # any float mix, float32 out
    assert blended.dtype == np.float32
    assert np.abs(blended - data.resample(0.8 * left + 0.2 * right, 48000, 44100)).max() < 1e-4


def test_load_audio_errors_name_the_file(tmp_path):
    (tmp_path / "garbage.wav").write_bytes(b"RIFF" + os.urandom(200))
    broken = sine(440, 0.1, 8000)
    broken[100] = np.nan
    sf.write(tmp_path / "nan.wav", broken, 8000, subtype="FLOAT")
    sf.write(tmp_path / "inf.wav", np.stack([sine(440, 0.1, 8000), np.full(800, np.inf, np.float32)], 1), 8000,
             subtype="FLOAT")
    for path in (tmp_path / "garbage.wav", tmp_path / "missing.flac", tmp_path / "nan.wav", tmp_path / "inf.wav"):
        with pytest.raises(data.UserError) as error:
            data.load_audio(path, 8000, mix=1.0)  # inf in the right channel counts even at weight 0
        assert str(path) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(data.UserError, match="NaN or infinite"):
        data.load_audio(tmp_path / "nan.wav", 16000)


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    toy.make_toy(folder / "songs", n=3, seconds=2.0, sample_rate=16000, seed=0)
    sf.write(folder / "songs" / "short.wav", sine(300, 0.1, 16000), 16000)  # shorter than a window
    sf.write(folder / "songs" / "half.wav", sine(300, 0.5, 16000), 16000)  # 2 windows, but under 1 s
    return folder / "songs"


def test_crops_are_a_function_of_seed_and_index(toy_folder):
    dataset = data.AudioDataset(toy_folder, 16000, 4000, seed=0)
    item = dataset[5]
    assert item["audio"].shape == (4000, 1) and item["audio"].dtype == torch.float32
    assert set(item) == {"audio", "offset", "total_length", "artist", "genre", "lyrics", "path"}
    again = data.AudioDataset(toy_folder, 16000, 4000, seed=0)[5]
    assert torch.equal(item["audio"], again["audio"]) and item["offset"] == again["offset"]
    other_seed = data.AudioDataset(toy_folder, 16000, 4000, seed=1)
    assert any(not torch.equal(dataset[i]["audio"], other_seed[i]["audio"]) for i in range(4))
    assert len({(dataset[i]["path"], dataset[i]["offset"]) for i in range(20)}) > 10  # indices differ too
    # The crop is the song's samples [offset, offset + 4000), and the sidecar metadata comes with it.
    whole = data.load_audio(item["path"], 16000)
    assert np.array_equal(item["audio"][:, 0].numpy(), whole[item["offset"]:item["offset"] + 4000])
    assert item["total_length"] == len(whole) and item["artist"] in toy.TOY_ARTISTS and item["lyrics"]


def test_windows_are_cut_from_the_timeline_as_the_original(toy_folder):
    """Without aug_shift an epoch visits every window at a multiple of the window length on the concatenated
    timeline once, in a random order; aug_shift moves each by a random amount, always inside its song."""
    dataset = data.AudioDataset(toy_folder, 16000, 4000)
    assert len(dataset) == 3 * 32000 // 4000
    epoch = [(dataset[i]["path"], dataset[i]["offset"]) for i in range(len(dataset))]
    assert sorted(epoch) == sorted((path, offset) for path in dataset.paths for offset in range(0, 32000, 4000))
    assert epoch != sorted(epoch)  # shuffled
    second = [(dataset[i]["path"], dataset[i]["offset"]) for i in range(len(dataset), 2 * len(dataset))]
    assert sorted(second) == sorted(epoch) and second != epoch  # the next epoch: the same windows, another order
    shifted = data.AudioDataset(toy_folder, 16000, 4000, aug_shift=True)
    offsets = [shifted[i]["offset"] for i in range(48)]
    assert all(0 <= o <= 32000 - 4000 for o in offsets) and sum(o % 4000 != 0 for o in offsets) > 40


def test_aug_blend_draws_a_channel_mix_per_window(tmp_path):
    left, right = sine(440, 1.0, 8000), sine(660, 1.0, 8000, amplitude=0.25)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], 1), 8000, subtype="FLOAT")
    plain = data.AudioDataset(tmp_path, 8000, 2000)
    blended = data.AudioDataset(tmp_path, 8000, 2000, aug_blend=True)
    mixes = set()
    for i in range(8):
        a, b = plain[i], blended[i]
        assert a["offset"] == b["offset"]
        window = slice(a["offset"], a["offset"] + 2000)
        assert torch.allclose(a["audio"][:, 0], torch.from_numpy(0.5 * left[window] + 0.5 * right[window]))
        # Solve b = mix * left + (1 - mix) * right for mix, then check it explains every sample.
        d = left[window] - right[window]
        mix = float(np.dot(b["audio"][:, 0].numpy() - right[window], d) / np.dot(d, d))
        assert 0 <= mix < 1 and torch.allclose(b["audio"][:, 0], torch.from_numpy(mix * d + right[window]), atol=1e-6)
        mixes.add(round(mix, 4))
    assert len(mixes) == 8


def test_short_songs_are_dropped_and_counted(toy_folder):
    """Songs shorter than a window, or than the window in whole seconds (the original's min_duration default),
    are left out, not padded; the counts are kept for the trainer to report."""
    dataset = data.AudioDataset(toy_folder, 16000, 4000)
    assert sorted(map(os.path.basename, dataset.paths)) == ["toy_000.wav", "toy_001.wav", "toy_002.wav"]
    assert (dataset.dropped_short, dataset.dropped_long) == (2, 0)
    assert all(dataset[i]["audio"].abs().max() > 0.01 for i in range(len(dataset)))  # no padded silence
    lenient = data.AudioDataset(toy_folder, 16000, 4000, min_seconds=0.0)
    assert "half.wav" in map(os.path.basename, lenient.paths) and lenient.dropped_short == 1  # short.wav < a window


def test_duration_bounds_leave_songs_out(toy_folder):
    dataset = data.AudioDataset(toy_folder, 16000, 4000, min_seconds=1.0)
    assert not any(path.endswith("short.wav") for path in dataset.paths) and len(dataset.paths) == 3
    only_half = data.AudioDataset(toy_folder, 16000, 4000, min_seconds=0.0, max_seconds=1.0)
    assert [os.path.basename(p) for p in only_half.paths] == ["half.wav"] and only_half.dropped_long == 3
    with pytest.raises(data.UserError, match="between 100 and inf s"):
        data.AudioDataset(toy_folder, 16000, 4000, min_seconds=100)


def test_index_is_built_once(tmp_path, monkeypatch):
    toy.make_toy(tmp_path, n=3, seconds=1.0, sample_rate=8000)
    opened = []
    real_info = sf.info
    monkeypatch.setattr(data.sf, "info", lambda path: opened.append(os.path.basename(path)) or real_info(path))
    data.AudioDataset(tmp_path, 8000, 1000)
    assert sorted(opened) == ["toy_000.wav", "toy_001.wav", "toy_002.wav"]
    opened.clear()
    data.AudioDataset(tmp_path, 8000, 1000)
    assert opened == []  # the second start-up reads nothing but the index
    with open(tmp_path / "toy_001.json", "w") as f:  # a changed sidecar (or audio file) is read again, alone
        json.dump({"artist": "Someone Else"}, f)
    dataset = data.AudioDataset(tmp_path, 8000, 1000)
    assert opened == ["toy_001.wav"] and "Someone Else" in [m["artist"] for m in dataset.meta]


def test_corrupt_files_are_skipped_with_a_warning(tmp_path):
    toy.make_toy(tmp_path, n=1, seconds=1.0, sample_rate=8000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "broken.flac").write_bytes(b"fLaC" + os.urandom(300))
    with pytest.warns(UserWarning, match="broken.flac"):
        dataset = data.AudioDataset(tmp_path, 8000, 1000)
    assert [os.path.basename(p) for p in dataset.paths] == ["toy_000.wav"]
    with pytest.warns(UserWarning, match="broken.flac"):  # still named when the index is reused
        data.AudioDataset(tmp_path, 8000, 1000)


def test_folders_without_usable_audio_are_clear_errors(tmp_path):
    with pytest.raises(data.UserError, match="no readable audio"):
        data.AudioDataset(tmp_path, 8000, 1000)
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    with warnings.catch_warnings(), pytest.raises(data.UserError, match="no readable audio"):
        warnings.simplefilter("ignore")
        data.AudioDataset(tmp_path, 8000, 1000)
    with pytest.raises(data.UserError, match="not a folder"):
        data.AudioDataset(tmp_path / "nowhere", 8000, 1000)


def test_bad_sidecar_is_a_clear_error(tmp_path):
    toy.make_toy(tmp_path, n=1, seconds=1.0, sample_rate=8000)
    (tmp_path / "toy_000.json").write_text("{not json")
    with pytest.raises(data.UserError, match="toy_000.json"):
        data.AudioDataset(tmp_path, 8000, 1000)
    (tmp_path / "toy_000.json").write_text('{"artist": 3}')
    with pytest.raises(data.UserError, match="toy_000.json"):
        data.AudioDataset(tmp_path, 8000, 1000)


# ---- the code cache ---------------------------------------------------------------------------------------------

RATE = 8000  # the tiny VQ-VAE at a low rate: the same hops (8, 32, 128), fewer samples to encode


@pytest.fixture(scope="module")
def tiny_vqvae():
    torch.manual_seed(0)
    return vqvae.VQVAE(dataclasses.replace(vqvae.preset("tiny"), sample_rate=RATE)).eval()


def reach(model, level, length=8192):
    """How far (in samples, either side) the encoder of `level` looks: the support of one latent's gradient."""
    x = (torch.randn(1, 1, length) * 0.1).requires_grad_()
    latents = model.encoders[level](x)
    latents[0, :, latents.shape[-1] // 2].sum().backward()
    support = (x.grad[0, 0] != 0).nonzero()[:, 0]
    middle = latents.shape[-1] // 2 * model.config.hop_lengths[level]
    return int(max(middle - support.min(), support.max() - middle))


def test_segmented_encoding_equals_whole_song_encoding(tiny_vqvae, tmp_path):
    audio, _ = toy.toy_song([0, 3], 3.0, RATE)
    sf.write(tmp_path / "song.wav", audio, RATE, subtype="FLOAT")
    length, hops = len(audio) // 128 * 128, tiny_vqvae.config.hop_lengths
    whole = tiny_vqvae.encode(torch.from_numpy(audio[:length])[None, :, None])
    reaches = [reach(tiny_vqvae, level) for level in range(3)]
    segment = 4096  # 6 segments; wider than twice the deepest reach, so each has codes far from its edges
    for margin in (math.ceil(max(reaches) / 128) * 128, 0):
        files = [str(tmp_path / f"m{margin}.l{level}.npy") for level in range(3)]
        data.encode_song(tiny_vqvae, str(tmp_path / "song.wav"), RATE, length, files, segment=segment, margin=margin)
        for level, (hop, file) in enumerate(zip(hops, files)):
            codes, expected = np.load(file), whole[level][0].numpy()
            assert codes.dtype == np.int16 and codes.shape == expected.shape
            if margin:  # the margin covers the encoder's reach: every code is the whole-song code
                assert np.array_equal(codes, expected), level
            else:  # no margin: codes agree wherever their reach stays inside the segment
                position = np.arange(len(codes)) * hop + hop // 2  # a code's place in the song
                centre = position // segment * segment + segment / 2
                inside = np.abs(position - centre) < segment / 2 - reaches[level]
                assert inside.sum() > 0 and np.array_equal(codes[inside], expected[inside]), level
    assert not list(tmp_path.glob("*.tmp"))  # every file was renamed into place


def test_code_cache_hits_misses_and_invalidation(tiny_vqvae, tmp_path, monkeypatch):
    toy.make_toy(tmp_path / "songs", n=3, seconds=1.5, sample_rate=RATE)
    encoded = []
    real_encode = data.encode_song
    monkeypatch.setattr(data, "encode_song", lambda model, path, *a, **k: encoded.append(os.path.basename(path))
                        or real_encode(model, path, *a, **k))
    codes = data.CodeDataset(tmp_path / "songs", tiny_vqvae, level=1, n_ctx=64)
    assert sorted(encoded) == ["toy_000.wav", "toy_001.wav", "toy_002.wav"]  # miss: each song encoded once
    key = data.vqvae_key(tiny_vqvae)
    assert codes.folder == str(tmp_path / "songs" / data.CODES_FOLDER / key)
    assert len(os.listdir(codes.folder)) == 9  # one file per song and level
    encoded.clear()
    again = data.CodeDataset(tmp_path / "songs", tiny_vqvae, level=0, n_ctx=64)
    assert encoded == [] and torch.equal(again[3]["tokens"], again[3]["tokens"])  # hit, for any level's prior
    sf.write(tmp_path / "songs" / "toy_001.wav", toy.toy_song([9, 9], 1.5, RATE)[0], RATE)  # a changed song
    data.CodeDataset(tmp_path / "songs", tiny_vqvae, level=1, n_ctx=64)
    assert encoded == ["toy_001.wav"]
    other = vqvae.VQVAE(tiny_vqvae.config).eval()  # another VQ-VAE (other weights): another key, all re-encoded
    other.load_state_dict(tiny_vqvae.state_dict())
    with torch.no_grad():
        other.encoders[0].blocks[0].layers[0][0].weight.add_(1e-3)
    encoded.clear()
    moved = data.CodeDataset(tmp_path / "songs", other, level=1, n_ctx=64, cache=str(tmp_path / "elsewhere"))
    assert data.vqvae_key(other) != key and len(encoded) == 3 and moved.folder.startswith(str(tmp_path / "elsewhere"))
    (tmp_path / "file").write_text("")
    with pytest.raises(data.UserError, match="cannot create the code cache"):
        data.CodeDataset(tmp_path / "songs", tiny_vqvae, level=1, n_ctx=64, cache=str(tmp_path / "file"))


def test_code_windows_are_aligned_with_the_level_above(tiny_vqvae, tmp_path):
    toy.make_toy(tmp_path, n=2, seconds=1.5, sample_rate=RATE)
    middle = data.CodeDataset(tmp_path, tiny_vqvae, level=1, n_ctx=64, aug_shift=True)
    hop = tiny_vqvae.config.hop_lengths
    for i in range(12):
        item = middle[i]
        song = middle.paths.index(item["path"])
        whole = [np.load(f) for f in middle.files[song]]  # the song's codes per level
        first = item["offset"] // hop[1]
        assert item["offset"] % hop[2] == 0 and item["tokens"].shape == (64,) and item["upper"].shape == (16,)
        assert np.array_equal(item["tokens"].numpy(), whole[1][first:first + 64])
        assert np.array_equal(item["upper"].numpy(), whole[2][first // 4:first // 4 + 16])  # the same window above
        assert item["total_length"] == round(1.5 * RATE) and item["artist"] in toy.TOY_ARTISTS
    top = data.CodeDataset(tmp_path, tiny_vqvae, level=2, n_ctx=32, min_seconds=1.0, max_seconds=600.0)
    assert "upper" not in top[0] and top[0]["tokens"].shape == (32,) and len(top) == 2 * (1.5 * RATE // 128) // 32
    with pytest.raises(data.UserError, match="between 2 and 600 s"):  # the top prior's duration range
        data.CodeDataset(tmp_path, tiny_vqvae, level=2, n_ctx=32, min_seconds=2.0, max_seconds=600.0)


def test_upper_noise_replaces_that_share_of_the_upper_codes_and_nothing_else(tiny_vqvae, tmp_path):
    toy.make_toy(tmp_path, n=2, seconds=1.5, sample_rate=RATE)
    clean = data.CodeDataset(tmp_path, tiny_vqvae, level=1, n_ctx=64)
    noisy = data.CodeDataset(tmp_path, tiny_vqvae, level=1, n_ctx=64, upper_noise=0.3)
    changed = []
    for i in range(40):
        a, b = clean[i], noisy[i]
        assert torch.equal(a["tokens"], b["tokens"]) and a["offset"] == b["offset"]  # the targets stay the data
        assert torch.equal(b["upper"], noisy[i]["upper"])  # the same noise for the same index: N ranks = one
        changed.append((a["upper"] != b["upper"]).float().mean().item())
    # a swap draws any of the 256 codes, so 1/256 of the swaps keep the code: 0.3 * 255/256 change, +- sampling
    assert abs(np.mean(changed) - 0.3 * 255 / 256) < 0.05, np.mean(changed)


# ---- toy.py ---------------------------------------------------------------------------------------------------

def test_toy_songs_are_deterministic_music():
    audio, meta = toy.toy_song([0, 1], 3.0, 16000)
    again, meta_again = toy.toy_song([0, 1], 3.0, 16000)
    assert np.array_equal(audio, again) and meta == meta_again
    assert not np.array_equal(audio, toy.toy_song([1, 1], 3.0, 16000)[0])
    assert audio.dtype == np.float32 and audio.shape == (48000,) and np.abs(audio).max() <= 1.0
    assert np.sqrt(np.mean(audio ** 2)) > 0.03  # not silent
    # Tonal, not noise: the loudest 1 % of frequency bins hold most of the power (white noise: about 6 %).
    power = np.sort(np.abs(np.fft.rfft(audio)) ** 2)[::-1]
    assert power[:len(power) // 100].sum() / power.sum() > 0.5
    assert meta["genre"] in toy.TOY_GENRES and meta["artist"] in toy.TOY_ARTISTS and meta["lyrics"].strip()


def test_toy_cli_makes_songs_and_reports_user_errors(tmp_path, capsys):
    toy.main([str(tmp_path / "toy"), "--n", "2", "--seconds", "0.5", "--sample-rate", "8000"])
    assert sorted(os.listdir(tmp_path / "toy")) == ["toy_000.json", "toy_000.wav", "toy_001.json", "toy_001.wav"]
    first = sf.read(tmp_path / "toy" / "toy_000.wav")[0]
    toy.main([str(tmp_path / "again"), "--n", "1", "--seconds", "0.5", "--sample-rate", "8000"])
    assert np.array_equal(first, sf.read(tmp_path / "again" / "toy_000.wav")[0])  # same seed, same song
    (tmp_path / "a_file").write_text("")
    for argv, words in [([str(tmp_path / "a_file")], "is not a folder"),
                        ([str(tmp_path / "a_file" / "below")], "cannot create")]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            toy.main(argv + ["--seconds", "0.1"])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and words in err and "Traceback" not in err


@pytest.mark.parametrize("flag,value", [("--n", "0"), ("--n", "1000000"), ("--seconds", "0"), ("--seconds", "nan"),
                                        ("--seconds", "-1"), ("--sample-rate", "10"), ("--seed", "-1"),
                                        ("--n", "two"), ("--bogus", "1")])
def test_toy_cli_checks_every_flag(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_:
        toy.main([str(tmp_path / "out"), flag, value])
    assert exit_.value.code == 2 and not (tmp_path / "out").exists()  # nothing written
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and flag in err  # one line naming the flag
