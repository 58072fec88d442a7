"""Sample music with the Jukebox priors: top codes -> middle codes -> bottom codes -> audio.

Implements the sampling of arXiv:2005.00341 §4.4 (ancestral, windowed and primed sampling, Figure 3) with the
window bookkeeping of the released sampler (the original's sample.py and utils/sample_utils.py). Reading order:
  1. `windows` and `sample_level`: one level, window by window; every window after the first is primed with
     its overlap, and an upsampler window sees exactly the codes above it.
  2. `sample_levels`: the levels top to bottom, one prior in memory at a time.
  3. The plumbing: the models (train.py checkpoints, or the released ones with --official), the inputs (a
     prime clip or saved codes) and the outputs (wavs and codes after each level); `main` is the command line.

Shapes: B samples in the batch, T tokens of one level, S raw audio samples. `codes` is a list indexed by
level (0 bottom, 1 middle, 2 top) of LongTensors (B, T_level). Per-level settings are indexed the same way,
as in the original's --hop_fraction.
"""
import argparse
import dataclasses
import math
import os
import sys
import warnings

import soundfile
import torch
from tqdm import tqdm

import data
import official
import train
from data import UserError
from prior import PriorConfig, Sampling, window_y

LEVEL_STAGE = {level: stage for stage, level in train.STAGES.items() if level is not None}  # 2 -> "top", ...


@dataclasses.dataclass
class Settings:
    """How to sample. Tuples are indexed by level: (bottom, middle, top)."""
    hop_fraction: tuple = (0.5, 0.5, 0.125)  # window hop / n_ctx (released sample.py --hop_fraction)
    temperature: tuple = (0.99, 0.99, 0.98)  # softmax temperature (Colab notebook: top .98, upsamplers .99)
    top_k: int = 0  # keep the k most likely tokens, 0 = off (released: 0)
    top_p: float = 0.0  # nucleus sampling mass, 0 = off (released: 0.0)
    chunk_size: int = 32  # prime tokens per prefill step (released: 32; 16 for the 5b top prior)
    batch_size: int = 16  # samples per prior.sample call (released max_batch_size: 16; 3 for the 5b top)


@dataclasses.dataclass
class Song:
    """What the priors are told about the song: names, lyrics text, length in samples."""
    artist: str = "unknown"  # "unknown" is id 0 in every table
    genre: str = "unknown"
    lyrics: str = ""
    samples: int = 0  # the length the top prior's timing labels describe (>= the length sampled)


# ---- 1. one level, window by window ---------------------------------------------------------------------

def windows(total, n_ctx, hop):
    """(start, end) token ranges of n_ctx tokens, `hop` apart, that cover [0, total); one shorter window when
    total < n_ctx (jukebox: sample_partial_window)."""
    assert 1 <= hop <= n_ctx, f"window hop {hop} must be in [1, n_ctx={n_ctx}]"
    # jukebox: get_starts -- range(0, total - n_ctx + hop, hop) with the last start moved back to total - n_ctx,
    # so the last window overlaps its predecessor by more than the usual n_ctx - hop tokens
    starts = [min(start, total - n_ctx) for start in range(0, total - n_ctx + hop, hop)] if total > n_ctx else [0]
    return [(start, min(total, start + n_ctx)) for start in starts]


