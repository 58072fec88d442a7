"""Sample music with the Jukebox priors: top codes -> middle codes -> bottom codes -> audio.

Implements the sampling of arXiv:2005.00341 §4.4 (ancestral, windowed and primed sampling, Figure 3) with the
window bookkeeping of the released sampler (the original's sample.py and utils/sample_utils.py). Reading order:
  1. `sample_level`: one level, window by window; every window after the first is primed with its overlap.
  2. `sample_levels`: the levels top to bottom; an upsampler window sees exactly the codes above it.
  3. `run`: the models (train.py checkpoints, or the released ones with --official), the inputs (prime audio or
     saved codes) and the outputs (wavs and codes after each level).
  4. `main`: the command line.

Labels: each prior gets the song's artist and genre as ids of its own label version (v3 for 1b_lyrics, v2 for the
others), and a lyric-conditioned top prior the characters of its lyrics that go with each window (`window_labels`).

Shapes: B samples in the batch, T tokens of one level, S raw audio samples. `codes` is a list indexed by
level (0 bottom, 1 middle, 2 top) of LongTensors (B, T_level). Per-level settings are indexed the same way,
as in the original's --hop_fraction. "samples per token" is the VQ-VAE hop length of a level (8, 32, 128).
"""
import argparse
import dataclasses
import math
import os
import sys
import warnings

# Idle OpenMP threads sleep instead of spinning (set before torch starts its pool): spinning threads make
# small CPU ops 10-50x slower whenever another process shares the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import soundfile
import torch
from tqdm import tqdm

import data
import official
from data import AudioError, load_audio, lyric_window
from prior import Prior, PriorConfig, make_y
from vqvae import VQVAE, VQVAEConfig

LEVEL_NAMES = {2: "top", 1: "middle", 0: "bottom"}  # level -> train.py stage of the prior sampling it


class UserError(Exception):
    """A problem the user can fix (bad file, bad flag): main() prints it on one line and exits with code 2."""


@dataclasses.dataclass
class Settings:
    """How to sample. Tuples are indexed by level: (bottom, middle, top)."""
    hop_fraction: tuple = (0.5, 0.5, 0.125)  # window hop / n_ctx (released sample.py --hop_fraction)
    temperature: tuple = (0.99, 0.99, 0.98)  # softmax temperature (Colab notebook: top .98, upsamplers .99)
    top_k: int = 0  # keep the k most likely tokens, 0 = off (released: 0)
    top_p: float = 0.0  # nucleus sampling mass, 0 = off (released: 0.0)
    chunk_size: int = 32  # prime tokens per prefill step (released: 32; 16 for the 5b top prior)
    batch_size: int = 16  # samples per prior.sample call (released max_batch_size: 16; 3 for the 5b top)
    dtype: torch.dtype = None  # the priors' compute dtype, None = their own (released sampling: float16)


# ---- 1. one level, window by window ---------------------------------------------------------------------

def window_starts(total, n_ctx, hop):
    """First token of each n_ctx-token window over `total` tokens, `hop` apart, the last ending at `total`."""
    # jukebox: get_starts -- range(0, total - n_ctx + hop, hop) with the last start moved back to total - n_ctx,
    # so the last window overlaps its predecessor by more than the usual n_ctx - hop tokens.
    return [min(start, total - n_ctx) for start in range(0, total - n_ctx + hop, hop)]


def windows(total, n_ctx, hop):
    """(start, end) token ranges that cover [0, total); one partial window when total < n_ctx."""
    assert 1 <= hop <= n_ctx, f"window hop {hop} must be in [1, n_ctx={n_ctx}]"
    if total <= n_ctx:
        return [(0, total)]  # jukebox: sample_partial_window -- a single window shorter than the context
    return [(start, start + n_ctx) for start in window_starts(total, n_ctx, hop)]


def window_labels(y, start, n_ctx, samples_per_token, lyrics=(), n_lyric_tokens=0):
    """The label vector y (B, n_y) (prior.make_y) for the window starting at token `start` of its level.

    y is the song's vector at offset 0; lyrics are the token ids of the whole song's lyrics, of which a prior with
    n_lyric_tokens > 0 gets the n_lyric_tokens that go with this window (the last n_lyric_tokens entries of y).
    """
    y = y.clone()
    y[:, 1] += start * samples_per_token  # offset in raw samples: drives the top prior's timing embeddings
    y[:, 2] = n_ctx * samples_per_token  # jukebox: the prior's full window length, even for a partial window
    if n_lyric_tokens:
        for row in y:  # (n_y,): the lyrics are assumed spread evenly over the song; centred on this window
            # jukebox: the window's centre is offset + y[2] / 2, y[2] the full window even for a partial one
            window, _ = lyric_window(lyrics, n_lyric_tokens, int(row[0]), int(row[1]), int(row[2]))
            row[-n_lyric_tokens:] = torch.tensor(window)
    return y


