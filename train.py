"""Train every stage of Jukebox -- the VQ-VAE and the three priors -- on one CPU, one GPU or many, with torchrun.

Paper: arXiv:2005.00341 §3 (the VQ-VAE and its losses), §4 (priors and upsamplers), Appendix B (training details).
Defaults follow the original's hparams.py (VQ-VAE losses and optimiser, priors).

    python train.py --stage vqvae --data DIR ...                       # one process (CPU or one GPU)
    torchrun --standalone --nproc_per_node=8 train.py --stage top ...  # one process per GPU, DDP

Stages: `vqvae` trains the 3-level VQ-VAE on raw audio; `top`, `middle`, `bottom` train the prior of level 2, 1, 0
on the codes of a frozen VQ-VAE checkpoint (`--vqvae PATH`), encoded on the fly from the audio windows. The
upsamplers (middle, bottom) also get the codes of the level above for the same window; every prior gets the
label vector y (timing, artist, genre, lyrics) from the optional `<stem>.json` next to each audio file.

Reading order:
  1. main()                  flags, the torchrun block (RANK/LOCAL_RANK/WORLD_SIZE), user errors -> exit code 2
  2. train()                 batch arithmetic, resume checks, model + optimizer + EMA, then the step loop:
                             micro-batches with no_sync, autocast + GradScaler, clip, Adam, EMA, progress, saves
  3. setup_*_stage()         what differs per stage: the model, its data window, batch -> model inputs
  4. save/load_checkpoint()  one dict, written atomically by rank 0, keep the last N, exact resume

Data order: the dataset maps a global sample counter to a window deterministically, and rank r takes samples
step*global_batch + r*local_batch + j (j < local_batch) at each step, so N processes see exactly the samples one
process sees, and resuming simply continues the counter (`data_position` in the checkpoint).

Differences from the original, on purpose: checkpoints keep the trained weights under "model" and the parameter
EMA under "ema" (the original saved the EMA swapped into the model); the VQ-VAE codebooks take one EMA step per
micro-batch (the original had no gradient accumulation).

Shape legend: B batch, T raw samples, N tokens of the prior's level (n_ctx), n_y length of the label vector.
"""
import argparse
import dataclasses
import gc
import glob
import json
import math
import os
import random
import re
import sys
import time
from contextlib import nullcontext

# Idle OpenMP threads sleep instead of spinning (set before torch starts its pool): spinning threads make
# small CPU ops 10-50x slower whenever another process shares the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import soundfile as sf
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import data
import official
import prior
import vqvae

STAGE_LEVEL = {"vqvae": None, "top": 2, "middle": 1, "bottom": 0}  # stage -> the prior's VQ-VAE level
DEFAULT_PRESET = {"vqvae": "jukebox", "top": "5b", "middle": "upsampler_level_1", "bottom": "upsampler_level_0"}
# Flags that may change between a run and its resumption; every other flag must match the checkpoint.
# Paths may move (--data, --vqvae); hyperparameters may not.
RESUMABLE_FLAGS = {"steps", "resume", "out", "data", "vqvae", "log_every", "save_every", "keep", "workers",
                   "sample_every", "device", "grad_checkpoint"}


PROGRESS_FIXED = ("step", "loss", "lr", "samples_per_s", "tokens_per_s", "eta_s")  # columns of their own


class UserError(Exception):
    """A problem the user can fix (bad flag, missing file, wrong checkpoint): one line, exit code 2."""


# ----------------------------------------------------------------------------------------------------------------
# Flags

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless there is none or its help already says it."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in action.help:
            return action.help
        return super()._get_help_string(action)


