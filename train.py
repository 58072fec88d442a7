"""Train every stage of Jukebox -- the VQ-VAE and the three priors -- on one CPU, one GPU or many, with torchrun.

Paper: arXiv:2005.00341 §3 (the VQ-VAE and its losses), §4 (priors and upsamplers), Appendix B (training details).
Defaults follow the original's hparams.py; RECIPE holds what its released models changed (beta2 0.925 for 5b).

    python train.py --stage vqvae --data DIR ...                       # one process (CPU or one GPU)
    torchrun --standalone --nproc_per_node=8 train.py --stage top ...  # a process per GPU: DDP, or --fsdp

Stages: `vqvae` trains the 3-level VQ-VAE on audio windows; `top`, `middle`, `bottom` the prior of level 2, 1, 0
on the code cache (data.CodeDataset) of a frozen VQ-VAE (--vqvae), with each window's label vector y. Reading
order: 1. main() and train(): the torchrun block, the loop on one screen (as nanoGPT's). 2. VQVAEStage, PriorStage:
what differs per stage. 3. Run: the training state and the loop's steps. 4. The checkpoint API of the other scripts.

Every window is a pure function of its index, so N processes see the samples of one. Checkpoints keep the trained
weights under "model", the parameter EMA under "ema" (the original saved the EMA swapped in); VQ-VAE codebooks take
one EMA step per micro-batch. Shapes: B batch, T samples, N codes of the prior's level (n_ctx), n_y the label vector.
"""
import argparse
import dataclasses
import gc
import glob
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from datetime import timedelta
from itertools import count

import torch
import torch.distributed as dist
import torch.distributed.checkpoint.state_dict as dcp
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

import data
import official
import prior
import vqvae
from data import UserError

STAGES = {"vqvae": None, "top": 2, "middle": 1, "bottom": 0}  # stage -> the level of its prior
DEFAULT_PRESET = {"vqvae": "jukebox", "top": "5b", "middle": "upsampler_level_1", "bottom": "upsampler_level_0"}
RECIPE = {"5b": {"beta2": 0.925}}  # jukebox: training hyperparameters a released model set apart (prior_5b)
# Flags that may change when a run is resumed (paths, length, logging, speed); every other flag must match.
RESUMABLE = {"steps", "resume", "out", "data", "vqvae", "codes", "eval_data", "eval_every", "eval_windows",
             "log_every", "save_every", "keep", "workers", "sample_every", "device", "grad_checkpoint", "fsdp"}
NUMBERS = {  # every numeric flag: type, default, valid values (checked before anything runs), help
    "steps": (int, 100_000, "[1, inf)", "total optimizer steps of the run"),
    "batch_size": (int, 32, "[1, inf)", "global batch: samples per step over all processes"),
    "micro_batch": (int, None, "[1, inf)", "samples per forward pass (default: the whole local batch)"),
    "sample_length": (int, 393216, "[1, inf)", "--stage vqvae: samples per training window"),
    "lr": (float, 3e-4, "(0, inf)", "peak AdamW learning rate"),
    "warmup": (int, 100, "[0, inf)", "steps of linear learning-rate warmup from 0"),
    "lr_decay_start": (int, 0, "[0, inf)", "step where the linear decay of the learning rate starts"),
    "lr_decay": (int, 0, "[0, inf)", "steps of linear decay to 0 (0 = constant after warmup)"),
    "beta1": (float, 0.9, "[0, 1)", "Adam beta1"),
    "beta2": (float, None, "[0, 1)", "Adam beta2 (default: 0.925 for 5b as released, else 0.999)"),
    "eps": (float, 1e-8, "(0, inf)", "Adam epsilon"),
    "weight_decay": (float, 0.0, "[0, inf)", "decoupled (AdamW) weight decay"),
    "clip": (float, 1.0, "[0, inf)", "clip the global gradient norm to this (0 = off)"),
    "ema_decay": (float, None, "[0, 1)", "parameter EMA decay (default 1 - batch/8000, the original's; 0 = off)"),
    "max_skipped": (int, 50, "[1, inf)", "fp16: stop after this many skipped steps in a row"),
    "upper_noise": (float, 0.0, "[0, 1)", "upsamplers: the share of the level above's codes replaced by random "
                    "codes in training, for robustness to sampled codes from above (0 = off, the original)"),
    "bandwidth_batches": (int, 4, "[1, inf)", "--stage vqvae: batches that estimate the loss normalisers"),
    "seed": (int, 0, "[0, inf)", "seed of the init, the data windows and training noise"),
    "workers": (int, 0, "[0, inf)", "DataLoader worker processes per training process"),
    "log_every": (int, 10, "[1, inf)", "steps between progress lines / metrics.jsonl rows"),
    "save_every": (int, 1000, "[1, inf)", "steps between checkpoints (and at the end)"),
    "keep": (int, 3, "[0, inf)", "keep the newest N checkpoints (0 = all)"),
    "sample_every": (int, 0, "[0, inf)", "steps between example audio in the run folder (0 = never)"),
    "eval_every": (int, 0, "[0, inf)", "steps between held-out evaluations (0 = never)"),
    "eval_windows": (int, 64, "[1, inf)", "held-out windows per evaluation, rounded up to whole micro-batches")}
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
FULL = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0's CPU only