def sample_level(prior, codes, level, total, samples_per_token, y, settings, upper=None, upper_ratio=4,
                 generator=None, progress=None, lyrics=()):
    """Extend codes[level] (B, T) to (B, total) in place, window by window.

    `prior` is anything with `config.n_ctx` and the `Prior.sample` signature. Tokens already in codes[level]
    (a prime, or a run being continued) are kept and primed on, never sampled again; each window samples only
    the tokens after them. `upper` (B, total // upper_ratio) are the codes of the level above, for an
    upsampler: a window [start, end) is conditioned on exactly upper[:, start // ratio : end // ratio].
    `progress(k)` is told of k new tokens (summed over the batch) after each sampled position (Prior.sample's
    progress). `lyrics`: the token ids of the song's lyrics, for a lyric-conditioned prior (see window_labels).
    """
    n_ctx = prior.config.n_ctx
    hop = int(settings.hop_fraction[level] * n_ctx)  # jukebox: int(hop_fraction * n_ctx), e.g. top 1024
    batch = codes[level].shape[0]
    n_lyric_tokens = prior.config.n_lyric_tokens if getattr(prior.config, "lyrics", "none") != "none" else 0
    for start, end in windows(total, n_ctx, hop):
        have = codes[level].shape[1]
        assert have >= start, f"gap: window starts at {start} but only {have} tokens exist"
        if have >= end:
            continue  # the window is already full: a long prime, or a continued run
        window_upper = None
        if upper is not None:
            assert start % upper_ratio == 0 and end % upper_ratio == 0, "upsampler windows align with the level above"
            window_upper = upper[:, start // upper_ratio:end // upper_ratio]  # (B, (end - start) / ratio)
            assert window_upper.shape[1] * upper_ratio == end - start, "too few codes in the level above"
        y_window = window_labels(y, start, n_ctx, samples_per_token, lyrics, n_lyric_tokens)
        new = []
        for rows in torch.arange(batch).split(settings.batch_size):  # jukebox: max_batch_size per call
            prime = codes[level][rows, start:]  # (b, have - start): the overlap with the previous window
            out = prior.sample(
                len(rows), y_window[rows], upper=None if window_upper is None else window_upper[rows],
                prime=prime if prime.shape[1] > 0 else None, sample_tokens=end - start,
                temperature=settings.temperature[level], top_k=settings.top_k, top_p=settings.top_p,
                chunk_size=settings.chunk_size, generator=generator, dtype=settings.dtype,
                progress=progress)  # (b, end - start)
            new.append(out[:, have - start:])  # (b, end - have): only the tokens sampled now
        codes[level] = torch.cat([codes[level], torch.cat(new).to(codes[level].device)], dim=1)
    return codes[level]


# ---- 2. the levels, top to bottom -----------------------------------------------------------------------

def sample_levels(prior_for, codes, levels, total_samples, hop_lengths, labels_for, settings, generator=None,
                  on_level_done=None):
    """Sample `levels` top to bottom, each to total_samples // hop_lengths[level] tokens; codes updated in place.

    prior_for(level) -> the prior of that level (loaded only when its turn comes, so one prior is in memory at
    a time); labels_for(prior) -> (its label vector y (B, n_y) at offset 0, the song's lyric token ids);
    on_level_done(level) is called as soon as a level is complete, so its outputs are written before the next
    (slower) level starts.
    """
    top = len(hop_lengths) - 1
    for level in sorted(levels, reverse=True):
        total, have = total_samples // hop_lengths[level], codes[level].shape[1]
        if have >= total:
            continue  # complete already (a resumed run): its outputs were written when it completed
        upper, ratio = None, None
        if level < top:  # an upsampler: conditioned on the codes of the level above
            upper, ratio = codes[level + 1], hop_lengths[level + 1] // hop_lengths[level]
            assert upper.shape[1] * ratio >= total, f"level {level + 1} has too few codes to upsample"
        prior = prior_for(level)
        y, lyrics = labels_for(prior)
        batch = codes[level].shape[0]  # the bar counts every sample's tokens: tokens/s and ETA per sampled token
        with tqdm(total=(total - have) * batch, unit="tok", desc=f"level {level} ({LEVEL_NAMES.get(level, level)}, "
                  f"{batch} x {total - have})", dynamic_ncols=True, smoothing=0.05) as bar:
            sample_level(prior, codes, level, total, hop_lengths[level], y, settings, upper=upper,
                         upper_ratio=ratio, generator=generator, progress=bar.update, lyrics=lyrics)
        del prior  # one prior in memory at a time
        if on_level_done is not None:
            on_level_done(level)
    return codes


# ---- 3. inputs and outputs ------------------------------------------------------------------------------

STAGES = ("vqvae", "top", "middle", "bottom")
CODES_FORMAT = "jukebox-minimal codes v1"


def load_checkpoint(path, stage, flag):
    """A train.py checkpoint dict for `stage`, memory-mapped (cheap to check before any sampling starts)."""
    if not os.path.isfile(path):
        raise UserError(f"{flag} {path}: no such file; check the path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated file, not a torch zip file, or holding objects beyond plain tensors
        raise UserError(f"{flag} {path}: not a readable train.py checkpoint ({type(e).__name__}); "
                        "pass a file written by train.py") from None
    if not isinstance(ckpt, dict) or ckpt.get("stage") not in STAGES or "config" not in ckpt:
        raise UserError(f"{flag} {path}: not a train.py checkpoint (no stage/config); pass a file written by train.py")
    if ckpt["stage"] != stage:
        right = "--vqvae" if ckpt["stage"] == "vqvae" else f"--{ckpt['stage']}"
        raise UserError(f"{flag} {path}: this is a '{ckpt['stage']}' checkpoint, not '{stage}'; pass it to {right}")
    return ckpt


def build_model(ckpt, model_class, config_class):
    """The model of a train.py checkpoint, with its EMA weights when it has them (they sample better)."""
    model = model_class(config_class(**ckpt["config"]))
    model.load_state_dict(ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"])
    return model.eval()


def check_prior_matches(prior_config, vqvae_config, path, flag):
    """A prior can only sample codes of the VQ-VAE it was trained on: same codebook, levels and rate."""
    for field in ("codebook_size", "hop_lengths", "sample_rate"):
        ours, theirs = getattr(prior_config, field), getattr(vqvae_config, field)
        if isinstance(ours, (tuple, list)):
            ours, theirs = tuple(ours), tuple(theirs)  # a config read back from a file may hold lists
        if ours != theirs:
            raise UserError(f"{flag} {path}: the prior has {field} {ours} but the VQ-VAE has {theirs}; "
                            "pass the --vqvae this prior was trained with")


def load_prime(path, vqvae, total_samples, prime_seconds=None):
    """The prime clip as mono audio (1, S, 1) at the VQ-VAE's rate, S a multiple of the top hop length."""
    rate, top_hop = vqvae.config.sample_rate, vqvae.config.hop_lengths[-1]
    if not os.path.isfile(path):
        raise UserError(f"--prime {path}: no such file; check the path")
    length = None if prime_seconds is None else int(prime_seconds * rate)
    try:
        audio = load_audio(path, rate, length=length)  # (S,) float32, mono, resampled to the VQ-VAE's rate
    except AudioError as e:
        raise UserError(f"--prime {e}") from None
    if len(audio) == 0:
        raise UserError(f"--prime {path}: the file holds no audio (0 samples); pass a clip with sound")
    if len(audio) < top_hop:
        raise UserError(f"--prime {path}: {len(audio) / rate:.4f} s is shorter than one top-level code "
                        f"({top_hop / rate:.4f} s); pass a longer clip")
    audio = audio[:len(audio) // top_hop * top_hop]  # jukebox: the prompt is floored to a multiple of the top hop
    peak = float(abs(audio).max())
    if peak < 1e-4:  # below -80 dBFS: nothing for the priors to continue
        raise UserError(f"--prime {path}: the clip is silent (peak {peak:.1e}); pass a clip with sound")
    if len(audio) >= total_samples:
        raise UserError(f"--prime {path}: the prime is {len(audio) / rate:.2f} s but --seconds asks for "
                        f"{total_samples / rate:.2f} s in all; raise --seconds or cut the prime with --prime-seconds")
    return torch.from_numpy(audio).view(1, -1, 1)  # (S,) -> (1, S, 1)


def save_codes(path, codes, total_samples, song_samples, vqvae_config, checkpoints, released=None, song=None):
    """Write the codes of a run (plain tensors and numbers, loadable with weights_only) atomically."""
    hops = vqvae_config.hop_lengths
    state = {
        "format": CODES_FORMAT,
        "codes": [c.cpu() for c in codes],  # per level (B, T_level) long; a level may be partly sampled
        "levels_done": [level for level in reversed(range(len(codes)))  # levels complete to total_samples
                        if codes[level].shape[1] * hops[level] >= total_samples],
        "total_samples": total_samples,  # the length asked for, in raw samples
        "song_samples": song_samples,  # the song length the top prior's timing labels were given
        "vqvae": dataclasses.asdict(vqvae_config),  # codes mean something only with this VQ-VAE
        "checkpoints": checkpoints,  # stage -> path, the defaults when this run is continued or upsampled
        "official": released,  # or {"dir": DIR, "model": NAME}: the released models of --official DIR --model NAME
        "song": song,  # {"artist", "genre", "lyrics"} given to the priors (None: unknown), kept when continued
    }
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)  # atomic: an interrupted save leaves the previous file intact


def load_codes(path, flag):
    """A codes file written by save_codes."""
    if not os.path.isfile(path):
        raise UserError(f"{flag} {path}: no such file; pass the codes.pt of an earlier sample.py run")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{flag} {path}: not a readable codes file ({type(e).__name__}); "
                        "pass the codes.pt of an earlier sample.py run") from None
    if not isinstance(state, dict) or state.get("format") != CODES_FORMAT:
        raise UserError(f"{flag} {path}: not a sample.py codes file; pass the codes.pt of an earlier sample.py run")
    return state


def song_text(args, saved):
    """The song's {"artist", "genre", "lyrics"}: the flags, else those of the run being continued (None: unknown)."""
    song = {"artist": None, "genre": None, "lyrics": "", **((saved.get("song") or {}) if saved else {})}
    if args.lyrics:
        if not os.path.isfile(args.lyrics):
            raise UserError(f"--lyrics {args.lyrics}: no such file; pass a text file of the lyrics, or --lyrics-text")
        try:
            with open(args.lyrics, encoding="utf-8") as f:
                song["lyrics"] = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--lyrics {args.lyrics}: cannot read it as UTF-8 text ({type(e).__name__}); save it "
                            "as UTF-8 text") from None
    if args.lyrics_text is not None:
        song["lyrics"] = args.lyrics_text
    song.update({k: getattr(args, k) for k in ("artist", "genre") if getattr(args, k) is not None})
    return song


def prior_labels(config, song, song_samples):
    """(y (1, n_y) at offset 0, the song's lyric token ids) for one prior, with the ids of its label version
    (v2 for 5b, 5b_lyrics and the upsamplers, v3 for 1b_lyrics). An unknown name becomes 0 with a warning."""
    version = config.label_version
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        artist = data.artist_id(song["artist"], version) if song["artist"] else 0  # 0: "unknown" in every table
        genres = data.genre_ids(song["genre"], version) if song["genre"] else [0]
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    genres = [g for g in genres if g >= 0][:config.max_genres]  # make_y pads with -1 again
    if artist >= config.n_artists or max(genres, default=0) >= config.n_genres:
        raise UserError(f"artist id {artist} / genre ids {genres} (ids v{version}) are outside the level "
                        f"{config.level} prior's {config.n_artists} artists / {config.n_genres} genres; pick another "
                        "--artist/--genre")
    lyrics = data.tokenize_lyrics(song["lyrics"], version) if config.lyrics != "none" else []
    return make_y(config, artist, genres, total_length=song_samples)[None], lyrics  # (n_y,) -> (1, n_y)


def list_names(args, kind, query):
    """--list-artists / --list-genres: the table of the chosen model's label version, or the names like QUERY."""
    if args.model:
        config, source = official.prior_config(args.model), f"--model {args.model}"
    else:
        path = checkpoint_paths(args, {}).get("top")
        if path is None:
            raise UserError(f"--list-{kind}s: which id tables? pass --model {' | '.join(official.MODELS)} or the "
                            "--top PATH of the prior to sample with")
        config, source = checkpoint_file(path, "top", "--top").config, path
    version = config.label_version
    table = data.load_ids(kind, version)
    names = list(table)
    if query:
        key = data.normalize_name(query, version)
        names = sorted((name for name in table if key in name), key=lambda name: (len(name), name))
        names += [name for name in data.closest_names(query, kind, version, n=10) if name not in names]
    lines = [f"# {kind}s of ids/v{version}_{kind}_ids.txt (the label version of {source}): id, name"
             + (f"; like {query!r}" if query else "")] + [f"{table[name]}\t{name}" for name in names]
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:  # piped into head or the like, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if not names:
        print(f"no {kind} like {query!r}; try a shorter query", file=sys.stderr)
    return 0


def write_wavs(folder, audio, rate, first=0):
    """audio (B, S, 1) -> folder/item_{first + i}.wav, 16-bit PCM, clipped to [-1, 1]."""
    os.makedirs(folder, exist_ok=True)
    for i, item in enumerate(audio.float().clamp(-1, 1).cpu().numpy()):  # (S, 1) each
        soundfile.write(os.path.join(folder, f"item_{first + i}.wav"), item[:, 0], rate, subtype="PCM_16")


# ---- 4. a run: models, inputs, the levels, outputs ------------------------------------------------------

def find_checkpoint(path, stage, flag):
    """A checkpoint file, or a train.py run folder -> its newest ckpt_*.pt."""
    if os.path.isdir(path):
        found = sorted(f for f in os.listdir(path) if f.startswith("ckpt_") and f.endswith(".pt"))
        if not found:
            raise UserError(f"{flag} {path}: folder holds no ckpt_*.pt; pass a checkpoint written by "
                            f"`train.py --stage {stage}` or its run folder")
        return os.path.join(path, found[-1])
    return path


def checkpoint_paths(args, stored):
    """stage -> path for every stage given: a flag, else the codes file being continued, else --runs/STAGE."""
    paths = {}
    for stage in STAGES:
        path = getattr(args, stage) or stored.get(stage)
        default = os.path.join(args.runs, stage)
        if path is None and os.path.isdir(default):
            path = default
        if path is not None:
            paths[stage] = find_checkpoint(path, stage, f"--{stage}")
    return paths


def per_level(text, flag, kind=float):
    """'0.99' -> (0.99, 0.99, 0.99); '0.5,0.5,0.125' -> per level (bottom, middle, top)."""
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{flag} {text}: expected a number or three comma-separated numbers "
                        "(bottom,middle,top)") from None
    if len(values) not in (1, 3):
        raise UserError(f"{flag} {text}: give one value for all levels or three (bottom,middle,top)")
    return values * 3 if len(values) == 1 else values