def song_ids(config, song):
    """(artist id, genre ids, lyric tokens) of the song in the id tables of the prior's label version (v3 for
    1b_lyrics, v2 for the others). An unknown name becomes 0 with a one-line warning naming the closest ones."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        artist, genres, lyrics = data.song_labels(song.artist, song.genre, song.lyrics, config.label_version)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    genres = [g for g in genres if g >= 0][:config.max_genres]
    if artist >= config.n_artists or max(genres, default=0) >= config.n_genres:
        raise UserError(f"artist id {artist} / genre ids {genres} are outside the level {config.level} prior's "
                        f"{config.n_artists} artists / {config.n_genres} genres; pick another --artist/--genre")
    return artist, genres, lyrics if config.lyrics != "none" else []


def sample_level(prior, codes, level, total, song, settings, generator=None, progress=None):
    """Extend codes[level] (B, T) to (B, total) in place, window by window.

    `prior` is anything with a PriorConfig `config` and the Prior.sample signature. Tokens already in
    codes[level] (a prime, or a run being continued) are kept and primed on, never sampled again; each window
    samples only the tokens after them. An upsampler's window [start, end) is conditioned on exactly
    codes[level + 1][:, start / 4 : end / 4]. Every window gets its own label vector: its offset in the song
    drives the top prior's timing, and a lyric-conditioned prior gets the lyrics that go with it.
    """
    c = prior.config
    hop = int(settings.hop_fraction[level] * c.n_ctx)  # jukebox: int(hop_fraction * n_ctx), e.g. top 1024
    ratio = None if c.is_top else c.upsample_factor
    sampling = Sampling(temperature=settings.temperature[level], top_k=settings.top_k, top_p=settings.top_p,
                        chunk_size=settings.chunk_size)
    artist, genres, lyrics = song_ids(c, song)
    batch = codes[level].shape[0]
    for start, end in windows(total, c.n_ctx, hop):
        have = codes[level].shape[1]
        assert have >= start, f"gap: window starts at {start} but only {have} tokens exist"
        if have >= end:
            continue  # the window is already full: a long prime, or a continued run
        upper = None
        if ratio is not None:
            assert start % ratio == 0 and end % ratio == 0, "upsampler windows align with the level above"
            upper = codes[level + 1][:, start // ratio:end // ratio]  # (B, (end - start) / ratio)
            assert upper.shape[1] * ratio == end - start, "too few codes in the level above"
        y = window_y(c, artist, genres, song.samples, start * c.hop_length, lyrics).to(codes[level].device)
        new = []
        for rows in torch.arange(batch).split(settings.batch_size):  # jukebox: max_batch_size per call
            prime = codes[level][rows, start:]  # (b, have - start): the overlap with the previous window
            out = prior.sample(y.expand(len(rows), -1), None if upper is None else upper[rows],
                               prime=prime if prime.shape[1] else None, length=end - start, sampling=sampling,
                               generator=generator, progress=progress)  # (b, end - start)
            new.append(out[:, have - start:])  # (b, end - have): only the tokens sampled now
        codes[level] = torch.cat([codes[level], torch.cat(new)], dim=1)
    return codes[level]


# ---- 2. the levels, top to bottom -----------------------------------------------------------------------

def sample_levels(priors, codes, total_samples, hop_lengths, song, settings, generator=None):
    """Sample the levels of `priors` (level -> something whose build() gives the prior) top to bottom, each to
    total_samples // hop_lengths[level] tokens; codes are updated in place. A prior is built only when its turn
    comes, so one is in memory at a time. Yields each level as soon as it is complete, so that its outputs are
    written before the next (slower) level starts."""
    for level in sorted(priors, reverse=True):
        total, have = total_samples // hop_lengths[level], codes[level].shape[1]
        if have >= total:
            continue  # complete already (a resumed run): its outputs were written when it completed
        if level + 1 < len(hop_lengths):
            ratio = hop_lengths[level + 1] // hop_lengths[level]
            assert codes[level + 1].shape[1] * ratio >= total, f"level {level + 1} has too few codes to upsample"
        prior = priors[level].build()
        batch = codes[level].shape[0]  # the bar counts every sample's tokens: tokens/s and ETA per sampled token
        with tqdm(total=(total - have) * batch, unit="tok", desc=f"level {level} ({LEVEL_STAGE.get(level, level)}, "
                  f"{batch} x {total - have})", dynamic_ncols=True, smoothing=0.05) as bar:
            sample_level(prior, codes, level, total, song, settings, generator=generator, progress=bar.update)
        del prior
        yield level


# ---- 3. the models --------------------------------------------------------------------------------------

@dataclasses.dataclass
class PriorFile:
    """A prior whose file is checked but not read in full: built (from its memory-mapped checkpoint, or the
    released file) when its level starts, with its blocks in `dtype`, on `device`, compiled if asked."""
    path: str
    config: PriorConfig
    origin: str  # "step N" of a train.py run, or "released NAME"
    checkpoint: dict = None  # a train.py checkpoint; None: the released file of the hyperparameters `release`
    release: str = None
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    compile: bool = False

    def build(self):
        model = (official.load_prior(self.path, self.release, dtype=self.dtype) if self.checkpoint is None
                 else train.build_model(self.checkpoint).half_blocks(self.dtype)).to(self.device)
        if self.compile:  # on CUDA the compiled step is replayed as a CUDA graph
            model.compile_step("reduce-overhead" if torch.device(self.device).type == "cuda" else None)
        return model


def checkpoint_paths(args, stored):
    """stage -> checkpoint file: its flag, else the one of the run being continued, else the newest in RUNS/STAGE."""
    paths = {stage: getattr(args, stage) or stored.get(stage) for stage in train.STAGES}
    paths = {stage: path or os.path.join(args.runs, stage) for stage, path in paths.items()}
    return {stage: train.find_checkpoint(path, stage, f"--{stage}") for stage, path in paths.items()
            if getattr(args, stage) or stored.get(stage) or os.path.isdir(path)}


def load_models(args, levels, stored):
    """(the VQ-VAE, level -> PriorFile, stage -> path) from --official or from train.py checkpoints. Every file
    is checked now, so that a bad bottom prior fails before hours of top-level sampling."""
    if args.official:
        if any(getattr(args, stage) for stage in train.STAGES):
            raise UserError("--official cannot be combined with --vqvae/--top/--middle/--bottom; use one or the other")
        files = official.release_files(args.official, args.model)  # every file there, or the first missing one's URL
        priors = {level: PriorFile(path, official.prior_config(name), f"released {name}", release=name)
                  for level, (path, name) in files.items() if level in levels}
        vq, paths = official.load_vqvae(files["vqvae"][0]), {}
    else:
        paths, priors = checkpoint_paths(args, stored), {}
        for stage in ["vqvae"] + [LEVEL_STAGE[level] for level in levels]:
            if stage not in paths:
                raise UserError(f"no {stage} checkpoint (nothing in {os.path.join(args.runs, stage)}); pass --{stage} "
                                "PATH, train the models with the CPU recipe in the README, or sample with the "
                                "released weights: --official DIR --model NAME")
        vq = train.load_vqvae(paths["vqvae"])
        for level in levels:
            stage = LEVEL_STAGE[level]
            ckpt = train.read_checkpoint(paths[stage], stage, f"--{stage}")
            config = PriorConfig(**ckpt["config"])
            train.check_pair(config, vq.config, ckpt.get("vqvae_config"), paths[stage], f"--{stage}")
            priors[level] = PriorFile(paths[stage], config, f"step {ckpt['step']}", checkpoint=ckpt)
    for file in priors.values():
        file.dtype, file.device, file.compile = getattr(torch, args.dtype), args.device, args.compile
    return vq.to(args.device).eval(), priors, paths


# ---- 4. inputs and outputs ------------------------------------------------------------------------------

CODES_FORMAT = "jukebox-minimal codes v2"


def load_prime(path, vq, total_samples, prime_seconds=None):
    """The prime clip as mono audio (1, S, 1) at the VQ-VAE's rate, S a multiple of the top hop length."""
    rate, top_hop = vq.config.sample_rate, vq.config.hop_lengths[-1]
    if not os.path.isfile(path):
        raise UserError(f"--prime {path}: no such file; check the path")
    audio = data.load_audio(path, rate, length=None if prime_seconds is None else int(prime_seconds * rate))  # (S,)
    if len(audio) < top_hop:  # nothing to encode at the top level
        raise UserError(f"--prime {path}: " + ("the file holds no audio" if not len(audio) else f"{len(audio) / rate:.4f}"
                        f" s is shorter than one top-level code ({top_hop / rate:.4f} s)") + "; pass a longer clip")
    audio = audio[:len(audio) // top_hop * top_hop]  # jukebox: the prompt is floored to a multiple of the top hop
    if abs(audio).max() < 1e-4:  # below -80 dBFS: nothing for the priors to continue
        raise UserError(f"--prime {path}: the clip is silent (peak {abs(audio).max():.1e}); pass a clip with sound")
    if len(audio) >= total_samples:
        raise UserError(f"--prime {path}: the prime is {len(audio) / rate:.2f} s but --seconds asks for "
                        f"{total_samples / rate:.2f} s in all; raise --seconds or cut the prime with --prime-seconds")
    return torch.from_numpy(audio).view(1, -1, 1)  # (S,) -> (1, S, 1)


def save_codes(path, state, hops):
    """Write the codes of a run (plain tensors and numbers, loadable with weights_only) atomically, with the
    levels complete to the length asked for (top first)."""
    codes, total = state["codes"], state["total_samples"]
    done = [level for level in reversed(range(len(codes))) if codes[level].shape[1] * hops[level] >= total]
    torch.save({**state, "format": CODES_FORMAT, "codes": [c.cpu() for c in codes], "levels_done": done}, path + ".tmp")
    os.replace(path + ".tmp", path)  # an interrupted save leaves the previous file intact


def load_codes(path, flag):
    """A codes file written by save_codes."""
    fix = "pass the codes.pt of an earlier sample.py run"
    if not os.path.isfile(path):
        raise UserError(f"{flag} {path}: no such file; {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding objects beyond plain data
        raise UserError(f"{flag} {path}: not a readable codes file ({type(e).__name__}); {fix}") from None
    if not isinstance(state, dict) or state.get("format") != CODES_FORMAT:
        raise UserError(f"{flag} {path}: not a sample.py codes file; {fix}")
    return state


def starting_codes(args, vq, saved, saved_path):
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
        codes, total_samples = [c.to(args.device) for c in saved["codes"]], asked or saved["total_samples"]
        have = max(c.shape[1] * hop for c, hop in zip(codes, hops))
        if total_samples < have:
            raise UserError(f"{saved_path} already holds {have / rate:.2f} s; ask for at least that with --seconds")
        if args.upsample and codes[-1].shape[1] * hops[-1] < total_samples:
            raise UserError(f"--upsample {saved_path}: its top level is not complete; finish it with --continue")
        return codes, total_samples
    total_samples = asked or int(20.0 * rate) // hops[-1] * hops[-1]
    if not args.prime:
        return [torch.zeros(args.n, 0, dtype=torch.long, device=args.device) for _ in hops], total_samples
    audio = load_prime(args.prime, vq, total_samples, args.prime_seconds).to(args.device)  # (1, S, 1)
    # jukebox: the prime is encoded at every level, and every level's first window is primed with its codes
    return [c.expand(args.n, -1).clone() for c in vq.encode(audio)], total_samples  # [(B, S / hop)] per level


def song_from(args, saved, priors, rate, total_samples):
    """The Song: the flags, else those of the run being continued; its length is --song-seconds, else the
    saved one, else the length sampled raised to the shortest song the top prior knows (60 s for 5b)."""
    song = Song(**saved["song"]) if saved else Song()
    if args.lyrics:
        try:
            with open(args.lyrics, encoding="utf-8") as f:
                song.lyrics = f.read()
        except (OSError, UnicodeDecodeError) as e:  # missing, unreadable, not text
            raise UserError(f"--lyrics {args.lyrics}: cannot read it as UTF-8 text "
                            f"({'no such file' if isinstance(e, FileNotFoundError) else type(e).__name__}); pass a "
                            "UTF-8 text file of the lyrics, or --lyrics-text") from None
    song.lyrics = song.lyrics if args.lyrics_text is None else args.lyrics_text
    song.artist, song.genre = args.artist or song.artist, args.genre or song.genre
    tops = [file for file in priors.values() if file.config.is_top]
    if args.song_seconds is not None or not saved:
        song.samples = int((args.song_seconds or 0) * rate)
        if args.song_seconds is None:
            song.samples = max([math.ceil(file.config.min_duration * rate) for file in tops], default=0)
    song.samples = max(song.samples, total_samples)
    for file in tops:
        c = file.config
        if c.lyrics == "none" and song.lyrics:
            print(f"warning: the top prior ({file.origin}) is not conditioned on lyrics; they are ignored "
                  "(1b_lyrics and 5b_lyrics are)", file=sys.stderr)
        if not c.min_duration * rate <= song.samples < c.max_duration * rate:
            raise UserError(f"the top prior knows songs of {c.min_duration:g} to {c.max_duration:g} s; "
                            "set --song-seconds in that range")
    return song


def write_level(out, vq, codes, level, batch_size):
    """OUT/level_L/item_i.wav: the level's codes decoded, 16-bit PCM, clipped to [-1, 1]."""
    os.makedirs(os.path.join(out, f"level_{level}"), exist_ok=True)
    for first in range(0, len(codes[level]), batch_size):  # a few samples at a time bounds the decoder's memory
        audio = vq.decode(codes[level][first:first + batch_size], level).float().clamp(-1, 1).cpu()  # (b, S, 1)
        for i, item in enumerate(audio.numpy()):
            soundfile.write(os.path.join(out, f"level_{level}", f"item_{first + i}.wav"), item[:, 0],
                            vq.config.sample_rate, subtype="PCM_16")


def list_names(args, kind, query):
    """--list-artists / --list-genres: the id table of the label version of --model (or of the top prior), or the
    names like QUERY, as `id<TAB>name` lines."""
    if args.model:
        version = official.prior_config(args.model).label_version
    elif "top" in checkpoint_paths(args, {}):
        version = train.read_checkpoint(checkpoint_paths(args, {})["top"], "top", "--top")["config"]["label_version"]
    else:
        raise UserError(f"--list-{kind}s: which id tables? pass --model {' | '.join(official.MODELS)} or the --top "
                        "PATH of the prior to sample with")
    names = data.names_like(kind, version, query)  # [(id, name)]
    try:
        print(f"# {kind}s of ids/v{version}_{kind}_ids.txt: id, name" + (f"; like {query!r}" if query else ""))
        print("\n".join(f"{id_}\t{name}" for id_, name in names), flush=True)
    except BrokenPipeError:  # piped into head or the like, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if not names:
        print(f"no {kind} like {query!r}; try a shorter query", file=sys.stderr)
    return 0


def output_folder(args, saved, saved_path):
    """--out (default samples; continue/upsample: the folder of the codes file), checked and created."""
    out = args.out or (os.path.dirname(saved_path) or "." if saved else "samples")
    if saved is None and os.path.exists(os.path.join(out, "codes.pt")):
        raise UserError(f"--out {out} already holds a run; pick another --out, or extend it with "
                        f"--continue {os.path.join(out, 'codes.pt')}")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:  # a file of that name, or no permission
        raise UserError(f"--out {out}: cannot create the folder ({e.strerror}); pick another --out") from None
    return out


# ---- 5. a run: flags -> models, inputs, the levels, outputs ---------------------------------------------

def run(args, settings, levels):
    """Sample as the flags say; returns the exit code (0, or 130 when interrupted)."""
    saved_path = args.continue_ or args.upsample
    saved = load_codes(saved_path, "--continue" if args.continue_ else "--upsample") if saved_path else None
    if saved and saved["official"] and not args.official and not any(getattr(args, s) for s in train.STAGES):
        args.official, args.model = saved["official"]["dir"], saved["official"]["model"]  # the released models again
    vq, priors, paths = load_models(args, levels, saved["checkpoints"] if saved else {})
    codes, total_samples = starting_codes(args, vq, saved, saved_path)
    rate, hops = vq.config.sample_rate, vq.config.hop_lengths
    song = song_from(args, saved, priors, rate, total_samples)
    for level, file in priors.items():  # each level has the codes above it, or samples them first, and aligns
        c, above = file.config, level + 1 < len(hops) and codes[level + 1].shape[1] * hops[level + 1] < total_samples
        if above and level + 1 not in priors:
            raise UserError(f"level {level} needs the complete level-{level + 1} codes; add {level + 1} to --levels")
        if not c.is_top and int(settings.hop_fraction[level] * c.n_ctx) % c.upsample_factor:
            raise UserError(f"--hop-fraction: level {level}'s window hop must be a multiple of {c.upsample_factor} "
                            "tokens to align with the level above; use 0.5")
    out = output_folder(args, saved, saved_path)
    codes_path = os.path.join(out, "codes.pt")
    print(f"sample.py: {len(codes[0])} x {total_samples / rate:.2f} s of a {song.samples / rate:.2f} s song by "
          f"{song.artist} ({song.genre}, {len(song.lyrics)} characters of lyrics) -> {out}/\n  {settings}")
    for level, file in sorted(priors.items(), reverse=True):
        print(f"  level {level} ({LEVEL_STAGE[level]}): {file.path} ({file.origin}), {codes[level].shape[1]} -> "
              f"{total_samples // hops[level]} tokens, label ids v{file.config.label_version}, {args.dtype}")
    state = {"codes": codes, "total_samples": total_samples, "song": dataclasses.asdict(song),
             "vqvae": dataclasses.asdict(vq.config),  # codes mean something only with this VQ-VAE
             "checkpoints": paths,  # the defaults when this run is continued
             "official": dict(dir=args.official, model=args.model) if args.official else None}
    try:
        for level in sample_levels(priors, codes, total_samples, hops, song, settings,
                                   torch.Generator(args.device).manual_seed(args.seed)):
            write_level(out, vq, codes, level, settings.batch_size)
            save_codes(codes_path, state, hops)
            tqdm.write(f"level {level}: wrote {out}/level_{level}/item_*.wav and {codes_path}")
    except KeyboardInterrupt:  # every finished window is kept; --continue resumes from there
        save_codes(codes_path, state, hops)
        print(f"\ninterrupted: finished levels and windows kept in {codes_path}; resume with "
              f"`python sample.py --continue {codes_path}`", file=sys.stderr)
        return 130
    return 0


def per_level(text, flag, low, high):
    """'0.99' -> (0.99, 0.99, 0.99); '0.5,0.5,0.125' -> per level (bottom, middle, top); each in (low, high]."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in (1, 3) or not all(low < v <= high for v in values):
        raise UserError(f"{flag} {text}: give one number for all levels or three (bottom,middle,top), each in "
                        f"({low:g}, {high:g}]")
    return values * 3 if len(values) == 1 else values


def check_flags(args):
    """Every numeric flag within its range and the flags that need one another (UserError), then the Settings
    and the levels to sample, top first."""
    for name, least in {"n": 1, "batch_size": 1, "chunk_size": 1, "top_k": 0, "seed": 0}.items():
        if getattr(args, name) < least:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least {least}")
    for name in ("seconds", "song_seconds", "prime_seconds"):
        if getattr(args, name) is not None and not 0 < getattr(args, name) < math.inf:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be a positive number of seconds")
    needs = [(not 0.0 <= args.top_p < 1.0, f"--top-p {args.top_p}: must be in [0, 1) (0 = off)"),
             (args.top_k and args.top_p, "--top-k and --top-p cannot be combined (as in the original); pick one"),
             (args.model and not args.official, f"--model {args.model} needs --official DIR, the released files"),
             (args.official and not args.model, f"--official {args.official}: also pass --model "
                                                f"{' | '.join(official.MODELS)}"),
             (args.prime_seconds is not None and not args.prime, "--prime-seconds needs --prime"),
             (args.upsample and args.seconds is not None, "--upsample keeps the saved length; to make a run longer "
                                                          "use --continue with --seconds")]
    for failed, message in needs:
        if failed:
            raise UserError(message)
    if not args.device.startswith(("cpu", "cuda", "mps")) or (args.device.startswith("cuda") and
                                                              not torch.cuda.is_available()):
        raise UserError(f"--device {args.device}: not a device here; use --device cpu")
    settings = Settings(hop_fraction=per_level(args.hop_fraction, "--hop-fraction", 0.0, 1.0),
                        temperature=per_level(args.temperature, "--temperature", 0.0, 10.0), top_k=args.top_k,
                        top_p=args.top_p, chunk_size=args.chunk_size, batch_size=args.batch_size)
    levels = sorted({int(v) for v in (args.levels or ("1,0" if args.upsample else "2,1,0")).split(",")
                     if v.strip() in ("0", "1", "2")}, reverse=True)
    if args.levels and len(levels) != len(args.levels.split(",")):
        raise UserError(f"--levels {args.levels}: expected levels among 0, 1, 2, e.g. --levels 2 or 2,1,0")
    if args.upsample and 2 in levels:
        raise UserError("--upsample samples the lower levels only; drop 2 from --levels (or use --continue)")
    return settings, levels


def build_parser():
    parser = argparse.ArgumentParser(description="Sample music with trained Jukebox models: top prior -> upsamplers "
                                     "-> VQ-VAE decoder. Writes OUT/level_L/item_i.wav as each level completes (level 2 "
                                     "first) and OUT/codes.pt. Per-level lists are bottom,middle,top (levels 0,1,2).")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--prime", metavar="AUDIO", help="continue this clip (any format libsndfile reads; mixed to "
                      "mono, resampled, encoded at every level); default: ancestral sampling from scratch")
    mode.add_argument("--continue", dest="continue_", metavar="CODES",
                      help="extend the codes.pt of an earlier run to --seconds, or finish an interrupted run")
    mode.add_argument("--upsample", metavar="CODES", help="sample only levels 1, 0 under an earlier run's top codes")
    arg = parser.add_argument
    arg("--seconds", type=float, metavar="S", help="length of each sample, prime included (default 20; continue, "
        "upsample: the saved length)")
    arg("--song-seconds", type=float, metavar="S", help="length of the song the top prior's timing labels describe "
        "(default: --seconds, raised to the shortest song the top prior knows, e.g. 60 s for 5b)")
    arg("--prime-seconds", type=float, metavar="S", help="use only the first S seconds of --prime")
    arg("--n", type=int, default=1, help="samples to draw at once (default %(default)s)")
    arg("--levels", metavar="L[,L...]", help="levels to sample, e.g. 2 for the top only (default 2,1,0)")
    arg("--out", metavar="DIR", help="output folder (default samples; continue/upsample: the codes file's folder)")
    arg("--runs", default="runs", metavar="DIR", help="train.py runs: RUNS/STAGE gives each checkpoint not named "
        "below (default %(default)s)")
    for stage in train.STAGES:
        arg(f"--{stage}", metavar="PATH", help=f"the {stage} checkpoint (a file, or a train.py run folder)")
    arg("--official", metavar="DIR", help="sample with OpenAI's released models, DIR laid out like the download "
        "(5b/vqvae.pth.tar, 5b/prior_level_{0,1}.pth.tar, MODEL/prior_level_2.pth.tar); needs --model")
    arg("--model", choices=list(official.MODELS), help="which released top prior (1b_lyrics fits a consumer GPU)")
    arg("--artist", metavar="NAME", help="artist the priors are conditioned on (see --list-artists); unknown "
        "names become 0 with a warning naming the closest")
    arg("--genre", metavar="NAME", help="genre, likewise (see --list-genres)")
    lyrics = parser.add_mutually_exclusive_group()
    lyrics.add_argument("--lyrics", metavar="FILE", help="UTF-8 lyrics for a lyric-conditioned top prior, assumed "
                        "spread evenly over the song")
    lyrics.add_argument("--lyrics-text", metavar="TEXT", help="the lyrics given inline instead")
    arg("--list-artists", nargs="?", const="", metavar="QUERY", help="print the artists (like QUERY) of the id "
        "table of --model or of the top prior, and exit")
    arg("--list-genres", nargs="?", const="", metavar="QUERY", help="the same for genres")
    arg("--temperature", default="0.99,0.99,0.98", metavar="T[,T,T]", help="softmax temperature, one value or "
        "bottom,middle,top (default %(default)s, the original notebook's)")
    arg("--top-k", type=int, default=0, metavar="K", help="sample among the k most likely codes (default 0 = off)")
    arg("--top-p", type=float, default=0.0, metavar="P", help="nucleus sampling mass (default 0 = off)")
    arg("--hop-fraction", default="0.5,0.5,0.125", metavar="F[,F,F]", help="window hop / context, bottom,middle,"
        "top (default %(default)s, as released); each new window is primed with the rest")
    arg("--chunk-size", type=int, default=32, help="prime tokens per prefill step (default %(default)s)")
    arg("--batch-size", type=int, default=16, help="samples per prior call, bounds memory (default %(default)s)")
    arg("--seed", type=int, default=0, help="random seed of the sampling (default %(default)s)")
    arg("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="precision of the priors' "
        "transformer blocks (released sampling: float16); the rest stays float32 (default %(default)s)")
    arg("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default %(default)s)")
    arg("--compile", action="store_true", help="torch.compile each sampling step (CUDA graphs on a GPU); eager "
        "with a warning where no compiler works; the first steps of each level pay for the compilation")
    return parser


def compiler_works(device):
    """Whether torch.compile can build a kernel here (inductor needs a C++ compiler on CPU, Triton on GPU)."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(4, device=device))
        return True
    except Exception as e:  # any failure of the compiler stack means: not here
        print(f"warning: --compile: torch.compile does not work here ({type(e).__name__}); sampling in eager mode",
              file=sys.stderr)
        return False


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.list_artists is not None or args.list_genres is not None:
            if args.list_artists is not None:
                return list_names(args, "artist", args.list_artists)
            return list_names(args, "genre", args.list_genres)
        settings, levels = check_flags(args)
        args.compile = args.compile and compiler_works(args.device)
        return run(args, settings, levels)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
