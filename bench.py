"""Benchmarks: `python bench.py {vqvae,attention,prior,sample}`.

Each section prints one table measured in a single run on this machine, as ratios where a baseline exists,
so the figures compare like with like. Not a test: nothing here asserts a speed.
"""
import argparse
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


# ---- vqvae (issue 2) -------------------------------------------------------------------------------
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


# ---- attention (issue 3) ---------------------------------------------------------------------------
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
                attn._attend(q, k, v, 0).backward(grad)

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


# ---- prior (issue 4) -------------------------------------------------------------------------------
def bench_prior(args):
    """`small` top prior, one 8192-token window, batch 1: a training step (forward + backward + AdamW), and
    sampling at the end of the window, where the caches are largest: one cached step per new token vs. the
    no-cache alternative, a forward over the whole context per token. Also RSS over the sampled tokens."""
    import os
    from prior import Prior, make_y, preset

    def rss_mb():  # resident set size now, from /proc (Linux)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20

    torch.manual_seed(0)
    config = preset("small")
    model = Prior(config)
    n_ctx, n_new = config.n_ctx, 64
    y = make_y(config, artist=0, genres=[0], total_length=4 * config.sample_length)[None]  # (1, n_y)
    tokens = torch.randint(0, config.codebook_size, (1, n_ctx))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"# preset small: width {config.width}, depth {config.depth}, n_ctx {n_ctx}, {n_params / 1e6:.1f}M params")

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        loss, _ = model(tokens, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.train()
    train_s = timed(train_step, repeats=3)
    model.eval()
    with torch.no_grad():
        full_s = timed(lambda: model.logits(tokens, y), repeats=3)  # what each token costs without a cache

    # Cached sampling of the last n_new tokens of the window, after a chunked prefill of the rest. A hook on
    # the output layer stamps the time and RSS at every position, so the sampled steps are timed on their
    # own (median interval: robust to other processes on a shared machine).
    prime = tokens[:, :n_ctx - n_new]
    stamps = []
    hook = model.transformer.lm_head.register_forward_hook(
        lambda *_: stamps.append((time.perf_counter(), rss_mb())))
    start = time.perf_counter()
    model.sample(1, y, prime=prime, sample_tokens=n_ctx, chunk_size=32, generator=torch.Generator().manual_seed(0))
    hook.remove()
    n_chunks = len(stamps) - n_new
    prefill_s = stamps[n_chunks - 1][0] - start
    stepped = stamps[n_chunks - 1:]  # the end of the prefill, then one stamp per sampled token
    steps = sorted(b[0] - a[0] for a, b in zip(stepped, stepped[1:]))  # (n_new,) seconds per token
    step_s = steps[len(steps) // 2]
    rss = [r for _, r in stepped[1:]]

    print("| measure | value |")
    print("|---|---|")
    print(f"| training step (fwd+bwd+AdamW), 1 x {n_ctx} tokens | {train_s:.2f} s = {n_ctx / train_s:,.0f} tokens/s |")
    print(f"| full forward over {n_ctx} tokens (= 1 sampled token without cache) | {full_s:.3f} s |")
    print(f"| prefill of {n_ctx - n_new} prime tokens, chunks of 32 | {prefill_s:.2f} s = "
          f"{(n_ctx - n_new) / prefill_s:,.0f} tokens/s |")
    print(f"| cached sampling, tokens {n_ctx - n_new}..{n_ctx - 1} (median; mean) | {step_s * 1e3:.2f} ms/token = "
          f"{1 / step_s:,.0f} tokens/s; mean {sum(steps) / len(steps) * 1e3:.2f} ms |")
    print(f"| per-token speed-up of the cache over full re-forward | {full_s / step_s:,.0f}x |")
    print(f"| RSS over the {n_new} sampled tokens (first -> last, max) | {rss[0]:.1f} -> {rss[-1]:.1f} MB, "
          f"max {max(rss):.1f} MB (+{max(rss) - rss[0]:.1f} MB) |")


# ---- sample (issue 6) ------------------------------------------------------------------------------
def bench_sample(args):
    """Seconds of audio per second of wall time, per level, for the tiny and small priors (random weights).

    One steady-state window per level through sample.sample_level, as in a long run: the conditioning and the
    prime prefill of n_ctx - hop tokens (the overlap with the previous window), then new tokens. A hook on the
    transformer timestamps every call, so one run gives both the fixed cost (up to the last prefill chunk) and
    the cost per new token (over the next min(hop, 128)); a whole window costs fixed + hop * per token.
    Batch 1, float32, the VQ-VAE decoder not included (see `bench.py vqvae`).
    """
    import sample
    from prior import Prior, make_y, preset
    print("# sample: one steady-state window per level, batch 1, float32, random weights")
    print(f"{'preset':7s}{'level':>6s}{'n_ctx':>7s}{'hop':>6s}{'fixed s':>9s}{'ms/token':>10s}{'window s':>10s}"
          f"{'audio s/s':>11s}")
    for name in ("tiny", "small"):
        for level in (2, 1, 0):
            torch.manual_seed(0)
            config = preset(name, level=level)
            prior = Prior(config).eval()
            settings = sample.Settings()
            hop = int(settings.hop_fraction[level] * config.n_ctx)
            primed = config.n_ctx - hop  # the overlap every later window is primed with
            new = min(hop, 128)  # timed new tokens, inside this one window (upsamplers: a multiple of 4)
            codes = [torch.randint(config.codebook_size, (1, primed)) for _ in range(3)]
            upper = None if config.is_top else torch.randint(config.codebook_size, (1, (primed + new) // 4))
            y = make_y(config, artist=0, genres=[0], total_length=60 * config.sample_rate)[None]  # (1, n_y)
            stamps = []
            hook = prior.transformer.register_forward_hook(lambda *_: stamps.append(time.perf_counter()))
            begin = time.perf_counter()
            sample.sample_level(prior, codes, level, primed + new, config.hop_length, y, settings, upper=upper,
                                upper_ratio=4, generator=torch.Generator().manual_seed(0))
            hook.remove()
            prefill_calls = -(-primed // settings.chunk_size)
            fixed = stamps[prefill_calls - 1] - begin  # conditioning + prefill of the prime
            per_token = (stamps[-1] - stamps[prefill_calls - 1]) / new
            window = fixed + hop * per_token
            audio = hop * config.hop_length / config.sample_rate  # seconds of audio one window adds
            print(f"{name:7s}{level:>6d}{config.n_ctx:>7d}{hop:>6d}{fixed:>9.3f}{1000 * per_token:>10.1f}"
                  f"{window:>10.2f}{audio / window:>11.4f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=["vqvae", "attention", "prior", "sample"], help="what to measure")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    {"vqvae": bench_vqvae, "attention": bench_attention, "prior": bench_prior, "sample": bench_sample}[args.section](args)


if __name__ == "__main__":
    main()
