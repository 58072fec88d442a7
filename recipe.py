"""The CPU quick start: from nothing to a primed continuation you can listen to, on a laptop CPU.

    python recipe.py                    # the full recipe: about 10 minutes on a 2-core machine
    python recipe.py --quick            # a 10-60 s smoke run (what tests/test_recipe.py runs)

It runs the whole of Jukebox (arXiv:2005.00341) end to end at toy size, with the same commands a user would
type, called in-process: `toy.py` writes procedurally generated songs; `train.py --stage vqvae`
trains the three-level VQ-VAE (§3); `train.py --stage top|middle|bottom` trains the three priors on its codes
(§4), encoded once into the code cache, all three at the same time; `sample.py --prime` continues the start of
a held-out toy song through all three levels (§4.4). Then it measures what came out and prints a report:
  - spectral convergence (dB) of each VQ-VAE level on the held-out song (the paper's Table 1 metric);
  - bits per token of each prior on the held-out song's codes, next to its training loss and the uniform
    and unigram baselines (a prior that learned something beats the unigram entropy);
  - RMS, spectral flatness, onset strength, tonal share, sub-40 Hz rumble and loudness dynamics of the
    continuation (`audio_figures`) at each level, beside the VQ-VAE's decode of the song's true codes and each
    upsampler on the true codes of the level above (where noise enters), and the wall and CPU time per stage;
  - a picture: spectrograms of all of it, samples/spectrograms.png.
It fails loudly (exit code 1) when the final audio is broken: silent, noise, without onsets, a DC drift or a
static drone; and it reports whether the music target (flatness, onsets and tones, see judge) is met.
Every number also goes to OUT/report.json.

Reading order: `Sizes` (every knob of the recipe, FULL and QUICK), `run` (the stages, in order), then the
measurements (`audio_figures`, `judge`, `vqvae_figures`, `heldout_bits`, `listen`).

Shapes: audio (B, T, 1) at the model APIs, (T,) numpy in this file; codes per level (B, T_level) long.
"""
import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import soundfile
import torch
import torch.nn.functional as F

import data
import prior
import sample
import toy
import train
import vqvae

STAGES = tuple(train.STAGES)  # vqvae, top, middle, bottom: the order they train in
LEVEL_STAGE = sample.LEVEL_STAGE  # 2 -> "top", 1 -> "middle", 0 -> "bottom"


@dataclasses.dataclass
class Sizes:
    """Every knob of the recipe. Step counts are multiplied by --scale."""
    songs: int = 32                # toy training songs (toy.py --n): with 8, the top prior learnt them by heart
    # (seed 2: 4.3 bits/token in training, 5.3 on the held-out song) and continued in hiss; with 32, 4.3 and 4.1
    song_seconds: float = 10.0     # length of each (data.py --seconds)
    heldout_seconds: float = 6.0   # the held-out song (another seed): evaluation and the prime
    vqvae_steps: tuple = (160, 640, 320)  # optimizer steps of the VQ-VAE's bottom, middle and top level: its
    # levels are independent, so the middle and top ones, cheap, learn on while the costly bottom one rests. The
    # top one takes off at a seed-dependent step: after 160 steps its spectral convergence was -2.0 dB on seed 0
    # but -0.35 and -0.81 dB on seeds 1 and 2 (its decode of true codes noise-like); after 320, -2.0 to -2.2 on each
    vqvae_batch: int = 4           # its batch (clips per step)
    vqvae_sample_length: int = 16384  # its clip length in samples (0.37 s; a multiple of the top hop 128)
    prior_preset: str = "toy"      # prior.preset() of the priors: tiny, with the changes listed there. Its bottom
    # Conditioner has 128 channels: with 64, the bottom upsampler on the true middle codes measured flatness 0.208 /
    # 0.190 / 0.237 (seeds 0 / 1 / 2), with 128, 0.180 / 0.184 / 0.198, at 1.7x the time per step. Its bottom
    # transformer is 64 wide: retrained on one seed-1 run, 6 draws x 3 sampling seeds, 32 wide: flatness 0.195-0.219,
    # onsets ~3.5 dB; 64 wide: 0.162-0.183, 5.0-5.3 dB, at 1.25x the time
    prior_steps: tuple = (7200, 4800, 2400)  # steps of the top, middle, bottom prior (they train at once: the
    # bottom in one process, the middle, then the top in the other). Top continuations of seed 0 at 4800 / 7200 steps:
    # median flatness 0.128 / 0.117, onsets 3.4-5.9 / 4.4-5.7 dB over 8 draws. The upsamplers' greedy continuations
    # do not improve with their held-out loss: longer (7200 / 3000) helped seed 2 on one trajectory and hurt it on
    # another (its middle on the true top codes 0.158 at 4800 steps, 0.231 at 7200)
    prior_batch: tuple = (4, 32, 32)      # their batches, windows of n_ctx tokens: 256 (top), 64 (middle), 128
    # (bottom). The bottom one seeing 128 codes instead of 64 at the same tokens per step (batch 64): on three trained
    # runs (with a 96-wide middle), final flatness 0.151 / 0.225 / 0.279 -> 0.152 / 0.227 / 0.167 (seeds 0 / 1 / 2):
    # it holds up on the middle codes the middle upsampler samples, where seed 2's 64-code one turned to hiss (0.198
    # on the true ones)
    prior_ema: tuple = (0.998, 0.0, 0.0)  # weight EMA decay of the top, middle, bottom prior (train.py --ema-decay;
    # sampling uses the average). The released 1 - batch/8000 would average over most of these short runs. The top
    # one averaged at 0.998: under AVX2 rounding, seed 1's final flatness 0.255 -> 0.203, onsets 2.7 -> 3.6 dB
    lr: float = 1e-3               # Adam peak learning rate of every stage (higher than the paper's 3e-4: short runs)
    warmup: int = 20               # linear warmup steps of every stage
    lr_decay: bool = False         # then decay the learning rate linearly to 0 by the last step (train.py --lr-decay)
    prime_seconds: float = 1.0     # the start of the held-out song given to sample.py --prime
    total_seconds: float = 3.0     # prime + continuation
    samples: int = 6               # continuations drawn at once (sample.py --n); the figures are their mean: six
    # draws, not three, so that one unlucky draw moves the verdict half as much (a draw costs ~2 s)
    temperature: str = "0.02,0.02,0.7"  # sample.py --temperature (bottom,middle,top): the upsamplers nearly greedy,
    # not the released 0.99: tiny upsamplers are unsure of every code, and each unsure draw adds hiss. The top prior
    # at 0.7 (released: 0.7-0.98) from its whole distribution, as the original. Top continuations, 8 draws per top
    # prior of four runs: at 0.8 with top-p 0.9, 7 of 32 held one chord (onsets under 2 dB; 6 of 8 on one prior);
    # at 0.7 without top-p, 1 of 48 (six priors; median tonal share 0.56-0.61); at 0.6, 2 of 8
    top_p: float = 0.0             # sample.py --top-p (every level): 0 = off
    check_output: bool = True      # fail when the continuation is silent or noise-like