# ---- 1. the command line and the loop --------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    def error(self, message):  # a mistyped flag is a user error like any other: one line, exit code 2
        self.exit(2, f"error: {message}\n")  # argparse's exit: the message to stderr, then sys.exit


class Defaults(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):  # "(default: X)" only where there is one the help does not already name
        return action.help if action.default in (None, False) else super()._get_help_string(action)


def build_parser():
    p = Parser(formatter_class=Defaults, description=__doc__.split("\n")[0])
    arg = p.add_argument  # every flag of the command line, in the order -h lists them
    arg("--stage", required=True, choices=list(STAGES), help="the VQ-VAE, or the prior of level 2, 1 or 0")
    arg("--data", required=True, help="folder of audio, each with an optional <stem>.json {artist, genre, lyrics}")
    arg("--out", help="run folder for checkpoints and metrics.jsonl (default runs/STAGE)")
    arg("--preset", help="vqvae.preset() or prior.preset() name (default: the released model of the stage)")
    arg("--lyrics", default="none", choices=["none", "encoder", "merged"], help="tiny/toy/bench top priors: "
        "lyrics as 5b_lyrics (encoder) or 1b_lyrics (merged)")
    arg("--vqvae", help="prior stages: the frozen VQ-VAE, a train.py checkpoint or run folder, or vqvae.pth.tar")
    arg("--codes", help="prior stages: the code cache folder (default DATA/.jukebox_codes)")
    arg("--resume", help="continue the run of this checkpoint or run folder; hyperparameters must be the run's")
    arg("--eval-data", help="held-out songs: bits/token (priors) or spectral convergence per level (VQ-VAE)")
    arg("--aug-shift", action="store_true", help="shift each window by a random amount within half a window")
    arg("--aug-blend", action="store_true", help="--stage vqvae: mix stereo channels at random weights")
    arg("--level-steps", help="--stage vqvae: steps each level trains, e.g. 160,960,160 (a level then stays as it is)")
    arg("--dtype", default="fp32", choices=list(AUTOCAST), help="autocast dtype; fp16 adds a GradScaler")
    arg("--grad-checkpoint", action="store_true", help="priors: recompute blocks in the backward pass")
    arg("--fsdp", action="store_true", help="priors under torchrun: FSDP2 (a unit per transformer block), not DDP")
    arg("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda if available")
    for name, (kind, default, interval, text) in NUMBERS.items():  # numeric flags: their valid range is part of -h
        arg("--" + name.replace("_", "-"), type=kind, default=default, help=f"{text}; in {interval}")
    return p


def check_flags(args, ddp, use_cuda):
    """Every numeric flag against NUMBERS (nan fails every comparison), and flags that only make sense together."""
    for name, (_, _, interval, _) in NUMBERS.items():  # e.g. '[1, inf)' -> 1 <= value < inf
        value, (low, high) = getattr(args, name), map(float, interval[1:-1].split(","))
        if value is not None and not ((low <= value if interval[0] == "[" else low < value) and value < high):
            raise UserError(f"--{name.replace('_', '-')} {value}: must be in {interval}")
    steps = args.level_steps.split(",") if args.level_steps else [str(args.steps)] * 3
    if (args.stage != "vqvae" and args.level_steps) or len(steps) != 3 or not all(map(str.isdigit, steps)) \
            or min(map(int, steps)) < 1 or max(map(int, steps)) < args.steps:
        raise UserError(f"--level-steps {args.level_steps}: --stage vqvae only, three step counts >= 1 (bottom, "
                        f"middle, top), the largest at least --steps {args.steps}")
    if args.eval_every and not args.eval_data:  # nothing to evaluate on
        raise UserError("--eval-every needs --eval-data DIR, a folder of held-out songs")
    if (args.stage == "vqvae" and (args.fsdp or args.grad_checkpoint)) or (args.stage != "vqvae" and args.aug_blend):
        raise UserError("--fsdp and --grad-checkpoint are for prior stages, --aug-blend for --stage vqvae only")
    if args.fsdp and not ddp:  # one process has nothing to shard over
        raise UserError("--fsdp shards over processes: start it with torchrun --nproc_per_node=N train.py ...")
    if use_cuda and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu")


