"""The CPU quick start: from nothing to a primed continuation you can listen to, on a laptop CPU.

    python recipe.py                    # the full recipe: 7 min on 2 idle CPU cores, longer on busy ones
    python recipe.py --quick            # a 10-60 s smoke run (what tests/test_recipe.py runs)

It runs the whole of Jukebox (arXiv:2005.00341) end to end at toy size, with the same commands a user would
type, called in-process: `data.py --make-toy` writes procedurally generated songs; `train.py --stage vqvae`
trains the three-level VQ-VAE (§3); `train.py --stage top|middle|bottom` trains the three priors on its codes
(§4); `sample.py --prime` continues the start of a held-out toy song through all three levels (§4.4). Then it
measures what came out and prints a report:
  - spectral convergence (dB) of each VQ-VAE level on the held-out song (the paper's Table 1 metric);
  - bits per token of each prior on the held-out song's codes, next to its training loss and the uniform
    and unigram baselines (a prior that learned something beats the unigram entropy);
  - RMS, spectral flatness, sub-40 Hz rumble and loudness dynamics of the continuation (`audio_figures`),
    and the wall and CPU time of each stage.
It fails loudly (exit code 1) when the continuation is silent, noise-like, a DC drift or a static drone.
Every number also goes to OUT/report.json.

Reading order: `Sizes` (every knob of the recipe, FULL and QUICK), `run` (the stages, in order), then the
measurements (`audio_figures`, `judge`, `vqvae_figures`, `heldout_bits`).

Shapes: audio (B, T, 1) at the model APIs, (T,) numpy in this file; codes per level (B, T_level) long.
"""
import os

# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning threads make the tiny
# models 10-50x slower. Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import soundfile  # noqa: E402
import torch  # noqa: E402

import data  # noqa: E402
import prior  # noqa: E402
import sample  # noqa: E402
import toy  # noqa: E402
import train  # noqa: E402
import vqvae  # noqa: E402

STAGES = ("vqvae", "top", "middle", "bottom")
LEVEL_OF = {"top": 2, "middle": 1, "bottom": 0}


@dataclasses.dataclass
class Sizes:
    """Every knob of the recipe. Step counts are multiplied by --scale."""
    songs: int = 8                 # toy training songs (data.py --n)
    song_seconds: float = 10.0     # length of each (data.py --seconds)
    heldout_seconds: float = 6.0   # the held-out song (another seed): evaluation and the prime
    vqvae_steps: int = 160         # optimizer steps of the VQ-VAE
    vqvae_batch: int = 4           # its batch (clips per step)
    vqvae_sample_length: int = 16384  # its clip length in samples (0.37 s; a multiple of the top hop 128)
    prior_steps: tuple = (800, 800, 600)  # steps of the top, middle, bottom prior
    prior_batch: tuple = (16, 32, 64)     # their batches (windows of n_ctx = 64 tokens per step)
    lr: float = 1e-3               # Adam peak learning rate of every stage (higher than the paper's 3e-4: short runs)
    warmup: int = 20               # linear warmup steps of every stage
    prime_seconds: float = 1.0     # the start of the held-out song given to sample.py --prime
    total_seconds: float = 3.0     # prime + continuation
    samples: int = 3               # continuations drawn at once (sample.py --n); the figures are their mean
    temperature: str = "0.6,0.6,0.95"  # sample.py --temperature (bottom,middle,top); below the released
    # 0.99,0.99,0.98 because tiny upsamplers are unsure of every code and a full-temperature draw adds hiss
    check_output: bool = True      # fail when the continuation is silent or noise-like


FULL = Sizes()
QUICK = Sizes(songs=2, song_seconds=3.0, heldout_seconds=2.0, vqvae_steps=3, vqvae_batch=2, vqvae_sample_length=4096,
              prior_steps=(3, 3, 3), prior_batch=(2, 2, 2), warmup=1, prime_seconds=0.2, total_seconds=0.35,
              samples=1, check_output=False)  # a smoke run: untrained models, so the output is reported, not judged

# The continuation is judged by four numbers (see audio_figures). What the toy songs measure: flatness
# 0.05-0.16, rumble < 2%, dynamics 0.4-0.9; white or brown noise: flatness 0.56-0.61; an untrained decoder's
# drift: rumble ~90%; a drone or steady noise: dynamics ~0.02. The recipe fails on sound that is silent, noise
# (flatness at least NOISE_FLATNESS, next to white noise), a drift or static. Between music and noise it grades
# the flatness: up to MUSIC_FLATNESS "music-like", then "hissy" (tones and beats under a noise floor).
SILENCE_RMS = 10 ** (-50 / 20)  # -50 dBFS
NOISE_FLATNESS = 0.5
MUSIC_FLATNESS = 0.2
MAX_RUMBLE = 0.5
MIN_DYNAMICS = 0.1


class RecipeError(Exception):
    """A problem the user can fix (output folder in use, bad flag): one line, exit code 2."""


# ---- measurements ---------------------------------------------------------------------------------------

def rms(audio):
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0