FULL = Sizes()
QUICK = Sizes(songs=2, song_seconds=3.0, heldout_seconds=2.0, vqvae_steps=(2, 3, 2), vqvae_batch=2,
              vqvae_sample_length=4096,
              prior_steps=(3, 3, 3), prior_batch=(2, 2, 2), warmup=1, prime_seconds=0.2, total_seconds=0.35,
              samples=1, check_output=False)  # a smoke run: untrained models, so the output is reported, not judged

# The final audio is judged two ways.
#  - Broken (exit code 1): silent, noise (flatness >= NOISE_FLATNESS: white or brown noise measure 0.56-0.61),
#    without onsets (onset_db < ONSET_MIN_DB: noise and drones <= 0.8 dB), a DC drift (rumble, an untrained
#    decoder's typical output) or static (dynamics). Any of these means the training or sampling code is wrong.
#  - The music target, two independent measures that must both hold: flatness <= MAX_FLATNESS (the toy songs
#    0.07-0.23, the drum-heavy ones highest; the VQ-VAE's decodes of true codes ~0.09), and onsets AND tones:
#    onset_db >= ONSET_MIN_DB (toy songs 3.0-7.3 dB, VQ-VAE decodes >= 4.5) and tonal_share >= TONAL_MIN
#    (noise 0.015-0.03, toy songs 0.72-0.94, VQ-VAE decodes 0.79-0.87). White noise fails both, a drone has
#    tones but no onsets, a train of noise bursts onsets but no tones. Missing it is reported, not an error:
#    the toy models are small, and "hissy" (notes and beats under a noise floor) is where they stand. Since
#    the judged figures are the mean of the draws, the target also asks that no single draw be broken.
SILENCE_RMS = 10 ** (-50 / 20)  # -50 dBFS
MAX_FLATNESS = 0.25
NOISE_FLATNESS = 0.5  # at or above: "noise" in the report; between MAX_FLATNESS and this: "hissy"
ONSET_MIN_DB = 2.0
TONAL_MIN = 0.5
MAX_RUMBLE = 0.5
MIN_DYNAMICS = 0.1


class RecipeError(Exception):
    """A problem the user can fix (output folder in use, bad flag): one line, exit code 2."""


# ---- measurements ---------------------------------------------------------------------------------------

def rms(audio):
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0


def power_spectrogram(audio, n_fft, hop):
    """|STFT|^2 with a Hann window: (T,) numpy -> (n_fft // 2 + 1, frames) float64 tensor."""
    x = torch.as_tensor(np.asarray(audio), dtype=torch.float64)
    window = torch.hann_window(n_fft, dtype=torch.float64)
    return torch.stft(x, n_fft, hop, window=window, return_complex=True).abs() ** 2


