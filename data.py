"""Audio and labels in: files -> mono crops at the model's rate, and artist/genre/lyrics -> the ids Jukebox uses.

Jukebox (arXiv:2005.00341) trains on random crops of 44.1 kHz mono songs (~9 s for the VQ-VAE, one context window
for a prior) and conditions its top prior on artist, genre and the lyric characters that fall near the crop (§4,
conditioning; the lyrics are assumed spread evenly over the song).

Reading order:
  1. `load_audio` / `resample`: read any file libsndfile decodes (wav, flac, ogg, mp3, aiff), mix to mono and
     resample with a Kaiser-windowed sinc filter, reading only the span asked for.
  2. `AudioDataset`: a cached duration index over a folder, and crops that are a pure function of (seed, index).
  3. Labels: artist/genre id tables (ids/, v2 for 5b models, v3 for 1b_lyrics), the character-level lyric
     tokenizer and `lyric_window`, the slice of lyrics that follows the music window.
  4. `make_toy`: procedurally generated songs with sidecar metadata, for tests and the CPU quick start.

Legend: T samples. Audio is float32 in [-1, 1]; `load_audio` returns (T,), the dataset returns (T, 1) like the
VQ-VAE's input. Lengths and offsets are counted in samples at the target rate.

Sidecar metadata: `song.wav` may have `song.json` beside it, {"artist": str, "genre": str, "lyrics": str}; any key
may be missing (artist and genre default to "unknown", lyrics to ""), other keys are ignored.
"""
import argparse
import difflib
import functools
import json
import math
import os
import re
import string
import unicodedata
import warnings

import numpy as np
import soundfile as sf
import torch


class AudioError(Exception):
    """A problem the user can fix (unreadable file, empty folder, bad sidecar): the message is one line that names
    the file and the fix. `main()` of every script prints it and exits with code 2."""


# ---- 1. Reading and resampling ---------------------------------------------------------------------------------

# Kaiser-windowed sinc: 32 zero crossings at the lower rate, cutoff at 94.5 % of the lower Nyquist, beta 9.5. Measured
# at 48 -> 44.1 kHz: flat (< 0.1 dB) to 88 % of the new Nyquist (19.4 kHz); a tone just above the new Nyquist folds
# back > 40 dB down, 3 % above it > 75 dB down, 4 % or more above it > 95 dB down.
ZERO_CROSSINGS = 32
ROLLOFF = 0.945
KAISER_BETA = 9.5
CHUNK = 1 << 15  # output samples computed per vectorised step (bounds the (chunk, taps) gather in memory)


def _ratio(orig_sr, new_sr):
    """(up, down) in lowest terms: output sample m sits at input position m * down / up."""
    g = math.gcd(orig_sr, new_sr)
    return new_sr // g, orig_sr // g