def build_parser():
    p = argparse.ArgumentParser(
        prog="train.py", description="Train a Jukebox stage (VQ-VAE or a prior); run under torchrun for DDP.",
        formatter_class=HelpFormatter)
    p.add_argument("--stage", required=True, choices=list(STAGE_LEVEL),
                   help="what to train: the VQ-VAE, or the prior of level 2 (top), 1 (middle) or 0 (bottom)")
    p.add_argument("--data", required=True, help="folder of audio files, each with an optional <stem>.json "
                   "holding {artist, genre, lyrics}; `python data.py --make-toy DIR` writes a toy one")
    p.add_argument("--out", default=None, help="run folder for checkpoints and metrics.jsonl (default runs/STAGE)")
    p.add_argument("--preset", default=None, help="model preset: vqvae.preset() names for --stage vqvae "
                   "(jukebox, tiny), prior.preset() names otherwise (5b, 5b_lyrics, 1b_lyrics, "
                   "upsampler_level_0/1, small, tiny); default: the released model of the stage")
    p.add_argument("--lyrics", default="none", choices=["none", "encoder", "merged"],
                   help="tiny/small top priors: lyric conditioning like 5b_lyrics (encoder) or 1b_lyrics (merged)")
    p.add_argument("--vqvae", default=None, help="prior stages: the frozen VQ-VAE whose codes the prior learns: "
                   "a train.py checkpoint (file, or run folder = its newest) or the released vqvae.pth.tar")
    p.add_argument("--resume", default=None, help="continue a run from this checkpoint (file, or run folder = "
                   "its newest); hyperparameters must be those of the run, while paths (--data, --vqvae, --out), "
                   "--steps, logging, --workers, --device and --grad-checkpoint may change")
    # optimisation
    p.add_argument("--steps", type=int, default=100_000, help="total optimizer steps of the run")
    p.add_argument("--batch-size", type=int, default=32,
                   help="global batch: samples per optimizer step, summed over all processes")
    p.add_argument("--micro-batch", type=int, default=None, help="samples per forward pass in each process; "
                   "gradient accumulation = batch-size / (processes * micro-batch) (default: no accumulation)")
    p.add_argument("--sample-length", type=int, default=393216,
                   help="--stage vqvae: raw samples per training window (priors use n_ctx * hop length)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak Adam learning rate (the original's default)")
    p.add_argument("--warmup", type=int, default=100, help="steps of linear learning-rate warmup from 0")
    p.add_argument("--beta1", type=float, default=0.9, help="Adam beta1")
    p.add_argument("--beta2", type=float, default=0.999, help="Adam beta2 (the 5b top prior used 0.925)")
    p.add_argument("--eps", type=float, default=1e-8, help="Adam epsilon")
    p.add_argument("--weight-decay", type=float, default=0.0, help="decoupled (AdamW-style) weight decay")
    p.add_argument("--clip", type=float, default=1.0, help="clip the global gradient norm to this (0 = off)")
    p.add_argument("--ema-decay", type=float, default=None, help="decay of the parameter EMA stored under "
                   "'ema' in checkpoints; default 1 - batch_size/8000 as in the original; 0 disables it")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast dtype of forward passes (parameters stay fp32); fp16 adds a GradScaler")
    p.add_argument("--grad-checkpoint", action="store_true",
                   help="priors: recompute each block's activations in the backward pass (less memory, same results)")
    p.add_argument("--bandwidth-batches", type=int, default=4, help="--stage vqvae: batches used to "
                   "estimate the loss normalisers ('bandwidth') before training; stored in the config")
    p.add_argument("--seed", type=int, default=0, help="seed of model init, data windows and training noise")
    # bookkeeping
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto = cuda if available; under torchrun each process takes cuda:LOCAL_RANK")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes per training process")
    p.add_argument("--log-every", type=int, default=10, help="steps between progress lines / metrics.jsonl rows")
    p.add_argument("--save-every", type=int, default=1000, help="steps between checkpoints (and at the end)")
    p.add_argument("--keep", type=int, default=3, help="keep only the newest N checkpoints of the run")
    p.add_argument("--sample-every", type=int, default=0, help="steps between audio written to the run folder: "
                   "reconstructions (vqvae) or short samples (priors); 0 = never")
    return p


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: one dict, explicit keys, only tensors and plain Python values (torch.load(weights_only=True))

def checkpoint_paths(folder):
    """The run's checkpoints, oldest first."""
    return sorted(glob.glob(os.path.join(folder, "ckpt_*.pt")))