def onset_strength(audio, rate, n_fft=4096, hop=1024, band=(50.0, 8000.0), n_bands=24, floor_db=40.0, top=0.1):
    """How sharply the sound starts notes and beats, in dB: the power of 24 log-spaced bands in dB (floored
    floor_db under the loudest band-frame); the flux of frame t is the mean rise over the bands from frame t-1;
    the figure is the mean flux of the top 10 % of the frames minus the median frame's. Noise fluctuates
    steadily (high median, no peaks) and a drone does not change: both under 1 dB."""
    p = power_spectrogram(audio, n_fft, hop)  # (F, frames)
    freqs = torch.arange(p.shape[0], dtype=torch.float64) * rate / n_fft
    edges = np.geomspace(band[0], band[1], n_bands + 1)
    bands = torch.stack([p[(freqs >= lo) & (freqs < hi)].sum(0) for lo, hi in zip(edges[:-1], edges[1:])])
    level = 10 * torch.log10(bands + bands.max() * 10 ** (-floor_db / 10))  # (bands, frames) in dB
    flux = (level[:, 1:] - level[:, :-1]).clamp(min=0).mean(0)  # (frames - 1,)
    return float(flux.topk(max(1, int(top * len(flux)))).values.mean() - flux.median())


def tonal_share(audio, rate, n_fft=4096, hop=1024, band=(65.0, 4200.0), ratio=10.0, width=10):
    """How much of the sound sits in distinct partials: the share of the band's energy in bins at least `ratio`
    times the median power of their +-width neighbours. Noise reaches that in ~0.1 % of its bins."""
    p = power_spectrogram(audio, n_fft, hop)  # (F, frames)
    padded = F.pad(p.T[:, None], (width, width), mode="replicate")[:, 0]  # (frames, F + 2 width)
    local = padded.unfold(1, 2 * width + 1, 1).median(-1).values.T  # (F, frames): the neighbours' median
    freqs = torch.arange(p.shape[0], dtype=torch.float64) * rate / n_fft
    keep = (freqs >= band[0]) & (freqs < band[1])
    tonal = (p * (p >= ratio * local))[keep].sum()
    return float(tonal / p[keep].sum().clamp(min=1e-30))


def audio_figures(audio, sample_rate, n_fft=2048, hop=512, band=(50.0, 8000.0), cell=16):
    """What a listener would notice first, from audio (T,) numpy:
      rms          loudness (silence is below -50 dBFS);
      flatness     how noise-like the sound is: spectral flatness (geometric / arithmetic mean of the power) in
                   cells of `cell` neighbouring bins (16 bins = 344 Hz) between 50 Hz and 8 kHz, averaged over
                   cells and frames weighted by their energy. Measured in narrow cells it ignores the spectral
                   envelope, so coloured noise counts as noise too;
      onset_db     notes and beats start abruptly (onset_strength);
      tonal_share  notes have pitch: energy in spectral peaks (tonal_share);
      rumble       the share of the energy below 40 Hz (DC offset and sub-audio drift);
      dynamics     the coefficient of variation of the frame RMS: a static drone or steady noise stays near 0.
    Frames more than 60 dB below the loudest are left out of the flatness, so that silent gaps do not count."""
    nan = float("nan")
    if len(audio) <= 4096:
        return dict(rms=rms(audio), flatness=nan, onset_db=nan, tonal_share=nan, rumble=nan, dynamics=nan)
    spec = power_spectrogram(audio, n_fft, hop)  # (n_fft // 2 + 1, frames)
    freqs = torch.arange(spec.shape[0], dtype=torch.float64) * sample_rate / n_fft  # (n_fft // 2 + 1,)
    energy = spec.sum(0)  # (frames,)
    frame_rms = energy.sqrt()
    dynamics = float(frame_rms.std() / frame_rms.mean().clamp(min=1e-20))
    rumble = float(spec[freqs < 40].sum() / spec.sum().clamp(min=1e-20))
    loud = spec[(freqs >= band[0]) & (freqs < band[1])][:, energy > energy.max() * 1e-6] + 1e-20  # (F, frames)
    n_cells = loud.shape[0] // cell
    cells = loud[:n_cells * cell].reshape(n_cells, cell, -1)  # (F, frames) -> (cells, cell, frames)
    power = cells.mean(1)  # (cells, frames)
    flat = torch.exp(torch.log(cells).mean(1)) / power  # (cells, frames)
    flatness = float((flat * power).sum() / power.sum())
    return dict(rms=rms(audio), flatness=flatness, onset_db=onset_strength(audio, sample_rate),
                tonal_share=tonal_share(audio, sample_rate), rumble=rumble, dynamics=dynamics)


