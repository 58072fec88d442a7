"""data.py audio side: resampler, load_audio, AudioDataset (crops, index cache, bad files), toy songs, CLI."""
import json
import os
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

import data


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


def test_load_audio_errors_name_the_file(tmp_path):
    (tmp_path / "garbage.wav").write_bytes(b"RIFF" + os.urandom(200))
    for path in (tmp_path / "garbage.wav", tmp_path / "missing.flac"):
        with pytest.raises(data.AudioError) as error:
            data.load_audio(path, 44100)
        assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    data.make_toy(folder / "songs", n=3, seconds=2.0, sample_rate=16000, seed=0)
    sf.write(folder / "songs" / "short.wav", sine(300, 0.1, 16000), 16000)  # shorter than a crop
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
    expected = np.pad(whole[item["offset"]:item["offset"] + 4000], (0, max(0, item["offset"] + 4000 - len(whole))))
    assert np.array_equal(item["audio"][:, 0].numpy(), expected) and item["total_length"] == len(whole)
    if item["path"].endswith("short.wav"):
        assert item["artist"] == "unknown" and item["lyrics"] == ""
    else:
        assert item["artist"] in data.TOY_ARTISTS and item["lyrics"]


def test_short_songs_are_zero_padded(toy_folder):
    dataset = data.AudioDataset(toy_folder, 16000, 4000)
    items = [dataset[i] for i in range(200) if dataset[i]["path"].endswith("short.wav")]
    assert items, "short.wav is 1/41 of the audio; 200 draws should find it"
    assert items[0]["offset"] == 0 and items[0]["total_length"] == 1600
    assert items[0]["audio"][1600:].abs().max() == 0 and items[0]["audio"][:1600].abs().max() > 0.1


def test_duration_bounds_leave_songs_out(toy_folder):
    dataset = data.AudioDataset(toy_folder, 16000, 4000, min_seconds=1.0)
    assert not any(path.endswith("short.wav") for path in dataset.paths) and len(dataset.paths) == 3
    only_short = data.AudioDataset(toy_folder, 16000, 4000, max_seconds=1.0)
    assert [os.path.basename(p) for p in only_short.paths] == ["short.wav"]
    with pytest.raises(data.AudioError, match="between 100 and inf s"):
        data.AudioDataset(toy_folder, 16000, 4000, min_seconds=100)


def test_index_is_built_once(tmp_path, monkeypatch):
    data.make_toy(tmp_path, n=3, seconds=0.5, sample_rate=8000)
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
    data.make_toy(tmp_path, n=1, seconds=0.5, sample_rate=8000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "broken.flac").write_bytes(b"fLaC" + os.urandom(300))
    with pytest.warns(UserWarning, match="broken.flac"):
        dataset = data.AudioDataset(tmp_path, 8000, 1000)
    assert [os.path.basename(p) for p in dataset.paths] == ["toy_000.wav"]
    with pytest.warns(UserWarning, match="broken.flac"):  # still named when the index is reused
        data.AudioDataset(tmp_path, 8000, 1000)


def test_folders_without_usable_audio_are_clear_errors(tmp_path):
    with pytest.raises(data.AudioError, match="no readable audio"):
        data.AudioDataset(tmp_path, 8000, 1000)
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    with warnings.catch_warnings(), pytest.raises(data.AudioError, match="no readable audio"):
        warnings.simplefilter("ignore")
        data.AudioDataset(tmp_path, 8000, 1000)
    with pytest.raises(data.AudioError, match="not a folder"):
        data.AudioDataset(tmp_path / "nowhere", 8000, 1000)


def test_bad_sidecar_is_a_clear_error(tmp_path):
    data.make_toy(tmp_path, n=1, seconds=0.5, sample_rate=8000)
    (tmp_path / "toy_000.json").write_text("{not json")
    with pytest.raises(data.AudioError, match="toy_000.json"):
        data.AudioDataset(tmp_path, 8000, 1000)


def test_toy_songs_are_deterministic_music():
    audio, meta = data.toy_song([0, 1], 3.0, 16000)
    again, meta_again = data.toy_song([0, 1], 3.0, 16000)
    assert np.array_equal(audio, again) and meta == meta_again
    assert not np.array_equal(audio, data.toy_song([1, 1], 3.0, 16000)[0])
    assert audio.dtype == np.float32 and audio.shape == (48000,) and np.abs(audio).max() <= 1.0
    assert np.sqrt(np.mean(audio ** 2)) > 0.03  # not silent
    # Tonal, not noise: the loudest 1 % of frequency bins hold most of the power (white noise: about 6 %).
    power = np.sort(np.abs(np.fft.rfft(audio)) ** 2)[::-1]
    assert power[:len(power) // 100].sum() / power.sum() > 0.5
    assert meta["genre"] in data.TOY_GENRES and meta["artist"] in data.TOY_ARTISTS and meta["lyrics"].strip()


def test_cli_makes_toy_songs_and_reports_user_errors(tmp_path, capsys):
    data.main(["--make-toy", str(tmp_path / "toy"), "--n", "2", "--seconds", "0.5", "--sample-rate", "8000"])
    assert sorted(os.listdir(tmp_path / "toy")) == ["toy_000.json", "toy_000.wav", "toy_001.json", "toy_001.wav"]
    first = sf.read(tmp_path / "toy" / "toy_000.wav")[0]
    data.main(["--make-toy", str(tmp_path / "again"), "--n", "1", "--seconds", "0.5", "--sample-rate", "8000"])
    assert np.array_equal(first, sf.read(tmp_path / "again" / "toy_000.wav")[0])  # same seed, same song
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        data.main(["--scan", str(tmp_path / "empty")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_:
        data.main(["--make-toy", str(tmp_path), "--n", "0"])
    assert exit_.value.code == 2