def load_checkpoint(path, stage, flag):
    """Read a checkpoint of `stage` named by `flag` (a file, or a run folder -> its newest); UserError otherwise."""
    if os.path.isdir(path):
        found = checkpoint_paths(path)
        if not found:
            raise UserError(f"{flag} {path}: folder holds no ckpt_*.pt checkpoint; pass a run folder or "
                            f"checkpoint written by `train.py --stage {stage}`")
        path = found[-1]
    if not os.path.isfile(path):
        raise UserError(f"{flag} {path}: no such file; pass a checkpoint written by `train.py --stage {stage}`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding objects that are not plain data
        raise UserError(f"{flag} {path}: not a readable checkpoint ({type(e).__name__}); pass a checkpoint "
                        f"written by `train.py --stage {stage}`") from None
    if not isinstance(ckpt, dict) or "stage" not in ckpt:
        raise UserError(f"{flag} {path}: not a train.py checkpoint (no 'stage' key); official weights must be "
                        "converted first")
    if ckpt["stage"] != stage:
        raise UserError(f"{flag} {path}: is a '{ckpt['stage']}' checkpoint but a '{stage}' one is needed; "
                        f"pass a checkpoint written by `train.py --stage {stage}`")
    return ckpt


def save_checkpoint(ckpt, folder, keep):
    """Write atomically: a crash mid-write leaves only a stray .tmp, never a truncated ckpt_*.pt."""
    path = os.path.join(folder, f"ckpt_{ckpt['step']:07d}.pt")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
    os.replace(tmp, path)  # atomic on POSIX: readers see the old state or the new file, nothing between
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    for old in checkpoint_paths(folder)[:-keep] if keep > 0 else []:
        os.remove(old)
    return path


def rng_state():
    """This process's RNG states as plain data (numpy's array becomes a tensor for weights_only loading)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": random.getstate()}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------------
# Data: a global sample counter split over ranks and micro-batches

class GlobalIndexSampler(torch.utils.data.Sampler):
    """Yields this rank's dataset indices from `start_step` on: at step s, rank r takes the global samples
    s*global_batch + r*local_batch + j for j < local_batch (in micro-batches, in that order), forever."""

    def __init__(self, start_step, global_batch, rank, local_batch):
        self.start_step, self.global_batch, self.rank, self.local_batch = start_step, global_batch, rank, local_batch

    def __iter__(self):
        step = self.start_step
        while True:
            first = step * self.global_batch + self.rank * self.local_batch
            yield from range(first, first + self.local_batch)
            step += 1


def make_dataset(args, sample_rate, sample_length, **seconds):
    try:
        return data.AudioDataset(args.data, sample_rate, sample_length, seed=args.seed, **seconds)
    except data.AudioError as e:  # missing or empty folder, bad sidecar: the message names the file and the fix
        raise UserError(f"--data: {e}") from None


# ----------------------------------------------------------------------------------------------------------------
# Stages: each returns (model, config, dataset, inputs: batch -> model arguments, listen: writes example audio,
# extra: more entries for every checkpoint)

def setup_vqvae_stage(args, ckpt, dataset_for, device):
    """The VQ-VAE: rebuilt from the checkpoint's config on resume, else the preset plus an estimated bandwidth."""
    if args.grad_checkpoint:
        raise UserError("--grad-checkpoint is for the prior stages; the VQ-VAE has no checkpointed blocks")
    if ckpt is not None:
        cfg = vqvae.VQVAEConfig(**ckpt["config"])
    else:
        try:
            cfg = vqvae.preset(args.preset)
        except ValueError as e:
            raise UserError(f"--preset: {e}") from None
    shortest = max(cfg.stft_n_fft + (vqvae.DEFAULT_STFT[0],)) // 2 + 1  # the STFTs reflect-pad by n_fft / 2
    if args.sample_length % cfg.hop_lengths[-1] or args.sample_length < shortest:
        raise UserError(f"--sample-length {args.sample_length}: must be a multiple of {cfg.hop_lengths[-1]} (the "
                        f"top level's hop length) and at least {shortest} samples")
    dataset = dataset_for(cfg.sample_rate, args.sample_length)
    if ckpt is None:
        # The loss normalisers come from data (the original's calculate_bandwidth): estimated from the first windows, identical on every
        # rank (same indices), then frozen into the config so every later run and reader uses the same values.
        n = args.bandwidth_batches * args.batch_size  # the same samples whatever the number of processes
        audio = torch.stack([dataset[i]["audio"] for i in range(n)])  # (n, T, 1)
        bandwidth = vqvae.estimate_bandwidth(audio)
        cfg = dataclasses.replace(cfg, bandwidth_l2=bandwidth["l2"], bandwidth_spec=bandwidth["spec"])
    model = vqvae.VQVAE(cfg).to(device)

    def inputs(batch):
        return (batch["audio"].to(device),)  # (B, T, 1)

    def listen(model, model_inputs, prefix, step):
        """The first window of the batch and its reconstruction through each level."""
        audio = model_inputs[0][:1]  # (1, T, 1)
        write_audio(f"{prefix}_input.wav", audio, cfg.sample_rate)
        for level, codes in enumerate(model.encode(audio)):
            write_audio(f"{prefix}_recon_l{level}.wav", model.decode(codes, level), cfg.sample_rate)
    return model, cfg, dataset, inputs, listen, {}


def load_frozen_vqvae(path):
    """The VQ-VAE whose codes a prior learns: a train.py checkpoint (with its EMA weights when it has them: the
    original saved only those), or the released `vqvae.pth.tar`, read through official.py."""
    if path.endswith(".pth.tar"):
        if not os.path.isfile(path):
            raise UserError(f"--vqvae {path}: no such file; pass the released vqvae.pth.tar or a train.py checkpoint")
        try:
            return official.load_vqvae(path)  # the released hyperparameters
        except official.CheckpointError as e:
            raise UserError(f"--vqvae: {e}") from None
    ckpt = load_checkpoint(path, "vqvae", "--vqvae")
    model = vqvae.VQVAE(vqvae.VQVAEConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"])
    return model


def setup_prior_stage(args, ckpt, dataset_for, device):
    """A prior of level 0-2 fed by a frozen VQ-VAE: window audio -> codes of its level (and of the level above)."""
    level = STAGE_LEVEL[args.stage]
    if args.vqvae is None:
        raise UserError(f"--stage {args.stage} needs --vqvae PATH: a checkpoint written by `train.py --stage vqvae` "
                        "or the released vqvae.pth.tar")
    encoder = load_frozen_vqvae(args.vqvae).to(device).eval().requires_grad_(False)
    vq_cfg = encoder.config

    if ckpt is not None:
        cfg = prior.PriorConfig(**ckpt["config"])
    else:
        try:
            cfg = prior.preset(args.preset, level=level, lyrics=args.lyrics)
        except ValueError as e:
            raise UserError(f"--preset {args.preset} for --stage {args.stage}: {e}") from None
        # The prior models the codes of this VQ-VAE: its codebook, hop lengths and sample rate are the VQ-VAE's.
        cfg = dataclasses.replace(cfg, codebook_size=vq_cfg.codebook_size, hop_lengths=vq_cfg.hop_lengths,
                                  sample_rate=vq_cfg.sample_rate)
    if (cfg.codebook_size, tuple(cfg.hop_lengths)) != (vq_cfg.codebook_size, vq_cfg.hop_lengths):
        raise UserError(f"--vqvae {args.vqvae}: its codebook/hops ({vq_cfg.codebook_size}, {vq_cfg.hop_lengths}) are "
                        f"not those this prior was trained on; resume with the VQ-VAE the run started with")
    if ckpt is not None and ckpt.get("vqvae_config", dataclasses.asdict(vq_cfg)) != dataclasses.asdict(vq_cfg):
        raise UserError(f"--vqvae {args.vqvae}: not the VQ-VAE this run was trained on (its config differs); resume "
                        "with the VQ-VAE the run started with")
    cfg = dataclasses.replace(cfg, gradient_checkpointing=args.grad_checkpoint)  # no effect on results or weights
    # The window of raw audio whose level-`level` codes fill the context: n_ctx * hop_length samples. The top
    # prior's timing embedding only covers songs of min..max_duration seconds, so others are left out.
    seconds = dict(min_seconds=cfg.min_duration, max_seconds=cfg.max_duration) if cfg.is_top else {}
    dataset = dataset_for(cfg.sample_rate, cfg.sample_length, **seconds)
    model = prior.Prior(cfg).to(device)

    def inputs(batch):
        audio = batch["audio"].to(device)  # (B, T, 1), T = n_ctx * hop_length
        codes = encoder.encode(audio)  # [(B, T/hop_0), (B, T/hop_1), (B, T/hop_2)], no grad
        tokens = codes[level]  # (B, N)
        upper = None if cfg.is_top else codes[level + 1]  # (B, N/4): the level above, same window
        rows = []
        for i in range(len(audio)):
            total, offset = int(batch["total_length"][i]), int(batch["offset"][i])
            artist, genres, lyrics = data.song_labels(batch["artist"][i], batch["genre"][i], batch["lyrics"][i],
                                                      cfg.label_version)
            if cfg.lyrics != "none":  # the characters that go with this window (lyrics spread evenly over the song)
                lyrics = data.lyric_window(lyrics, cfg.n_lyric_tokens, total, offset, cfg.sample_length)[0]
            rows.append(prior.make_y(cfg, artist, genres, total, offset, lyrics))
        return tokens, torch.stack(rows).to(device), upper  # y: (B, n_y)

    def listen(model, model_inputs, prefix, step):
        """One window sampled with the labels (and upper codes) of the batch's first window, decoded to audio."""
        tokens, y, upper = model_inputs
        generator = torch.Generator(device).manual_seed(step)  # leaves the training RNG untouched
        sampled = model.sample(1, y[:1], None if upper is None else upper[:1], generator=generator)  # (1, N)
        write_audio(f"{prefix}_sample.wav", encoder.decode(sampled, level), cfg.sample_rate)
        write_audio(f"{prefix}_data.wav", encoder.decode(tokens[:1], level), cfg.sample_rate)
    # The VQ-VAE's config goes into every checkpoint: sample.py refuses to pair the prior with another VQ-VAE.
    return model, cfg, dataset, inputs, listen, {"vqvae_config": dataclasses.asdict(vq_cfg)}


def write_audio(path, audio, sample_rate):
    """(1, T, 1) float -> a 16-bit wav, clipped to [-1, 1]."""
    sf.write(path, audio[0, :, 0].clamp(-1, 1).float().cpu().numpy(), sample_rate, subtype="PCM_16")


# ----------------------------------------------------------------------------------------------------------------
# Training

def learning_rate(step, args):
    """Linear warmup from 0 to --lr over --warmup steps, then constant (the original's default schedule)."""
    return args.lr * min(1.0, (step + 1) / args.warmup) if args.warmup > 0 else args.lr


def progress_line(row, steps, prior_stage):
    """step | loss and its parts | speed | ETA. Per-level figures (suffix _l0.._l2) stay in metrics.jsonl,
    except the VQ-VAE's codebook usage (live codes per level)."""
    speed = f"{row['tokens_per_s']:.0f} tokens/s" if prior_stage else f"{row['samples_per_s']:.2f} samples/s"
    parts = " ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in PROGRESS_FIXED
                     and (not re.search(r"_l\d$", k) or k.startswith("usage_")))
    eta = int(row["eta_s"])
    return (f"step {row['step']}/{steps} | loss {row['loss']:.4f}{' bits/token' if prior_stage else ''} | {parts} | "
            f"lr {row['lr']:.2e} | {speed} | eta {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}")


def train(args, rank, local_rank, world_size, device, ddp):
    master = rank == 0
    level = STAGE_LEVEL[args.stage]
    for name, least in dict(steps=1, batch_size=1, micro_batch=1, log_every=1, save_every=1, bandwidth_batches=1,
                            keep=0, workers=0, sample_every=0, warmup=0).items():
        if getattr(args, name) is not None and getattr(args, name) < least:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least {least}")
    args.out = args.out or os.path.join("runs", args.stage)
    args.preset = args.preset or DEFAULT_PRESET[args.stage]
    if args.ema_decay is None:
        args.ema_decay = 1.0 - args.batch_size / 8000  # jukebox: mu = 1 - (bs * ngpus / 8) / 1000

    # Batch arithmetic: global batch = world_size * micro_batch * accumulation steps.
    if args.batch_size % world_size:
        raise UserError(f"--batch-size {args.batch_size} is not divisible by the {world_size} processes; "
                        "pick a multiple")
    local_batch = args.batch_size // world_size
    micro_batch = args.micro_batch or local_batch
    if local_batch % micro_batch:
        raise UserError(f"--micro-batch {micro_batch} does not divide the {local_batch} samples per process "
                        f"(--batch-size {args.batch_size} / {world_size} processes)")
    accum = local_batch // micro_batch

    # Resume: the checkpoint must be of this stage and of the same run configuration.
    ckpt = load_checkpoint(args.resume, args.stage, "--resume") if args.resume else None
    unused = {"vqvae", "lyrics"} if level is None else {"sample_length", "bandwidth_batches"}  # by the other stages
    run_config = {k: v for k, v in sorted(vars(args).items()) if k not in RESUMABLE_FLAGS | unused}
    if ckpt is not None:
        if "optimizer" not in ckpt or "train" not in ckpt:
            raise UserError(f"--resume {args.resume}: holds weights but no training state (converted official "
                            "weights?); --resume needs a checkpoint written by train.py")
        for key, old in ckpt["train"].items():
            if key not in RESUMABLE_FLAGS and run_config.get(key) != old:
                flag = "--" + key.replace("_", "-")
                raise UserError(f"--resume {args.resume}: the run was started with {flag} {old} but this "
                                f"command has {flag} {run_config.get(key)}; resume with the same flags")
    elif checkpoint_paths(args.out):
        raise UserError(f"--out {args.out} already holds checkpoints; add --resume {args.out} to continue that "
                        "run, or pick another --out")

    # Model, config and data of the stage. Same seed on every rank -> same init (DDP also broadcasts rank 0's).
    seed_everything(args.seed)

    def dataset_for(sample_rate, sample_length, **seconds):
        return make_dataset(args, sample_rate, sample_length, **seconds)
    setup = setup_vqvae_stage if level is None else setup_prior_stage
    model, cfg, dataset, inputs, listen, extra = setup(args, ckpt, dataset_for, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps,
                                  weight_decay=args.weight_decay)
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    scaler = torch.amp.GradScaler(device.type, enabled=args.dtype == "fp16")
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    # Parameter EMA, fp32, kept apart from the model: the model always holds the trained weights.
    ema = {n: p.detach().clone().float() for n, p in model.named_parameters()} if args.ema_decay > 0 else None
    # Tied weights (e.g. a prior's x_out = x_emb) appear once in named_parameters but under each name in the
    # state dict; map every name to the one EMA entry.
    canonical = {id(p): n for n, p in model.named_parameters()}
    ema_name = {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}

    start_step = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema = {n: ckpt["ema"][n].to(device).float() for n in ema}
        start_step = ckpt["step"]
        assert ckpt["data_position"] == start_step * args.batch_size
    if ckpt is not None and len(ckpt["rng"]) == world_size:
        set_rng_state(ckpt["rng"][rank])  # exact continuation of every rank's random stream
    else:
        # fresh run (or a resume on a different number of processes): each rank its own stream
        seed_everything(args.seed + rank + (1_000_003 * start_step))

    # forward_sync_buffers=False: buffers (the VQ-VAE codebooks) are synchronised by the model's own all-reduce and
    # broadcast at each update, not overwritten with rank 0's copy before every forward.
    train_model = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None,
                      forward_sync_buffers=False) if ddp else model
    sampler = GlobalIndexSampler(start_step, args.batch_size, rank, local_batch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=micro_batch, sampler=sampler,
                                         num_workers=args.workers, generator=torch.Generator().manual_seed(0),
                                         pin_memory=device.type == "cuda")
    batches = iter(loader)  # the generator keeps the DataLoader from consuming the global torch RNG

    if master:
        os.makedirs(args.out, exist_ok=True)
        for stray in glob.glob(os.path.join(args.out, "*.tmp")):  # left by a run killed while saving
            os.remove(stray)
        paths = dict(steps=args.steps, out=args.out, data=args.data, vqvae=args.vqvae)
        print(f"train: {json.dumps(run_config | paths)}")
        print(f"model: {json.dumps(dataclasses.asdict(cfg))}")
        print(f"run: {world_size} process(es) x {accum} micro-batch(es) of {micro_batch} = global batch "
              f"{args.batch_size} | {sum(p.numel() for p in params):,} parameters | {device} | "
              f"{'resuming at' if ckpt else 'starting at'} step {start_step}", flush=True)

    def checkpoint(step):
        """All ranks call this (the RNG gather is collective); rank 0 writes."""
        rngs = [None] * world_size
        if ddp:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        sd = model.state_dict()
        if ddp:  # a cheap guard against replicas drifting apart (e.g. a codebook update not synchronised)
            fingerprint = torch.stack([t.detach().double().sum() for t in sd.values()])
            fingerprints = [torch.zeros_like(fingerprint) for _ in range(world_size)]
            dist.all_gather(fingerprints, fingerprint)
            if not all(torch.equal(f, fingerprints[0]) for f in fingerprints):
                raise RuntimeError(f"model replicas differ across ranks at step {step}: a state update is not "
                                   "synchronised between processes")
        if not master:
            return
        # "ema" is a complete state dict too: averaged parameters, the model's current buffers (codebooks).
        ema_sd = None if ema is None else {k: ema[ema_name[k]] if k in ema_name else v for k, v in sd.items()}
        ckpt = {"stage": args.stage, "step": step, "config": dataclasses.asdict(cfg), "train": run_config,
                "model": sd, "ema": ema_sd, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "rng": rngs, "data_position": step * args.batch_size, **extra}
        path = save_checkpoint(ckpt, args.out, args.keep)
        print(f"saved {path}")

    tokens_per_sample = cfg.n_ctx if level is not None else None
    t_last, steps_since, sums = time.time(), 0, {}
    t_start = time.time()
    for step in range(start_step, args.steps):
        lr = learning_rate(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Gradient accumulation: gradients are all-reduced only at the last micro-step (no_sync before it).
        figures = 0.0  # loss and metrics, summed over micro-steps, kept on the device (no host sync per metric)
        for micro_step in range(accum):
            model_inputs = inputs(next(batches))
            sync = nullcontext() if not ddp or micro_step == accum - 1 else train_model.no_sync()
            with sync:
                with autocast:
                    loss, metrics = train_model(*model_inputs)
                scaler.scale(loss / accum).backward()
            names = ["loss", *metrics]
            figures = figures + torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).detach()
                                             for v in (loss, *metrics.values())]) / accum
        # Mean of every figure over all ranks (one all-reduce); a non-finite loss stops before the weights change.
        if ddp:
            dist.all_reduce(figures)
            figures /= world_size
        parts = dict(zip(names, figures.tolist()))
        if not math.isfinite(parts["loss"]):
            raise UserError(f"loss became {parts['loss']} at step {step}; no checkpoint written for it. Lower --lr "
                            f"or use --dtype fp32/bf16, and --resume {args.out} from the last good checkpoint")
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.clip if args.clip > 0 else float("inf"))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    ema[n].lerp_(p.detach().float(), 1.0 - args.ema_decay)
        parts["grad_norm"] = float(grad_norm)  # before clipping; inf on the fp16 steps the GradScaler skips
        if scaler.is_enabled():
            parts["loss_scale"] = scaler.get_scale()

        # Progress: the interval's mean of every figure, printed and appended to metrics.jsonl.
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        steps_since += 1
        done = step + 1
        if master and (done % args.log_every == 0 or done == args.steps):
            now = time.time()
            row = {"step": done, **{k: v / steps_since for k, v in sums.items()}, "lr": lr,
                   "samples_per_s": steps_since * args.batch_size / (now - t_last)}
            if tokens_per_sample:
                row["tokens_per_s"] = row["samples_per_s"] * tokens_per_sample
            row["eta_s"] = (args.steps - done) * (now - t_start) / (done - start_step)
            with open(os.path.join(args.out, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")
            print(progress_line(row, args.steps, level is not None), flush=True)
            t_last, steps_since, sums = now, 0, {}
        if master and args.sample_every and (done % args.sample_every == 0 or done == args.steps):
            model.eval()  # rank 0 alone; no collectives inside, the other ranks go on to the next step
            with torch.no_grad():
                listen(model, model_inputs, os.path.join(args.out, f"step_{done:07d}"), done)
            model.train()
        if done % args.save_every == 0 or done == args.steps:
            checkpoint(done)


def main(argv=None):
    args = build_parser().parse_args(argv)
    # The torchrun block (nanoGPT style): torchrun sets RANK/LOCAL_RANK/WORLD_SIZE; without it, one process.
    ddp = "RANK" in os.environ
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is visible; use --device cpu", file=sys.stderr)
        sys.exit(2)
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls/convs on tensor cores (nanoGPT does the same)
        torch.backends.cudnn.allow_tf32 = True
    if ddp:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        train(args, rank, local_rank, world_size, device, ddp)
        if ddp:
            dist.barrier()  # leave together: a rank that tears down gloo while another still talks to it can abort
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if ddp:
            # Free the DDP wrapper (and the gloo work it holds) before the process group and the interpreter
            # go: gloo threads that outlive them abort the process at exit (SIGABRT) now and then.
            gc.collect()
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
