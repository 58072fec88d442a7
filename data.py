"""Data in: audio files -> mono windows at the model's rate, VQ-VAE codes cached per song, and the label ids.

Jukebox (arXiv:2005.00341) trains on windows of 44.1 kHz mono songs (~9 s for the VQ-VAE, one context of codes
for a prior), conditioned on artist, genre and the lyric characters near the window (§4, lyrics spread evenly).

Reading order: 1. `load_audio` / `resample`: any file libsndfile decodes, as mono, resampled, decoding only the span
asked for; `write_audio`. 2. `scan_folder`, `AudioDataset`: a cached index of the songs; the VQ-VAE's windows, cut
as the original does. 3. The code cache: `encode_song` once per song and level, `CodeDataset` code-aligned windows
(the priors' data). 4. Labels: id tables (ids/; v2 for 5b, v3 for 1b_lyrics), the lyric tokenizer. T: samples at
the target rate (so are lengths and offsets); audio is float32 in [-1, 1], (T,) or (T, 1). `song.wav` may have a
sidecar `song.json` of strings {"artist", "genre", "lyrics"} (missing: "unknown", "unknown", "").
"""
import difflib
import functools
import hashlib
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
import torch.distributed as dist


class UserError(Exception):
    """A mistake the user can fix, in one line naming it and the fix; each main() prints it and exits with code 2."""


# ---- 1. Reading and resampling ---------------------------------------------------------------------------------

# Kaiser-windowed sinc: 32 zero crossings at the lower rate, cutoff at 94.5 % of the lower Nyquist, beta 9.5. At 48 ->
# 44.1 kHz: flat (< 0.1 dB) to 19.4 kHz; tones 0 / 3 / 4+ % above the new Nyquist fold back > 40 / 75 / 95 dB down.
ZERO_CROSSINGS, ROLLOFF, KAISER_BETA = 32, 0.945, 9.5
CHUNK = 1 << 15  # output samples computed per vectorised step (bounds the (chunk, taps) gather in memory)


def _ratio(orig_sr, new_sr):  # (up, down) in lowest terms: output sample m sits at input position m * down / up
    return new_sr // math.gcd(orig_sr, new_sr), orig_sr // math.gcd(orig_sr, new_sr)


