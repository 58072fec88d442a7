"""Toy songs: procedurally generated music with artist, genre and lyrics, for tests and the CPU quick start.

    python toy.py DIR [--n 8] [--seconds 10] [--sample-rate 44100] [--seed 0]

Each song is a pure function of (seed, index): a key, a scale, a chord progression per bar, a bass line, a melody
(a random walk over the scale) and drums, in timbres built from a few harmonics, written as DIR/toy_XXX.wav
(16-bit) with the sidecar DIR/toy_XXX.json {"artist", "genre", "lyrics"} that data.py reads. The artists are
made up (id 0 in the tables), the genres exist in both label versions.

Reading order: `toy_song` (one song), `make_toy` (a folder of them), `main` (the command line).
"""
import argparse
import json
import os
import sys

import numpy as np
import soundfile as sf

from data import UserError

TOY_ARTISTS = ("The Paper Lanterns", "Mira Solen", "Velvet Ohms", "Juniper Rail", "Oskar and the Tidelines",
               "Northbound Choir", "Lena Marlowe", "Static Orchard")  # made up: in neither table, so artist id 0
TOY_GENRES = ("pop", "rock", "jazz", "country", "blues", "folk", "electronic", "ambient", "funk", "disco")  # v2 and v3
TOY_WORDS = (
    ("I", "We", "You", "They", "Tonight we", "Together we"),
    ("follow", "remember", "carry", "chase", "hold on to", "sing about", "dream of", "wait for"),
    ("the river", "a paper moon", "the morning light", "your old guitar", "the summer rain", "a silver train",
     "the neon sign", "a borrowed heart"),
    ("down in the valley", "across the city", "under open skies", "by the long road", "all night long",
     "back home again", "when the lights go out", "till the morning comes"),
)
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10), "dorian": (0, 2, 3, 5, 7, 9, 10)}
PROGRESSIONS = ((0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 4, 4), (5, 3, 0, 4), (0, 0, 3, 4))  # scale degrees, one per bar
TIMBRES = {  # harmonic amplitudes (fundamental first), attack s, decay time constant s
    "sine": ((1.0,), 0.01, 0.6), "organ": ((1.0, 0.5, 0.0, 0.25, 0.0, 0.12), 0.02, 3.0),
    "square": ((1.0, 0.0, 0.33, 0.0, 0.2, 0.0, 0.14), 0.005, 0.5),
    "saw": (tuple(1 / k for k in range(1, 9)), 0.01, 0.4),
    "pluck": ((1.0, 0.6, 0.4, 0.25, 0.15, 0.1), 0.002, 0.25),
}
# The command line's valid ranges (inclusive): the songs must have samples, the rate must hold a melody.
LIMITS = {"n": (1, 100_000), "seconds": (0.01, 3600.0), "sample_rate": (1000, 384_000), "seed": (0, 2**63 - 1)}


def _tone(freq, seconds, sample_rate, timbre):
    """One note: a sum of harmonics (none above Nyquist) under an attack / exponential-decay envelope."""
    harmonics, attack, decay = TIMBRES[timbre]
    t = np.arange(max(1, int(seconds * sample_rate))) / sample_rate
    wave = sum(a * np.sin(2 * np.pi * k * freq * t)
               for k, a in enumerate(harmonics, 1) if a and k * freq < sample_rate / 2)
    envelope = np.minimum(1.0, t / attack) * np.exp(-t / decay) * np.minimum(1.0, (t[-1] - t) / 0.005 + 1e-9)
    return wave * envelope / sum(harmonics)


def _drum(kind, sample_rate, rng):
    """Kick (falling sine), snare (noise and a 190 Hz body) or hi-hat (high-passed noise click)."""
    t = np.arange(int(0.25 * sample_rate)) / sample_rate
    if kind == "kick":
        return np.sin(2 * np.pi * (50 * t + 60 * (1 - np.exp(-t / 0.03)) * 0.03)) * np.exp(-t / 0.12)
    noise = rng.standard_normal(len(t))
    if kind == "snare":
        return (0.5 * noise + np.sin(2 * np.pi * 190 * t)) * np.exp(-t / 0.06) * 0.6
    return np.diff(noise, prepend=0.0) * np.exp(-t / 0.015) * 0.15  # hat: first difference = crude high-pass


def _add(track, sound, at):
    """Mix `sound` into `track` from sample `at` on, cut at the track's end."""
    end = min(len(track), at + len(sound))
    if at < end:
        track[at:end] += sound[:end - at]