@dataclasses.dataclass
class ModelFile:
    """One model, checked but not built yet (a prior is built only when its level starts)."""
    path: str
    config: object  # VQVAEConfig or PriorConfig
    origin: str  # "step N" of a train.py run, or "released NAME"
    build: object  # () -> the model in eval mode, on the CPU
    vqvae_config: dict = None  # a prior's: the config of the VQ-VAE it was trained on (train.py saves it)


def checkpoint_file(path, stage, flag):
    """A train.py checkpoint of `stage` as a ModelFile."""
    model_class, config_class = (VQVAE, VQVAEConfig) if stage == "vqvae" else (Prior, PriorConfig)
    ckpt = load_checkpoint(path, stage, flag)
    return ModelFile(path, config_class(**ckpt["config"]), f"step {ckpt['step']}",
                     lambda: build_model(ckpt, model_class, config_class), ckpt.get("vqvae_config"))


def released_files(directory, model, levels, dtype):
    """The released model `model` under `directory` (official.MODELS layout) as ModelFiles: stage -> file."""
    try:
        found = official.release_files(directory, model)  # every file present, or the first missing one's URL
    except official.CheckpointError as e:
        raise UserError(f"--official: {e}") from None

    def load(path, name):  # read when needed: a prior only when its level starts
        try:
            if name == "vqvae":
                return official.load_vqvae(path, name)
            # jukebox: the released sampling ran the priors in float16; loading in that dtype halves the memory
            return float32_outside_blocks(official.load_prior(path, name, dtype=dtype or torch.float32))
        except official.CheckpointError as e:
            raise UserError(f"--official: {e}") from None

    files = {}
    for part, (path, name) in found.items():
        if part == "vqvae" or part in levels:
            config = official.vqvae_config(name) if part == "vqvae" else official.prior_config(name)
            files[LEVEL_NAMES.get(part, part)] = ModelFile(path, config, f"released {name}",
                                                           lambda path=path, name=name: load(path, name))
    return files


