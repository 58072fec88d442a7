"""Sample music with trained Jukebox models: top prior -> upsamplers -> VQ-VAE decoder. Writes OUT/level_L/item_i.wav
as each level completes (level 2 first) and OUT/codes.pt. Per-level lists are bottom,middle,top (levels 0,1,2).

Implements the sampling of arXiv:2005.00341 §4.4 (ancestral, windowed and primed sampling, Figure 3) with the
window bookkeeping of the released sampler (the original's sample.py and utils/sample_utils.py). Reading order:
  1. `windows` and `sample_level`: one level, window by window; every window after the first is primed with
     its overlap, and an upsampler window sees exactly the codes above it.
  2. `sample_levels`: the levels top to bottom, one prior in memory at a time.
  3. The plumbing: the models (train.py checkpoints, or the released ones with --official), the inputs (a
     prime clip or saved codes), the outputs after each level, and `main` (-h opens with the paragraph above).

Shapes: B samples in the batch, T tokens of one level, S raw audio samples. `codes` is a list indexed by level
(0 bottom, 1 middle, 2 top) of LongTensors (B, T_level); per-level settings too (the original's --hop_fraction).
"""
import argparse
import dataclasses
import math
import os
import sys
import warnings

import torch
from tqdm import tqdm

import data
import official
import train
from data import UserError
from prior import PriorConfig, Sampling, window_y

LEVEL_STAGE = {level: stage for stage, level in train.STAGES.items() if level is not None}  # 2 -> "top", ...
CODES_FORMAT = "jukebox-minimal codes v2"  # the "format" key of a codes.pt: refuses files of other kinds


@dataclasses.dataclass
class Settings:
    """How to sample. Tuples are indexed by level: (bottom, middle, top)."""
    hop_fraction: tuple = (0.5, 0.5, 0.125)  # window hop / n_ctx (released sample.py --hop_fraction)
    temperature: tuple = (0.99, 0.99, 0.98)  # softmax temperature (Colab notebook: top .98, upsamplers .99)
    top_k: int = 0  # keep the k most likely tokens, 0 = off (released: 0)
    top_p: float = 0.0  # nucleus sampling mass, 0 = off (released: 0.0)
    chunk_size: int = None  # prime tokens per prefill step, None = one pass (released: 32; 16 for the 5b top)
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
    with warnings.catch_warnings(record=True) as caught:  # data.py warns; a command line prints one line each
        warnings.simplefilter("always")  # record every warning, not only the first from each line of data.py
        artist, genres, lyrics = data.song_labels(song.artist, song.genre, song.lyrics, config.label_version)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    genres = [g for g in genres if g >= 0][:config.max_genres]  # the -1 padding is not an id
    if artist >= config.n_artists or max(genres, default=0) >= config.n_genres:  # a table larger than the prior's
        raise UserError(f"artist id {artist} / genre ids {genres} are outside the level {config.level} prior's "
                        f"{config.n_artists} artists / {config.n_genres} genres; pick another --artist/--genre")
    return artist, genres, lyrics if config.lyrics != "none" else []


