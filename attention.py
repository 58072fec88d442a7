"""Factorized attention of the Jukebox priors: one module, six kinds, with a static sampling cache.

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

Reading order:
    1. Conv1D: the projection whose (in, out) weights load the official checkpoints as they are.
    2. Attention.forward -> _blocked: teacher forcing; each sparse kind is a reshape of (B, T, C) into many
       small dense problems ("blocked layout") handed to scaled_dot_product_attention, no (T, T) mask.
    3. Attention.start_cache -> _keep, _cached: sampling; every kind keeps a fixed-size cache written in place.
       A prime from position 0 attends blocked, as in teacher forcing, and _keep files its keys; a later chunk
       of positions attends to a fixed-size set of cached keys under a small mask.

Shape legend: B batch, T positions in this call, C model width, S = n_state attention width (C/4),
H heads, D = S/H head dim, b = block_len, R rows, K cached keys one query reads, E encoder length.
Layout: (B, T, C) at the API; (B, T, H, D) between steps; (N, H, L, D) into SDPA, so the cache is (2, B, H, K, D).
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
        # jukebox: weights are cast to the input's dtype, so half activations run fp32 ones (and half-precision
        # blocks, whose biases stay float32, cast those); where the dtypes match, .to() returns the tensor itself
        w, b = self.w.to(x.dtype), self.b.to(x.dtype)
        return torch.addmm(b, x.reshape(-1, w.shape[0]), w).view(*x.shape[:-1], w.shape[1])  # one fused GEMM


def _sdpa(q, k, v, mask=None, causal=False):
    """(N, L, H, D) queries against (N, L', H, D) keys/values -> (N, L, H, D).

    Scale 1/sqrt(D): the original's D^-1/4 on q and on k (training) or D^-1/2 on q.k (eval), the same up to
    rounding. For half inputs torch's fused kernels keep q.k and the softmax in fp32, as the original does.
    """
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (N, L, H, D) -> (N, H, L, D)
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    return a.transpose(1, 2)  # (N, H, L, D) -> (N, L, H, D)


class Attention(nn.Module):
    """One attention layer of a prior: projections, the attention of its `kind`, and a sampling cache.

    forward(x, encoder_kv=None, position=None):
      position None: teacher forcing on x (B, T, C), the positions 0 .. T-1 (T <= n_ctx).
      position p: x holds positions p .. p+T-1 of a sequence being sampled; their keys and values are
      written into the cache made by start_cache(), and they attend to the cache. Positions come in order.
      encoder_kv (B, E, C): the lyric encoder's output, for kind "cross" only (read once, at position 0).
    """

    def __init__(self, width, heads, kind, n_ctx, blocks, init_scale=1.0, prime_len=0, encoder_len=0):
        super().__init__()
        assert kind in KINDS, f"kind {kind!r} is not one of {KINDS}"
        n_state = width // 4  # m_attn = 0.25 for every released model
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
        # Keys a kind ever needs at once, the most the original's `_suff_cache_len` keeps: the own row (row),
        # the previous row and the own one (prev_row, a ring of two rows), or the window (dense, column, ...).
        b = self.block_len
        self.cache_len = {"row": b, "prev_row": 2 * b, "prime": min(self.prime_window, n_ctx),
                          "cross": encoder_len}.get(kind, n_ctx)
        self.cache = None  # (2, B, H, cache_len, D): k and v of the positions kept, head-major as SDPA reads them

    def forward(self, x, encoder_kv=None, position=None):
        if self.kind == "cross":
            q = self._heads(self.c_attn(x), 1)[0]  # (B, H, T, D)
            kv = self.cache if position else self._heads(self.c_enc_kv(encoder_kv.to(x.dtype)), 2)  # (2, B, H, E, D)
            assert kv.shape[3] == self.encoder_len, f"encoder_kv: {kv.shape[3]} positions, not {self.encoder_len}"
            if position == 0:
                self.cache.copy_(kv)  # the encoder's keys and values serve every later position
            a = F.scaled_dot_product_attention(q, kv[0], kv[1]).transpose(1, 2)  # no mask; (B, T, H, D)
        elif position in (None, 0):  # teacher forcing; a prefill from position 0 is the same attention
            q, k, v = self.c_attn(x).unflatten(-1, (3, self.heads, -1)).unbind(2)  # 3 x (B, T, H, D)
            a = self._blocked(q, k, v)
            if position == 0:
                self._keep(k, v)
        else:
            a = self._cached(self._heads(self.c_attn(x), 3), position)
        return self.c_proj(a.flatten(2))  # (B, T, H, D) -> (B, T, S) -> (B, T, C)

    def _heads(self, x, n):
        """[q | k | v] or a part of it, heads contiguous slices of each: (B, T, n*S) -> (n, B, H, T, D)."""
        return x.unflatten(-1, (n, self.heads, -1)).permute(2, 0, 3, 1, 4)

    # ---- teacher forcing ------------------------------------------------------------------------------
    def _blocked(self, q, k, v):
        """Positions 0 .. T-1 attend as their kind says: (B, T, H, D) each -> (B, T, H, D)."""
        B, T, H, D = q.shape
        b = self.block_len
        if self.kind in ("dense", "prime"):
            if self.kind == "prime":
                k, v = k[:, :self.prime_window], v[:, :self.prime_window]
            # torch aligns is_causal top-left, which is what "prime" needs when it has fewer keys than queries
            return _sdpa(q, k, v, causal=True)
        tail = -T % b  # pad the sequence at the end to whole rows; padded positions are dropped below
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, tail)) if tail else t for t in (q, k, v))  # (B, R*b, H, D)
        rows = lambda t: t.reshape(-1, b, H, D)  # (B, R*b, H, D) -> (B*R, b, H, D)
        if self.kind == "row":
            a = _sdpa(rows(q), rows(k), rows(v), causal=True)  # (B*R, b, H, D), causal inside each row
        elif self.kind == "prev_row":
            # Shift the key rows down by one, so that query row r meets key row r-1; no mask.
            # jukebox: row 0 meets a zero-padded row, so its output is 0 and the layer gives only c_proj's bias
            k, v = (F.pad(t[:, :-b], (0, 0, 0, 0, b, 0)) for t in (k, v))  # (B, R*b, H, D), shifted
            a = _sdpa(rows(q), rows(k), rows(v))  # (B*R, b, H, D)
        else:  # column: one sequence per column, with the rows as its time axis
            # (B, R*b, H, D) -> (B, R, b, H, D) -> (B, b, R, H, D) -> (B*b, R, H, D)
            cols = lambda t: t.view(B, -1, b, H, D).transpose(1, 2).reshape(B * b, -1, H, D)
            a = _sdpa(cols(q), cols(k), cols(v), causal=True)  # (B*b, R, H, D)
            a = a.view(B, b, -1, H, D).transpose(1, 2)  # (B*b, R, H, D) -> (B, R, b, H, D)
        return a.reshape(B, -1, H, D)[:, :T]  # drop the padded positions: (B, T, H, D)

    # ---- sampling -------------------------------------------------------------------------------------
    def start_cache(self, batch, dtype, device):
        """An empty cache for a new sequence of `batch` samples (zeros: prev_row's row 0 reads them), and the
        additive masks of the kinds whose visible keys follow a fixed pattern (0 visible, -inf hidden)."""
        shape = (2, batch, self.heads, self.cache_len, self.c_proj.w.shape[0] // self.heads)
        if self.cache is not None and self.cache.shape == shape and self.cache.dtype == dtype \
                and self.cache.device == torch.device(device):
            self.cache.zero_()  # the same memory again: a compiled (CUDA-graph) step keeps its addresses
            return
        self.cache = torch.zeros(shape, dtype=dtype, device=device)
        side = {"row": self.block_len, "column": self.blocks}.get(self.kind, 0)  # (side, side) lower triangle:
        hidden = torch.ones(side, side, dtype=torch.bool, device=device).triu(1)  # row: column c sees 0 .. c;
        self.masks = torch.zeros(side, side, dtype=dtype, device=device).masked_fill(hidden, float("-inf"))
        self.slots = torch.arange(self.cache_len, device=device)  # column: row r sees rows 0 .. r

    def _keep(self, k, v):
        """Keys and values (B, T, H, D) of positions 0 .. T-1, run blocked: into the slots the cached steps read."""
        T, b, row = k.shape[1], self.block_len, (k.shape[1] - 1) // self.block_len  # the row of position T-1
        first = {"row": row * b, "prev_row": max(0, row - 1) * b}.get(self.kind, 0)  # the rows a step reads
        t = torch.arange(first, min(T, self.prime_window) if self.kind == "prime" else T, device=k.device)
        slot = {"row": t % b, "prev_row": t % (2 * b), "column": t % b * self.blocks + t // b}.get(self.kind, t)
        self.cache.index_copy_(3, slot, torch.stack([k, v])[:, :, t].transpose(2, 3))  # (2, B, H, n, D)

    def _cached(self, qkv, position):
        """Positions position .. position+T-1 (q, k, v: (3, B, H, T, D)): into the cache, then attend. A chunk
        that runs over a row boundary is handled row by row, so each piece reads one fixed set of cached keys."""
        b, T = self.block_len, qkv.shape[3]
        if T == 1 or position // b == (position + T - 1) // b:  # one sampling step, or a chunk inside a row
            return self._attend_cached(qkv, position)
        pieces, start = [], position
        while start < position + T:
            stop = min(position + T, (start // b + 1) * b)  # the end of this row, or of the chunk
            pieces.append(self._attend_cached(qkv[:, :, :, start - position:stop - position], start))
            start = stop
        return torch.cat(pieces, dim=1)  # (B, T, H, D)

    def _attend_cached(self, qkv, start):
        """Queries at positions start .. start+T-1 of one row (q, k, v: (3, B, H, T, D)) -> (B, T, H, D)."""
        _, B, H, T, D = qkv.shape
        b, row, col = self.block_len, start // self.block_len, start % self.block_len
        q, kv = qkv[0], qkv[1:]  # (B, H, T, D), (2, B, H, T, D)
        n = T if self.kind != "prime" else max(0, min(T, self.prime_window - start))  # prime: later keys unused
        if self.kind == "column":  # column-major, slot c * R + r: one strided slice (--compile writes it in place)
            self.cache[:, :, :, col * self.blocks + row:(col + T) * self.blocks:self.blocks] = kv
        else:  # in order; in a ring of one row (row) or of two (prev_row)
            slot = {"row": col, "prev_row": start % (2 * b)}.get(self.kind, start)
            self.cache[:, :, :, slot:slot + n] = kv[:, :, :, :n]
        if self.kind == "prev_row":  # the other row of the ring, whole: zeros while in row 0, no mask
            other = (row + 1) % 2 * b
            keys, mask = self.cache[:, :, :, other:other + b], None  # (2, B, H, b, D)
        elif self.kind == "column":  # the chunk's columns, every row of each: one sequence of R keys per query
            # (2, B, H, T*R, D) -> (2, B, H, T, R, D) -> (2, B, T, H, R, D) -> (2, B*T, H, R, D)
            keys = self.cache[:, :, :, col * self.blocks:(col + T) * self.blocks]
            keys = keys.unflatten(3, (T, self.blocks)).transpose(2, 3).flatten(1, 2)
            q, mask = q.transpose(1, 2).reshape(B * T, H, 1, D), self.masks[row:row + 1]  # (1, R): rows 0 .. row
        elif self.kind == "row":
            keys, mask = self.cache, self.masks[col:col + T]  # (T, b): the own row up to each query
        else:  # dense, prime: every earlier position (prime: those inside its window)
            visible = self.slots <= torch.arange(start, start + T, device=q.device)[:, None]  # (T, K)
            keys, mask = self.cache, visible
        a = F.scaled_dot_product_attention(q, keys[0], keys[1], attn_mask=mask)  # (B or B*T, H, T or 1, D)
        return a.view(B, T, H, D) if self.kind == "column" else a.transpose(1, 2)