def float32_outside_blocks(model):
    """A prior loaded in half precision, back to float32 except its transformer blocks (nearly all its weights).
    Prior.sample(dtype=...) runs only the blocks in half precision; embeddings, conditioning and the output layer
    stay float32, as they are in a prior built from a train.py checkpoint."""
    in_blocks = {id(t) for transformer in model.transformers() for t in transformer.blocks.parameters()}
    for module in model.modules():
        for tensors in (module._parameters, module._buffers):
            for t in tensors.values():
                if t is not None and t.is_floating_point() and id(t) not in in_blocks:
                    t.data = t.data.float()  # in place on the Parameter: tied weights stay tied
    return model


def load_models(args, levels, stored, device, dtype=None):
    """(stage -> path, the VQ-VAE built, its ModelFile, level -> the checked ModelFile of its prior)."""
    if args.official:
        if any(getattr(args, stage) for stage in STAGES):
            raise UserError("--official cannot be combined with --vqvae/--top/--middle/--bottom; use one or the other")
        files = released_files(args.official, args.model, levels, dtype)
        paths = {stage: file.path for stage, file in files.items()}
    else:
        paths = checkpoint_paths(args, stored)
        if not paths:
            raise UserError(f"no trained models found (no --vqvae/--top/--middle/--bottom, nothing in {args.runs}/); "
                            "train them with the CPU recipe in the README, or point at the released weights with "
                            "--official DIR --model NAME")
        if "vqvae" not in paths:
            raise UserError(f"no VQ-VAE checkpoint (nothing in {os.path.join(args.runs, 'vqvae')}); pass --vqvae "
                            "PATH, a checkpoint written by `train.py --stage vqvae`")
        files = {"vqvae": checkpoint_file(paths["vqvae"], "vqvae", "--vqvae")}
        for level in levels:  # all checked now, so a bad bottom checkpoint fails before hours of top-level sampling
            stage = LEVEL_NAMES[level]
            if stage not in paths:
                raise UserError(f"no {stage} prior checkpoint (nothing in {os.path.join(args.runs, stage)}); pass "
                                f"--{stage} PATH, or leave level {level} out with --levels")
            files[stage] = checkpoint_file(paths[stage], stage, f"--{stage}")
    vq_file = files["vqvae"]
    vq = vq_file.build().to(device)
    prior_files = {level: files[LEVEL_NAMES[level]] for level in levels}
    for level, file in prior_files.items():
        check_prior_matches(file.config, vq.config, file.path, f"--{LEVEL_NAMES[level]}")
        trained_on = file.vqvae_config  # None in checkpoints older than this check: codebook and hops checked only
        if trained_on is not None and trained_on != dataclasses.asdict(vq.config):
            differ = [k for k, v in dataclasses.asdict(vq.config).items() if trained_on.get(k) != v]
            raise UserError(f"--{LEVEL_NAMES[level]} {file.path}: this prior was trained on another VQ-VAE than "
                            f"{vq_file.path} (config differs in {', '.join(differ[:4])}); pass the --vqvae it was "
                            "trained with")
    return paths, vq, vq_file, prior_files