def resampled_length(n, orig_sr, new_sr):
    """Output samples for n input samples: those whose position m * orig_sr / new_sr is inside the input."""
    up, down = _ratio(orig_sr, new_sr)
    return -(-n * up // down)  # ceil


@functools.lru_cache(maxsize=16)
def _sinc_kernels(orig_sr, new_sr):
    """Per-phase filter taps for orig_sr -> new_sr.

    Output m = q*up + p lies at input position base + frac with base = floor(m*down/up) and frac depending only on
    the phase p, so `up` kernels cover every output. Returns (offsets (taps,), kernels (up, taps)): output m is
    sum_j x[base + offsets[j]] * kernels[m % up, j].
    """
    up, down = _ratio(orig_sr, new_sr)
    cutoff = ROLLOFF * min(1.0, up / down)  # pass band as a fraction of the input Nyquist
    half = math.ceil(ZERO_CROSSINGS / cutoff)  # half width in input samples (wider when downsampling)
    offsets = np.arange(-half + 1, half + 1)  # (taps,) input samples around floor(position)
    frac = (np.arange(up) * down % up) / up  # (up,) fractional input position of each phase
    tau = offsets[None, :] - frac[:, None]  # (up, taps) distance from each tap to the output's position
    window = np.i0(KAISER_BETA * np.sqrt(np.clip(1 - (tau / half) ** 2, 0, None))) / np.i0(KAISER_BETA)
    kernels = cutoff * np.sinc(cutoff * tau) * window  # ideal low-pass at `cutoff`, DC gain 1
    return offsets, kernels.astype(np.float32)


def _resample_span(x, orig_sr, new_sr, first, count, x_start=0):
    """Outputs first .. first+count-1 of resampling a signal of which x holds the samples from index x_start on.

    Samples outside x count as zeros, so when x holds the whole file this is `resample`, and when x holds the span
    the filter needs (see `load_audio`) the result equals the same slice of the whole-file resampling.
    """
    up, down = _ratio(orig_sr, new_sr)
    offsets, kernels = _sinc_kernels(orig_sr, new_sr)
    out = np.zeros(count, dtype=np.float32)
    if count == 0:
        return out
    lowest = first * down // up - x_start + offsets[0]  # first and last index into x that any tap reads
    highest = (first + count - 1) * down // up - x_start + offsets[-1]
    pad = max(0, -lowest)
    padded = np.pad(x, (pad, max(0, highest + 1 - len(x))))  # zeros outside x
    for c in range(0, count, CHUNK):
        m = np.arange(first + c, first + min(c + CHUNK, count), dtype=np.int64)  # (n,) output indices
        idx = (m * down // up - x_start + pad)[:, None] + offsets  # (n, taps) indices into padded
        out[c:c + len(m)] = np.einsum("nt,nt->n", padded[idx], kernels[m % up])  # (n, taps) -> (n,)
    return out


def resample(x, orig_sr, new_sr):
    """Band-limited resampling of a mono signal (T,) from orig_sr to new_sr Hz; returns float32 (ceil(T*new/orig),)."""
    x = np.asarray(x, dtype=np.float32)
    if orig_sr == new_sr:
        return x.copy()
    return _resample_span(x, orig_sr, new_sr, 0, resampled_length(len(x), orig_sr, new_sr))


def load_audio(path, sample_rate, start=0, length=None):
    """Read `path` as mono float32 (T,) at `sample_rate`.

    start, length: the span to return, in samples at `sample_rate` (default: from start to the end). Only that span
    plus the resampler's margin is decoded, so a 9 s crop of a long song costs 9 s of decoding. A span that runs
    past the end of the file is returned short; the caller pads.
    """
    try:
        with sf.SoundFile(path) as f:
            orig_sr, frames = f.samplerate, f.frames
            total = resampled_length(frames, orig_sr, sample_rate)
            start = min(start, total)
            length = total - start if length is None else min(length, total - start)
            if orig_sr == sample_rate:
                src_first, src_end = start, start + length
            else:  # the input samples the filter taps of outputs start .. start+length-1 touch, inside the file
                up, down = _ratio(orig_sr, sample_rate)
                offsets, _ = _sinc_kernels(orig_sr, sample_rate)
                src_first = max(0, start * down // up + offsets[0])
                src_end = min(frames, (start + length - 1) * down // up + offsets[-1] + 1)
            f.seek(src_first)
            audio = f.read(max(0, src_end - src_first), dtype="float32", always_2d=True)  # (t, channels)
    except sf.SoundFileError as e:  # LibsndfileError: missing file, unknown format, corrupt header or data
        reason = " ".join(str(e).split())  # one line
        raise AudioError(f"{path}: cannot read audio ({reason}); convert it to wav/flac/ogg/mp3 or remove it") from None
    audio = audio.mean(axis=1)  # (t, channels) -> (t,); jukebox: stereo becomes the 0.5/0.5 mix (no aug_blend)
    if orig_sr == sample_rate:
        return audio
    return _resample_span(audio, orig_sr, sample_rate, start, length, x_start=src_first)


# ---- 2. Dataset ------------------------------------------------------------------------------------------------

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
INDEX_NAME = ".jukebox_index.json"  # written in the data folder; delete it to force a rescan
INDEX_VERSION = 1


def _stamp(path):
    """(mtime_ns, size) of a file, or None if it does not exist: an index entry is reused while this is unchanged."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return [st.st_mtime_ns, st.st_size]


def _read_sidecar(audio_path):
    """Metadata from `<stem>.json` beside the audio file, with defaults for what is missing."""
    meta = {"artist": "unknown", "genre": "unknown", "lyrics": ""}
    path = os.path.splitext(audio_path)[0] + ".json"
    if not os.path.exists(path):
        return meta
    try:
        with open(path, encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError) as e:
        raise AudioError(f"{path}: bad metadata sidecar ({e}); fix it or delete it") from None
    if not isinstance(found, dict):
        raise AudioError(f'{path}: a sidecar is one JSON object {{"artist": .., "genre": .., "lyrics": ..}}; fix it')
    for key in meta:
        if key in found:
            if not isinstance(found[key], str):
                raise AudioError(f"{path}: \"{key}\" must be a string; fix it or delete the sidecar")
            meta[key] = found[key]
    return meta


def scan_folder(root, index_path=None):
    """Index every audio file under root (recursive): {relative path: entry}, reusing a cached index.

    An entry holds the source rate and frame count from the file's header plus its sidecar metadata, keyed by the
    (mtime, size) of both files, so only new or changed files are opened. Unreadable files get an "error" entry
    and are skipped with one warning naming them. The index is rewritten atomically when anything changed.
    """
    if not os.path.isdir(root):
        raise AudioError(f"{root}: not a folder; pass a folder of audio files (or: python data.py --make-toy DIR)")
    index_path = index_path or os.path.join(root, INDEX_NAME)
    try:
        with open(index_path, encoding="utf-8") as f:
            cached = json.load(f)
        cached = cached["files"] if cached.get("version") == INDEX_VERSION else {}
    except (OSError, ValueError, KeyError, AttributeError):
        cached = {}

    files, changed = {}, False
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # skip hidden folders; walk in a stable order
        for name in sorted(names):
            if not name.lower().endswith(AUDIO_EXTENSIONS) or name.startswith("."):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            stamp = [_stamp(path), _stamp(os.path.splitext(path)[0] + ".json")]
            entry = cached.get(rel)
            if not isinstance(entry, dict) or entry.get("stamp") != stamp:
                entry, changed = {"stamp": stamp}, True
                try:
                    info = sf.info(path)
                    entry.update(sample_rate=info.samplerate, frames=info.frames, channels=info.channels)
                    if info.frames <= 0:
                        entry["error"] = "no samples"
                except sf.SoundFileError as e:
                    entry["error"] = str(e)
                if "error" not in entry:
                    entry["meta"] = _read_sidecar(path)  # a bad sidecar is an error, not a skip: fix it
            files[rel] = entry
    changed |= set(files) != set(cached)

    bad = [f"{rel} ({entry['error']})" for rel, entry in files.items() if "error" in entry]
    if bad:
        warnings.warn(f"skipping {len(bad)} unreadable audio file(s) in {root}: " + "; ".join(bad[:20])
                      + (" ..." if len(bad) > 20 else ""))
    if changed:
        try:  # atomic: ranks that scan at the same time each write a complete file
            tmp = f"{index_path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"version": INDEX_VERSION, "files": files}, f)
            os.replace(tmp, index_path)
        except OSError as e:
            warnings.warn(f"could not write the audio index {index_path} ({e}); it will be rebuilt next time")
    return {rel: entry for rel, entry in files.items() if "error" not in entry}


class AudioDataset(torch.utils.data.Dataset):
    """Random crops of `sample_length` samples at `sample_rate` from every audio file under `root`.

    Item `index` is a pure function of (seed, index): a file drawn with probability proportional to its duration
    (a uniform point on the concatenated timeline), then a uniform crop inside it. A song shorter than
    `sample_length` is returned whole at offset 0, zero-padded at the end. The index has no upper bound (training
    asks for step*global_batch + rank*local_batch + j, so any number of ranks sees the same crops); `len()` is the
    number of non-overlapping crops the data holds, one "epoch". Songs shorter than min_seconds or at least
    max_seconds long are left out (the original's min_duration / max_duration; a prior's timing embedding only
    covers totals in that range).

    Returns dict(audio float32 tensor (sample_length, 1), offset int, total_length int (samples at sample_rate),
    artist str, genre str, lyrics str, path str).
    """

    def __init__(self, root, sample_rate, sample_length, seed=0, min_seconds=0.0, max_seconds=math.inf,
                 index_path=None):
        self.root, self.sample_rate, self.sample_length, self.seed = root, sample_rate, sample_length, seed
        files = scan_folder(root, index_path)
        if not files:
            raise AudioError(f"{root}: no readable audio ({', '.join(AUDIO_EXTENSIONS)}) found; "
                             "point at a folder of songs or make one with: python data.py --make-toy DIR")
        files = {rel: e for rel, e in files.items() if min_seconds <= e["frames"] / e["sample_rate"] < max_seconds}
        if not files:
            raise AudioError(f"{root}: no song lasts between {min_seconds:g} and {max_seconds:g} s; "
                             "add longer/shorter songs or use a model whose duration range fits them")
        self.paths = [os.path.join(root, rel) for rel in files]
        self.meta = [entry["meta"] for entry in files.values()]
        self.lengths = np.array([resampled_length(e["frames"], e["sample_rate"], sample_rate) for e in files.values()])
        self.ends = np.cumsum(self.lengths)  # (files,) end of each file on the concatenated timeline

    def __len__(self):
        return max(1, int(self.ends[-1]) // self.sample_length)

    @property
    def hours(self):
        """Total duration of the usable audio."""
        return float(self.ends[-1]) / self.sample_rate / 3600

    def __getitem__(self, index):
        if index < 0:
            raise IndexError(f"AudioDataset indices are >= 0, got {index}")
        rng = np.random.default_rng([self.seed, index])  # an independent stream per (seed, index), any worker
        position = rng.integers(self.ends[-1])  # a uniform sample of all the audio picks the file: weight = duration
        file = int(np.searchsorted(self.ends, position, side="right"))
        total = int(self.lengths[file])
        offset = int(rng.integers(max(0, total - self.sample_length) + 1))
        audio = load_audio(self.paths[file], self.sample_rate, offset, self.sample_length)
        audio = np.pad(audio, (0, self.sample_length - len(audio)))  # only songs shorter than a crop are padded
        return dict(audio=torch.from_numpy(audio)[:, None], offset=offset, total_length=total,  # (T,) -> (T, 1)
                    path=self.paths[file], **self.meta[file])


# ---- 3. Labels: artist and genre ids, lyric tokens, lyric window --------------------------------------------

IDS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ids")
# Label versions are PriorConfig.label_version: 2 for 5b, 5b_lyrics and the upsamplers, 3 for 1b_lyrics.
MAX_GENRES = {2: 5, 3: 1}  # genre ids in y (official max_bow_genre_size): v2 a bag of words, v3 one genre
LYRIC_VOCAB = {  # id = position + 1; 0 is padding / unknown
    2: string.ascii_uppercase + string.ascii_lowercase + string.digits + ".,:;!?-+'\"()[] \t\n",  # 79 chars
    3: string.ascii_uppercase + string.ascii_lowercase + string.digits + ".,:;!?-'\"()[] \t\n",  # 78, no '+'
}


def lyric_vocab_size(version):
    """80 for version 2, 79 for version 3 (the characters plus the padding id 0)."""
    return len(LYRIC_VOCAB[version]) + 1


@functools.lru_cache(maxsize=4)
def load_ids(kind, version):
    """{normalised name: id} from ids/v{version}_{kind}_ids.txt, kind "artist" or "genre", version 2 or 3."""
    if version not in MAX_GENRES or kind not in ("artist", "genre"):
        raise ValueError(f"no id table for kind {kind!r}, version {version!r} (kinds artist/genre, versions 2/3)")
    table = {}
    with open(os.path.join(IDS_DIR, f"v{version}_{kind}_ids.txt"), encoding="utf-8") as f:
        for line in f:
            name, id_ = line.strip().rsplit(";", 1)
            table[name.lower()] = int(id_)  # jukebox: a name listed twice keeps its last id (v3 "speaker" -> 7896)
    return table


def normalize_name(name, version):
    """The table's spelling of a name. v2: lowercase, each run of characters outside a-z0-9 becomes one '_', no
    '_' at the ends ("Zac Brown Band" -> "zac_brown_band"); v3: lowercase only."""
    name = name.lower()
    if version == 3:
        return name
    return re.sub(r"[^a-z0-9]+", "_", name).strip("_")


def closest_names(name, kind, version, n=5):
    """Up to n table names closest to `name` (difflib ratio), best first; for warnings and --list-* searches."""
    return difflib.get_close_matches(normalize_name(name, version), load_ids(kind, version), n=n, cutoff=0.5)


@functools.lru_cache(maxsize=4096)  # warns once per name, and spares difflib's search on every training step
def _lookup(name, kind, version):
    table = load_ids(kind, version)
    key = normalize_name(name, version)
    if key in table:
        return table[key]
    close = closest_names(name, kind, version)
    hint = f"; closest known: {', '.join(close)}" if close else ""
    warnings.warn(f"{kind} {name!r} ({key!r}) is not in ids/v{version}_{kind}_ids.txt, using 0 (unknown){hint}")
    return 0


def artist_id(name, version):
    """The artist's id in the version's table, 0 (unknown) with a warning if it is not there."""
    return _lookup(name, "artist", version)


def genre_ids(name, version):
    """MAX_GENRES[version] genre ids padded with -1 (the y vector's genre slots).

    v2 treats a genre as a bag of words ("Country Rock" -> country, rock), v3 as one name ("country rock").
    Unknown words map to 0 with a warning; a v2 genre of more than 5 words keeps its first 5, with a warning.
    """
    words = normalize_name(name, version).split("_") if version == 2 else [name]
    if len(words) > MAX_GENRES[version]:
        words = words[:MAX_GENRES[version]]
        warnings.warn(f"genre {name!r} has more than {MAX_GENRES[version]} words; keeping {words}")
    ids = [_lookup(word, "genre", version) for word in words]
    return ids + [-1] * (MAX_GENRES[version] - len(ids))


def song_labels(artist, genre, lyrics, version):
    """(artist id, genre ids padded with -1, every lyric token) of one song, for label version 2 or 3.
    `lyric_window` then picks a music window's tokens, and prior.make_y assembles the label vector y."""
    return artist_id(artist, version), genre_ids(genre, version), tokenize_lyrics(lyrics, version)


# Characters NFKD cannot decompose to ASCII, spelled the way the unidecode package spells them.
_ASCII_SPELLING = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": ",", "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2032": "'",
    "\u2013": "-", "\u2014": "-", "\u2212": "-", "\u00ab": "<<", "\u00bb": ">>", "\u00df": "ss", "\u00e6": "ae",
    "\u00c6": "AE", "\u0153": "oe", "\u0152": "OE", "\u00f8": "o", "\u00d8": "O", "\u0142": "l", "\u0141": "L",
    "\u0111": "d", "\u0110": "D", "\u00f0": "d", "\u00d0": "D", "\u00fe": "th", "\u00de": "Th", "\u0131": "i",
})


def to_ascii(text):
    """Approximates unidecode (which the original uses and we do not depend on): accented letters lose their
    accents, typographic quotes and dashes become ASCII ones, and what has no ASCII spelling (e.g. CJK, Cyrillic,
    which unidecode would transliterate) is dropped."""
    text = unicodedata.normalize("NFKD", text.translate(_ASCII_SPELLING))  # "é" -> "e" + combining accent
    return text.encode("ascii", "ignore").decode("ascii")


def clean_lyrics(text, version):
    """The original's cleaning: to ASCII, backslash -> newline, then drop every character outside the vocabulary."""
    text = to_ascii(text).replace("\\", "\n")  # jukebox: a backslash is read as a line break
    vocab = set(LYRIC_VOCAB[version])
    return "".join(c for c in text if c in vocab)


def tokenize_lyrics(text, version):
    """Cleaned lyrics as character ids (list of int, 1 .. lyric_vocab_size-1)."""
    vocab = LYRIC_VOCAB[version]
    return [vocab.index(c) + 1 for c in clean_lyrics(text, version)]


def detokenize_lyrics(tokens, version):
    """Character ids back to text; padding (0) becomes nothing."""
    vocab = LYRIC_VOCAB[version]
    return "".join(vocab[t - 1] for t in tokens if t > 0)


def lyric_window(tokens, n_tokens, total_length, offset, duration):
    """The n_tokens lyric ids that go with the music window [offset, offset + duration) of a song of total_length
    samples, assuming the lyrics are spread evenly over the song (paper §3.6 "lyrics alignment").

    Returns (window, indices): window[i] = tokens[indices[i]], or 0 where indices[i] == -1 (padding).
    """
    if len(tokens) < n_tokens:  # short lyrics: all of them, left-padded with 0
        pad = n_tokens - len(tokens)
        return [0] * pad + list(tokens), [-1] * pad + list(range(len(tokens)))
    if not 0 <= offset < total_length:
        raise ValueError(f"offset {offset} outside the song [0, {total_length})")
    # The character at the window's centre in time, then the window around it, shifted to stay inside the lyrics:
    # at the start of a song it is the first n_tokens, at the end the last n_tokens.
    mid = int(len(tokens) * (offset + duration / 2.0) / total_length)  # jukebox: float, then truncated
    first = min(max(mid - n_tokens // 2, 0), len(tokens) - n_tokens)
    indices = list(range(first, first + n_tokens))
    return [tokens[i] for i in indices], indices


# ---- 4. Toy music -----------------------------------------------------------------------------------------------

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


def _tone(freq, seconds, sample_rate, timbre):
    """One note: a sum of harmonics (none above Nyquist) under an attack / exponential-decay envelope."""
    harmonics, attack, decay = TIMBRES[timbre]
    t = np.arange(int(seconds * sample_rate)) / sample_rate
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
    end = min(len(track), at + len(sound))
    if at < end:
        track[at:end] += sound[:end - at]


def toy_song(seed, seconds, sample_rate):
    """A deterministic toy song: float32 (seconds*sample_rate,) audio in [-1, 1] and its metadata dict."""
    rng = np.random.default_rng(seed)
    genre = TOY_GENRES[rng.integers(len(TOY_GENRES))]
    bpm = int(rng.choice((84, 96, 110, 124, 140)))
    root = int(rng.integers(45, 57))  # midi note of the key's root, A2 .. G#3
    scale = SCALES[rng.choice(list(SCALES))]
    progression = PROGRESSIONS[rng.integers(len(PROGRESSIONS))]
    lead, pad = rng.choice(["sine", "square", "saw", "pluck"]), rng.choice(["organ", "sine", "saw"])

    def hz(degree, octave):  # scale degree (may exceed 7) in an octave relative to the root -> frequency
        note = root + 12 * (octave + degree // 7) + scale[degree % 7]  # midi note number
        return 440.0 * 2 ** ((note - 69) / 12)

    n = int(seconds * sample_rate)
    track, beat = np.zeros(n), 60.0 / bpm
    n_beats = int(seconds / beat) + 1
    degree = 7  # melody random walk, in scale degrees above the root
    for b in range(n_beats):
        chord = progression[(b // 4) % len(progression)]
        at = int(b * beat * sample_rate)
        if b % 4 == 0:  # a held triad per bar, in the pad timbre
            for step in (0, 2, 4):
                _add(track, 0.18 * _tone(hz(chord + step, 1), 4 * beat, sample_rate, pad), at)
        _add(track, 0.35 * _tone(hz(chord, -1), beat, sample_rate, "pluck"), at)  # bass on every beat
        for half in (0, 1):  # melody in eighth notes, sometimes resting
            degree = int(np.clip(degree + rng.choice((-2, -1, -1, 0, 1, 1, 2)), 3, 13))
            if rng.random() > 0.15:
                _add(track, 0.3 * _tone(hz(degree, 1), beat / 2, sample_rate, lead),
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
    """Write n toy songs as folder/toy_XXX.wav (16-bit) with toy_XXX.json sidecars; returns the wav paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        audio, meta = toy_song([seed, i], seconds, sample_rate)
        path = os.path.join(folder, f"toy_{i:03d}.wav")
        sf.write(path, audio, sample_rate, subtype="PCM_16")
        with open(os.path.splitext(path)[0] + ".json", "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        paths.append(path)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description="Make toy songs, or index a folder of audio for training.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--make-toy", metavar="DIR", help="write procedurally generated songs (wav + json) into DIR")
    action.add_argument("--scan", metavar="DIR", help="build/refresh DIR's duration index and print a summary")
    parser.add_argument("--n", type=int, default=8, help="number of toy songs (default 8)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each toy song in seconds (default 10)")
    parser.add_argument("--sample-rate", type=int, default=44100, help="sample rate in Hz (default 44100)")
    parser.add_argument("--seed", type=int, default=0, help="toy songs are a pure function of this seed (default 0)")
    args = parser.parse_args(argv)
    print(f"config: {vars(args)}")
    if args.n < 1 or args.seconds <= 0 or args.sample_rate < 1000 or args.seed < 0:
        parser.error("need --n >= 1, --seconds > 0, --sample-rate >= 1000 and --seed >= 0")
    try:
        if args.make_toy:
            paths = make_toy(args.make_toy, args.n, args.seconds, args.sample_rate, args.seed)
            print(f"wrote {len(paths)} toy songs of {args.seconds:g} s at {args.sample_rate} Hz to {args.make_toy}")
        else:
            data = AudioDataset(args.scan, args.sample_rate, args.sample_rate)
            print(f"{args.scan}: {len(data.paths)} usable files, {data.hours:.2f} hours at {args.sample_rate} Hz")
    except AudioError as e:
        parser.exit(2, f"data.py: error: {e}\n")
    except OSError as e:  # cannot create the folder or write a file in it
        parser.exit(2, f"data.py: error: {e.filename or args.make_toy}: {e.strerror}; pick a writable folder\n")


if __name__ == "__main__":
    main()