def sample_level(prior, codes, level, total, song, settings, generator=None, progress=None):
    """Extend codes[level] (B, T) to (B, total) in place, window by window, with `prior` (a PriorConfig `config`
    and the Prior.sample signature). Tokens already there (a prime, a continued run) are primed on, never
    resampled. An upsampler's window [start, end) sees exactly codes[level + 1][:, start / 4 : end / 4]. Each
    window has its own label vector: its offset drives the timing, and a lyric prior gets the lyrics near it."""
    c = prior.config
    hop = int(settings.hop_fraction[level] * c.n_ctx)  # jukebox: int(hop_fraction * n_ctx), e.g. top 1024
    ratio = None if c.is_top else c.upsample_factor  # tokens of this level per token of the level above
    sampling = Sampling(temperature=settings.temperature[level], top_k=settings.top_k, top_p=settings.top_p,
                        chunk_size=settings.chunk_size)
    artist, genres, lyrics = song_ids(c, song)  # once per level: the ids depend on the prior's table
    for start, end in windows(total, c.n_ctx, hop):
        have = codes[level].shape[1]  # tokens so far: the windows before, or a prime
        assert have >= start, f"gap: window starts at {start} but only {have} tokens exist"
        if have >= end:
            continue  # the window is already full: a long prime, or a continued run
        upper = None if ratio is None else codes[level + 1][:, start // ratio:end // ratio]  # (B, window / ratio)
        assert upper is None or (start % ratio == end % ratio == 0 and upper.shape[1] * ratio == end - start), (
            "an upsampler window aligns with the level above, which covers it")
        y = window_y(c, artist, genres, song.samples, start * c.hop_length, lyrics).to(codes[level].device)
        new = []
        for rows in torch.arange(codes[level].shape[0]).split(settings.batch_size):  # jukebox: max_batch_size
            prime = codes[level][rows, start:]  # (b, have - start): the overlap with the previous window
            out = prior.sample(y.expand(len(rows), -1), None if upper is None else upper[rows],
                               prime=prime if prime.shape[1] else None, length=end - start, sampling=sampling,
                               generator=generator, progress=progress)  # (b, end - start)
            new.append(out[:, have - start:])  # (b, end - have): only the tokens sampled now
        codes[level] = torch.cat([codes[level], torch.cat(new)], dim=1)  # (B, end): the window, for every sample
    return codes[level]


# ---- 2. the levels, top to bottom -----------------------------------------------------------------------

def sample_levels(priors, codes, total_samples, hop_lengths, song, settings, generator=None):
    """Sample `priors` (level -> something whose build() gives the prior) top to bottom, codes in place, each level
    to total_samples // hop_length; yields each level once complete, so its outputs come before the next's."""
    for level in sorted(priors, reverse=True):
        total, have = total_samples // hop_lengths[level], codes[level].shape[1]
        if have >= total:
            continue  # complete already (a resumed run): its outputs were written when it completed
        prior = priors[level].build()  # read from disk only now: one prior in memory at a time
        batch = codes[level].shape[0]  # the bar counts every sample's tokens: tokens/s and ETA per sampled token
        name = f"level {level} ({LEVEL_STAGE.get(level, level)}, {batch} x {total - have})"
        with tqdm(total=(total - have) * batch, unit="tok", desc=name, dynamic_ncols=True, smoothing=0.05) as bar:
            sample_level(prior, codes, level, total, song, settings, generator=generator, progress=bar.update)
        del prior  # its memory is free before the next level's prior is built
        yield level


# ---- 3. the models --------------------------------------------------------------------------------------

@dataclasses.dataclass
class PriorFile:
    """A prior whose file is checked but not read in full: built when its level starts, from its memory-mapped
    train.py checkpoint (a dict) or the released file (`source` the hparams name), blocks in `dtype`."""
    path: str
    config: PriorConfig
    origin: str  # "step N" of a train.py run, or "released NAME"
    source: object  # the checkpoint dict, or the released model's hparams name
    dtype: torch.dtype
    device: str
    compile: bool

    def build(self):
        model = (official.load_prior(self.path, self.source, dtype=self.dtype) if isinstance(self.source, str)
                 else train.build_model(self.source).half_blocks(self.dtype)).to(self.device)
        if self.compile:  # on CUDA the compiled step is replayed as a CUDA graph
            model.compile_step(cuda_graphs=torch.device(self.device).type == "cuda")
        return model


def checkpoint_paths(args, stored):
    """stage -> checkpoint file: its flag, else the one of the run being continued, else the newest in RUNS/STAGE."""
    paths = {stage: getattr(args, stage) or stored.get(stage) for stage in train.STAGES}
    paths = {stage: path or os.path.join(args.runs, stage) for stage, path in paths.items()}
    return {stage: train.find_checkpoint(path, stage, f"--{stage}") for stage, path in paths.items()
            if getattr(args, stage) or stored.get(stage) or os.path.isdir(path)}  # a missing RUNS/STAGE: no file


def load_models(args, levels, stored):
    """(the VQ-VAE, level -> PriorFile, stage -> path) from --official or from train.py checkpoints. Every file
    is checked now, so that a bad bottom prior fails before hours of top-level sampling."""
    how = dict(dtype=getattr(torch, args.dtype), device=args.device, compile=args.compile)  # how each prior is built
    if args.official:
        files = official.release_files(args.official, args.model)  # every file there, or the first missing one's URL
        priors = {level: PriorFile(path, official.prior_config(name), f"released {name}", name, **how)
                  for level, (path, name) in files.items() if level in levels}
        return official.load_vqvae(files["vqvae"][0]).to(args.device).eval(), priors, {}
    paths, priors = checkpoint_paths(args, stored), {}
    for stage in ["vqvae"] + [LEVEL_STAGE[level] for level in levels]:
        if stage not in paths:
            raise UserError(f"no {stage} checkpoint in {os.path.join(args.runs, stage)}; pass --{stage} PATH, train "
                            "one (the CPU recipe in the README), or use --official DIR --model NAME")
    vq = train.load_vqvae(paths["vqvae"])
    for level in levels:
        stage = LEVEL_STAGE[level]
        ckpt = train.read_checkpoint(paths[stage], stage, f"--{stage}")  # memory-mapped: the weights stay on disk
        config = PriorConfig(**ckpt["config"])
        train.check_pair(config, vq.config, ckpt.get("vqvae_config"), paths[stage], f"--{stage}")
        priors[level] = PriorFile(paths[stage], config, f"step {ckpt['step']}", ckpt, **how)
    return vq.to(args.device).eval(), priors, paths  # the paths are stored: a continued run finds them again


# ---- 4. inputs and outputs ------------------------------------------------------------------------------

def save_codes(path, state, hops):
    """Write a run's codes atomically, as plain data (weights_only), and which levels are complete, top first."""
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
    if not isinstance(state, dict) or state.get("format") != CODES_FORMAT:  # e.g. a train.py checkpoint
        raise UserError(f"{flag} {path}: not a sample.py codes file; {fix}")
    return state


def starting_codes(args, vq, saved, saved_path):
    """(codes each level starts from, total_samples): none, the codes of a prime clip (floored to whole top-level
    codes), or saved codes."""
    rate, hops = vq.config.sample_rate, vq.config.hop_lengths
    seconds = args.seconds or (None if saved else 20.0)  # default 20 s; a saved run keeps its length
    asked = None if seconds is None else int(seconds * rate) // hops[-1] * hops[-1]  # whole top-level codes
    if asked == 0:
        raise UserError(f"--seconds {seconds}: shorter than one top-level code ({hops[-1] / rate:.4f} s); ask for more")
    if saved is None and not args.prime:  # ancestral sampling: every level starts empty
        return [torch.zeros(args.n, 0, dtype=torch.long, device=args.device) for _ in hops], asked
    if saved is None:  # a prime clip, mono at the VQ-VAE's rate
        if not os.path.isfile(args.prime):  # load_audio would say "cannot read audio", less plainly
            raise UserError(f"--prime {args.prime}: no such file; check the path")
        length = None if args.prime_seconds is None else int(args.prime_seconds * rate)  # samples
        audio = data.load_audio(args.prime, rate, length=length)  # (S,)
        if not len(audio) or abs(audio).max() < 1e-4:  # below -80 dBFS: nothing for the priors to continue
            raise UserError(f"--prime {args.prime}: no audio above -80 dBFS (empty or silent); pass a clip with sound")
        if len(audio) < hops[-1]:  # nothing to encode at the top level
            raise UserError(f"--prime {args.prime}: {len(audio) / rate:.4f} s is shorter than one top-level code "
                            f"({hops[-1] / rate:.4f} s); pass a longer clip")
        audio = audio[:len(audio) // hops[-1] * hops[-1]]  # jukebox: the prompt is floored to whole top-level codes
        if len(audio) >= asked:  # a prime must leave something to sample
            raise UserError(f"--prime {args.prime}: {len(audio) / rate:.2f} s, not shorter than --seconds "
                            f"({asked / rate:.2f} s); raise --seconds or cut the prime with --prime-seconds")
        # jukebox: the prime is encoded at every level, and each level's first window is primed with its codes
        codes = vq.encode(torch.from_numpy(audio).view(1, -1, 1).to(args.device))  # (S,) -> [(1, S / hop)]
        return [c.expand(args.n, -1).clone() for c in codes], asked  # [(B, S / hop)] per level
    if saved["vqvae"] != dataclasses.asdict(vq.config):  # codes mean something only with their VQ-VAE
        raise UserError(f"{saved_path}: these codes were made with another VQ-VAE; pass the --vqvae of that run")
    codes, total_samples = [c.to(args.device) for c in saved["codes"]], asked or saved["total_samples"]
    have = max(c.shape[1] * hop for c, hop in zip(codes, hops))  # samples covered by the longest level
    if total_samples < have:
        raise UserError(f"{saved_path} already holds {have / rate:.2f} s; ask for at least that with --seconds")
    if args.upsample and codes[-1].shape[1] * hops[-1] < total_samples:  # the upsamplers need the whole top
        raise UserError(f"--upsample {saved_path}: its top level is not complete; finish it with --continue")
    return codes, total_samples


def song_from(args, saved, priors, rate, total_samples):
    """The Song: the flags, else those of the run being continued; its length is --song-seconds, else the
    saved one, else the length sampled raised to the shortest song the top prior knows (60 s for 5b)."""
    song = Song(**saved["song"]) if saved else Song()
    if args.lyrics:
        try:
            with open(args.lyrics, encoding="utf-8") as f:
                song.lyrics = f.read()
        except (OSError, UnicodeDecodeError) as e:  # missing, unreadable, not text
            reason = "no such file" if isinstance(e, FileNotFoundError) else type(e).__name__
            raise UserError(f"--lyrics {args.lyrics}: cannot read it as UTF-8 text ({reason}); fix the path") from None
    song.lyrics = song.lyrics if args.lyrics_text is None else args.lyrics_text
    song.artist, song.genre = args.artist or song.artist, args.genre or song.genre
    tops = [file for file in priors.values() if file.config.is_top]  # only the top prior reads timing and lyrics
    if args.song_seconds is not None:
        song.samples = int(args.song_seconds * rate)
    elif not saved:  # the timing labels were trained on songs of min_duration or more
        song.samples = max([math.ceil(file.config.min_duration * rate) for file in tops], default=0)
    song.samples = max(song.samples, total_samples)  # the song is at least what is sampled of it
    for file in tops:
        c = file.config
        if c.lyrics == "none" and song.lyrics:
            print(f"warning: the top prior ({file.origin}) is not conditioned on lyrics: ignored", file=sys.stderr)
        if not c.min_duration * rate <= song.samples < c.max_duration * rate:  # outside its timing embedding
            raise UserError(f"--song-seconds: the top prior knows songs of {c.min_duration:g} to {c.max_duration:g} s")
    return song


def write_level(out, vq, codes, level, batch_size):
    """OUT/level_L/item_i.wav: the level's codes decoded, 16-bit PCM, clipped to [-1, 1]."""
    os.makedirs(os.path.join(out, f"level_{level}"), exist_ok=True)
    for first in range(0, len(codes[level]), batch_size):  # a few samples at a time bounds the decoder's memory
        for i, audio in enumerate(vq.decode(codes[level][first:first + batch_size], level), first):  # (S, 1) each
            data.write_audio(os.path.join(out, f"level_{level}", f"item_{i}.wav"), audio[None], vq.config.sample_rate)


def list_names(args):
    """--list-artists / --list-genres [QUERY]: `id<TAB>name` lines of the id table of --model or the top prior."""
    kind, query = ("artist", args.list_artists) if args.list_artists is not None else ("genre", args.list_genres)
    if args.model:
        version = official.prior_config(args.model).label_version
    elif "top" in checkpoint_paths(args, {}):  # --top, else the newest in RUNS/top
        version = train.read_checkpoint(checkpoint_paths(args, {})["top"], "top", "--top")["config"]["label_version"]
    else:
        raise UserError(f"--list-{kind}s: which id tables? pass --model {' | '.join(official.MODELS)} or --top PATH")
    names = data.names_like(kind, version, query)  # [(id, name)]
    try:
        print(f"# {kind}s of ids/v{version}_{kind}_ids.txt: id, name" + (f"; like {query!r}" if query else ""))
        print("\n".join(f"{id_}\t{name}" for id_, name in names), flush=True)
    except BrokenPipeError:  # piped into head or the like, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # and no second error at exit
    if not names:
        print(f"no {kind} like {query!r}; try a shorter query", file=sys.stderr)
    return 0


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
    for level, file in priors.items():  # an upsampler has the codes above it, or samples them first, and aligns
        c, above = file.config, level + 1
        if not c.is_top and above not in priors and codes[above].shape[1] * hops[above] < total_samples:
            raise UserError(f"level {level} needs the complete level-{above} codes; add {above} to --levels")
        if not c.is_top and int(settings.hop_fraction[level] * c.n_ctx) % c.upsample_factor:
            raise UserError(f"--hop-fraction: level {level}'s hop must be a multiple of {c.upsample_factor} tokens")
    out = args.out or (os.path.dirname(saved_path) or "." if saved else "samples")  # continue: the codes' folder
    codes_path = os.path.join(out, "codes.pt")
    if saved is None and os.path.exists(codes_path):  # a fresh run never overwrites another
        raise UserError(f"--out {out} already holds a run; pick another --out, or --continue {codes_path}")
    try:
        os.makedirs(out, exist_ok=True)  # only now, once every input is known to be good
    except OSError as e:  # a file of that name, or no permission
        raise UserError(f"--out {out}: cannot create the folder ({e.strerror}); pick another --out") from None
    print(f"sample.py: {len(codes[0])} x {total_samples / rate:.2f} s of a {song.samples / rate:.2f} s song by "
          f"{song.artist} ({song.genre}, {len(song.lyrics)} characters of lyrics) -> {out}/\n  {settings}")
    for level, file in sorted(priors.items(), reverse=True):
        print(f"  level {level} ({LEVEL_STAGE[level]}): {file.path} ({file.origin}), {codes[level].shape[1]} -> "
              f"{total_samples // hops[level]} tokens, label ids v{file.config.label_version}, {args.dtype}")
    state = {"codes": codes, "total_samples": total_samples, "song": dataclasses.asdict(song),  # what save_codes
             "vqvae": dataclasses.asdict(vq.config), "checkpoints": paths,  # writes; a continued run reads it back
             "official": dict(dir=args.official, model=args.model) if args.official else None}
    try:
        for level in sample_levels(priors, codes, total_samples, hops, song, settings,
                                   torch.Generator(args.device).manual_seed(args.seed)):
            write_level(out, vq, codes, level, settings.batch_size)  # listen to a level while the next one samples
            save_codes(codes_path, state, hops)
            tqdm.write(f"level {level}: wrote {out}/level_{level}/item_*.wav and {codes_path}")
    except KeyboardInterrupt:  # every finished window is kept; --continue resumes from there
        save_codes(codes_path, state, hops)
        print(f"\ninterrupted: every finished window is kept; resume with --continue {codes_path}", file=sys.stderr)
        return 130  # the shell's code for Ctrl-C
    return 0


def per_level(text, flag, low, high):
    """'0.99' -> (0.99, 0.99, 0.99); '0.5,0.5,0.125' -> per level (bottom, middle, top); each in (low, high]."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:  # not numbers: the same one-line error as a wrong count
        values = ()
    if len(values) not in (1, 3) or not all(low < v <= high for v in values):  # nan fails the comparison
        raise UserError(f"{flag} {text}: one number for all levels or three (bottom,middle,top) in ({low:g}, {high:g}]")
    return values * 3 if len(values) == 1 else values


def check_flags(args):
    """UserError for a flag out of range or missing its partner, else (Settings, levels top first)."""
    for name, least in {"n": 1, "batch_size": 1, "chunk_size": 1, "top_k": 0, "seed": 0}.items():
        if getattr(args, name) is not None and getattr(args, name) < least:  # None: --chunk-size not given
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least {least}")
    for name in ("seconds", "song_seconds", "prime_seconds"):  # None: not given; nan fails both comparisons
        if getattr(args, name) is not None and not 0 < getattr(args, name) < math.inf:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be a positive number of seconds")
    levels = sorted({int(v) for v in (args.levels or ("1,0" if args.upsample else "2,1,0")).split(",")
                     if v.strip() in ("0", "1", "2")}, reverse=True)  # top first; anything else is dropped...
    needs = [(not 0.0 <= args.top_p < 1.0, f"--top-p {args.top_p}: must be in [0, 1) (0 = off)"),
             (args.top_k and args.top_p, "--top-k and --top-p cannot be combined (as in the original); pick one"),
             (args.model and not args.official, f"--model {args.model} needs --official DIR, the released files"),
             (args.official and not args.model, f"--official: also pass --model {'|'.join(official.MODELS)}"),
             (args.official and any(getattr(args, s) for s in train.STAGES), "--official: drop --vqvae/--top/..."),
             (args.prime_seconds is not None and not args.prime, "--prime-seconds needs --prime"),
             (args.upsample and args.seconds is not None, "--upsample keeps the saved length; use --continue"),
             (not args.device.startswith(("cpu", "mps", "cuda" if torch.cuda.is_available() else "cpu")),
              f"--device {args.device}: not a device here; use --device cpu"),
             (args.levels and len(levels) != len(args.levels.split(",")),  # ...and so counted here
              f"--levels {args.levels}: expected levels among 0, 1, 2, e.g. --levels 2 or 2,1,0"),
             (args.upsample and 2 in levels, "--upsample samples the lower levels only; drop 2 from --levels")]
    for failed, message in needs:
        if failed:
            raise UserError(message)
    settings = Settings(hop_fraction=per_level(args.hop_fraction, "--hop-fraction", 0.0, 1.0),
                        temperature=per_level(args.temperature, "--temperature", 0.0, 10.0), top_k=args.top_k,
                        top_p=args.top_p, chunk_size=args.chunk_size, batch_size=args.batch_size)
    if args.compile:  # inductor needs a C++ compiler on CPU, Triton on GPU: the smallest kernel tells
        try:
            torch.compile(lambda x: x * 2 + 1)(torch.ones(4, device=args.device))
        except Exception as e:  # any failure of the compiler stack means: not here
            print(f"warning: --compile: torch.compile fails here ({type(e).__name__}); eager mode", file=sys.stderr)
            args.compile = False
    return settings, levels


def build_parser():
    """The flags, in the order -h lists them; -h opens with the first paragraph of this file's docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()  # where the codes start: nothing, a clip, or an earlier run
    mode.add_argument("--prime", metavar="AUDIO", help="continue this audio clip (default: sample from scratch)")
    mode.add_argument("--continue", dest="continue_", metavar="CODES", help="extend or finish an earlier codes.pt")
    mode.add_argument("--upsample", metavar="CODES", help="sample only levels 1, 0 under an earlier run's top codes")
    arg = parser.add_argument
    arg("--seconds", type=float, metavar="S", help="length of each sample, prime included (default 20, or saved)")
    arg("--song-seconds", type=float, metavar="S", help="whole song length (default: the shortest the top prior knows)")
    arg("--prime-seconds", type=float, metavar="S", help="use only the first S seconds of --prime")
    arg("--n", type=int, default=1, help="samples to draw at once (default %(default)s)")
    arg("--levels", metavar="L[,L...]", help="levels to sample, e.g. 2 for the top only (default 2,1,0)")
    arg("--out", metavar="DIR", help="output folder (default samples; continue/upsample: the codes file's folder)")
    arg("--runs", default="runs", metavar="DIR", help="RUNS/STAGE holds each checkpoint not named (default runs)")
    for stage in train.STAGES:  # each overrides RUNS/STAGE
        arg(f"--{stage}", metavar="PATH", help=f"the {stage} checkpoint (a file, or a train.py run folder)")
    arg("--official", metavar="DIR", help="OpenAI's released models, DIR laid out as downloaded; needs --model")
    arg("--model", choices=list(official.MODELS), help="which released top prior (1b_lyrics fits a consumer GPU)")
    arg("--artist", metavar="NAME", help="artist to condition on (see --list-artists); unknown: 0, with a warning")
    arg("--genre", metavar="NAME", help="genre, likewise (see --list-genres)")
    lyrics = parser.add_mutually_exclusive_group()  # the lyrics from a file, or inline
    lyrics.add_argument("--lyrics", metavar="FILE", help="UTF-8 lyrics for a lyric top prior, spread over the song")
    lyrics.add_argument("--lyrics-text", metavar="TEXT", help="the lyrics given inline instead")
    arg("--list-artists", nargs="?", const="", metavar="QUERY", help="print the id table's artists (like QUERY); exit")
    arg("--list-genres", nargs="?", const="", metavar="QUERY", help="the same for genres")
    arg("--temperature", default="0.99,0.99,0.98", metavar="T[,T,T]", help="softmax temperature (default %(default)s)")
    arg("--top-k", type=int, default=0, metavar="K", help="sample among the k most likely codes (default 0 = off)")
    arg("--top-p", type=float, default=0.0, metavar="P", help="nucleus sampling mass (default 0 = off)")
    arg("--hop-fraction", default="0.5,0.5,0.125", metavar="F[,F,F]", help="window hop / n_ctx (default %(default)s)")
    arg("--chunk-size", type=int, help="prime tokens per prefill step, to bound memory (default: all at once)")
    arg("--batch-size", type=int, default=16, help="samples per prior call, bounds memory (default %(default)s)")
    arg("--seed", type=int, default=0, help="random seed of the sampling (default %(default)s)")
    arg("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="dtype of the prior blocks")
    arg("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default %(default)s)")
    arg("--compile", action="store_true", help="torch.compile the sampling step (eager where it cannot)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)  # a mistyped flag: argparse's usage line and exit code 2
    try:
        if args.list_artists is not None or args.list_genres is not None:  # a look-up in the id tables, no sampling
            return list_names(args)
        settings, levels = check_flags(args)  # before any file is read
        return run(args, settings, levels)
    except UserError as e:  # a mistake the user can fix: one line, exit code 2, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