def audio_figures(audio, sample_rate, n_fft=2048, hop=512, band=(50.0, 8000.0), cell=16):
    """What a listener would notice first, from a Hann STFT of audio (T,) numpy:
      rms       loudness (silence is below -50 dBFS);
      flatness  how noise-like the sound is: spectral flatness (geometric / arithmetic mean of the power) in
                cells of `cell` neighbouring bins (16 bins = 344 Hz) between 50 Hz and 8 kHz, averaged over
                cells and frames weighted by their energy. Measured in narrow cells it ignores the spectral
                envelope, so coloured noise counts as noise too: white or brown noise ~0.56-0.61, a tone ~0.01,
                the toy songs 0.05-0.16 (their drums are noise bursts);
      rumble    the share of the energy below 40 Hz (DC offset and sub-audio drift: an untrained decoder's
                typical output, which is not noise and not silence yet not audible music either);
      dynamics  the coefficient of variation of the frame RMS: notes and beats come and go (toy songs
                0.4-0.9), a static drone or steady noise stays near 0.
    Frames more than 60 dB below the loudest are left out, so that silent gaps do not count."""
    x = torch.as_tensor(np.asarray(audio), dtype=torch.float64)
    if len(x) <= n_fft // 2:
        return dict(rms=rms(audio), flatness=float("nan"), rumble=float("nan"), dynamics=float("nan"))
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft, dtype=torch.float64),
                      return_complex=True).abs() ** 2  # (n_fft // 2 + 1, frames)
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
    return dict(rms=rms(audio), flatness=flatness, rumble=rumble, dynamics=dynamics)


def grade(figures):
    """music-like / hissy / noise, from the flatness alone (see the thresholds above)."""
    f = figures["flatness"]
    return "music-like" if f <= MUSIC_FLATNESS else "hissy" if f < NOISE_FLATNESS else "noise"


def judge(figures):
    """The reasons (possibly none) why a continuation is not audibly structured music."""
    f, problems = figures, []
    if not f["rms"] >= SILENCE_RMS:
        problems.append(f"silent (RMS {f['rms']:.2e} < {SILENCE_RMS:.2e})")
    if not f["flatness"] < NOISE_FLATNESS:
        problems.append(f"noise-like (spectral flatness {f['flatness']:.3f} >= {NOISE_FLATNESS})")
    if not f["rumble"] <= MAX_RUMBLE:
        problems.append(f"mostly DC offset / sub-audio rumble ({f['rumble']:.0%} of the energy below 40 Hz)")
    if not f["dynamics"] >= MIN_DYNAMICS:
        problems.append(f"static, no notes or beats (frame-RMS variation {f['dynamics']:.3f} < {MIN_DYNAMICS})")
    return problems


def load_model(folder, stage, model_class, config_class):
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
        soundfile.write(os.path.join(out_dir, f"level_{level}.wav"), x_hat[0, :, 0].clamp(-1, 1).numpy(), rate,
                        subtype="PCM_16")
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


def train_stage(argv):
    """train.main in-process; its user errors (exit code 2) stop the recipe with the same message."""
    print("$ python train.py " + " ".join(argv), flush=True)
    train.main(argv)