def judge(figures):
    """The reasons (possibly none) why a continuation is broken: silent, noise, without onsets, drift, static."""
    f, problems = figures, []
    if not f["rms"] >= SILENCE_RMS:
        problems.append(f"silent (RMS {f['rms']:.2e} < {SILENCE_RMS:.2e})")
    if not f["flatness"] < NOISE_FLATNESS:
        problems.append(f"noise-like (spectral flatness {f['flatness']:.3f} >= {NOISE_FLATNESS})")
    if not f["onset_db"] >= ONSET_MIN_DB:
        problems.append(f"without note onsets (onset strength {f['onset_db']:.2f} dB < {ONSET_MIN_DB})")
    if not f["rumble"] <= MAX_RUMBLE:
        problems.append(f"mostly DC offset / sub-audio rumble ({f['rumble']:.0%} of the energy below 40 Hz)")
    if not f["dynamics"] >= MIN_DYNAMICS:
        problems.append(f"static, no notes or beats (frame-RMS variation {f['dynamics']:.3f} < {MIN_DYNAMICS})")
    return problems


def target_misses(figures, draws=()):
    """Where a continuation falls short of the music target (possibly nowhere): the flatness, onsets and tones
    of `figures` (the mean of the draws), and every single draw that is broken: a held drone or a rumble that
    the other draws average away in the mean is still not music."""
    f, misses = figures, [f"draw {i} is {'; '.join(judge(d))}" for i, d in enumerate(draws) if judge(d)]
    if not f["flatness"] <= MAX_FLATNESS:
        misses.append(f"flatness {f['flatness']:.3f} > {MAX_FLATNESS}")
    if not f["onset_db"] >= ONSET_MIN_DB:
        misses.append(f"onset strength {f['onset_db']:.2f} dB < {ONSET_MIN_DB}")
    if not f["tonal_share"] >= TONAL_MIN:
        misses.append(f"tonal share {f['tonal_share']:.3f} < {TONAL_MIN}")
    return misses


def grade(figures):
    """In a word: music (the target met), hissy (not broken, target missed), noise, or broken otherwise."""
    if judge(figures):
        return "noise" if not figures["flatness"] < NOISE_FLATNESS else "broken"
    return "hissy" if target_misses(figures) else "music"