def starting_codes(args, vq, saved, saved_path, device):
    """(codes each level starts from, total_samples): a prime's codes, saved codes, or none."""
    rate, hops = vq.config.sample_rate, vq.config.hop_lengths
    asked = None if args.seconds is None else int(args.seconds * rate) // hops[-1] * hops[-1]
    if asked == 0:
        raise UserError(f"--seconds {args.seconds}: shorter than one top-level code ({hops[-1] / rate:.4f} s); ask "
                        "for more")
    if saved is not None:
        if saved["vqvae"] != dataclasses.asdict(vq.config):
            raise UserError(f"{saved_path}: these codes were made with another VQ-VAE than the one given; pass the "
                            "--vqvae of that run")
        codes = [c.to(device) for c in saved["codes"]]
        total_samples = asked or saved["total_samples"]
        have = max(c.shape[1] * hop for c, hop in zip(codes, hops))
        if total_samples < have:
            raise UserError(f"{saved_path} already holds {have / rate:.2f} s; ask for at least that with --seconds")
        if args.upsample and codes[-1].shape[1] * hops[-1] < total_samples:
            raise UserError(f"--upsample {saved_path}: its top level is not complete; finish it with --continue")
        return codes, total_samples
    total_samples = asked or int(20.0 * rate) // hops[-1] * hops[-1]
    codes = [torch.zeros(args.n, 0, dtype=torch.long, device=device) for _ in hops]
    if args.prime:
        audio = load_prime(args.prime, vq, total_samples, args.prime_seconds).to(device)  # (1, S, 1)
        # jukebox: the prime is encoded at every level, and every level's first window is primed with its codes
        codes = [c.expand(args.n, -1).clone() for c in vq.encode(audio)]  # [(B, S / hop)] per level
    return codes, total_samples