def _hz(root, scale, degree, octave):
    """Frequency of a scale degree (may exceed 7) in an octave relative to the key's root (a midi note)."""
    note = root + 12 * (octave + degree // 7) + scale[degree % 7]  # midi note number
    return 440.0 * 2 ** ((note - 69) / 12)


def toy_song(seed, seconds, sample_rate):
    """A deterministic toy song: float32 (seconds*sample_rate,) audio in [-1, 1] and its metadata dict."""
    rng = np.random.default_rng(seed)
    genre = TOY_GENRES[rng.integers(len(TOY_GENRES))]
    bpm = int(rng.choice((84, 96, 110, 124, 140)))
    root = int(rng.integers(45, 57))  # midi note of the key's root, A2 .. G#3
    scale = SCALES[rng.choice(list(SCALES))]
    progression = PROGRESSIONS[rng.integers(len(PROGRESSIONS))]
    lead, pad = rng.choice(["sine", "square", "saw", "pluck"]), rng.choice(["organ", "sine", "saw"])

    track, beat = np.zeros(max(1, int(seconds * sample_rate))), 60.0 / bpm
    degree = 7  # melody random walk, in scale degrees above the root
    for b in range(int(seconds / beat) + 1):
        chord = progression[(b // 4) % len(progression)]
        at = int(b * beat * sample_rate)
        if b % 4 == 0:  # a held triad per bar, in the pad timbre
            for step in (0, 2, 4):
                _add(track, 0.18 * _tone(_hz(root, scale, chord + step, 1), 4 * beat, sample_rate, pad), at)
        _add(track, 0.35 * _tone(_hz(root, scale, chord, -1), beat, sample_rate, "pluck"), at)  # bass on each beat
        for half in (0, 1):  # melody in eighth notes, sometimes resting
            degree = int(np.clip(degree + rng.choice((-2, -1, -1, 0, 1, 1, 2)), 3, 13))
            if rng.random() > 0.15:
                _add(track, 0.3 * _tone(_hz(root, scale, degree, 1), beat / 2, sample_rate, lead),
                     at + int(half * beat / 2 * sample_rate))
        if genre != "ambient":  # drums: kick on 1 and 3 (every beat for disco/electronic), snare on 2 and 4, hats
            if b % 2 == 0 or genre in ("disco", "electronic"):
                _add(track, 0.6 * _drum("kick", sample_rate, rng), at)
            if b % 2 == 1:
                _add(track, _drum("snare", sample_rate, rng), at)
            for half in (0, 1):
                _add(track, _drum("hat", sample_rate, rng), at + int(half * beat / 2 * sample_rate))
    audio = (0.8 * track / max(1e-9, np.abs(track).max())).astype(np.float32)

    lines = [" ".join(rng.choice(words) for words in TOY_WORDS) for _ in range(8)]
    meta = {"artist": TOY_ARTISTS[rng.integers(len(TOY_ARTISTS))], "genre": genre, "lyrics": "\n".join(lines) + "\n"}
    return audio, meta


def make_toy(folder, n=8, seconds=10.0, sample_rate=44100, seed=0):
    """Write n toy songs as folder/toy_XXX.wav (16-bit) with toy_XXX.json sidecars; returns the wav paths.

    Each file is written under a temporary name and renamed when complete, so an interrupted run leaves whole
    songs only. UserError when `folder` is a file or cannot be created."""
    folder = str(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{folder}: exists and is not a folder; pick another output folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError(f"{folder}: cannot create the folder ({e.strerror}); pick a writable place") from None
    paths = []
    for i in range(n):
        audio, meta = toy_song([seed, i], seconds, sample_rate)
        path = os.path.join(folder, f"toy_{i:03d}.wav")
        try:
            sf.write(path + ".tmp", audio, sample_rate, subtype="PCM_16", format="WAV")
            with open(path[:-4] + ".json.tmp", "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=1)
            os.replace(path[:-4] + ".json.tmp", path[:-4] + ".json")  # the sidecar first: a wav is never unlabelled
            os.replace(path + ".tmp", path)
        except OSError as e:
            raise UserError(f"{path}: cannot write ({e.strerror}); pick a writable folder with free space") from None
        paths.append(path)
    return paths


class Parser(argparse.ArgumentParser):
    def error(self, message):  # a mistyped flag is a user error like any other: one line, exit code 2
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv=None):
    p = Parser(prog="toy.py", description="Write procedurally generated toy songs (wav + json).")
    p.add_argument("folder", help="output folder (created if missing)")
    p.add_argument("--n", type=int, default=8, help="number of songs, 1 .. 100000 (default 8)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each song, 0.01 .. 3600 s (default 10)")
    p.add_argument("--sample-rate", type=int, default=44100, help="sample rate, 1000 .. 384000 Hz (default 44100)")
    p.add_argument("--seed", type=int, default=0, help="songs are a pure function of this seed, >= 0 (default 0)")
    args = p.parse_args(argv)
    print(f"config: {vars(args)}")
    try:
        for name, (low, high) in LIMITS.items():
            if not low <= getattr(args, name) <= high:  # also refuses nan
                raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be in [{low}, {high}]")
        make_toy(args.folder, args.n, args.seconds, args.sample_rate, args.seed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {args.n} toy songs of {args.seconds:g} s at {args.sample_rate} Hz to {args.folder}")


if __name__ == "__main__":
    main()
