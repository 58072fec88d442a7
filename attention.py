"""Factorized attention of the Jukebox priors: one module, six kinds, with a sampling cache.

Implements the sparse (factorized) self-attention of arXiv:2005.00341 §4 (after Child et al. 2019, the
Sparse Transformer), plus the cross-attention to the lyrics encoder (§4.3, 5b_lyrics) and the "prime"
attention of the single encoder-decoder lyrics model (1b_lyrics), as the released priors use them.

A sequence of n_ctx positions is read as a grid of `blocks` rows of `block_len` positions each; position t
sits in row t // block_len, column t % block_len. The kinds:
    dense     causal over all earlier positions
    row       causal within the own row
    column    causal over the same column of the earlier rows
    prev_row  the whole previous row (row 0 sees a block of zeros)
    cross     queries from the sequence, keys/values from an encoder's output (no mask)
    prime     causal, but only over the first (prime_len // blocks + 1) * blocks positions
Each sparse kind is a reshape of (B, T, C) into many small dense problems ("blocked layout"), all handed to
torch's scaled_dot_product_attention; no gathers and no (T, T) mask.

Reading order:
    1. Conv1D: the projection whose (in, out) weights load the official checkpoints as they are.
    2. ATTN_ORDER / layer_kinds: which kind each layer of a released model uses.
    3. Attention.forward -> _attend -> _blocked: the math of every kind.
    4. Attention._update_cache: what each kind keeps between sampling steps (the original's `_suff_cache_len`).

Shape legend: B batch, T positions in this call, C model width, S = n_state attention width (C/4),
H heads, D = S/H head dim, b = block_len, R rows in this call, E encoder length.
Layout: (B, T, C) at the API; (B, T, H, D) between steps; (N, H, L, D) into SDPA, as it expects.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

KINDS = ("dense", "row", "column", "prev_row", "cross", "prime")


class Conv1D(nn.Module):
    """y = x @ w + b, with w stored (n_in, n_out): transposed against nn.Linear, as in the official files."""

    def __init__(self, n_in, n_out, init_std=0.02, zero_init=False):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n_in, n_out) if zero_init else torch.randn(n_in, n_out) * init_std)
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        # jukebox: the weights are cast to the input's dtype, so fp16 activations run fp32 checkpoints as is
        return x @ self.w.to(x.dtype) + self.b.to(x.dtype)


# ---- per-layer patterns ------------------------------------------------------------------------------
# Each official hparam `attn_order` (the keys; for loading official configs only) names a cycle of kinds
# that the layers repeat: layer d has kind cycle[d % len(cycle)]. The orders 3, 4, 5 use "summary" kinds
# that no released model has and are left out.
FACTORIZED = ("row", "column", "prev_row")


def _with(cycle, replaced):
    """cycle with some layers replaced: _with(FACTORIZED * 2, {5: "dense"}) ends in "dense"."""
    return tuple(replaced.get(d, kind) for d, kind in enumerate(cycle))


ATTN_ORDER = {
    0: ("dense",),
    1: ("row", "column"),
    2: FACTORIZED,                                                    # upsamplers, 5b, 5b_lyrics' lyric encoder
    6: FACTORIZED + ("cross",),
    7: FACTORIZED * 5 + ("cross",),
    8: FACTORIZED * 3 + ("cross",),
    9: FACTORIZED + ("dense",),
    10: FACTORIZED * 3 + (FACTORIZED * 3 + ("cross",)) * 7,           # 5b_lyrics: cross at 18, 28, ..., 78
    11: _with(FACTORIZED * 16, {15: "cross", 31: "cross", 47: "dense"}),
    12: _with(FACTORIZED * 16, {15: "prime", 31: "prime", 47: "dense"}),  # 1b_lyrics: prime at 15, 31, 63
}


def layer_kinds(attn_order, depth):
    """Kind of each of `depth` layers for an official attn_order: layer_kinds(12, 72)[15] == "prime"."""
    cycle = ATTN_ORDER[attn_order]
    return tuple(cycle[d % len(cycle)] for d in range(depth))


# ---- attention -----------------------------------------------------------------------------------------
def _sdpa(q, k, v, mask=None, causal=False):
    """(N, L, H, D) queries against (N, L', H, D) keys/values -> (N, L, H, D).

    Scale 1/sqrt(D): the original's D^-1/4 on q and on k (training) or D^-1/2 on q.k (eval), the same up to
    rounding. For fp16/bf16 inputs torch's fused kernels (CPU flash, CUDA flash / memory-efficient) keep q.k
    and the softmax in fp32, as the original does (it casts the logits to fp32 for the mask and softmax).
    """
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (N, L, H, D) -> (N, H, L, D)
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    return a.transpose(1, 2)  # (N, H, L, D) -> (N, L, H, D)


def _take(t, start, length):
    """t[:, start:start+length], skipping a no-op slice (its backward would copy the whole gradient)."""
    return t if start == 0 and length == t.shape[1] else t.narrow(1, start, length)


class Attention(nn.Module):
    """One attention layer of a prior: projections, the attention of its `kind`, and a sampling cache.

    forward(x, encoder_kv=None, sample=False):
      sample=False: teacher forcing on x (B, T, C), T <= n_ctx (the original needs T in whole rows; any T works).
      sample=True: x is the next chunk (B, t, C), t >= 1, of a sequence of which `sample_t` positions came
      before; the cache is updated. reset_cache() starts a new sequence.
      encoder_kv (B, encoder_len, C): the lyric encoder's output, for kind "cross" only (when sampling it is
      read once, at sample_t == 0).
    """

    def __init__(self, width, heads, kind, n_ctx, blocks, init_scale=1.0, prime_len=0, encoder_len=0,
                 n_state=None):
        super().__init__()
        assert kind in KINDS, f"kind {kind!r} is not one of {KINDS}"
        n_state = n_state or width // 4  # m_attn = 0.25 for every released model
        assert n_state % heads == 0 and n_ctx % blocks == 0
        self.kind, self.heads, self.n_ctx, self.blocks = kind, heads, n_ctx, blocks
        self.block_len = n_ctx // blocks
        # jukebox: the prime window is rounded with the *number* of blocks and always up by one more step:
        # 1b_lyrics (384 lyric tokens, 64 blocks) sees (384 // 64 + 1) * 64 = 448 keys, 64 of them music
        self.prime_window = (prime_len // blocks + 1) * blocks
        self.encoder_len = encoder_len
        std = 0.02 * init_scale
        if kind == "cross":
            self.c_attn = Conv1D(width, n_state, std)  # queries only
            self.c_enc_kv = Conv1D(width, 2 * n_state, std)  # [k | v] from the encoder
        else:
            self.c_attn = Conv1D(width, 3 * n_state, std)  # [q | k | v]
        # jukebox: cross-attention layers are built with zero_out forced on (so is their block's MLP c_proj)
        self.c_proj = Conv1D(n_state, width, std, zero_init=(kind == "cross"))
        self.reset_cache()

    def reset_cache(self):
        self.sample_t = 0  # positions consumed so far
        self.cache_k = self.cache_v = None  # (B, L_cache, S) each; heads not split

    def forward(self, x, encoder_kv=None, sample=False):
        B, T, _ = x.shape
        start = self.sample_t if sample else 0  # position of x[:, 0]
        assert start + T <= self.n_ctx, f"{start + T} positions exceed n_ctx {self.n_ctx}"
        if self.kind == "cross":
            q = self.c_attn(x)  # (B, T, S)
            if sample and start > 0:
                k, v = self.cache_k, self.cache_v
            else:
                k, v = self.c_enc_kv(encoder_kv.to(x.dtype)).chunk(2, dim=-1)  # (B, E, 2S) -> 2 x (B, E, S)
                assert k.shape[1] == self.encoder_len, f"encoder_kv has {k.shape[1]} positions, not {self.encoder_len}"
            if sample:
                self.cache_k, self.cache_v, self.sample_t = k, v, start + T
        else:
            q, k, v = self.c_attn(x).chunk(3, dim=-1)  # (B, T, 3S) -> 3 x (B, T, S)
            if sample:
                self.sample_t = start + T
                k, v = self._update_cache(k, v)
        # heads are contiguous slices of S: (B, L, S) -> (B, L, H, D)
        split = lambda t: t.view(B, t.shape[1], self.heads, -1)
        a = self._attend(split(q), split(k), split(v), start)  # (B, T, H, D)
        return self.c_proj(a.reshape(B, T, -1))  # (B, T, H, D) -> (B, T, S) -> (B, T, C)

    def _attend(self, q, k, v, start):
        """Queries at positions start .. start+T-1 against keys that end at the same position, except for
        "prime" (keys from position 0, at most prime_window of them) and "cross" (the encoder)."""
        T, b = q.shape[1], self.block_len
        if self.kind == "cross":
            return _sdpa(q, k, v)  # no mask
        if self.kind == "prime":
            k, v = k[:, :self.prime_window], v[:, :self.prime_window]  # (B, min(L, prime_window), H, D)
        if self.kind in ("dense", "prime"):  # keys start at position 0: key j is visible to query i iff j <= start + i
            if T == 1:
                return _sdpa(q, k, v)  # one sampling step sees every key it is given
            if start == 0:
                # torch aligns is_causal top-left, which is what "prime" needs when it has fewer keys than queries
                return _sdpa(q, k, v, causal=True)
            mask = torch.ones(T, k.shape[1], dtype=torch.bool, device=q.device).tril(start)  # (T, start + T)
            return _sdpa(q, k, v, mask=mask)
        if T == 1:  # one sampling step: take the keys it needs directly, as strided views
            col = start % b
            if self.kind == "row":
                k, v = k[:, -(col + 1):], v[:, -(col + 1):]  # the own row so far
            elif self.kind == "column":
                k, v = k[:, col::b], v[:, col::b]  # the same column of every row so far (the cache starts at 0)
            elif start < b:
                # jukebox: row 0 attends to a row of zeros: equal logits, zero values, so the output is 0
                return torch.zeros_like(q)
            else:
                k, v = k[:, -(col + 1) - b:-(col + 1)], v[:, -(col + 1) - b:-(col + 1)]  # the whole previous row
            return _sdpa(q, k, v)
        return self._blocked(q, k, v, start)

    def _blocked(self, q, k, v, start):
        """row / column / prev_row over whole rows: B sequences become B*R (or B*b) independent problems."""
        B, T, H, D = q.shape
        b = self.block_len
        # The chunk may start and end mid-row: pad the queries to whole rows ("lead" in front, the rest at the
        # back) and the keys at the back to the same end. Keys start on a row boundary (the cache keeps whole
        # rows), so key and query rows line up; padded queries are dropped at the end, padded keys are only
        # ever seen by padded queries.
        lead, tail = start % b, -(start + T) % b
        if lead or tail:
            q = F.pad(q, (0, 0, 0, 0, lead, tail))  # (B, T, H, D) -> (B, Rq*b, H, D)
            k, v = (F.pad(t, (0, 0, 0, 0, 0, tail)) for t in (k, v))  # (B, Rk*b, H, D)
        Rq, Rk = q.shape[1] // b, k.shape[1] // b
        rows = lambda t: t.reshape(-1, b, H, D)  # (B, R*b, H, D) -> (B*R, b, H, D)
        if self.kind == "row":
            k, v = (_take(t, (Rk - Rq) * b, Rq * b) for t in (k, v))  # the queries' own rows
            a = _sdpa(rows(q), rows(k), rows(v), causal=True)  # (B*Rq, b, H, D), causal inside each row
        elif self.kind == "prev_row":
            # Shift the key rows down by one, so that query row r meets key row r-1; no mask.
            # jukebox: row 0 meets a zero-padded row, so its output is 0 and the layer gives only c_proj's bias
            k, v = (F.pad(t[:, :-b], (0, 0, 0, 0, b, 0)) for t in (k, v))  # (B, Rk*b, H, D), shifted
            k, v = (_take(t, (Rk - Rq) * b, Rq * b) for t in (k, v))  # (B, Rq*b, H, D)
            a = _sdpa(rows(q), rows(k), rows(v))  # (B*Rq, b, H, D)
        else:  # column: one sequence per column, with the rows as its time axis
            # (B, R*b, H, D) -> (B, R, b, H, D) -> (B, b, R, H, D) -> (B*b, R, H, D)
            cols = lambda t: t.view(B, -1, b, H, D).transpose(1, 2).reshape(B * b, -1, H, D)
            r0 = Rk - Rq  # row of the first query; keys start at row 0 (the column cache keeps everything)
            if r0 == 0:
                a = _sdpa(cols(q), cols(k), cols(v), causal=True)  # (B*b, Rq, H, D)
            else:
                mask = torch.ones(Rq, Rk, dtype=torch.bool, device=q.device).tril(r0)  # (Rq, Rk): rows, not positions
                a = _sdpa(cols(q), cols(k), cols(v), mask=mask)
            a = a.view(B, b, Rq, H, D).transpose(1, 2)  # (B*b, Rq, H, D) -> (B, Rq, b, H, D)
        return _take(a.reshape(B, Rq * b, H, D), lead, T)  # drop the padded queries: (B, T, H, D)

    def _update_cache(self, k, v):
        """Append this chunk's keys/values (B, T, S) to the cache and return what this chunk attends to.

        The cache then keeps only what later positions need (the original's `_suff_cache_len`), with t = sample_t, b = block_len:
        dense, column: all t; row: the current row, (t-1) % b + 1; prev_row: the previous row too,
        t if t <= b else b + (t-1) % b + 1; prime: the first min(t, prime_window).
        """
        if self.cache_k is not None:
            k = torch.cat([self.cache_k, k], dim=1)  # (B, L_cache + T, S)
            v = torch.cat([self.cache_v, v], dim=1)
        t, b = self.sample_t, self.block_len
        if self.kind == "prime":
            k, v = k[:, :self.prime_window], v[:, :self.prime_window]  # later keys are never attended
            self.cache_k, self.cache_v = k, v
            return k, v
        keep = {"dense": t, "column": t, "row": (t - 1) % b + 1,
                "prev_row": t if t <= b else b + (t - 1) % b + 1}[self.kind]
        self.cache_k, self.cache_v = k[:, -keep:], v[:, -keep:]
        return k, v  # a chunk uses all of it before the cut: it may span rows the cache no longer needs
