"""attention.py: every kind against a slow masked reference, causality, the static sampling cache.

Tiny sizes: n_ctx 24 as 4 rows of 6 (block_len 6), width 32, 2 heads of dim 4; CPU, fp32 unless stated.
"""
import math

import pytest
import torch

from attention import KINDS, Attention, Conv1D

N_CTX, BLOCKS, WIDTH, HEADS, ENC = 24, 4, 32, 2, 10
PRIME_LEN = 9  # window (9 // 4 + 1) * 4 = 12 positions: two whole rows, ending on a row boundary
SELF_KINDS = [k for k in KINDS if k != "cross"]


def make(kind, prime_len=PRIME_LEN, n_ctx=N_CTX, blocks=BLOCKS, seed=0):
    torch.manual_seed(seed)
    attn = Attention(WIDTH, HEADS, kind, n_ctx, blocks, prime_len=prime_len, encoder_len=ENC)
    with torch.no_grad():  # O(1) weights (the 0.02 init, or zeros for cross, would make every test trivial)
        for p in attn.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return attn


def inputs(batch=2, n_ctx=N_CTX, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n_ctx, WIDTH, generator=g), torch.randn(batch, ENC, WIDTH, generator=g)


def allowed(attn, T):
    """(T, T') bool: which key each query may see, written out position by position (T' = ENC for cross)."""
    if attn.kind == "cross":
        return torch.ones(T, ENC, dtype=torch.bool)
    i, j, b = torch.arange(T)[:, None], torch.arange(T)[None, :], attn.block_len
    causal = j <= i
    return {"dense": causal,
            "row": causal & (i // b == j // b),
            "column": causal & (i % b == j % b),
            "prev_row": j // b == i // b - 1,
            "prime": causal & (j < attn.prime_window)}[attn.kind]


def reference(attn, x, encoder_kv):
    """Slow and obviously correct: dense softmax attention under the explicit (T, T) mask, in float64."""
    B, T, C = x.shape
    x, encoder_kv = x.double(), encoder_kv.double()
    lin = lambda conv, h: h @ conv.w.double() + conv.b.double()
    if attn.kind == "cross":
        q = lin(attn.c_attn, x)
        k, v = lin(attn.c_enc_kv, encoder_kv).chunk(2, dim=-1)
    else:
        q, k, v = lin(attn.c_attn, x).chunk(3, dim=-1)
    q, k, v = (t.view(B, t.shape[1], HEADS, -1).transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    mask = allowed(attn, T)
    w = torch.softmax(logits.masked_fill(~mask, -math.inf), dim=-1)
    w = torch.nan_to_num(w)  # prev_row's row 0 has no keys: the original attends a zero block and gets 0
    a = (w @ v).transpose(1, 2).reshape(B, T, -1)
    return lin(attn.c_proj, a).float()


@pytest.mark.parametrize("kind", KINDS)
def test_matches_masked_reference(kind):
    attn, (x, enc) = make(kind), inputs()
    for T in (N_CTX, 12, 10):  # the full context, a shorter one of whole rows, and one ending mid-row
        out = attn(x[:, :T], encoder_kv=enc if kind == "cross" else None)
        torch.testing.assert_close(out, reference(attn, x[:, :T], enc), atol=1e-5, rtol=1e-5)


def test_prev_row_zero_row_and_prime_window():
    attn, (x, _) = make("prev_row"), inputs()
    out = attn(x)
    # jukebox: row 0 of prev_row sees only zeros, so its output is exactly the c_proj bias
    assert torch.equal(out[:, :attn.block_len], attn.c_proj.b.expand_as(out[:, :attn.block_len]))
    assert Attention(2048, 2, "prime", 6528, 64, prime_len=384).prime_window == 448  # 1b_lyrics


@pytest.mark.parametrize("kind", KINDS)
def test_causality(kind):
    """d out[t] / d x[s] is exactly zero for s > t, and nonzero exactly where the kind looks (and at t)."""
    attn, (x, enc) = make(kind), inputs(batch=1)
    x.requires_grad_(True)
    out = attn(x, encoder_kv=enc if kind == "cross" else None)
    mask = allowed(attn, N_CTX)
    for t in range(N_CTX):
        (grad,) = torch.autograd.grad(out[0, t].sum(), x, retain_graph=True)
        depends = grad[0].abs().sum(-1) > 0  # (T,)
        assert not depends[t + 1:].any(), f"{kind}: output {t} depends on a later input"
        expected = torch.zeros(N_CTX, dtype=torch.bool)
        if kind != "cross":
            expected[:] = mask[t]
        expected[t] = kind == "cross" or bool(mask[t].any())  # the query itself, unless it sees nothing
        assert torch.equal(depends, expected), f"{kind} position {t}: {depends.nonzero().flatten().tolist()}"


def expected_cache_len(attn, t):
    """The keys each kind keeps after t positions in the original (its `_suff_cache_len`)."""
    b = attn.block_len
    return {"dense": t, "column": t, "row": (t - 1) % b + 1, "prev_row": t if t <= b else b + (t - 1) % b + 1,
            "cross": ENC, "prime": min(t, attn.prime_window)}[attn.kind]


def run_chunks(attn, x, enc, sizes):
    """Feed x through the sampling path in chunks of the given sizes. The cache is allocated once, written in
    place (it never moves or grows), and always holds at least what the original keeps."""
    attn.start_cache(len(x), x.dtype, x.device)
    storage = attn.cache.data_ptr()
    outs, start = [], 0
    for size in sizes:
        outs.append(attn(x[:, start:start + size], encoder_kv=enc, position=start))
        start += size
        assert attn.cache.data_ptr() == storage and expected_cache_len(attn, start) <= attn.cache_len
    assert start == x.shape[1]
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("kind", KINDS)
def test_cache_is_as_long_as_the_longest_the_original_keeps(kind):
    attn = make(kind)
    assert attn.cache_len == max(expected_cache_len(attn, t) for t in range(1, N_CTX + 1))


CHUNKINGS = {
    "one token at a time": [1] * N_CTX,
    "chunks of 2": [2] * 12,
    "chunks of 5 (ends mid-row)": [5] * 4 + [4],
    "chunks of 8 (span rows)": [8] * 3,
    "whole rows": [6] * 4,
    "prime of 7 (mid-row), then tokens": [7] + [1] * 17,
    "prime of 13 (past prime window), then mixed": [13, 1, 3, 1, 6],
    "prime of 12 (ends a row), then tokens": [12] + [1] * 12,
    "prime of 19 (three rows and one), then a chunk": [19, 5],
    "one chunk": [N_CTX],
}


@pytest.mark.parametrize("kind", KINDS)
def test_cache_matches_teacher_forcing(kind):
    attn, (x, enc) = make(kind), inputs()
    enc = enc if kind == "cross" else None
    with torch.no_grad():
        full = attn(x, encoder_kv=enc)
        for name, sizes in CHUNKINGS.items():
            torch.testing.assert_close(run_chunks(attn, x, enc, sizes), full, atol=1e-5, rtol=1e-5, msg=name)


def test_cache_prime_window_ending_mid_row():
    """1b-like geometry in small: the prime window (10 // 4 + 1) * 4 = 12 ends mid-row when block_len is 5."""
    attn, (x, _) = make("prime", prime_len=10, n_ctx=20), inputs(n_ctx=20)
    assert attn.prime_window == 12 and attn.prime_window % attn.block_len != 0
    with torch.no_grad():
        full = attn(x)
        torch.testing.assert_close(full, reference(attn, x, x), atol=1e-5, rtol=1e-5)
        for sizes in ([1] * 20, [11, 1, 1, 7], [3] * 6 + [2]):
            torch.testing.assert_close(run_chunks(attn, x, None, sizes), full, atol=1e-5, rtol=1e-5)


def test_start_cache_starts_a_new_sequence():
    attn, (x, _) = make("column"), inputs()
    with torch.no_grad():
        first = run_chunks(attn, x, None, [5, 19])
        assert torch.equal(run_chunks(attn, x, None, [5, 19]), first)  # run_chunks starts with start_cache()
    attn.start_cache(2, torch.float32, "cpu")
    assert attn.cache.shape == (2, 2, attn.heads, N_CTX, WIDTH // 4 // attn.heads) and not attn.cache.any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_half_precision_inputs(kind, dtype):
    """fp32 weights run on half inputs (cast like the original), the output keeps the input dtype."""
    attn, (x, enc) = make(kind), inputs()
    enc = enc if kind == "cross" else None
    with torch.no_grad():
        full = attn(x, encoder_kv=enc)
        half = attn(x.to(dtype), encoder_kv=None if enc is None else enc.to(dtype))
        stepped = run_chunks(attn, x.to(dtype), enc, [7] + [1] * 17)
    assert half.dtype == stepped.dtype == dtype and attn.cache.dtype == dtype
    torch.testing.assert_close(half.float(), full, atol=0.1, rtol=0.05)
    torch.testing.assert_close(stepped.float(), full, atol=0.1, rtol=0.05)


def test_conv1d_layout_and_official_shapes():
    conv = Conv1D(3, 5)
    x = torch.randn(2, 4, 3)
    torch.testing.assert_close(conv(x), x @ conv.w + conv.b)
    assert conv.w.shape == (3, 5) and torch.count_nonzero(conv.b) == 0
    with torch.device("meta"):  # released sizes, without allocating them
        upsampler = Attention(1920, 1, "row", 8192, 128)
        cross = Attention(4800, 8, "cross", 8192, 128, encoder_len=512)
        prime = Attention(2048, 2, "prime", 6528, 64, prime_len=384)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes(upsampler) == {"c_attn.w": (1920, 1440), "c_attn.b": (1440,),
                                 "c_proj.w": (480, 1920), "c_proj.b": (1920,)}
    assert shapes(cross) == {"c_attn.w": (4800, 1200), "c_attn.b": (1200,), "c_enc_kv.w": (4800, 2400),
                             "c_enc_kv.b": (2400,), "c_proj.w": (1200, 4800), "c_proj.b": (4800,)}
    assert shapes(prime)["c_attn.w"] == (2048, 1536) and prime.block_len == 102
    assert torch.count_nonzero(Attention(16, 2, "cross", 8, 2).c_proj.w) == 0  # jukebox: zero_out forced


def test_compiled_step_is_not_recompiled_per_row():
    """sample.py --compile traces the one-token step with a symbolic position: a position used as an integer index
    (a row of the column cache) would specialise the trace, one recompilation per row, until torch gives up.
    Traced here without a code generator ("aot_eager"), on the column kind over eight rows."""
    import torch._dynamo

    attn, (x, _) = make("column", n_ctx=48, blocks=8), inputs(n_ctx=48)
    torch._dynamo.reset()
    counts = torch._dynamo.utils.counters
    counts.clear()
    step = torch.compile(attn, backend="aot_eager", dynamic=True)
    with torch.no_grad():
        full = attn(x)
        attn.start_cache(len(x), x.dtype, x.device)
        stepped = torch.cat([step(x[:, t:t + 1], position=t) for t in range(48)], dim=1)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-5)
    assert counts["stats"]["unique_graphs"] <= 2, dict(counts["stats"])  # one trace serves every row
    torch._dynamo.reset()