def spectrogram_png(path, rows, rate, prime_seconds, n_fft=2048, hop=256, max_hz=8000):
    """rows: [(label, [(title, audio (T,)), ...]), ...] -> a PNG, one row of log-power spectrograms per entry
    (top 80 dB, 0 - max_hz), a dashed line where the prime ends."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    n_cols = max(len(cols) for _, cols in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(4.2 * n_cols, 2.4 * len(rows)), squeeze=False)
    for r, (label, cols) in enumerate(rows):
        for c, (title, audio) in enumerate(cols):
            db = 10 * torch.log10(power_spectrogram(audio, n_fft, hop) + 1e-12).numpy()
            ax = axes[r][c]
            ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=db.max() - 80, vmax=db.max(),
                      extent=(0, len(audio) / rate, 0, rate / 2))
            ax.set_ylim(0, max_hz)
            ax.axvline(prime_seconds, color="cyan", lw=0.8, ls="--")
            ax.set_title(f"{label}: {title}", fontsize=8)
            ax.tick_params(labelsize=6)
        for c in range(len(cols), n_cols):
            axes[r][c].axis("off")
    axes[-1][0].set_xlabel("seconds (dashed: end of the prime)", fontsize=7)
    axes[-1][0].set_ylabel("Hz", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def load_model(folder, stage):
    """The newest checkpoint of a train.py run folder, built the way sample.py builds it (EMA if present)."""
    path = train.find_checkpoint(folder, stage, f"--{stage}")
    return train.build_model(train.read_checkpoint(path, stage, f"--{stage}")), path


@torch.no_grad()
def vqvae_figures(model, audio, out_dir):
    """Spectral convergence (dB, lower is better) of each level's reconstruction of `audio` (T,), and the
    reconstructions written to out_dir/level_L.wav for listening."""
    rate, top_hop = model.config.sample_rate, model.config.hop_lengths[-1]
    x = torch.from_numpy(audio[:len(audio) // top_hop * top_hop]).view(1, -1, 1)  # (T,) -> (1, T, 1)
    codes = model.encode(x)  # [(1, T / hop_L)] per level
    os.makedirs(out_dir, exist_ok=True)
    figures = {}
    for level, level_codes in enumerate(codes):
        x_hat = model.decode(level_codes, level)  # (1, T, 1)
        figures[level] = float(vqvae.spectral_convergence(x, x_hat))
        data.write_audio(os.path.join(out_dir, f"level_{level}.wav"), x_hat, rate)  # (1, T, 1)
    return figures, codes


@torch.no_grad()
def heldout_bits(model, codes, meta, total_length, max_windows=16):
    """Bits per token of a prior on the held-out song's codes: teacher-forced, non-overlapping windows of
    n_ctx tokens, labelled as train.py labels training windows. Returns (bits, unigram entropy of the tokens)."""
    c = model.config
    level_codes = codes[c.level]  # (1, T_level)
    starts = list(range(0, level_codes.shape[1] - c.n_ctx + 1, c.n_ctx))[:max_windows]
    if not starts:
        return float("nan"), float("nan")
    artist, genres, lyrics = data.song_labels(meta["artist"], meta["genre"], meta["lyrics"], c.label_version)
    tokens, ys, upper = [], [], []
    for start in starts:
        offset = start * c.hop_length  # window start in audio samples
        ys.append(prior.window_y(c, artist, genres, total_length, offset, lyrics))
        tokens.append(level_codes[0, start:start + c.n_ctx])  # (n_ctx,)
        if not c.is_top:
            r = c.upsample_factor
            upper.append(codes[c.level + 1][0, start // r:(start + c.n_ctx) // r])  # (n_ctx / r,)
    tokens = torch.stack(tokens)  # (windows, n_ctx)
    _, metrics = model(tokens, torch.stack(ys), torch.stack(upper) if upper else None)
    counts = torch.bincount(tokens.flatten(), minlength=c.codebook_size).double()
    p = counts[counts > 0] / counts.sum()
    return float(metrics["gen_loss"]), float(-(p * p.log2()).sum())


@torch.no_grad()
def listen(vq, audio, codes, meta, runs, samples, recon, sizes, args):
    """The figures of the audio after the prime, per level, mean of the draws (and each draw's), beside where
    the noise could enter: `true_codes_level_L`, the VQ-VAE's decode of the song's own codes (the best level L
    can sound); `upsampled_level_L`, the level-L upsampler on the true codes of the level above (the best its
    prior can do). Also the held-out song itself and white noise. Draws a picture of it all: spectrograms.png."""
    rate, hops = vq.config.sample_rate, vq.config.hop_lengths
    prime_samples = int(sizes.prime_seconds * rate) // hops[-1] * hops[-1]
    total = int(sizes.total_seconds * rate) // hops[-1] * hops[-1]
    mean = lambda items: {k: float(np.mean([f[k] for f in items])) for k in items[0]}
    output, per_item, draws, rows = {}, {}, {}, []
    for level in (2, 1, 0):
        draws[level] = [soundfile.read(os.path.join(samples, f"level_{level}", f"item_{i}.wav"), dtype="float32")[0]
                        for i in range(sizes.samples)]
        per_item[f"level_{level}"] = [audio_figures(wav[prime_samples:], rate) for wav in draws[level]]
        output[f"level_{level}"] = mean(per_item[f"level_{level}"])
    song = sample.Song(artist=meta["artist"], genre=meta["genre"], lyrics=meta["lyrics"], samples=len(audio))
    settings = sample.Settings(temperature=tuple(float(t) for t in sizes.temperature.split(",")))
    generator = torch.Generator().manual_seed(args.seed)
    for level in (2, 1, 0):
        true = vq.decode(codes[level][:, :total // hops[level]], level)[0, :, 0].numpy()  # (total,)
        output[f"true_codes_level_{level}"] = audio_figures(true[prime_samples:], rate)
        row = [("prime + continuation (draw 0)", draws[level][0]), ("held-out song", audio[:total]),
               ("VQ-VAE decode of its codes", true)]
        if level < 2:  # the upsampler alone: its prior on the true codes of the level above
            model, _ = load_model(os.path.join(runs, LEVEL_STAGE[level]), LEVEL_STAGE[level])
            start = [c[:, :total // hops[L]].expand(sizes.samples, -1).clone() for L, c in enumerate(codes)]
            start[level] = start[level][:, :prime_samples // hops[level]]
            sample.sample_level(model, start, level, total // hops[level], song, settings, generator)
            up = vq.decode(start[level], level)[:, :, 0].numpy()  # (samples, total)
            output[f"upsampled_level_{level}"] = mean([audio_figures(u[prime_samples:], rate) for u in up])
            row.append(("its upsampler on the true codes above", up[0]))
        rows.append((f"level {level}", row))
    output["heldout_song"] = audio_figures(audio[prime_samples:total], rate)  # how the song really goes on
    noise = np.random.default_rng(0).standard_normal(total - prime_samples) * rms(audio)
    output["white_noise"] = audio_figures(noise, rate)  # and what noise measures
    spectrogram_png(os.path.join(samples, "spectrograms.png"), rows, rate, prime_samples / rate)
    return output, per_item


def last_training_loss(run_dir):
    """The mean loss of the last logged interval of a train.py run (metrics.jsonl)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[-1]["loss"] if rows else float("nan")


# ---- the recipe -----------------------------------------------------------------------------------------

class Clock:
    """Wall and process CPU seconds per stage (CPU time counts every thread, so it can exceed wall time)."""

    def __init__(self):
        self.stages = {}

    def run(self, name, fn, *args):
        wall, cpu = time.time(), time.process_time()
        print(f"\n==== recipe: {name} ====", flush=True)
        result = fn(*args)
        self.stages[name] = {"wall_s": time.time() - wall, "cpu_s": time.process_time() - cpu}
        print(f"==== recipe: {name} done in {self.stages[name]['wall_s']:.0f} s ====", flush=True)
        return result

    def run_at_once(self, jobs, workers):
        """jobs [(name, train.py argv)] at once in `workers` fresh processes of one thread each (spawned, so no
        thread pool is inherited), in the order given; each job's wall and CPU seconds are its own."""
        names = ", ".join(name for name, _ in jobs)
        print(f"\n==== recipe: {names}, at once in {workers} processes ====", flush=True)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [(name, pool.submit(train_alone, name, argv)) for name, argv in jobs]
            for name, future in futures:  # a worker's user error (SystemExit 2) is raised here, message printed
                self.stages[name] = future.result()
                print(f"==== recipe: {name} done in {self.stages[name]['wall_s']:.0f} s ====", flush=True)


class Prefixed:
    """A text stream that starts every line with a prefix: jobs running at once print distinguishable lines."""

    def __init__(self, stream, prefix):
        self.stream, self.prefix, self.at_line_start = stream, prefix, True

    def write(self, text):
        for piece in text.splitlines(keepends=True):
            self.stream.write((self.prefix if self.at_line_start else "") + piece)
            self.at_line_start = piece.endswith("\n")
        return len(text)

    def flush(self):
        self.stream.flush()


def train_stage(argv):
    """train.main in-process; its user errors (exit code 2) stop the recipe with the same message."""
    print("$ python train.py " + " ".join(argv), flush=True)
    train.main(argv)


def train_alone(name, argv):
    """One train.py run in a worker process of Clock.run_at_once, on one thread: (wall s, CPU s)."""
    torch.set_num_threads(1)
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (Prefixed(stream, f"[{name}] ") for stream in streams)
    wall, cpu = time.time(), time.process_time()
    try:
        train_stage(argv)
    finally:  # the worker may run the next job: give it back its own streams
        sys.stdout, sys.stderr = streams
    return {"wall_s": time.time() - wall, "cpu_s": time.process_time() - cpu}


def encode_codes(toy_dir, runs):
    """The code cache of the training songs, on every thread, before the priors start: each would otherwise
    encode every song itself, at the same time."""
    vq = train.load_vqvae(os.path.join(runs, "vqvae"))
    data.CodeDataset(toy_dir, vq, level=0, n_ctx=64)  # any level and window: it encodes every level


def training_commands(args, sizes, toy_dir, runs):
    """(stage, train.py argv) of the VQ-VAE, then of the priors on its codes, with every knob of `sizes`. The
    VQ-VAE's weight EMA is off (its codebooks keep their own EMA): the default decay, 1 - batch/8000, averages over
    thousands of steps and would leave its short run near its init; the priors' decays are `sizes.prior_ema`."""
    def steps(n):  # a stage's step count under --scale
        return max(1, round(n * args.scale))

    def decay(n):  # a run of n steps: from the end of the warmup to 0 at the last step
        return ["--lr-decay-start", str(min(sizes.warmup, n)), "--lr-decay", str(max(1, n - sizes.warmup))] \
            if sizes.lr_decay else []
    common = ["--data", toy_dir, "--lr", str(sizes.lr), "--warmup", str(sizes.warmup),
              "--device", "cpu", "--seed", str(args.seed)]
    level_steps = [steps(n) for n in sizes.vqvae_steps]  # bottom, middle, top
    n = max(level_steps)
    commands = [("vqvae", ["--stage", "vqvae", "--preset", "tiny", "--out", os.path.join(runs, "vqvae"),
                           "--steps", str(n), "--level-steps", ",".join(map(str, level_steps)),
                           "--batch-size", str(sizes.vqvae_batch),
                           "--sample-length", str(sizes.vqvae_sample_length), "--bandwidth-batches", "2",
                           "--ema-decay", "0", *common,
                           "--log-every", str(max(1, n // 10)), *decay(n)])]
    for stage, n, batch, ema in zip(LEVEL_STAGE.values(), sizes.prior_steps, sizes.prior_batch, sizes.prior_ema):
        n = steps(n)
        commands.append((stage, [
            "--stage", stage, "--preset", sizes.prior_preset, "--out", os.path.join(runs, stage),
            "--vqvae", os.path.join(runs, "vqvae"), "--steps", str(n), "--batch-size", str(batch),
            "--ema-decay", str(ema), *common,
            "--log-every", str(max(1, n // 10)), *decay(n)]))
    return commands


def measure(report, runs, heldout, recon, samples, sizes, args):
    """The report's figures: spectral convergence per VQ-VAE level, bits per token per prior (held-out song),
    and the audio figures of the continuations (listen)."""
    vq, _ = load_model(os.path.join(runs, "vqvae"), "vqvae")
    audio = data.load_audio(heldout, vq.config.sample_rate)  # (T,)
    with open(os.path.splitext(heldout)[0] + ".json") as f:
        meta = json.load(f)
    sc, codes = vqvae_figures(vq, audio, recon)
    report["spectral_convergence_db"] = {f"level_{L}": v for L, v in sc.items()}
    report["bits_per_token"] = {}
    for stage in LEVEL_STAGE.values():
        model, _ = load_model(os.path.join(runs, stage), stage)
        bits, unigram = heldout_bits(model, codes, meta, len(audio))
        report["bits_per_token"][stage] = {
            "heldout": bits, "train": last_training_loss(os.path.join(runs, stage)),
            "unigram_entropy": unigram, "uniform": math.log2(model.config.codebook_size)}
    report["output"], report["output_items"] = listen(vq, audio, codes, meta, runs, samples, recon, sizes, args)


def run(args, sizes):
    out = args.out
    toy_dir, heldout_dir, runs = os.path.join(out, "toy"), os.path.join(out, "heldout"), os.path.join(out, "runs")
    samples, recon = os.path.join(out, "samples"), os.path.join(out, "reconstructions")
    clock, report = Clock(), {"sizes": dataclasses.asdict(sizes), "scale": args.scale, "threads": args.threads}
    started = time.time()

    # 1. data: toy songs to train on, and one more song (another seed) that no stage trains on
    def make_data():
        toy.main([toy_dir, "--n", str(sizes.songs), "--seconds", str(sizes.song_seconds)])
        toy.main([heldout_dir, "--n", "1", "--seconds", str(sizes.heldout_seconds), "--seed", "1"])
    clock.run("data", make_data)
    heldout = os.path.join(heldout_dir, "toy_000.wav")

    # 2. the VQ-VAE on every thread, its codes of every song into the code cache, then 3. the priors on them:
    # independent of each other, so they train at once, each in a process of one thread (a tiny prior gains
    # little from a second thread: 1.0-1.1x measured)
    (_, vqvae_argv), *priors = training_commands(args, sizes, toy_dir, runs)
    clock.run("vqvae", train_stage, vqvae_argv)
    clock.run("codes", encode_codes, toy_dir, runs)
    started_priors = time.time()
    clock.run_at_once(priors[::-1], workers=min(args.threads, len(priors)))  # the longest, the bottom, first
    report["priors_wall_s"] = time.time() - started_priors

    # 4. a primed continuation through all three levels, on one thread (at this size a second one costs more)
    torch.set_num_threads(1)
    sample_argv = ["--prime", heldout, "--prime-seconds", str(sizes.prime_seconds), "--seconds",
                   str(sizes.total_seconds), "--runs", runs, "--out", samples, "--device", "cpu",
                   "--seed", str(args.seed), "--temperature", sizes.temperature, "--top-p", str(sizes.top_p),
                   "--n", str(sizes.samples)]
    print("$ python sample.py " + " ".join(sample_argv), flush=True)
    code = clock.run("sample", sample.main, sample_argv)
    if code != 0:
        raise SystemExit(code)

    # 5. the figures
    clock.run("measure", measure, report, runs, heldout, recon, samples, sizes, args)
    report["stages"] = clock.stages
    report["total_wall_s"] = time.time() - started
    report["total_cpu_s"] = sum(s["cpu_s"] for s in clock.stages.values())
    report["problems"] = judge(report["output"]["level_0"])  # the final audio: the bottom level's, mean of items
    report["music_target_misses"] = target_misses(report["output"]["level_0"], report["output_items"]["level_0"])
    report["files"] = {
        "toy songs": toy_dir, "held-out song (the prime)": heldout,
        **{f"{stage} checkpoint": train.find_checkpoint(os.path.join(runs, stage), stage, stage) for stage in STAGES},
        "VQ-VAE reconstructions of the held-out song": os.path.join(recon, "level_{0,1,2}.wav"),
        "the continuations, per level (level_0 is the final audio)": os.path.join(samples, "level_{0,1,2}/item_*.wav"),
        "codes (for sample.py --continue / --upsample)": os.path.join(samples, "codes.pt"),
        "spectrograms: prime + continuation, song, VQ-VAE decode, upsampler": os.path.join(samples, "spectrograms.png"),
        "this report": os.path.join(out, "report.json"),
    }
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def print_report(report, check):
    print("\n==== recipe: report ====")
    for what, path in report["files"].items():
        print(f"  {what:58s} {path}")
    print("\n  VQ-VAE spectral convergence on the held-out song (dB, lower is better):")
    print("    " + "   ".join(f"{k} {v:6.2f}" for k, v in report["spectral_convergence_db"].items()))
    print("\n  prior bits per token   held-out   train (last log)   unigram entropy   uniform")
    for stage, b in report["bits_per_token"].items():
        print(f"    {stage:8s}            {b['heldout']:8.3f}   {b['train']:16.3f}   {b['unigram_entropy']:15.3f}"
              f"   {b['uniform']:7.3f}")
    print(f"\n  audio after the prime (level_L: mean of {len(report['output_items']['level_0'])} continuations)")
    print("                                 RMS  flatness  onset dB  tonal share  rumble  dynamics  sounds")
    for name, o in report["output"].items():
        print(f"    {name:24s} {o['rms']:7.4f} {o['flatness']:9.3f} {o['onset_db']:9.2f} {o['tonal_share']:12.3f} "
              f"{o['rumble']:7.3f} {o['dynamics']:9.3f}  {grade(o)}")
    for i, d in enumerate(report["output_items"]["level_0"]):
        print(f"    level_0, draw {i}          {d['rms']:7.4f} {d['flatness']:9.3f} {d['onset_db']:9.2f} "
              f"{d['tonal_share']:12.3f} {d['rumble']:7.3f} {d['dynamics']:9.3f}  {grade(d)}")
    print(f"    (broken: RMS < {SILENCE_RMS:.4f}, flatness >= {NOISE_FLATNESS}, onset < {ONSET_MIN_DB} dB, rumble > "
          f"{MAX_RUMBLE} or dynamics < {MIN_DYNAMICS}; music target: flatness <= {MAX_FLATNESS}, onset >= "
          f"{ONSET_MIN_DB} dB and tonal share >= {TONAL_MIN}, and no single draw broken. true_codes: the VQ-VAE's "
          "decode of the song's codes; upsampled: the upsampler on the true codes of the level above)")
    print("\n  stage        wall s    CPU s")
    for name, s in report["stages"].items():
        print(f"    {name:10s} {s['wall_s']:7.0f}  {s['cpu_s']:7.0f}")
    print(f"    {'priors':10s} {report['priors_wall_s']:7.0f}           (top, middle and bottom trained at once)")
    print(f"    {'total':10s} {report['total_wall_s']:7.0f}  {report['total_cpu_s']:7.0f}"
          f"   ({report['total_wall_s'] / 60:.1f} min wall)")
    if not check:
        print("\n  output not judged (--quick: untrained models)")
    elif report["problems"]:
        print("\n  output check FAILED: the final audio (level 0) is " + "; ".join(report["problems"]))
    else:
        misses = report["music_target_misses"]
        in_draws_only = all(miss.startswith("draw ") for miss in misses)  # the mean of the draws meets it
        why = "; ".join(misses) + (" (the mean of the draws meets it)" if in_draws_only else
                                   " (hissy: notes and beats under a noise floor)")
        print("\n  output check passed: the final audio (level 0) is not broken. Music target " +
              (f"MISSED: {why}" if misses else "met") + ". Listen to it, and to the levels above, and look at the "
              "spectrograms:")
        print(f"    {report['files']['the continuations, per level (level_0 is the final audio)']}")
        print(f"    {report['files']['spectrograms: prime + continuation, song, VQ-VAE decode, upsampler']}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="The CPU quick start: toy songs -> VQ-VAE -> top/middle/bottom priors -> a primed "
                    "continuation, then a report (spectral convergence, bits per token, flatness, onsets and "
                    "tones of the output, spectrograms, time per stage). About 10 minutes on 2 CPU cores.")
    parser.add_argument("--out", default="recipe_out", help="output folder; must not exist yet or be empty "
                        "(default recipe_out)")
    parser.add_argument("--quick", action="store_true", help="a 10-60 s smoke run at toy-of-toy size; the "
                        "output is reported but not judged (what tests/test_recipe.py runs)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every stage's step count (e.g. 0.5 "
                        "for a faster, worse run, 3 for a better one) (default 1)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="CPU threads: the VQ-VAE "
                        "trains on N threads, the three priors at once in min(N, 3) processes of one thread, "
                        "sampling on one (default: 2, or 1 on a one-core machine)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage (default 0)")
    args = parser.parse_args(argv)
    try:
        if not 0 < args.scale < math.inf or args.threads < 1 or args.seed < 0:  # nan fails the first test
            raise RecipeError(f"--scale {args.scale} / --threads {args.threads} / --seed {args.seed}: the scale must "
                              "be a positive number, the threads at least 1, the seed at least 0")
        if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
            raise RecipeError(f"--out {args.out}: already exists and is not empty; pick another --out or delete it")
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    print(f"recipe: {'quick' if args.quick else 'full'} run, scale {args.scale}, {args.threads} threads -> "
          f"{args.out}/\n{json.dumps(dataclasses.asdict(sizes))}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    report = run(args, sizes)
    print_report(report, sizes.check_output)
    return 1 if report["problems"] and sizes.check_output else 0


if __name__ == "__main__":
    sys.exit(main())