def run(args, sizes):
    def steps(n):  # a stage's step count under --scale
        return str(max(1, round(n * args.scale)))
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

    # 2. the VQ-VAE, then 3. the priors on its codes. EMA of the weights is off: the default decay
    # (1 - batch/8000) averages over thousands of steps and would leave these short runs near their init.
    common = ["--lr", str(sizes.lr), "--warmup", str(sizes.warmup), "--ema-decay", "0", "--device", "cpu",
              "--seed", str(args.seed), "--log-every", str(max(1, int(steps(sizes.vqvae_steps)) // 10))]
    clock.run("vqvae", train_stage, [
        "--stage", "vqvae", "--data", toy_dir, "--out", os.path.join(runs, "vqvae"), "--preset", "tiny",
        "--steps", steps(sizes.vqvae_steps), "--batch-size", str(sizes.vqvae_batch),
        "--sample-length", str(sizes.vqvae_sample_length), "--bandwidth-batches", "2", *common])
    for stage, n_steps, batch in zip(("top", "middle", "bottom"), sizes.prior_steps, sizes.prior_batch):
        clock.run(stage, train_stage, [
            "--stage", stage, "--data", toy_dir, "--out", os.path.join(runs, stage), "--preset", "tiny",
            "--vqvae", os.path.join(runs, "vqvae"), "--steps", steps(n_steps), "--batch-size", str(batch),
            *common])

    # 4. a primed continuation through all three levels
    sample_argv = ["--prime", heldout, "--prime-seconds", str(sizes.prime_seconds), "--seconds",
                   str(sizes.total_seconds), "--runs", runs, "--out", samples, "--device", "cpu",
                   "--seed", str(args.seed), "--temperature", sizes.temperature, "--n", str(sizes.samples)]
    print("$ python sample.py " + " ".join(sample_argv), flush=True)
    code = clock.run("sample", sample.main, sample_argv)
    if code != 0:
        raise SystemExit(code)

    # 5. the figures
    def measure():
        vq, _ = load_model(os.path.join(runs, "vqvae"), "vqvae", vqvae.VQVAE, vqvae.VQVAEConfig)
        rate = vq.config.sample_rate
        audio = data.load_audio(heldout, rate)  # (T,)
        with open(os.path.splitext(heldout)[0] + ".json") as f:
            meta = json.load(f)
        sc, codes = vqvae_figures(vq, audio, recon)
        report["spectral_convergence_db"] = {f"level_{L}": v for L, v in sc.items()}
        report["bits_per_token"] = {}
        for stage in ("top", "middle", "bottom"):
            model, _ = load_model(os.path.join(runs, stage), stage, prior.Prior, prior.PriorConfig)
            bits, unigram = heldout_bits(model, codes, meta, len(audio))
            report["bits_per_token"][stage] = {
                "heldout": bits, "train": last_training_loss(os.path.join(runs, stage)),
                "unigram_entropy": unigram, "uniform": math.log2(model.config.codebook_size)}
        # the sample: the continuation only (after the prime), and the whole file of each level
        output = {}
        prime_samples = int(sizes.prime_seconds * rate) // vq.config.hop_lengths[-1] * vq.config.hop_lengths[-1]
        for level in (2, 1, 0):
            items = []
            for i in range(sizes.samples):
                wav, _ = soundfile.read(os.path.join(samples, f"level_{level}", f"item_{i}.wav"), dtype="float32")
                items.append(audio_figures(wav[prime_samples:], rate))  # the continuation only
            output[f"level_{level}"] = {k: float(np.mean([f[k] for f in items])) for k in items[0]}  # mean of items
            report.setdefault("output_items", {})[f"level_{level}"] = items
        output["heldout_song"] = audio_figures(audio[prime_samples:], rate)  # how the song really goes on
        noise = np.random.default_rng(0).standard_normal(len(audio)) * rms(audio)
        output["white_noise"] = audio_figures(noise, rate)  # and what noise measures
        report["output"] = output
    clock.run("measure", measure)

    report["stages"] = clock.stages
    report["total_wall_s"] = time.time() - started
    report["total_cpu_s"] = sum(s["cpu_s"] for s in clock.stages.values())
    report["problems"] = judge(report["output"]["level_0"])  # the final audio: the bottom level's, mean of items
    report["files"] = {
        "toy songs": toy_dir, "held-out song (the prime)": heldout,
        **{f"{stage} checkpoint": train.find_checkpoint(os.path.join(runs, stage), stage, stage) for stage in STAGES},
        "VQ-VAE reconstructions of the held-out song": os.path.join(recon, "level_{0,1,2}.wav"),
        "the continuations, per level (level_0 is the final audio)": os.path.join(samples, "level_{0,1,2}/item_*.wav"),
        "codes (for sample.py --continue / --upsample)": os.path.join(samples, "codes.pt"),
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
    print("                                    RMS   flatness   rumble   dynamics   sounds")
    for name, o in report["output"].items():
        print(f"    {name:24s} {o['rms']:9.4f} {o['flatness']:10.4f} {o['rumble']:8.3f} {o['dynamics']:10.3f}   "
              f"{grade(o)}")
    print(f"    (fails when RMS < {SILENCE_RMS:.4f}, flatness >= {NOISE_FLATNESS}, rumble > {MAX_RUMBLE} or "
          f"dynamics < {MIN_DYNAMICS}; music-like up to flatness {MUSIC_FLATNESS})")
    print("\n  stage        wall s    CPU s")
    for name, s in report["stages"].items():
        print(f"    {name:10s} {s['wall_s']:7.0f}  {s['cpu_s']:7.0f}")
    print(f"    {'total':10s} {report['total_wall_s']:7.0f}  {report['total_cpu_s']:7.0f}"
          f"   ({report['total_wall_s'] / 60:.1f} min wall)")
    if report["problems"]:
        verdict = "FAILED" if check else "not judged (--quick: untrained models)"
        print(f"\n  output check {verdict}: the continuation is " + "; ".join(report["problems"]))
    else:
        print(f"\n  output check passed: the final audio (level 0) is not silent, noise, a drift or static; it is "
              f"{grade(report['output']['level_0'])}. Listen to it, and to the top level alone:")
        print(f"    {report['files']['the continuations, per level (level_0 is the final audio)']}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="The CPU quick start: toy songs -> VQ-VAE -> top/middle/bottom priors -> a primed "
                    "continuation, then a report (spectral convergence, bits per token, RMS and spectral "
                    "flatness of the output, time per stage). About 7 minutes on 2 idle CPU cores.")
    parser.add_argument("--out", default="recipe_out", help="output folder; must not exist yet or be empty "
                        "(default recipe_out)")
    parser.add_argument("--quick", action="store_true", help="a 10-60 s smoke run at toy-of-toy size; the "
                        "output is reported but not judged (what tests/test_recipe.py runs)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every stage's step count (e.g. 0.5 "
                        "for a faster, worse run, 3 for a better one) (default 1)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="torch CPU threads (default min(2, cores))")
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage (default 0)")
    args = parser.parse_args(argv)
    try:
        if args.scale <= 0 or args.threads < 1:
            raise RecipeError("--scale must be positive and --threads at least 1")
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
