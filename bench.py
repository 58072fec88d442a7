"""Benchmarks: `python bench.py {vqvae,attention,sampling,training,cache,memory}`.

Each section prints one table measured in a single run on this machine, as ratios where a baseline exists,
so the figures compare like with like. Not a test: nothing here asserts a speed.
"""
import argparse
import dataclasses
import platform
import time

import torch


def timed(fn, repeats=3):
    """Best wall time of `repeats` calls of fn() (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


# ---- vqvae -------------------------------------------------------------------------------
def bench_vqvae(args):
    """Release-size VQ-VAE (random weights, same cost as the released ones), batch 1, fp32, inference.

    Rows: encode = audio -> codes of all three levels (all three encoders run); decode level L = the codes
    of level L -> audio (only that level's decoder runs); encode + decode L = a full round trip through
    level L. speed = seconds of audio processed per wall-clock second (> 1 is faster than real time).
    """
    from vqvae import VQVAE, VQVAEConfig

    seconds = 5.0
    config = VQVAEConfig()
    T = int(seconds * config.sample_rate) // config.hop_lengths[-1] * config.hop_lengths[-1]
    torch.manual_seed(0)
    model = VQVAE(config).eval()
    audio = torch.randn(1, T, 1) * 0.1
    model.encode(audio)  # warm-up (allocator, oneDNN primitives)
    codes = model.encode(audio)
    encode = timed(lambda: model.encode(audio), repeats=2)
    decode = [timed(lambda: model.decode(codes[level], level), repeats=2) for level in range(config.levels)]
    audio_seconds = T / config.sample_rate
    print(f"{audio_seconds:.2f} s of audio at {config.sample_rate} Hz, batch 1")
    print(f"{'step':<22}{'time (s)':>10}{'speed (audio s / s)':>22}")
    rows = [("encode (3 levels)", encode)]
    rows += [(f"decode level {level}", t) for level, t in enumerate(decode)]
    rows += [(f"encode + decode L{level}", encode + t) for level, t in enumerate(decode)]
    for name, t in rows:
        print(f"{name:<22}{t:>10.3f}{audio_seconds / t:>22.2f}")


# ---- attention ---------------------------------------------------------------------------
def bench_attention(args):
    """Attention core (q, k, v -> output, forward + backward) of each kind against dense causal SDPA.

    One layer of the upsamplers' shape: 1 head of dim 480 (width 1920), batch 1, fp32. The projections
    (c_attn, c_proj) are left out: they cost the same for every kind. blocks ~ sqrt(n_ctx), so block_len ~
    sqrt(n_ctx) as in the Sparse Transformer; n_ctx 8192 gets the released 128 blocks of 64.
    Columns: time = best wall time of forward+backward; growth = time / time at half the n_ctx (n*sqrt(n)
    predicts 2.8, n^2 predicts 4); peak = most bytes held at once during forward+backward beyond the inputs
    (q, k, v and the output gradient), read from torch.profiler's allocator trace, so q/k/v gradients count;
    logits = attention scores that an unfused implementation (the original's) holds per head: T*T/2 causal
    for dense, T*b for row/prev_row, T*blocks for column.
    """
    import json
    import math
    import os
    import tempfile

    from attention import Attention

    def peak_bytes(fn):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        with tempfile.TemporaryDirectory() as tmp:
            prof.export_chrome_trace(os.path.join(tmp, "trace.json"))
            with open(os.path.join(tmp, "trace.json")) as f:
                events = json.load(f)["traceEvents"]
        totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
        first = next(e["args"] for e in events if e.get("name") == "[memory]")
        # the running total carries what earlier sessions allocated and freed unseen: count from this one's start
        return max(totals) - (first["Total Allocated"] - first["Bytes"])

    heads, head_dim = 1, 480
    print(f"attention core fwd+bwd, batch 1, {heads} head x dim {head_dim} (upsampler shape), fp32")
    print("| n_ctx | blocks x len | kind | time s | growth | time / dense | peak MiB | peak / dense | logits / dense |")
    print("|---|---|---|---|---|---|---|---|---|")
    previous = {}
    for n_ctx in (2048, 4096, 8192, 16384):
        blocks = 2 ** math.ceil(math.log2(n_ctx) / 2)  # 64, 64, 128, 128
        block_len = n_ctx // blocks
        base = {}
        for kind in ("dense", "row", "column", "prev_row"):
            attn = Attention(4 * heads * head_dim, heads, kind, n_ctx, blocks)
            q, k, v = (torch.randn(1, n_ctx, heads, head_dim, requires_grad=True) for _ in range(3))
            grad = torch.randn(1, n_ctx, heads, head_dim)

            def step():
                q.grad = k.grad = v.grad = None
                attn._blocked(q, k, v).backward(grad)

            peak = peak_bytes(step)  # also the warm-up; q/k/v gradients are allocated inside it
            seconds = timed(step, repeats=1 if kind == "dense" and n_ctx >= 8192 else 3)
            logits = {"dense": n_ctx * n_ctx / 2, "row": n_ctx * block_len, "prev_row": n_ctx * block_len,
                      "column": n_ctx * blocks}[kind]
            base = base or dict(seconds=seconds, peak=peak, logits=logits)
            growth = f"{seconds / previous[kind]:.2f}" if kind in previous else "-"
            previous[kind] = seconds
            print(f"| {n_ctx} | {blocks} x {block_len} | {kind} | {seconds:.3f} | {growth} | "
                  f"{seconds / base['seconds']:.3f} (1/{base['seconds'] / seconds:.0f}) | {peak / 2**20:.1f} | "
                  f"{peak / base['peak']:.2f} | {logits / base['logits']:.4f} (1/{base['logits'] / logits:.0f}) |",
                  flush=True)


# ---- sampling -------------------------------------------------------------------------------------
def gemv_floor(model, batch):
    """A function doing only the matrix products of one cached step: every Conv1D of the blocks and the output
    layer, on random (batch, n_in) inputs. A batch-1 step cannot cost less: it must read all these weights."""
    from attention import Conv1D
    convs = [m for t in model.transformers()[:1] for m in t.blocks.modules() if isinstance(m, Conv1D)]
    dtype = convs[0].w.dtype
    inputs = [torch.randn(batch, c.w.shape[0], dtype=dtype) for c in convs]
    head, x_head = model.transformer.lm_head.weight, torch.randn(batch, model.config.width)

    def products():
        for conv, x in zip(convs, inputs):
            torch.addmm(conv.b.to(dtype), x, conv.w)
        torch.mm(x_head, head.t())
    return products


def step_times(model, y, upper, batch, first, count, floor=None, chunk=None):
    """Median ms of the cached steps at positions first .. first+count-1 (after a prefill of `first` tokens in
    chunks of `chunk`, or in one pass; its time is returned too), and of `floor` timed between them (interleaved:
    shared cores slow both)."""
    window = model.condition(y.expand(batch, -1), None if upper is None else upper.expand(batch, -1))
    prev = torch.randint(model.config.codebook_size, (batch, first + count))
    model.start_cache(batch, "cpu")
    step = getattr(model, "_compiled_step", model.extend)  # torch.compile'd with --compile
    begin = time.perf_counter()
    for position in range(0, first, chunk or max(first, 1)):
        model.activations(window, prev[:, position:min(first, position + (chunk or first))], position)
    prefill = time.perf_counter() - begin
    steps, floors = [], []
    for position in range(first, first + count):
        if floor is not None:
            begin = time.perf_counter()
            floor()
            floors.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        step(window, prev[:, position:position + 1], position)
        steps.append(time.perf_counter() - begin)
    median = lambda v: sorted(v)[len(v) // 2] * 1e3 if v else float("nan")
    return median(steps), median(floors), prefill


def bench_sampling(args):
    """The cached sampling step of the `bench` priors (the released 8192-token window and 128 blocks; width 512,
    12 blocks; top: 4 heads, upsampler: 1 head and a Conditioner), random weights, float32 unless --dtype.

    Rows: ms per cached step (one new position for every sample of the batch; median over positions 64..192)
    at batch 1, 4, 16, beside the floor (the same step's matrix products alone, timed interleaved) and their
    ratio; a step at position 4096; the prefill of 4096 prime positions (in one pass, and in chunks of 32) + the
    first step; a teacher-forced forward over 8192 positions, batch 1. Positions are tokens; for the upsampler, audio.
    --compile: the steps run through Prior.compile_step (the first ones compile, outside the median)."""
    from prior import Prior, preset, window_y
    print("| prior | row | ms | floor ms | step / floor |")
    print("|---|---|---|---|---|")
    for level in (2, 1):
        torch.manual_seed(0)
        config = preset("bench", level=level)
        model = Prior(config).eval()
        if args.dtype != "float32":
            model.half_blocks(getattr(torch, args.dtype))
        if args.compile:
            model.compile_step()
        name = "bench top" if level == 2 else "bench upsampler"
        y = window_y(config, 0, [0], 60 * config.sample_rate)[None]  # (1, n_y)
        upper = None if config.is_top else torch.randint(config.codebook_size, (1, config.n_ctx // 4))
        with torch.no_grad():
            for batch in (1, 4, 16):
                step, floor, _ = step_times(model, y, upper, batch, 64, 128, gemv_floor(model, batch))
                print(f"| {name} | cached step, batch {batch} | {step:.2f} | {floor:.2f} | {step / floor:.2f} |",
                      flush=True)
            for chunk in (None, 32):  # sample.py's default, one blocked pass, and the original's chunks
                step, _, prefill = step_times(model, y, upper, 1, 4096, 32, chunk=chunk)
                how = "in one pass" if chunk is None else f"in chunks of {chunk}"
                print(f"| {name} | prefill 4096 {how} + first step | {prefill * 1e3 + step:.0f} | | |")
            print(f"| {name} | cached step at position 4096, batch 1 | {step:.2f} | | |")
            tokens = torch.randint(config.codebook_size, (1, config.n_ctx))
            forward = timed(lambda: model.logits(tokens, y, upper), repeats=2)
            print(f"| {name} | teacher-forced forward, 8192 positions | {forward * 1e3:.0f} | | |", flush=True)


def bench_training(args):
    """Prior training speed on CPU, tokens/s of forward + backward + AdamW: the `bench` top prior on one
    8192-token window, and the tiny recipe priors on a batch of 64-token windows."""
    from prior import Prior, preset, window_y
    print("| prior | batch x tokens | step s | tokens/s |")
    print("|---|---|---|---|")
    for name, level, batch in (("bench", 2, 1), ("tiny", 2, 16), ("tiny", 1, 32), ("tiny", 0, 64)):
        torch.manual_seed(0)
        config = preset(name, level=level)
        model = Prior(config).train()
        y = window_y(config, 0, [0], 60 * config.sample_rate)[None].expand(batch, -1)
        tokens = torch.randint(config.codebook_size, (batch, config.n_ctx))
        upper = None if config.is_top else torch.randint(config.codebook_size, (batch, config.n_ctx // 4))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def train_step():
            loss, _ = model(tokens, y, upper)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds = timed(train_step, repeats=3)
        print(f"| {name} level {level} | {batch} x {config.n_ctx} | {seconds:.3f} | {batch * config.n_ctx / seconds:,.0f} |",
              flush=True)



def bench_cache(args):
    """Prior training from the code cache (codes read from disk: free next to a step) against encoding every
    window with the frozen VQ-VAE at each step: tokens/s of one training step (forward + backward + AdamW) of
    the tiny priors, on the tiny VQ-VAE and on the released VQ-VAE's shape (random weights)."""
    from prior import Prior, preset, window_y
    from vqvae import VQVAE, preset as vqvae_preset
    print("| VQ-VAE | prior | batch x tokens | from the cache, tokens/s | encoding each step, tokens/s | speed-up |")
    print("|---|---|---|---|---|---|")
    for vq_name in ("tiny", "jukebox"):
        torch.manual_seed(0)
        vq = VQVAE(vqvae_preset(vq_name)).eval()
        for stage, level, batch in (("top", 2, 16), ("middle", 1, 32), ("bottom", 0, 64)):
            config = dataclasses.replace(preset("tiny", level=level), codebook_size=vq.config.codebook_size)
            model = Prior(config).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            audio = torch.randn(batch, config.n_ctx * vq.config.hop_lengths[level], 1) * 0.1  # one window each
            y = window_y(config, 0, [0], 60 * config.sample_rate)[None].expand(batch, -1)
            cached = vq.encode(audio)

            def train_step(encode):
                codes = vq.encode(audio) if encode else cached  # the VQ-VAE is frozen: no graph
                loss, _ = model(codes[level], y, None if level == 2 else codes[level + 1])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            fast, slow = timed(lambda: train_step(False)), timed(lambda: train_step(True))
            tokens = batch * config.n_ctx
            print(f"| {vq_name} | {stage} | {batch} x {config.n_ctx} | {tokens / fast:,.0f} | {tokens / slow:,.0f} | "
                  f"{slow / fast:.1f}x |", flush=True)

# ---- memory -----------------------------------------------------------------------------------------
def saved_activation_bytes(config, checkpointing):
    """Bytes the autograd graph keeps for the backward pass of one training window (fp32, batch 1)."""
    from prior import Prior, window_y
    torch.manual_seed(0)
    model = Prior(dataclasses.replace(config, gradient_checkpointing=checkpointing)).train()
    y = window_y(config, 0, [0], 60 * config.sample_rate)[None]
    tokens = torch.randint(config.codebook_size, (1, config.n_ctx))
    upper = None if config.is_top else torch.randint(config.codebook_size, (1, config.n_ctx // 4))
    seen, total = set(), [0]

    def keep(t):  # count each storage once: views of one tensor share it
        if t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total[0] += t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(tokens, y, upper)
    return total[0]


def bench_memory(args):
    """GPU memory per process to train the released priors, COMPUTED (not measured on a GPU), micro-batch 1.

    Parameters P (counted on the meta device) and the blocks' share of them; DDP keeps on every GPU the fp32
    weights, gradients and Adam's two moments: 16 bytes per parameter. FSDP (one unit per block, then the
    root) keeps 16 bytes per parameter / N, plus the unsharded working set: the root's parameters (embeddings,
    output layer, conditioner: bf16 copy + fp32 gradient = 6 bytes each) and two blocks at a time (prefetch:
    bf16 weights and fp32 gradients, 12 bytes per block parameter). Activations: the bytes autograd keeps per
    token and per unit of width for one block, MEASURED here on the `bench` prior in fp32 (with and without
    --grad-checkpoint) and halved for bf16 autocast, times n_ctx * width * depth, plus the logits
    (n_ctx * vocab, fp32, and their gradient). Not counted: the CUDA context, allocator fragmentation,
    temporary buffers of the kernels (~10-20 % in practice)."""
    from prior import Prior, preset
    bench = preset("bench", level=2)
    per_block = {}
    for checkpointing in (False, True):
        deep = saved_activation_bytes(bench, checkpointing)
        shallow = saved_activation_bytes(dataclasses.replace(bench, attention=bench.attention[:3]), checkpointing)
        per_block[checkpointing] = (deep - shallow) / (bench.depth - 3) / (bench.n_ctx * bench.width) / 2  # bf16
    print(f"# measured activation bytes per token x width x block (bf16): {per_block[False]:.2f} plain, "
          f"{per_block[True]:.2f} with --grad-checkpoint")
    print("| prior | parameters | checkpointing | DDP | FSDP x8 | FSDP x64 |")
    print("|---|---|---|---|---|---|")
    for name in ("5b", "5b_lyrics", "1b_lyrics", "upsampler_level_0"):
        config = preset(name)
        with torch.device("meta"):
            model = Prior(config)
        params = sum(p.numel() for p in model.parameters())
        blocks = [b for t in model.transformers() for b in t.blocks]
        block_params = max(sum(p.numel() for p in b.parameters()) for b in blocks)
        root = params - sum(sum(p.numel() for p in b.parameters()) for b in blocks)
        logits = config.seq_len * config.vocab_size * 4 * 2  # fp32 logits and their gradient
        for checkpointing in (False, True):
            # with checkpointing one block's full activations are live again during its backward
            activations = per_block[checkpointing] * config.seq_len * config.width * config.depth + logits
            if checkpointing:
                activations += per_block[False] * config.seq_len * config.width
            ddp = 16 * params + activations
            fsdp = [16 * params / n + 6 * root + 2 * 12 * block_params + activations for n in (8, 64)]
            gb = lambda b: f"{b / 1e9:.1f} GB"
            print(f"| {name} | {params / 1e9:.2f} B | {'yes' if checkpointing else 'no'} | {gb(ddp)} | "
                  f"{gb(fsdp[0])} | {gb(fsdp[1])} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=["vqvae", "attention", "sampling", "training", "cache", "memory"],
                        help="what to measure")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="sampling: precision of the transformer blocks")
    parser.add_argument("--compile", action="store_true", help="sampling: torch.compile the cached step")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    {"vqvae": bench_vqvae, "attention": bench_attention, "sampling": bench_sampling,
     "training": bench_training, "cache": bench_cache, "memory": bench_memory}[args.section](args)


if __name__ == "__main__":
    main()