def run(args):
    """Sample as the flags say; returns the exit code (0, or 130 when interrupted)."""
    settings = Settings(hop_fraction=per_level(args.hop_fraction, "--hop-fraction"),
                        temperature=per_level(args.temperature, "--temperature"), top_k=args.top_k,
                        top_p=args.top_p, chunk_size=args.chunk_size, batch_size=args.batch_size,
                        dtype={"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype])
    if settings.top_k and settings.top_p:
        raise UserError("--top-k and --top-p cannot be combined (as in the original); pick one")
    levels = [1, 0] if args.upsample else [2, 1, 0]
    if args.levels:
        levels = sorted({int(v) for v in args.levels.split(",") if v.strip() in ("0", "1", "2")}, reverse=True)
        if len(levels) != len(args.levels.split(",")):
            raise UserError(f"--levels {args.levels}: expected levels among 0, 1, 2, e.g. --levels 2 or 2,1,0")
    if args.upsample and 2 in levels:
        raise UserError("--upsample samples the lower levels only; drop 2 from --levels (or use --continue)")

    # Inputs: models, then the codes each level starts from and the length to reach.
    saved_path = args.continue_ or args.upsample
    saved = load_codes(saved_path, "--continue" if args.continue_ else "--upsample") if saved_path else None
    released = saved.get("official") if saved else None  # continuing a run of the released models
    if released and not args.official and not any(getattr(args, stage) for stage in STAGES):
        args.official, args.model = released["dir"], released["model"]
    paths, vq, vq_file, prior_files = load_models(args, levels, saved["checkpoints"] if saved else {}, args.device,
                                                  settings.dtype)
    codes, total_samples = starting_codes(args, vq, saved, saved_path, args.device)
    rate, hops, batch = vq.config.sample_rate, vq.config.hop_lengths, codes[0].shape[0]
    song_samples = saved["song_samples"] if saved and args.song_seconds is None else int(
        (args.song_seconds or 0) * rate)
    song_samples = max(song_samples, total_samples)
    song = song_text(args, saved)
    for level in levels:
        config = prior_files[level].config
        if config.is_top and config.lyrics == "none" and song["lyrics"]:
            print(f"warning: the top prior ({prior_files[level].origin}) is not conditioned on lyrics; they are "
                  "ignored (1b_lyrics and 5b_lyrics are)", file=sys.stderr)
        if config.is_top and args.song_seconds is None and not saved:  # e.g. the 5b prior knows songs >= 60 s
            song_samples = max(song_samples, math.ceil(config.min_duration * rate))
        upper_missing = level + 1 < len(hops) and codes[level + 1].shape[1] * hops[level + 1] < total_samples
        if upper_missing and level + 1 not in levels:
            raise UserError(f"level {level} needs the complete level-{level + 1} codes; add {level + 1} to --levels")
        if level + 1 < len(hops) and int(settings.hop_fraction[level] * config.n_ctx) % config.upsample_factor:
            raise UserError(f"--hop-fraction: level {level}'s window hop must be a multiple of "
                            f"{config.upsample_factor} tokens to align with the level above; use 0.5")
        if config.is_top and not config.min_duration * rate <= song_samples < config.max_duration * rate:
            raise UserError(f"the top prior knows songs of {config.min_duration:g} to {config.max_duration:g} s; "
                            f"set --song-seconds in that range")

    # Outputs: codes.pt and level_L/item_i.wav in --out, written as soon as each level is complete.
    out = args.out or (os.path.dirname(saved_path) if saved else "samples")
    codes_path = os.path.join(out, "codes.pt")
    if saved is None and os.path.exists(codes_path):
        raise UserError(f"--out {out} already holds a run; pick another --out, or extend it with "
                        f"--continue {codes_path}")
    os.makedirs(out, exist_ok=True)
    mode = "continue" if args.continue_ else "upsample" if args.upsample else "primed" if args.prime else "ancestral"
    print(f"sample.py: {mode}, {batch} x {total_samples / rate:.2f} s of a {song_samples / rate:.2f} s song "
          f"at {rate} Hz -> {out}/")
    labels = {level: prior_labels(prior_files[level].config, song, song_samples) for level in levels}
    print(f"  song    artist {song['artist'] or 'unknown'}, genre {song['genre'] or 'unknown'}, "
          f"{len(song['lyrics'])} characters of lyrics")
    print(f"  vqvae   {vq_file.path} ({vq_file.origin})")
    for level in levels:
        file = prior_files[level]
        hop = int(settings.hop_fraction[level] * file.config.n_ctx)
        print(f"  level {level} ({LEVEL_NAMES[level]}) {file.path} ({file.origin}): {codes[level].shape[1]} -> "
              f"{total_samples // hops[level]} tokens, n_ctx {file.config.n_ctx}, window hop {hop}, "
              f"temperature {settings.temperature[level]}, labels v{file.config.label_version}: artist "
              f"{int(labels[level][0][0, 3])}, genres {labels[level][0][0, 4:file.config.n_labels].tolist()}"
              + (f", {len(labels[level][1])} lyric tokens" if file.config.lyrics != "none" else ""))
    print(f"  top_k {settings.top_k}, top_p {settings.top_p}, chunk_size {settings.chunk_size}, batch_size "
          f"{settings.batch_size}, seed {args.seed}, dtype {args.dtype}, device {args.device}")

    def save(level=None):
        save_codes(codes_path, codes, total_samples, song_samples, vq.config, {} if args.official else paths,
                   dict(dir=args.official, model=args.model) if args.official else None, song)
        if level is not None:
            for i in range(0, batch, settings.batch_size):  # a few samples at a time bounds the decoder's memory
                audio = vq.decode(codes[level][i:i + settings.batch_size], level)  # (b, T_level * hop, 1)
                write_wavs(os.path.join(out, f"level_{level}"), audio, rate, first=i)
            tqdm.write(f"level {level}: wrote {out}/level_{level}/item_*.wav and {codes_path}")

    def prior_for(level):  # built when its level starts; the previous prior is freed by then
        return prior_files.pop(level).build().to(args.device)

    def labels_for(prior):  # the song's y at offset 0 (B, n_y) and its lyrics; sample_level moves both per window
        y, lyrics = labels[prior.config.level]
        return y.to(args.device).expand(batch, -1), lyrics

    generator = torch.Generator(args.device).manual_seed(args.seed)
    try:
        sample_levels(prior_for, codes, levels, total_samples, hops, labels_for, settings, generator=generator,
                      on_level_done=save)
    except KeyboardInterrupt:
        save()  # keeps every finished window; --continue resumes from there
        print(f"\ninterrupted: finished levels and windows kept in {codes_path}; resume with "
              f"`python sample.py --continue {codes_path}`", file=sys.stderr)
        return 130
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Sample music from trained Jukebox models: top prior -> upsamplers -> VQ-VAE decoder. Writes "
                    "OUT/level_L/item_i.wav after each level (level 2 first, worth hearing already) and OUT/codes.pt "
                    "(every level's codes, to continue or upsample later). Lists of per-level values are "
                    "bottom,middle,top (levels 0,1,2), like the original's --hop_fraction.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--prime", metavar="AUDIO",
                      help="primed mode: continue this clip (any format libsndfile reads; downmixed, resampled, cut "
                           "to a multiple of the top hop, encoded at every level); default: ancestral, from scratch")
    mode.add_argument("--continue", dest="continue_", metavar="CODES",
                      help="continue mode: extend the codes.pt of an earlier run to --seconds (or finish an "
                           "interrupted run), at every level in --levels")
    mode.add_argument("--upsample", metavar="CODES",
                      help="upsample mode: sample only the lower levels (1, 0) under the top-level codes of an "
                           "earlier run (e.g. one made with --levels 2)")
    arg = parser.add_argument
    arg("--seconds", type=float, default=None, metavar="S",
        help="length of each sample in seconds, prime included (default 20; continue/upsample: the saved length)")
    arg("--song-seconds", type=float, default=None, metavar="S",
        help="length of the whole song the top prior's timing labels describe (original "
             "--total_sample_length_in_seconds; default: --seconds, raised to the shortest song the top prior "
             "knows, e.g. 60 s for 5b)")
    arg("--prime-seconds", type=float, default=None, metavar="S", help="use only the first S seconds of --prime")
    arg("--n", type=int, default=1, metavar="N",
        help="samples to draw at once (default %(default)s; saved codes keep theirs)")
    arg("--levels", default=None, metavar="L[,L...]",
        help="levels to sample, e.g. 2 for the top level only (default 2,1,0; --upsample: 1,0)")
    arg("--out", default=None, metavar="DIR",
        help="output folder (default samples; continue/upsample: the folder of the codes file)")
    arg("--runs", default="runs", metavar="DIR",
        help="folder of train.py runs: checkpoints not named by the flags below are taken from "
             "RUNS/{vqvae,top,middle,bottom} (newest ckpt_*.pt)")
    arg("--vqvae", default=None, metavar="PATH", help="VQ-VAE checkpoint (file, or train.py run folder)")
    arg("--top", default=None, metavar="PATH", help="level-2 prior checkpoint (file, or train.py run folder)")
    arg("--middle", default=None, metavar="PATH", help="level-1 upsampler checkpoint (file, or run folder)")
    arg("--bottom", default=None, metavar="PATH", help="level-0 upsampler checkpoint (file, or run folder)")
    arg("--official", default=None, metavar="DIR",
        help="sample with OpenAI's released models instead: DIR laid out like the download "
             "(5b/vqvae.pth.tar, 5b/prior_level_{0,1}.pth.tar, MODEL/prior_level_2.pth.tar); needs --model")
    arg("--model", default=None, choices=list(official.MODELS),
        help="which released top prior: 5b, 5b_lyrics or 1b_lyrics (1b_lyrics fits a consumer GPU)")
    arg("--artist", default=None, metavar="NAME",
        help="artist the priors are conditioned on, looked up in the id table of each prior's label version "
             "(unknown names become 0 with a warning naming the closest; see --list-artists); default unknown")
    arg("--genre", default=None, metavar="NAME", help="genre, likewise (see --list-genres); default unknown")
    lyrics = parser.add_mutually_exclusive_group()
    lyrics.add_argument("--lyrics", default=None, metavar="FILE",
                        help="UTF-8 text file of the lyrics, for a lyric-conditioned top prior (1b_lyrics, 5b_lyrics); "
                             "they are assumed spread evenly over the song (--song-seconds)")
    lyrics.add_argument("--lyrics-text", default=None, metavar="TEXT", help="the lyrics given inline instead")
    arg("--list-artists", nargs="?", const="", default=None, metavar="QUERY",
        help="print the artists (names like QUERY) of the id table of --model, or of the top prior, and exit")
    arg("--list-genres", nargs="?", const="", default=None, metavar="QUERY", help="the same for genres")
    arg("--temperature", default="0.99,0.99,0.98", metavar="T[,T,T]",
        help="softmax temperature, one value or bottom,middle,top (default %(default)s, the original notebook's)")
    arg("--top-k", type=int, default=0, metavar="K", help="sample among the k most likely codes only (0 = off)")
    arg("--top-p", type=float, default=0.0, metavar="P",
        help="nucleus sampling: the smallest set of codes with this probability mass (0 = off)")
    arg("--hop-fraction", default="0.5,0.5,0.125", metavar="F[,F,F]",
        help="window hop as a fraction of the context, bottom,middle,top (default %(default)s, as released); each "
             "new window is primed with the rest of the context")
    arg("--chunk-size", type=int, default=32, metavar="N", help="prime tokens per prefill step (default %(default)s)")
    arg("--batch-size", type=int, default=16, metavar="N",
        help="samples per prior call, bounds memory (default %(default)s)")
    arg("--seed", type=int, default=0, metavar="N", help="random seed of the sampling (default %(default)s)")
    arg("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
        help="compute dtype of the priors' blocks (the released sampling used float16 on GPUs); the VQ-VAE "
             "decodes in float32 (default %(default)s)")
    arg("--device", default="cuda" if torch.cuda.is_available() else "cpu", metavar="DEV",
        help="torch device (default cuda if available, else cpu)")
    args = parser.parse_args(argv)
    try:
        if args.list_artists is not None or args.list_genres is not None:
            if args.list_artists is not None:
                return list_names(args, "artist", args.list_artists)
            return list_names(args, "genre", args.list_genres)
        if args.model and not args.official:
            raise UserError(f"--model {args.model} needs --official DIR, the folder of the released files")
        if args.n < 1 or args.batch_size < 1 or args.chunk_size < 1:
            raise UserError("--n, --batch-size and --chunk-size must be at least 1")
        if args.seconds is not None and args.seconds <= 0:
            raise UserError(f"--seconds {args.seconds}: must be positive")
        if args.prime_seconds is not None and not args.prime:
            raise UserError("--prime-seconds needs --prime")
        if args.official and not args.model:
            raise UserError(f"--official {args.official}: also pass --model {' | '.join(official.MODELS)}")
        if args.upsample and args.seconds is not None:
            raise UserError("--upsample keeps the saved length; to make a run longer use --continue with --seconds")
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