def resampled_length(n, orig_sr, new_sr):  # output samples m whose position m * orig_sr / new_sr is in the input
    return -(-n * new_sr // orig_sr)  # ceil


@functools.lru_cache(maxsize=16)
def _sinc_kernels(orig_sr, new_sr):
    """Per-phase filter taps: output m is sum_j x[floor(m * down / up) + offsets[j]] * kernels[m % up, j], since
    the fractional input position of output m depends only on its phase m % up. Returns (offsets, kernels)."""
    up, down = _ratio(orig_sr, new_sr)
    cutoff = ROLLOFF * min(1.0, up / down)  # pass band as a fraction of the input Nyquist
    half = math.ceil(ZERO_CROSSINGS / cutoff)  # half width in input samples (wider when downsampling)
    offsets = np.arange(-half + 1, half + 1)  # (taps,) input samples around floor(position)
    frac = (np.arange(up) * down % up) / up  # (up,) fractional input position of each phase
    tau = offsets[None, :] - frac[:, None]  # (up, taps) distance from each tap to the output's position
    window = np.i0(KAISER_BETA * np.sqrt(np.clip(1 - (tau / half) ** 2, 0, None))) / np.i0(KAISER_BETA)
    return offsets, (cutoff * np.sinc(cutoff * tau) * window).astype(np.float32)  # low-pass at `cutoff`, DC gain 1


def resample(x, orig_sr, new_sr, first=0, count=None, x_start=0):
    """Band-limited resampling of a mono signal (T,) -> float32 (ceil(T * new_sr / orig_sr),), or only its outputs
    first .. first+count-1 for a signal whose samples from x_start on are x (zeros outside): when x holds the span
    the taps reach (see `load_audio`), the same slice as resampling the whole file. Equal rates: a copy."""
    x = np.asarray(x, dtype=np.float32)
    if orig_sr == new_sr:
        return x.copy()
    up, down, (offsets, kernels) = *_ratio(orig_sr, new_sr), _sinc_kernels(orig_sr, new_sr)
    count = resampled_length(len(x), orig_sr, new_sr) if count is None else count
    out, pad = np.zeros(count, dtype=np.float32), max(0, -(first * down // up - x_start + offsets[0]))
    highest = (first + count - 1) * down // up - x_start + offsets[-1]  # the last index into x that a tap reads
    padded = np.pad(x, (pad, max(0, highest + 1 - len(x))))  # zeros outside x, and before it as far as taps reach
    for c in range(0, count, CHUNK):
        m = np.arange(first + c, first + min(c + CHUNK, count), dtype=np.int64)  # (n,) output indices
        idx = (m * down // up - x_start + pad)[:, None] + offsets  # (n, taps) indices into padded
        out[c:c + len(m)] = np.einsum("nt,nt->n", padded[idx], kernels[m % up])  # (n, taps) -> (n,)
    return out


def load_audio(path, sample_rate, start=0, length=None, mix=0.5):
    """`path` as mono float32 (T,) at `sample_rate`: samples [start, start + length) (default: to the end), short
    past the end, decoding only that span and the resampler's reach. Stereo becomes mix * left + (1 - mix) * right,
    more channels their mean. UserError naming the file for unreadable audio or NaN/inf samples."""
    try:
        with sf.SoundFile(path) as f:
            orig_sr, frames, total = f.samplerate, f.frames, resampled_length(f.frames, f.samplerate, sample_rate)
            start, length = min(start, total), total - min(start, total) if length is None else length
            up, down = _ratio(orig_sr, sample_rate)
            offsets = _sinc_kernels(orig_sr, sample_rate)[0] if up != down else (0, 0)  # the taps' reach, in input
            src_first = max(0, start * down // up + offsets[0])
            src_end = min(frames, (start + length - 1) * down // up + offsets[-1] + 1)
            f.seek(src_first)
            audio = f.read(max(0, src_end - src_first), dtype="float32", always_2d=True)  # (t, channels)
    except sf.SoundFileError as e:  # LibsndfileError: missing file, unknown format, corrupt header or data
        raise UserError(f"{path}: cannot read audio ({' '.join(str(e).split())}); convert or remove it") from None
    if not np.isfinite(audio).all():  # float files can hold them; one would poison every loss it reaches
        raise UserError(f"{path}: holds NaN or infinite samples; re-export the file or remove it")
    mix = float(mix)  # jukebox: 0.5/0.5 unless the caller draws it (aug_blend); a Python float keeps float32
    audio = mix * audio[:, 0] + (1 - mix) * audio[:, 1] if audio.shape[1] == 2 else audio.mean(axis=1)  # (t,)
    length = max(0, min(length, total - start))
    return audio[:length] if up == down else resample(audio, orig_sr, sample_rate, start, length, src_first)


def write_audio(path, audio, sample_rate):  # (1, T, 1) float tensor -> a 16-bit PCM wav, clipped to [-1, 1]
    sf.write(path, audio[0, :, 0].clamp(-1, 1).float().cpu().numpy(), sample_rate, subtype="PCM_16")


# ---- 2. The index and the windows ------------------------------------------------------------------------------

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
INDEX_NAME = ".jukebox_index.json"  # written in the data folder; delete it to force a rescan


def _read_sidecar(audio_path):
    meta, path = {"artist": "unknown", "genre": "unknown", "lyrics": ""}, os.path.splitext(audio_path)[0] + ".json"
    try:
        with open(path, encoding="utf-8") as f:
            found = json.load(f)
    except FileNotFoundError:
        return meta
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: bad metadata sidecar ({' '.join(str(e).split())}); fix it or delete it") from None
    if not isinstance(found, dict) or not all(isinstance(found.get(k, ""), str) for k in meta):
        raise UserError(f'{path}: a sidecar is one JSON object of strings {{"artist", "genre", "lyrics"}}; fix it')
    return {k: found.get(k, v) for k, v in meta.items()}


def scan_folder(root):
    """{relative path: entry (rate, frames, sidecar, (mtime, size) of both files)} of the audio under root, hidden
    folders skipped, kept in root/INDEX_NAME for the next scan; unreadable files skipped with one warning."""
    if not os.path.isdir(root):
        raise UserError(f"{root}: not a folder; pass a folder of audio files (or make one: python toy.py DIR)")
    index_path, files = os.path.join(root, INDEX_NAME), {}
    try:
        with open(index_path, encoding="utf-8") as f:
            cached = dict(json.load(f))
    except (OSError, ValueError, TypeError):  # none yet, or a damaged one: scan everything
        cached = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # a stable order; skips the code cache
        for name in sorted(n for n in names if n.lower().endswith(AUDIO_EXTENSIONS) and not n.startswith(".")):
            path = os.path.join(folder, name)
            stamp = [[os.stat(p).st_mtime_ns, os.stat(p).st_size] if os.path.exists(p) else None
                     for p in (path, os.path.splitext(path)[0] + ".json")]  # the audio and its sidecar
            rel = os.path.relpath(path, root)
            entry = cached.get(rel)
            if not isinstance(entry, dict) or entry.get("stamp") != stamp:  # new or changed: open it
                entry = {"stamp": stamp}
                try:
                    info = sf.info(path)
                    entry.update(sample_rate=info.samplerate, frames=info.frames, meta=_read_sidecar(path))
                except sf.SoundFileError as e:  # (a bad sidecar is a UserError to fix, not a file to skip)
                    entry["error"] = " ".join(str(e).split())
                if entry.get("frames") == 0:
                    entry["error"] = "no samples"
            files[rel] = entry
    bad = [f"{rel} ({entry['error']})" for rel, entry in files.items() if "error" in entry]
    if bad:
        warnings.warn(f"skipping {len(bad)} unreadable audio file(s) in {root}: " + "; ".join(bad[:20]))
    if files != cached:
        try:  # atomic: ranks that scan at the same time each write a complete file
            with open(f"{index_path}.{os.getpid()}.tmp", "w", encoding="utf-8") as f:
                json.dump(files, f)
            os.replace(f"{index_path}.{os.getpid()}.tmp", index_path)
        except OSError as e:
            warnings.warn(f"could not write the audio index {index_path} ({e}); it will be rebuilt next time")
    return {rel: entry for rel, entry in files.items() if "error" not in entry}


class AudioDataset(torch.utils.data.Dataset):
    """Windows of `sample_length` samples of the songs under `root` laid end to end, cut as the original does:
    window i starts at i * sample_length (aug_shift: plus a random [-half, half) window), belongs to the song of
    its midpoint, moves half a window back inside it over an edge; aug_blend draws a random stereo mix. Dropped
    (dropped_short / dropped_long): songs under a window or min_seconds (default: the window in whole seconds),
    or of max_seconds or more. An epoch: len() windows, shuffled; item `index` (any >= 0) depends only on (seed,
    index), so N processes see what one sees. Items: dict(audio (T, 1), offset, total_length, metadata, path)."""

    def __init__(self, root, sample_rate, sample_length, seed=0, min_seconds=None, max_seconds=math.inf,
                 aug_shift=False, aug_blend=False):
        files, self.window, self.seed, self._order = scan_folder(root), sample_length, seed, None
        self.sample_rate, self.aug_shift, self.aug_blend = sample_rate, aug_shift, aug_blend
        if not files:
            raise UserError(f"{root}: no readable audio found; pass a folder of songs (or: python toy.py DIR)")
        min_seconds = math.ceil(sample_length / sample_rate) if min_seconds is None else min_seconds  # jukebox
        samples = {rel: resampled_length(e["frames"], e["sample_rate"], sample_rate) for rel, e in files.items()}
        short = {rel for rel, n in samples.items() if self.units(n) < sample_length or n / sample_rate < min_seconds}
        kept = [rel for rel, n in samples.items() if rel not in short and n / sample_rate < max_seconds]
        self.dropped_short, self.dropped_long = len(short), len(files) - len(kept) - len(short)
        if not kept:
            raise UserError(f"{root}: no song lasts between {min_seconds:g} and {max_seconds:g} s and one window; "
                            "add songs")
        self.rels, self.meta, self.stamps = kept, [files[r]["meta"] for r in kept], [files[r]["stamp"] for r in kept]
        self.paths = [os.path.join(root, rel) for rel in kept]
        self.lengths = np.array([samples[rel] for rel in kept])  # (songs,) samples at the target rate
        self.sizes = np.array([self.units(n) for n in self.lengths])  # (songs,) in window units
        self.ends = np.cumsum(self.sizes)  # (songs,) end of each song on the concatenated timeline

    def units(self, samples):  # a song's length in window units: samples here
        return samples

    def __len__(self):
        return int(self.ends[-1]) // self.window

    def locate(self, index):  # (song, start of the window in it in window units, the random stream of this index)
        epoch, position = divmod(index, len(self))
        if self._order is None or self._order[0] != epoch:  # one shuffle per epoch, kept while it is in use
            self._order = epoch, np.random.default_rng([self.seed, epoch, 1]).permutation(len(self))
        rng, half = np.random.default_rng([self.seed, index]), self.window // 2  # a stream per (seed, index)
        start = int(self._order[1][position]) * self.window + (int(rng.integers(-half, half)) if self.aug_shift else 0)
        song = int(np.searchsorted(self.ends, start + half, side="right"))  # the song of the window's midpoint
        first, end = int(self.ends[song] - self.sizes[song]), int(self.ends[song])
        if start > end - self.window:  # jukebox: over the song's end or start -> half a window back inside
            start = max(first, start - half)
        elif start < first:
            start = min(end - self.window, start + half)
        return song, start - first, rng

    def labels(self, song, offset):  # what every item carries: where the window is in its song, the song's metadata
        return dict(offset=offset, total_length=int(self.lengths[song]), path=self.paths[song], **self.meta[song])

    def __getitem__(self, index):
        song, offset, rng = self.locate(index)
        mix = float(rng.random()) if self.aug_blend else 0.5  # jukebox: aug_blend draws the channel weight in [0, 1)
        audio = load_audio(self.paths[song], self.sample_rate, offset, self.window, mix=mix)  # (T,)
        return dict(audio=torch.from_numpy(audio)[:, None], **self.labels(song, offset))  # (T,) -> (T, 1)


# ---- 3. The code cache -----------------------------------------------------------------------------------------

CODES_FOLDER = ".jukebox_codes"  # default cache: <data>/.jukebox_codes/<VQ-VAE key>/<song>.<hash>.l<level>.npy


def vqvae_key(vqvae):  # a hash of a VQ-VAE's config, weights and buffers: another VQ-VAE, another code cache
    digest = hashlib.sha256(json.dumps(vars(vqvae.config), sort_keys=True).encode())
    for name, tensor in sorted(vqvae.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def encode_song(vqvae, path, sample_rate, length, targets, segment=1 << 20, margin=1 << 17):
    """Encode samples [0, length) of a song (a multiple of the top hop) into one .npy per level, in segments (23.8 s
    at 44.1 kHz: memory does not grow with the song) with `margin` samples (3 s) of song each side. A code depends
    only on the audio in the encoder's reach (~1.0 s for the released level 0), so with the margin covering it the
    codes equal those of the whole song encoded at once (up to float rounding at a near-tie of two codes)."""
    hops, device = vqvae.config.hop_lengths, next(vqvae.parameters()).device
    segment, margin = max(1, segment // hops[-1]) * hops[-1], margin // hops[-1] * hops[-1]  # keep the stride phase
    dtype = np.int16 if vqvae.config.codebook_size <= 2**15 else np.int32
    tmp = f".{os.getpid()}.tmp"  # per process: two runs encoding the same song at once do not clash
    outs = [np.lib.format.open_memmap(t + tmp, "w+", dtype, (length // h,)) for t, h in zip(targets, hops)]
    for a in range(0, length, segment):
        b, low, high = min(a + segment, length), max(0, a - margin), min(length, a + segment + margin)
        audio = torch.from_numpy(load_audio(path, sample_rate, low, high - low)).to(device)  # (T,)
        for out, codes, hop in zip(outs, vqvae.encode(audio[None, :, None]), hops):  # [(1, T / hop)] per level
            out[a // hop:b // hop] = codes[0, (a - low) // hop:(b - low) // hop].cpu().numpy()
    for out, target in zip(outs, targets):
        out.flush()
        os.replace(target + tmp, target)  # a reader sees no file or the whole one (and both writers the same)


class CodeDataset(AudioDataset):
    """A prior's windows: n_ctx codes of `level`, cached in `cache`/<vqvae_key>/ (default <root>/.jukebox_codes/),
    missing songs encoded first (rank r of N looks after every N-th song). Cut as AudioDataset cuts, at multiples of the
    factor f of the level above, whose codes of the window are upper[start / f : (start + n_ctx) / f]. Items:
    dict(tokens (n_ctx,), upper (n_ctx / f,) for upsamplers, offset, total_length, artist, genre, lyrics, path)."""
    # path -> one level of a song's codes, mapped once per process, not once per window (np.load was 2/3 of its cost)
    mapped = staticmethod(functools.lru_cache(256)(functools.partial(np.load, mmap_mode="r")))  # a handle per map

    def __init__(self, root, vqvae, level, n_ctx, seed=0, min_seconds=None, max_seconds=math.inf, aug_shift=False,
                 cache=None, upper_noise=0.0):
        self.hops, rate, self.level, self.n_ctx = vqvae.config.hop_lengths, vqvae.config.sample_rate, level, n_ctx
        self.upper_noise, self.codebook_size = upper_noise, vqvae.config.codebook_size
        self.factor = self.hops[level + 1] // self.hops[level] if level + 1 < len(self.hops) else 1
        min_seconds = math.ceil(n_ctx * self.hops[level] / rate) if min_seconds is None else min_seconds  # jukebox
        super().__init__(root, rate, n_ctx // self.factor, seed, min_seconds, max_seconds, aug_shift)
        self.folder = os.path.join(cache or os.path.join(root, CODES_FOLDER), vqvae_key(vqvae))
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as e:  # e.g. a file of that name, or a read-only data folder
            raise UserError(f"{self.folder}: cannot create the code cache ({e.strerror}); pass --codes DIR") from None
        self.files = [self.code_files(rel, stamp) for rel, stamp in zip(self.rels, self.stamps)]
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        for song in range(rank, len(self.files), world):  # by index: which songs are missing changes while
            if not all(map(os.path.exists, self.files[song])):  # other ranks write theirs
                length = int(self.sizes[song]) * self.hops[level] * self.factor  # samples, whole top codes
                encode_song(vqvae, self.paths[song], rate, length, self.files[song])
        if world > 1:
            dist.barrier()  # every rank's share is on disk

    def code_files(self, rel, stamp):  # each level's .npy of a song, named by its path and stamp: changed, re-encoded
        digest = hashlib.sha1(json.dumps([rel, stamp]).encode()).hexdigest()[:12]
        name = f"{os.path.splitext(os.path.basename(rel))[0]}.{digest}"
        return [os.path.join(self.folder, f"{name}.l{level}.npy") for level in range(len(self.hops))]

    def units(self, samples):  # codes of the level above in the encoded part: whole top codes (< 3 ms is left out)
        return int(samples) // self.hops[-1] * self.hops[-1] // (self.hops[self.level] * self.factor)

    def __getitem__(self, index):
        song, start, rng = self.locate(index)  # start in units, i.e. codes of the level above
        first = start * self.factor  # in codes of this level
        tokens = self.mapped(self.files[song][self.level])[first:first + self.n_ctx]  # (n_ctx,)
        item = dict(tokens=torch.from_numpy(tokens.astype(np.int64)))
        if self.level + 1 < len(self.hops):  # an upsampler: the level above's codes of the window, (n_ctx / f,)
            upper = self.mapped(self.files[song][self.level + 1])[start:start + self.window]
            swap = rng.random(len(upper)) < self.upper_noise  # train.py --upper-noise: random codes in their place
            upper = np.where(swap, rng.integers(0, self.codebook_size, len(upper)), upper)
            item["upper"] = torch.from_numpy(upper.astype(np.int64))
        return dict(item, **self.labels(song, first * self.hops[self.level]))


# ---- 4. Labels: artist and genre ids, lyric tokens -------------------------------------------------------------

IDS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ids")  # label versions: PriorConfig.label_version
MAX_GENRES = {2: 5, 3: 1}  # genre ids in y (official max_bow_genre_size): v2 a bag of words, v3 one genre
ALPHANUMERIC = string.ascii_uppercase + string.ascii_lowercase + string.digits  # a lyric id is position + 1; 0 pads
LYRIC_VOCAB = {2: ALPHANUMERIC + ".,:;!?-+'\"()[] \t\n", 3: ALPHANUMERIC + ".,:;!?-'\"()[] \t\n"}  # 79 / 78 (no '+')


def lyric_vocab_size(version):  # 80 for version 2, 79 for version 3 (the characters plus the padding id 0)
    return len(LYRIC_VOCAB[version]) + 1


@functools.lru_cache(maxsize=4)
def load_ids(kind, version):  # {normalised name: id} from ids/v{version}_{kind}_ids.txt, kind "artist" or "genre"
    if version not in MAX_GENRES or kind not in ("artist", "genre"):
        raise ValueError(f"no id table for kind {kind!r}, version {version!r} (kinds artist/genre, versions 2/3)")
    with open(os.path.join(IDS_DIR, f"v{version}_{kind}_ids.txt"), encoding="utf-8") as f:
        pairs = [line.strip().rsplit(";", 1) for line in f]
    return {name.lower(): int(id_) for name, id_ in pairs}  # jukebox: a name listed twice keeps its last id


def normalize_name(name, version):
    """The table's spelling: v2 lowercase with each run outside a-z0-9 one '_', none at the ends ("Zac Brown
    Band" -> "zac_brown_band"); v3 lowercase only."""
    return name.lower() if version == 3 else re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def closest_names(name, kind, version, n=5):  # up to n table names closest to `name`, best first (difflib ratio)
    return difflib.get_close_matches(normalize_name(name, version), load_ids(kind, version), n=n, cutoff=0.5)


@functools.lru_cache(maxsize=4096)  # warns once per name, and spares difflib's search on every training step
def _lookup(name, kind, version):
    table, key = load_ids(kind, version), normalize_name(name, version)
    if key in table:
        return table[key]
    close = closest_names(name, kind, version)
    hint = f"; closest known: {', '.join(close)}" if close else ""
    warnings.warn(f"{kind} {name!r} ({key!r}) is not in ids/v{version}_{kind}_ids.txt, using 0 (unknown){hint}")
    return 0


def names_like(kind, version, query=""):  # [(id, name)]: the whole table, or names containing QUERY, then the closest
    table, key = load_ids(kind, version), normalize_name(query, version)
    names = sorted((n for n in table if key in n), key=lambda n: (len(n), n)) if query else list(table)  # shortest 1st
    close = [n for n in closest_names(query, kind, version, n=10) if n not in names] if query else []  # e.g. typos
    return [(table[n], n) for n in names + close]


def artist_id(name, version):  # the artist's id in the version's table, 0 (unknown) with a warning if absent
    return _lookup(name, "artist", version)


def genre_ids(name, version):
    """MAX_GENRES[version] ids, -1 padded: v2 up to 5 words ("Country Rock": country, rock), v3 one name; unknown 0."""
    words = normalize_name(name, version).split("_") if version == 2 else [name]
    if len(words) > MAX_GENRES[version]:
        words = words[:MAX_GENRES[version]]  # the first ones, with the warning below
        warnings.warn(f"genre {name!r} has more than {MAX_GENRES[version]} words; keeping {words}")
    return [_lookup(word, "genre", version) for word in words] + [-1] * (MAX_GENRES[version] - len(words))


def song_labels(artist, genre, lyrics, version):  # (artist id, genre ids, all lyric tokens) for prior.window_y
    return artist_id(artist, version), genre_ids(genre, version), tokenize_lyrics(lyrics, version)


# Characters NFKD cannot decompose to ASCII, spelled the way the unidecode package spells them.
_ASCII_SPELLING = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": ",", "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2032": "'",
    "\u2013": "-", "\u2014": "-", "\u2212": "-", "\u00ab": "<<", "\u00bb": ">>", "\u00df": "ss", "\u00e6": "ae",
    "\u00c6": "AE", "\u0153": "oe", "\u0152": "OE", "\u00f8": "o", "\u00d8": "O", "\u0142": "l", "\u0141": "L",
    "\u0111": "d", "\u0110": "D", "\u00f0": "d", "\u00d0": "D", "\u00fe": "th", "\u00de": "Th", "\u0131": "i"})


def to_ascii(text):
    """Approximates unidecode (the original's; not a dependency here): accents go, typographic quotes and dashes
    become ASCII, what has no ASCII spelling (CJK, Cyrillic: unidecode would transliterate them) is dropped."""
    text = unicodedata.normalize("NFKD", text.translate(_ASCII_SPELLING))  # "é" -> "e" + combining accent
    return text.encode("ascii", "ignore").decode("ascii")


def clean_lyrics(text, version):  # the original's cleaning: to ASCII, "\\" -> newline, only vocabulary characters
    text = to_ascii(text).replace("\\", "\n")  # jukebox: a backslash is read as a line break
    return "".join(c for c in text if c in LYRIC_VOCAB[version])


def tokenize_lyrics(text, version):  # cleaned lyrics as character ids (list of int, 1 .. lyric_vocab_size-1)
    return [LYRIC_VOCAB[version].index(c) + 1 for c in clean_lyrics(text, version)]


def detokenize_lyrics(tokens, version):  # character ids back to text; padding (0) becomes nothing
    return "".join(LYRIC_VOCAB[version][t - 1] for t in tokens if t > 0)