def train(args, rank, world, device):
    """One run: the batch plan, the resume check, the stage and its training state, then the step loop."""
    args.out, args.preset = args.out or os.path.join("runs", args.stage), args.preset or DEFAULT_PRESET[args.stage]
    args.beta2 = RECIPE.get(args.preset, {}).get("beta2", 0.999) if args.beta2 is None else args.beta2
    args.ema_decay = 1 - args.batch_size / 8000 if args.ema_decay is None else args.ema_decay  # jukebox: bs/8/1000
    local_batch = args.batch_size // world  # global batch = processes x micro-batch x accumulation steps
    micro_batch = args.micro_batch or local_batch  # no accumulation unless asked for
    if args.batch_size % world or local_batch % micro_batch:
        raise UserError(f"--batch-size {args.batch_size} does not split into {world} process(es) x --micro-batch "
                        f"{micro_batch}; pick sizes that divide it")
    plan = local_batch, micro_batch, local_batch // micro_batch  # (local batch, micro-batch, accumulation steps)
    unused = {"vqvae", "lyrics", "codes"} if args.stage == "vqvae" else {"sample_length", "bandwidth_batches"}
    run_config = {k: v for k, v in sorted(vars(args).items()) if k not in RESUMABLE | unused}
    ckpt = resume_check(args, run_config)  # None for a fresh run
    torch.manual_seed(args.seed)  # the same init on every rank
    stage = (VQVAEStage if args.stage == "vqvae" else PriorStage)(args, ckpt, device)
    run = Run(args, stage, ckpt, rank, world, device, plan)  # the training state, resumed from ckpt if given
    # At step s rank r reads the global samples s * batch_size + r * local_batch + j, in micro-batches, forever.
    indices = (s * args.batch_size + rank * local_batch + j for s in count(run.start_step) for j in range(local_batch))
    batches = iter(torch.utils.data.DataLoader(stage.dataset, batch_size=micro_batch, sampler=indices,
                                               num_workers=args.workers, pin_memory=device.type == "cuda",
                                               generator=torch.Generator()))  # spares the global random stream
    if rank == 0:  # the one process that prints, as nanoGPT's master_process
        run.announce(run_config)
    for step in range(run.start_step, args.steps):  # a resumed run goes on from its checkpoint's step
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(step, args)  # a pure function of the step: resumes exactly
        inputs = run.step(batches, step)  # micro-batches, backward, clip, AdamW, EMA
        done = step + 1  # rows, evaluations and checkpoints are named by the steps done
        if done % args.log_every == 0 or done == args.steps:
            run.log(done)
        if args.eval_every and (done % args.eval_every == 0 or done == args.steps):
            run.log(done, run.evaluate())
        if args.sample_every and (done % args.sample_every == 0 or done == args.steps):
            run.listen(inputs, done)
        if done % args.save_every == 0 or done == args.steps:
            run.save(done, run_config)


def main(argv=None):
    args = build_parser().parse_args(argv)  # argv None: the command line; recipe.py and tests pass a list
    ddp = "RANK" in os.environ  # the torchrun block: torchrun sets RANK/LOCAL_RANK/WORLD_SIZE; else one process
    rank, local_rank, world = (int(os.environ.get(name, default)) for name, default in
                              (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")  # one GPU per process
    try:
        check_flags(args, ddp, use_cuda)  # before anything is read or written
        if use_cuda:  # fp32 matmuls and convolutions on tensor cores, as nanoGPT
            torch.cuda.set_device(device)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        if ddp:  # a prior's first run encodes its data before the first collective: a generous timeout
            dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(hours=4))
        train(args, rank, world, device)  # every rank runs the same loop
        if ddp:
            dist.barrier()  # leave together: a rank tearing down gloo while another still talks to it can abort
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if ddp and dist.is_initialized():  # free the DDP wrapper's gloo work first: threads outliving it abort
            gc.collect()
            dist.destroy_process_group()


# ---- 2. the stages ----------------------------------------------------------------------------------------------

class VQVAEStage:
    """The VQ-VAE on windows of raw audio; its loss normalisers (bandwidth) are estimated from the data first."""
    tokens_per_sample = None  # no tokens/s figure
    # What evaluate() reports: the loss and the paper's metric, the spectral convergence of each level in dB.
    eval_names = {"loss": "eval_loss", **{f"spectral_convergence_db_l{i}": f"eval_sc_db_l{i}" for i in range(3)}}

    def __init__(self, args, ckpt, device):
        try:
            cfg = vqvae.VQVAEConfig(**ckpt["config"]) if ckpt else vqvae.preset(args.preset)
        except ValueError as e:  # an unknown name
            raise UserError(f"--preset: {e}") from None
        shortest = max(cfg.stft_n_fft + (vqvae.DEFAULT_STFT[0],)) // 2 + 1  # the STFTs reflect-pad by n_fft / 2
        if args.sample_length % cfg.hop_lengths[-1] or args.sample_length < shortest:
            raise UserError(f"--sample-length {args.sample_length}: must be a multiple of {cfg.hop_lengths[-1]} and "
                            f"at least {shortest}")
        audio = dict(sample_rate=cfg.sample_rate, sample_length=args.sample_length, seed=args.seed)
        self.dataset = data.AudioDataset(args.data, **audio, aug_shift=args.aug_shift, aug_blend=args.aug_blend)
        self.eval_dataset = data.AudioDataset(args.eval_data, **audio) if args.eval_data else None
        if ckpt is None:  # jukebox: calculate_bandwidth, here from the first windows (the same on every rank)
            windows = torch.stack([self.dataset[i]["audio"] for i in range(args.bandwidth_batches * args.batch_size)])
            bandwidth = vqvae.estimate_bandwidth(windows)  # (n, T, 1) -> variance and mean spectral norm
            cfg = dataclasses.replace(cfg, bandwidth_l2=bandwidth["l2"], bandwidth_spec=bandwidth["spec"])
        self.config, self.model, self.extra = cfg, vqvae.VQVAE(cfg).to(device), {}  # extra: more checkpoint keys
        self.level_steps = [int(n) for n in args.level_steps.split(",")] if args.level_steps else None

    def inputs(self, batch, device, step=None):  # a batch of windows -> the model's forward arguments at this step
        training = self.level_steps and step is not None  # --level-steps: only the levels with steps left run
        levels = [level for level, n in enumerate(self.level_steps) if n > step] if training else None  # None: all
        return batch["audio"].to(device), levels  # (B, T, 1)

    def listen(self, model, inputs, prefix, step):  # the batch's first window and its reconstruction by each level
        data.write_audio(f"{prefix}_input.wav", inputs[0][:1], self.config.sample_rate)
        for level, codes in enumerate(model.encode(inputs[0][:1])):
            data.write_audio(f"{prefix}_recon_l{level}.wav", model.decode(codes, level), self.config.sample_rate)


class PriorStage:
    """A prior of level 0-2 on the cached codes of a frozen VQ-VAE, with the label vector of each window."""
    eval_names = {"loss": "eval_loss", "gen_loss": "eval_bits"}  # evaluate(): bits per music token

    def __init__(self, args, ckpt, device):
        if args.vqvae is None:  # a prior learns the codes of one VQ-VAE
            raise UserError(f"--stage {args.stage} needs --vqvae PATH: a train.py vqvae checkpoint or vqvae.pth.tar")
        self.level, self.vqvae = STAGES[args.stage], load_vqvae(args.vqvae).to(device).eval().requires_grad_(False)
        vq = self.vqvae.config  # the VQ-VAE whose codes the prior learns
        if ckpt is not None:
            cfg = prior.PriorConfig(**ckpt["config"])  # resumed: the run's own config
            check_pair(cfg, vq, ckpt.get("vqvae_config"), args.vqvae, "--vqvae")
        else:
            try:
                cfg = prior.preset(args.preset, level=self.level, lyrics=args.lyrics)
            except ValueError as e:
                raise UserError(f"--preset {args.preset} for --stage {args.stage}: {e}") from None
            cfg = dataclasses.replace(cfg, codebook_size=vq.codebook_size, hop_lengths=vq.hop_lengths,
                                      sample_rate=vq.sample_rate)  # the prior models this VQ-VAE's codes
        cfg = dataclasses.replace(cfg, gradient_checkpointing=args.grad_checkpoint)  # same results, less memory
        # The top prior's timing embedding covers songs of min..max_duration seconds only; others are left out.
        codes = dict(vqvae=self.vqvae, level=self.level, n_ctx=cfg.n_ctx, seed=args.seed, cache=args.codes,
                     **(dict(min_seconds=cfg.min_duration, max_seconds=cfg.max_duration) if cfg.is_top else {}))
        self.dataset = data.CodeDataset(args.data, aug_shift=args.aug_shift, upper_noise=args.upper_noise, **codes)
        self.eval_dataset = data.CodeDataset(args.eval_data, **codes) if args.eval_data else None
        self.config, self.model, self.tokens_per_sample = cfg, prior.Prior(cfg).to(device), cfg.n_ctx
        self.extra = {"vqvae_config": dataclasses.asdict(vq)}  # sample.py pairs the prior with this VQ-VAE

    def inputs(self, batch, device, step=None):
        """(tokens (B, N), y (B, n_y), upper (B, N/4) or None); the label vector of each window is built here."""
        c, rows = self.config, []  # the label vector y of each window, row by row
        for artist, genre, lyrics, total, offset in zip(batch["artist"], batch["genre"], batch["lyrics"],
                                                        batch["total_length"], batch["offset"]):
            artist_id, genre_ids, tokens = data.song_labels(artist, genre, lyrics, c.label_version)
            rows.append(prior.window_y(c, artist_id, genre_ids, int(total), int(offset), tokens))
        y = torch.stack(rows).to(device)  # (B, n_y)
        return batch["tokens"].to(device), y, batch["upper"].to(device) if "upper" in batch else None

    def listen(self, model, inputs, prefix, step):
        """A window sampled with the labels (and upper codes) of the batch's first window, and that window."""
        tokens, y, upper = inputs  # (B, N), (B, n_y), (B, N/4) or None
        generator = torch.Generator(y.device).manual_seed(step)  # leaves the training RNG untouched
        sampled = model.sample(y[:1], None if upper is None else upper[:1], generator=generator)  # (1, N)
        data.write_audio(f"{prefix}_sample.wav", self.vqvae.decode(sampled, self.level), self.config.sample_rate)
        data.write_audio(f"{prefix}_data.wav", self.vqvae.decode(tokens[:1], self.level), self.config.sample_rate)


# ---- 3. the training state and the steps of the loop ---------------------------------------------------------

def resume_check(args, run_config):
    """The checkpoint to resume (of this stage and this run's flags), or None for a fresh run in an empty --out."""
    if not args.resume:
        if checkpoint_paths(args.out):  # a fresh run never overwrites another one
            raise UserError(f"--out {args.out} holds checkpoints already; add --resume {args.out} or pick another")
        return None
    ckpt = read_checkpoint(args.resume, args.stage, "--resume")
    if "optimizer" not in ckpt or "train" not in ckpt:  # e.g. weights saved by hand
        raise UserError(f"--resume {args.resume}: weights without training state; pass a train.py checkpoint")
    for key, old in ckpt["train"].items():
        if key not in RESUMABLE and run_config.get(key) != old:
            flag = "--" + key.replace("_", "-")  # the flag as the user typed it
            raise UserError(f"--resume {args.resume}: the run was started with {flag} {old} but this command has "
                            f"{flag} {run_config.get(key)}; resume with the same flags")
    return ckpt


def learning_rate(step, args):
    """Linear warmup from 0 over --warmup steps, then linear decay to 0 over --lr-decay steps from --lr-decay-start."""
    warm = min(1.0, (step + 1) / args.warmup) if args.warmup else 1.0  # 0 -> lr over the first --warmup steps
    decay = max(0.0, 1.0 - max(0, step - args.lr_decay_start) / args.lr_decay) if args.lr_decay else 1.0
    return args.lr * warm * decay


class Run:
    """The training state (model, wrapper, AdamW, GradScaler, EMA, RNG; resumed from `ckpt`) and the loop's steps."""

    def __init__(self, args, stage, ckpt, rank, world, device, plan):
        self.args, self.stage, self.rank, self.world, self.device, self.plan = args, stage, rank, world, device, plan
        model = self.model = stage.model  # the unwrapped model (sharded in place under --fsdp)
        self.start_step, self.skipped_in_row = ckpt["step"] if ckpt else 0, 0  # fp16 steps skipped in a row
        canonical = {id(p): n for n, p in model.named_parameters()}  # a tied weight is listed once here...
        self.ema_names = {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}  # ...and here
        if ckpt is not None:  # the EMA first: cloned after sharding below, it is cut into the same shards
            model.load_state_dict(ckpt["ema"] if ckpt["ema"] is not None else ckpt["model"])
        if args.fsdp:  # FSDP2: each transformer block a unit of its own, the root the rest; gradients reduced in fp32
            policy = MixedPrecisionPolicy(param_dtype=AUTOCAST[args.dtype], reduce_dtype=torch.float32)
            for block in (block for transformer in model.transformers() for block in transformer.blocks):
                fully_shard(block, mp_policy=policy)
            fully_shard(model, mp_policy=policy)
        # The EMA lives apart from the model, in fp32 (local shards under --fsdp): the model has the trained weights.
        self.ema = {n: p.detach().clone().float() for n, p in model.named_parameters()} if args.ema_decay else None
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps,
                                           weight_decay=args.weight_decay, fused=True)  # one kernel, not one per weight
        self.scaler = torch.amp.GradScaler(device.type, enabled=args.dtype == "fp16")  # a pass-through unless fp16
        if ckpt is not None:  # whole tensors by parameter name, cut into this rank's shards
            whole = dcp.StateDictOptions(full_state_dict=True)  # not cpu_offload: load onto this rank's device
            dcp.set_model_state_dict(model, ckpt["model"], options=whole)
            dcp.set_optimizer_state_dict(model, self.optimizer, ckpt["optimizer"], options=whole)
            self.scaler.load_state_dict(ckpt["scaler"])  # the fp16 loss scale and its growth tracker
        if ckpt is not None and len(ckpt["rng"]) == world:  # each rank's random stream continues exactly
            torch.set_rng_state(ckpt["rng"][rank]["cpu"])
            if ckpt["rng"][rank]["cuda"]:
                torch.cuda.set_rng_state_all(ckpt["rng"][rank]["cuda"])
        else:  # a fresh run, or a resume on another number of processes: a stream per rank
            torch.manual_seed(args.seed + rank + 1_000_003 * self.start_step)
        # What the training forward calls. forward_sync_buffers=False: the codebooks synchronise themselves.
        self.train_model = model if world == 1 or args.fsdp else DDP(  # --level-steps leaves levels unused
            model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False,
            find_unused_parameters=bool(args.level_steps))
        self.interval = {"time": time.time(), "step": self.start_step, "skipped": 0, "sums": {}}  # since the last row

    def announce(self, run_config):
        """Print the resolved configuration and the run's shape (rank 0), and drop the .tmp of a killed save."""
        args, songs, (_, micro_batch, accum) = self.args, self.stage.dataset, self.plan
        os.makedirs(args.out, exist_ok=True)  # metrics.jsonl and checkpoints live here
        for stray in glob.glob(os.path.join(args.out, "*.tmp")):  # a .tmp is a save that was killed
            os.remove(stray)
        print(f"train: {json.dumps(run_config | {k: getattr(args, k) for k in sorted(RESUMABLE - {'resume'})})}\n"
              f"model: {json.dumps(dataclasses.asdict(self.stage.config))}\n"
              f"data: {len(songs.paths)} songs, {songs.lengths.sum() / self.stage.config.sample_rate / 3600:.2f} h, "
              f"{len(songs)} windows; left out {songs.dropped_short} too short, {songs.dropped_long} too long\n"
              f"run: {self.world} process(es) x {accum} micro-batch(es) of {micro_batch} = global batch "
              f"{args.batch_size} | {sum(p.numel() for p in self.model.parameters()):,} parameters | {self.device}"
              f"{' | fsdp' * args.fsdp} | {'resuming at' if self.start_step else 'starting at'} step {self.start_step}")

    def forward(self, model, inputs):  # (loss, {loss and each metric: float64 on the device}) under autocast
        with torch.autocast(self.device.type, dtype=AUTOCAST[self.args.dtype], enabled=self.args.dtype != "fp32"):
            loss, metrics = model(*inputs)  # VQVAE and Prior both return (loss, {name: tensor})
        return loss, {k: torch.as_tensor(v, dtype=torch.float64, device=self.device).detach()
                      for k, v in {"loss": loss, **metrics}.items()}

    def step(self, batches, step):
        """One optimizer step: micro-batches, backward, clipping, AdamW, EMA, progress row; returns the last inputs."""
        args, (_, _, accum), sums = self.args, self.plan, 0
        for micro_step in range(accum):
            inputs, last = self.stage.inputs(next(batches), self.device, step), micro_step == accum - 1
            if args.fsdp:
                self.model.set_requires_gradient_sync(last)  # FSDP's no_sync
            with nullcontext() if last or self.train_model is self.model else self.train_model.no_sync():
                loss, figures = self.forward(self.train_model, inputs)
                self.scaler.scale(loss / accum).backward()  # divided: gradients sum over micro-steps
            sums = sums + torch.stack(list(figures.values()))  # on the device: no host sync per metric
        if self.world > 1:
            dist.all_reduce(sums)  # one all-reduce for every figure of every rank
        figures = dict(zip(figures, (sums / (accum * self.world)).tolist()))  # means over micro-batches and ranks
        if not math.isfinite(figures["loss"]) and not self.scaler.is_enabled():  # fp16 skips such steps instead
            raise UserError(f"loss became {figures['loss']} at step {step}; nothing saved for it. Lower --lr and "
                            f"--resume {args.out} from the last good checkpoint")
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the loss-scaled ones
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.clip if args.clip > 0 else math.inf)
        scale = self.scaler.get_scale()  # the fp16 loss scale before this step
        self.scaler.step(self.optimizer)  # fp16: skipped when a gradient is not finite, and the scale lowered
        self.scaler.update()  # fp16: halved after a skip, grown after 2000 good steps
        self.optimizer.zero_grad(set_to_none=True)  # set_to_none: the memory is freed until the next backward
        skipped = self.scaler.get_scale() < scale  # a lowered scale means the step was skipped
        self.skipped_in_row = self.skipped_in_row + 1 if skipped else 0
        if self.skipped_in_row >= args.max_skipped:
            raise UserError(f"fp16: {self.skipped_in_row} steps in a row had non-finite gradients; lower --lr or use "
                            f"--dtype bf16, and --resume {args.out} from the last good checkpoint")
        figures["grad_norm"] = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)  # before clipping
        if self.scaler.is_enabled():
            figures["loss_scale"] = self.scaler.get_scale()  # the next step's
        if not skipped and self.ema is not None:  # the weights changed: ema <- decay * ema + (1 - decay) * weights
            with torch.no_grad():  # the EMA is not part of the graph
                for n, p in self.model.named_parameters():
                    self.ema[n].lerp_(p.detach().float(), 1.0 - args.ema_decay)
        self.interval["skipped"] += skipped  # counted, not hidden: the row shows how many
        for k, v in figures.items():  # the progress row averages every step since the last one
            self.interval["sums"][k] = self.interval["sums"].get(k, 0.0) + v
        return inputs

    def log(self, done, figures=None):
        """A metrics.jsonl row and a progress line (rank 0): training means since the last row, or `figures`."""
        args, now, interval = self.args, time.time(), self.interval
        if figures is None:  # a training row
            steps, elapsed = done - interval["step"], now - interval["time"]  # steps and seconds since the last row
            figures = {k: v / steps for k, v in interval["sums"].items()}
            figures.update(lr=self.optimizer.param_groups[0]["lr"], skipped_steps=interval["skipped"],
                           samples_per_s=steps * args.batch_size / elapsed, eta_s=(args.steps - done) * elapsed / steps)
            if self.stage.tokens_per_sample:  # a prior: tokens of its level per second
                figures["tokens_per_s"] = figures["samples_per_s"] * self.stage.tokens_per_sample
            self.interval = {"time": now, "step": done, "skipped": 0, "sums": {}}
        if self.rank == 0:
            with open(os.path.join(args.out, "metrics.jsonl"), "a") as f:  # one JSON object per line
                f.write(json.dumps({"step": done, **figures}) + "\n")
            # Per-level figures (_l0 .. _l2) stay in metrics.jsonl, but for the VQ-VAE's codebook usage.
            shown = {k: v for k, v in figures.items() if k[-3:-1] != "_l" or k.startswith(("usage", "eval"))}
            print(f"step {done}/{args.steps} | " + " | ".join(f"{k} {v:.4g}" for k, v in shown.items()), flush=True)

    def evaluate(self):
        """Mean figures of the trained weights on the first --eval-windows held-out windows, over every rank."""
        (_, micro_batch, _), windows, sums = self.plan, self.stage.eval_dataset, 0
        rounds = -(-self.args.eval_windows // (self.world * micro_batch))  # per rank; FSDP's forward needs every rank
        self.model.eval()  # VQ-VAE codebooks do not update in eval mode
        with torch.no_grad():
            for r in range(rounds):
                first = (r * self.world + self.rank) * micro_batch  # the held-out windows, in a fixed order
                batch = torch.utils.data.default_collate([windows[i] for i in range(first, first + micro_batch)])
                _, figures = self.forward(self.model, self.stage.inputs(batch, self.device))
                sums = sums + torch.stack(list(figures.values()))
        if self.world > 1:
            dist.all_reduce(sums)
        self.model.train()  # and the VQ-VAE's codebooks learn again
        means = dict(zip(figures, (sums / (rounds * self.world)).tolist()))
        return {new: means[old] for old, new in self.stage.eval_names.items()}

    def listen(self, inputs, step):
        """Example audio in the run folder, by rank 0; under --fsdp from a copy of the gathered weights."""
        model, state = self.model, dcp.get_model_state_dict(self.model, options=FULL) if self.args.fsdp else None
        if self.rank == 0:
            if state is not None:  # every rank took part in the gather
                model = prior.Prior(self.stage.config).to(self.device)  # built on rank 0 only, like the checkpoint
                model.load_state_dict(state)
            with torch.no_grad():
                self.stage.listen(model.eval(), inputs, os.path.join(self.args.out, f"step_{step:07d}"), step)
            model.train()  # back to training mode: the VQ-VAE's codebooks learn again

    def save(self, step, run_config):
        """A checkpoint: every rank takes part (the RNG states, the gathers); rank 0 writes it atomically (a crash
        mid-write leaves a stray .tmp, never a truncated ckpt_*.pt) and keeps the newest --keep."""
        cuda = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []
        rngs = [{"cpu": torch.get_rng_state(), "cuda": cuda}] * self.world  # every rank's stream, for an exact resume
        if self.world > 1:
            dist.all_gather_object(rngs, rngs[0])
        if self.world > 1 and not self.args.fsdp:  # a cheap guard against replicas drifting apart
            fingerprint = torch.stack([t.detach().double().sum() for t in self.model.state_dict().values()])
            prints = [torch.zeros_like(fingerprint) for _ in range(self.world)]  # one slot per rank
            dist.all_gather(prints, fingerprint)
            if not all(torch.equal(f, prints[0]) for f in prints):
                raise RuntimeError(f"model replicas differ across ranks at step {step}: a state update is not synced")
        model_state = dcp.get_model_state_dict(self.model, options=FULL)  # whole tensors, sharded or not
        optimizer_state = dcp.get_optimizer_state_dict(self.model, self.optimizer, options=FULL)  # by parameter name
        ema = {n: (e.full_tensor() if isinstance(e, DTensor) else e).cpu() for n, e in (self.ema or {}).items()}
        if self.rank == 0:  # "ema" is a whole state dict too: the averaged parameters, the buffers (codebooks)
            ema_state = {k: ema[self.ema_names[k]] if k in self.ema_names else v for k, v in model_state.items()
                         } if ema else None
            ckpt = {"stage": self.args.stage, "step": step, "config": dataclasses.asdict(self.stage.config),
                    "train": run_config, "model": model_state, "ema": ema_state,
                    "optimizer": optimizer_state, "scaler": self.scaler.state_dict(), "rng": rngs,
                    "data_position": step * self.args.batch_size, **self.stage.extra}
            path = os.path.join(self.args.out, f"ckpt_{step:07d}.pt")
            with open(path + ".tmp", "wb") as f:
                torch.save(ckpt, f)
                f.flush()  # Python's buffer, then the OS's (fsync) below
                os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
            os.replace(path + ".tmp", path)  # atomic on POSIX: the old state or the new file, nothing between
            for old in checkpoint_paths(self.args.out)[:-self.args.keep] if self.args.keep > 0 else []:  # oldest 1st
                os.remove(old)
            print(f"saved {path}", flush=True)


# ---- 4. checkpoints: one dict of explicit keys, plain data and tensors (torch.load(weights_only=True)) --------

def checkpoint_paths(folder):  # a run's checkpoints, oldest first
    return sorted(glob.glob(os.path.join(folder, "ckpt_*.pt")))  # zero-padded steps: name order is step order


def find_checkpoint(path, stage, flag):  # a checkpoint file, or a run folder -> its newest ckpt_*.pt
    if os.path.isdir(path) and not checkpoint_paths(path):  # a run folder with nothing in it yet
        raise UserError(f"{flag} {path}: folder holds no ckpt_*.pt; pass a checkpoint of `train.py --stage {stage}`")
    return checkpoint_paths(path)[-1] if os.path.isdir(path) else path


def read_checkpoint(path, stage, flag):
    """`stage`'s train.py checkpoint at `path` (file or run folder), memory-mapped; else a UserError naming the fix."""
    path, written_by = find_checkpoint(path, stage, flag), f"pass a checkpoint written by `train.py --stage {stage}`"
    if not os.path.isfile(path):
        raise UserError(f"{flag} {path}: no such file; {written_by}")  # e.g. a typo in the path
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated, not a torch file, or holding objects that are not plain data
        raise UserError(f"{flag} {path}: not a readable checkpoint ({type(e).__name__}); {written_by}") from None
    if not isinstance(ckpt, dict) or ckpt.get("stage") not in STAGES or "config" not in ckpt:
        raise UserError(f"{flag} {path}: not a train.py checkpoint (no stage/config); {written_by}")
    if ckpt["stage"] != stage:
        raise UserError(f"{flag} {path}: is a '{ckpt['stage']}' checkpoint, not '{stage}'; pass it to "
                        f"--{ckpt['stage']}")
    return ckpt


def build_model(ckpt):
    """A checkpoint's model in eval mode, with the EMA weights when it has them (the original saved only those)."""
    model_class, config_class = (vqvae.VQVAE, vqvae.VQVAEConfig) if ckpt["stage"] == "vqvae" else (prior.Prior,
                                                                                                   prior.PriorConfig)
    model = model_class(config_class(**ckpt["config"]))  # the dataclass fields of the config, rebuilt
    model.load_state_dict(ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"])  # the one EMA rule
    return model.eval()  # eval mode: no dropout, no codebook updates


def load_vqvae(path, flag="--vqvae"):
    """A VQ-VAE from a train.py checkpoint or run folder, or the released vqvae.pth.tar (through official.py)."""
    if not path.endswith(".pth.tar"):  # a train.py checkpoint or run folder
        return build_model(read_checkpoint(path, "vqvae", flag))
    if not os.path.isfile(path):  # the official loader would name the file too, less plainly
        raise UserError(f"{flag} {path}: no such file; pass the released vqvae.pth.tar or a train.py checkpoint")
    try:
        return official.load_vqvae(path)  # the original's format, its key names translated
    except UserError as e:  # e.g. no such file, or not the released VQ-VAE
        raise UserError(f"{flag}: {e}") from None


def check_pair(prior_config, vqvae_config, trained_on, path, flag):
    """UserError unless the VQ-VAE matches the prior (codebook, hops, rate) and `trained_on`, the one it learnt from."""
    for field in ("codebook_size", "hop_lengths", "sample_rate"):  # (both configs hold tuples, also read back)
        ours, theirs = getattr(prior_config, field), getattr(vqvae_config, field)
        if ours != theirs:
            raise UserError(f"{flag} {path}: the prior has {field} {ours} but the VQ-VAE has {theirs}; pass the "
                            "--vqvae this prior was trained with")
    differ = [k for k, v in dataclasses.asdict(vqvae_config).items() if trained_on and trained_on.get(k) != v]
    if differ:  # one config field is enough to refuse
        raise UserError(f"{flag} {path}: this prior was trained on another VQ-VAE (config differs in "
                        f"{', '.join(differ[:4])}); pass the --vqvae it was trained with")


if __name__ == "__main__":
    main()
