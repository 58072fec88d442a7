"""The Jukebox priors: autoregressive Transformers over VQ-VAE codes, their conditioning, and fast sampling.

Implements the top-level priors (5b, 5b_lyrics, 1b_lyrics) and the two upsamplers of arXiv:2005.00341 §4
(priors and upsamplers; artist, genre and timing conditioning; lyrics conditioning; sampling) and
Appendix B (hyperparameters), exactly as released, plus tiny/toy/bench presets that run on a CPU.

Reading order:
  1. PriorConfig and preset(): every hyperparameter of the released models, named, with its official name.
  2. window_y(): the label vector of a window (artist, genres, timing, lyrics), the only input besides the codes.
  3. Block and Transformer: pre-LayerNorm blocks over attention.py's factorized attention kinds.
  4. The conditioning: Conditioner (codes of the level above), LabelConditioner (artist, genre, timing),
     LyricEncoder (5b_lyrics).
  5. Prior: forward() for training; sample() = condition() once per window, then extend() over the prime
     and one position at a time, each new position reading the attention caches.

Shape legend: B batch, T music tokens in the window, L transformer sequence length (T, or lyric tokens + T
for 1b_lyrics), W width, V vocabulary, E lyric-encoder length, C conv channels. Sequences are (B, T, W)
everywhere; only the Conditioner's conv stack works in (B, C, T) inside.
"""
import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from attention import Attention, Conv1D
from vqvae import DecoderBlock

FACTORIZED = ("row", "column", "prev_row")  # the Sparse Transformer's cycle (official attn_order 2)


# ---- configuration ------------------------------------------------------------------------------------
@dataclass
class PriorConfig:
    level: int = 2                 # VQ-VAE level modelled: 2 top, 1 middle, 0 bottom (hparams level)
    n_ctx: int = 8192              # music tokens per window (n_ctx)
    codebook_size: int = 2048      # VQ-VAE codes per level (l_bins)
    hop_lengths: tuple = (8, 32, 128)  # raw samples per token at each VQ-VAE level (vqvae hop_lengths)
    width: int = 4800              # model width W (prior_width)
    attention: tuple = FACTORIZED * 24  # attention kind of each block, in order (attn_order, prior_depth)
    heads: int = 8                 # attention heads (heads)
    blocks: int = 128              # rows of the factorized attention; row length = L // blocks (blocks)
    init_scale: float = 0.1        # multiplier of the init std of every weight (init_scale)
    merged_decoder: bool = True    # untied output layer and conditioning added at the input only (merged_decoder)
    gradient_checkpointing: bool = False  # recompute each block in the backward pass, training only (c_res)
    # labels: artist, genres, timing
    n_genres: int = 120            # genre vocabulary (y_bins[0])
    n_artists: int = 4111          # artist vocabulary (y_bins[1])
    max_genres: int = 5            # genre slots in the label vector, -1 = empty (max_bow_genre_size)
    label_version: int = 2         # which artist/genre/lyric id tables: 2 or 3 (labels_v3)
    timing_bins: int = 128         # bins of each timing embedding (t_bins)
    min_duration: float = 60.0     # shortest song (s) the total-length embedding accepts (min_duration)
    max_duration: float = 600.0    # longest song (s) the timing embeddings accept (max_duration)
    sample_rate: int = 44100       # audio samples per second (sr)
    # the upsamplers' Conditioner on the codes of the level above
    cond_width: int = 1024         # channels of its conv stack (cond_width)
    cond_depth: int = 16           # residual blocks per x2 upsampling step (cond_depth)
    cond_dilation_growth: int = 3  # dilation of residual block d = growth ** (d % cycle) (cond_dilation_growth_rate)
    cond_dilation_cycle: int = 8   # (cond_dilation_cycle)
    cond_res_scale: bool = False   # scale the residual branches by 1/sqrt(cond_depth) (cond_res_scale)
    # lyrics
    lyrics: str = "none"           # "none"; "encoder": separate lyric encoder + cross-attention (5b_lyrics);
                                   # "merged": lyrics and music in one sequence (1b_lyrics, single_enc_dec)
    n_lyric_tokens: int = 0        # lyric characters per window (n_tokens)
    lyric_vocab: int = 80          # character vocabulary, 0 = padding (n_vocab)
    prime_loss_fraction: float = 0.0  # weight of the loss on the lyric tokens (prime_loss_fraction)
    encoder_width: int = 1280      # lyric encoder width, "encoder" only (prime_width)
    encoder_attention: tuple = FACTORIZED * 6  # its blocks' kinds (prime_attn_order, prime_depth)
    encoder_heads: int = 4         # (prime_heads)
    encoder_blocks: int = 32       # (prime_blocks)
    encoder_init_scale: float = 0.7  # (prime_init_scale)

    def __post_init__(self):  # a config read back from a checkpoint holds lists where tuples were
        for f in fields(self):
            if isinstance(getattr(self, f.name), list):
                setattr(self, f.name, tuple(getattr(self, f.name)))

    @property
    def depth(self):               # number of transformer blocks
        return len(self.attention)
    @property
    def is_top(self):              # the top level has timing, the others the Conditioner
        return self.level == len(self.hop_lengths) - 1
    @property
    def hop_length(self):          # raw audio samples per token of this level
        return self.hop_lengths[self.level]
    @property
    def sample_length(self):       # raw audio samples per window (official prior.sample_length)
        return self.n_ctx * self.hop_length
    @property
    def upsample_factor(self):     # tokens of this level per token of the level above
        return self.hop_lengths[self.level + 1] // self.hop_length
    @property
    def seq_len(self):             # transformer sequence length L
        return self.n_ctx + (self.n_lyric_tokens if self.lyrics == "merged" else 0)
    @property
    def vocab_size(self):          # transformer vocabulary V; "merged" puts the characters first
        return self.codebook_size + (self.lyric_vocab if self.lyrics == "merged" else 0)
    @property
    def n_labels(self):            # [total_length, offset, sample_length, artist, genres...]
        return GENRES + self.max_genres
    @property
    def y_length(self):            # length of the label vector y
        return self.n_labels + (self.n_lyric_tokens if self.lyrics != "none" else 0)


def _released(name):
    if name in ("upsampler_level_0", "upsampler_level_1"):
        return PriorConfig(level=int(name[-1]), width=1920, heads=1, init_scale=0.4, merged_decoder=False,
                           cond_res_scale=name.endswith("1"))
    if name == "5b":
        return PriorConfig()
    if name == "5b_lyrics":  # every 10th block from 18 on cross-attends to the lyric encoder
        return PriorConfig(attention=FACTORIZED * 3 + (FACTORIZED * 3 + ("cross",)) * 7, min_duration=23.8,
                           lyrics="encoder", n_lyric_tokens=512, lyric_vocab=80, prime_loss_fraction=0.4)
    if name == "1b_lyrics":  # the last block of every 16 attends to the lyric prefix ("prime"), but 47 is dense
        shifted, shifted_twice = FACTORIZED[1:] + FACTORIZED[:1], FACTORIZED[2:] + FACTORIZED[:2]
        attention = (FACTORIZED * 5 + ("prime",) + shifted * 5 + ("prime",) + shifted_twice * 5 + ("dense",)
                     + FACTORIZED * 5 + ("prime",) + shifted * 2 + shifted[:2])
        return PriorConfig(n_ctx=6144, width=2048, attention=attention, heads=2, blocks=64, init_scale=0.2,
                           merged_decoder=False, n_genres=604, n_artists=7898, max_genres=1, label_version=3,
                           timing_bins=64, min_duration=17.84, lyrics="merged", n_lyric_tokens=384,
                           lyric_vocab=79, prime_loss_fraction=0.4)
    raise ValueError(name)


def _cpu(name, level, lyrics):
    # Top levels take 5b's structure (untied output, conditioning at the input only), upsamplers theirs.
    if name == "tiny":   # seconds on a CPU; for tests and the toy pipeline (the codebook of vqvae.preset("tiny"))
        c = PriorConfig(level=level, n_ctx=64, codebook_size=256, width=32, attention=FACTORIZED, heads=2,
                        blocks=8, init_scale=1.0, merged_decoder=level == 2, timing_bins=16, min_duration=0.0,
                        cond_width=32, cond_depth=2, cond_dilation_cycle=2)
        lyric = dict(n_lyric_tokens=16, encoder_width=32, encoder_attention=FACTORIZED, encoder_heads=2,
                     encoder_blocks=4, encoder_init_scale=1.0)
    else:                # "bench": the benchmark size, the released 8192-token window, narrow and shallow
        c = PriorConfig(level=level, n_ctx=8192, width=512, attention=FACTORIZED * 4, heads=4 if level == 2 else 1,
                        blocks=128, init_scale=0.7, merged_decoder=level == 2, timing_bins=64, min_duration=0.0,
                        cond_width=256, cond_depth=4, cond_dilation_cycle=4)
        lyric = dict(n_lyric_tokens=256, encoder_width=128, encoder_attention=FACTORIZED, encoder_heads=2,
                     encoder_blocks=16, encoder_init_scale=0.7)
    if lyrics == "encoder":   # 5b_lyrics-style: the 4th block cross-attends to the lyric encoder
        c = replace(c, lyrics="encoder", attention=FACTORIZED + ("cross",), prime_loss_fraction=0.4, **lyric)
    elif lyrics == "merged":  # 1b_lyrics-style: 16 blocks, the last attends to the lyric prefix
        c = replace(c, lyrics="merged", attention=FACTORIZED * 5 + ("prime",), merged_decoder=False,
                    n_genres=604, n_artists=7898, max_genres=1, label_version=3, lyric_vocab=79,
                    prime_loss_fraction=0.4, n_lyric_tokens=lyric["n_lyric_tokens"])
    return c


RELEASED = ("upsampler_level_0", "upsampler_level_1", "5b", "5b_lyrics", "1b_lyrics")


def preset(name, level=None, lyrics="none"):
    """A named PriorConfig. Released names fix their level (upsampler_level_0/1 the bottom and middle priors, the
    others top priors) and lyrics; "tiny", "toy" and "bench" take both: preset("tiny", level=1) is a tiny upsampler,
    preset("tiny", lyrics="merged") a 1b_lyrics-style top prior (level default 2)."""
    if name in RELEASED:
        config = _released(name)
        if level not in (None, config.level) or lyrics != "none":
            raise ValueError(f"preset {name!r}: a level-{config.level} prior, lyrics fixed; got {level=}, {lyrics=}")
        return config
    level = 2 if level is None else level
    if name not in ("tiny", "toy", "bench"):
        raise ValueError(f"unknown prior preset {name!r}; choose from {RELEASED + ('tiny', 'toy', 'bench')}")
    if lyrics not in ("none", "encoder", "merged") or (lyrics != "none" and level != 2):
        raise ValueError(f"lyrics={lyrics!r} needs level 2 and one of 'none', 'encoder', 'merged'")
    # "toy" (recipe.py): tiny, 64 wide; the top sees 256 codes (0.74 s), the bottom 128 via a 128 x 4 Conditioner
    toy = {2: dict(n_ctx=256, blocks=16, width=64), 1: dict(width=64),
           0: dict(n_ctx=128, blocks=16, width=64, cond_width=128, cond_depth=4)}
    return replace(_cpu("tiny" if name == "toy" else name, level, lyrics), **(toy[level] if name == "toy" else {}))


# ---- the label vector of a window ---------------------------------------------------------------------
# The official layout of y (LongTensor): [total_length, offset, sample_length, artist, genre x max_genres,
# lyric token x n_lyric_tokens]; lengths and offsets in audio samples, empty genre slots -1.
TOTAL, OFFSET, LENGTH, ARTIST, GENRES = 0, 1, 2, 3, 4


def lyric_window(tokens, n_tokens, total_length, offset, duration):
    """The n_tokens lyric ids that go with the music window [offset, offset + duration) of a song of total_length
    samples, the lyrics assumed spread evenly over the song (paper §3.6 "lyrics alignment"). Returns (window,
    indices): window[i] = tokens[indices[i]], or 0 where indices[i] == -1 (padding)."""
    if len(tokens) < n_tokens:  # short lyrics: all of them, left-padded with 0
        pad = n_tokens - len(tokens)
        return [0] * pad + list(tokens), [-1] * pad + list(range(len(tokens)))
    if not 0 <= offset < total_length:
        raise ValueError(f"offset {offset} outside the song [0, {total_length})")
    # The n_tokens around the character at the window's centre in time, shifted to stay inside the lyrics.
    mid = int(len(tokens) * (offset + duration / 2.0) / total_length)  # jukebox: float, then truncated
    first = min(max(mid - n_tokens // 2, 0), len(tokens) - n_tokens)
    indices = list(range(first, first + n_tokens))
    return [tokens[i] for i in indices], indices


def window_y(config, artist, genres, total_length, offset=0, lyrics=()):
    """The label vector y (LongTensor (config.y_length,)) of the window that starts `offset` samples into a song
    of `total_length` samples. artist, genres: ids of data.py's tables (-1 genres are empty slots); lyrics: every
    lyric token of the song, of which lyric_window picks the window's (ignored without lyrics)."""
    genres = [g for g in genres if g >= 0]
    if len(genres) > config.max_genres:
        raise ValueError(f"at most {config.max_genres} genres per song, got {len(genres)}")
    window = [] if config.lyrics == "none" else lyric_window(  # jukebox: the prior's full window, even past the end
        list(lyrics), config.n_lyric_tokens, total_length, offset, config.sample_length)[0]
    empty = [-1] * (config.max_genres - len(genres))
    return torch.tensor([total_length, offset, config.sample_length, artist, *genres, *empty, *window])  # int64


# ---- the transformer ----------------------------------------------------------------------------------
class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back, so half-precision blocks keep fp32 statistics (as the original)."""

    def forward(self, x):
        if x.dtype == self.weight.dtype == torch.float32:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        h = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return h.to(x.dtype)


class MLP(nn.Module):
    def __init__(self, width, init_scale, zero_init=False):
        super().__init__()
        self.c_fc = Conv1D(width, width, init_std=0.02 * init_scale)  # jukebox: hidden width = 1.0 x width (m_mlp)
        self.c_proj = Conv1D(width, width, init_std=0.02 * init_scale, zero_init=zero_init)

    def forward(self, x):
        h = self.c_fc(x)
        return self.c_proj(h * torch.sigmoid(1.702 * h))  # jukebox: quick_gelu, the sigmoid approximation of GELU


class Block(nn.Module):
    """Pre-LN residual block: x + a + m with a = attn(ln_0(x)), m = mlp(ln_1(x + a))."""

    def __init__(self, width, heads, kind, seq_len, blocks, init_scale, prime_len, encoder_len):
        super().__init__()
        self.kind = kind
        self.ln_0 = LayerNorm(width)
        self.attn = Attention(width, heads, kind, seq_len, blocks, init_scale=init_scale, prime_len=prime_len,
                              encoder_len=encoder_len)
        self.ln_1 = LayerNorm(width)
        self.mlp = MLP(width, init_scale, zero_init=kind == "cross")  # jukebox: cross blocks start as identity

    def forward(self, x, encoder_kv=None, position=None):
        h = x + self.attn(self.ln_0(x), encoder_kv=encoder_kv, position=position)
        return h + self.mlp(self.ln_1(h))


class Transformer(nn.Module):
    """Token and learned position embeddings, the blocks, and an output layer (official ConditionalAutoregressive2D).

    Position t is fed the token at t-1; position 0 is fed a start embedding: the label embedding of the
    prior, or the learned `start_token` of the lyric encoder. `output` is "tied" (lm_head shares the token
    embedding), "untied", or None (the lyric encoder has no output layer).
    """

    def __init__(self, vocab_size, seq_len, width, kinds, heads, blocks, init_scale, prime_len=0, encoder_len=0,
                 start_token=False, output="tied"):
        super().__init__()
        assert seq_len % blocks == 0, (seq_len, blocks)
        self.token_embedding = nn.Embedding(vocab_size, width)
        nn.init.normal_(self.token_embedding.weight, std=0.02 * init_scale)
        self.pos_embedding = nn.Parameter(torch.empty(seq_len, width))  # jukebox: a learned absolute table
        nn.init.normal_(self.pos_embedding, std=0.01 * init_scale)
        self.start_token = nn.Parameter(torch.randn(1, width) * (0.01 * init_scale)) if start_token else None
        self.blocks = nn.ModuleList(Block(width, heads, kind, seq_len, blocks, init_scale, prime_len, encoder_len)
                                    for kind in kinds)
        self.lm_head = None
        if output is not None:
            self.lm_head = nn.Linear(width, vocab_size, bias=False)  # jukebox: default init when untied
            if output == "tied":
                self.lm_head.weight = self.token_embedding.weight
        self.gradient_checkpointing = False

    @property
    def block_dtype(self):  # float32, or the half precision of Prior.half_blocks()
        return self.blocks[0].attn.c_proj.w.dtype

    def embed(self, prev_tokens, start_embedding, position):
        """Inputs of positions position .. position+t-1 from the tokens before them (B, t) -> (B, t, W).

        prev_tokens[:, i] is the token at position + i - 1; when position == 0 its first column is ignored and
        position 0 gets the start embedding, (B, 1, W) or (1, W)."""
        h = self.token_embedding(prev_tokens)  # (B, t, W)
        if position == 0:
            first = start_embedding.view(-1, 1, h.shape[-1]).expand(len(h), 1, -1).to(h.dtype)  # (B, 1, W)
            h = torch.cat([first, h[:, 1:]], dim=1)
        return h + self.pos_embedding[position:position + h.shape[1]]

    def forward(self, h, encoder_kv=None, position=None):
        """(B, t, W) inputs -> (B, t, W) float32 activations; position: see Attention.forward (None = training).
        The blocks run in block_dtype (half with half_blocks); LayerNorm and softmax stay float32 inside."""
        h = h.to(self.block_dtype)
        encoder_kv = None if encoder_kv is None else encoder_kv.to(self.block_dtype)
        use_checkpoint = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            kv = encoder_kv if block.kind == "cross" else None  # only cross-attention reads the lyric encoder
            if use_checkpoint and position is None:
                h = checkpoint(block, h, kv, use_reentrant=False)
            else:
                h = block(h, encoder_kv=kv, position=position)
        return h.float()


# ---- conditioning: the codes of the level above (upsamplers) ------------------------------------------
class Conditioner(nn.Module):
    """Embeds the upper level's codes and upsamples them to this level's rate: (B, T/4) -> (B, T, W).

    The upsampling is the VQ-VAE's decoder block (as in the original) on the prior's width: a conv to
    cond_width channels, then per x2 step a dilated residual stack and a transposed conv, the last back to W.
    """

    def __init__(self, config):
        super().__init__()
        c = config
        steps = int(math.log2(c.upsample_factor))
        assert 2 ** steps == c.upsample_factor, "the Conditioner upsamples by powers of 2"
        self.token_embedding = nn.Embedding(c.codebook_size, c.width)
        nn.init.normal_(self.token_embedding.weight, std=0.02 * c.init_scale)
        # jukebox: dilations 1, 3, 9, ... restart every cycle in increasing order (no reverse_dilation here), and
        # the residual scale is 1 at level 0 but 1/sqrt(depth) at level 1 (cond_res_scale; not in checkpoints)
        res_scale = 1.0 / math.sqrt(c.cond_depth) if c.cond_res_scale else 1.0
        self.decoder = DecoderBlock(c.width, steps, 2, c.cond_width, c.cond_depth, c.cond_dilation_growth,
                                    reverse_dilation=False, dilation_cycle=c.cond_dilation_cycle, res_scale=res_scale)
        self.norm = LayerNorm(c.width)

    def forward(self, upper):
        h = self.token_embedding(upper).transpose(1, 2)  # (B, T/4) -> (B, T/4, W) -> (B, W, T/4)
        return self.norm(self.decoder(h).transpose(1, 2))  # (B, W, T) -> (B, T, W)


# ---- conditioning: artist, genre and timing labels ----------------------------------------------------
class RangeEmbedding(nn.Module):
    """Embeds where [start, end) lies inside a fixed range [low, high): n_time equally spaced positions
    start + (end - start) * i / n_time, each binned into `bins` equal parts of the range."""

    def __init__(self, n_time, bins, low, high, width, init_scale, clamp_end=False):
        super().__init__()
        self.n_time, self.bins, self.low, self.high, self.clamp_end = n_time, bins, low, high, clamp_end
        self.weight = nn.Parameter(torch.empty(bins, width))
        nn.init.normal_(self.weight, std=0.01 * init_scale)

    def bin_index(self, start, end=None):
        """(B, 1) float32 start (and end) -> (B, n_time) long bin indices."""
        if not ((self.low <= start) & (start < self.high)).all():
            raise ValueError(f"timing value {start.flatten().tolist()} outside [{self.low}, {self.high})")
        position = start
        if self.n_time > 1:
            if self.clamp_end:
                end = end.clamp(self.low, self.high)
            if not ((self.low <= end) & (end <= self.high)).all():
                raise ValueError(f"timing value {end.flatten().tolist()} outside [{self.low}, {self.high}]")
            fraction = torch.arange(self.n_time, dtype=torch.float32, device=start.device) / self.n_time
            position = start + (end - start) * fraction  # (B, 1) -> (B, n_time), float32 like the original
        normalized = (position - self.low) / (self.high - self.low)  # [low, high) -> [0, 1)
        return (self.bins * normalized).floor().long()

    def forward(self, start, end=None):
        return F.embedding(self.bin_index(start, end), self.weight)  # (B, n_time, W)


class LabelConditioner(nn.Module):
    """y labels -> the start embedding (artist + bag of genres) and, at the top level, the timing embedding."""

    def __init__(self, config):
        super().__init__()
        c = config
        self.artist_embedding = nn.Embedding(c.n_artists, c.width)
        self.genre_embedding = nn.Embedding(c.n_genres, c.width)
        for emb in (self.artist_embedding, self.genre_embedding):
            nn.init.normal_(emb.weight, std=0.01 * c.init_scale)
        self.timing = c.is_top  # the upsamplers get their timing from the upper codes instead
        if self.timing:  # ranges in audio samples: total length, window position in the song, and its fraction
            bins, width, scale = c.timing_bins, c.width, c.init_scale
            shortest, longest = c.min_duration * c.sample_rate, c.max_duration * c.sample_rate
            self.total_length_embedding = RangeEmbedding(1, bins, shortest, longest, width, scale)
            self.absolute_position_embedding = RangeEmbedding(c.n_ctx, bins, 0.0, longest, width, scale)
            # jukebox: a window may run past the end of the song; its relative end is clamped to 1
            self.relative_position_embedding = RangeEmbedding(c.n_ctx, bins, 0.0, 1.0, width, scale, clamp_end=True)

    def forward(self, labels):
        """labels (B, 4 + max_genres), the start of y -> start (B, 1, W), timing (B, n_ctx, W) or None."""
        genres = labels[:, GENRES:]
        present = (genres >= 0).unsqueeze(-1)  # (B, G, 1); empty genre slots hold -1
        genre = (self.genre_embedding(genres.clamp(min=0)) * present).sum(dim=1, keepdim=True)  # (B, G, W) -> (B, 1, W)
        start_embedding = genre + self.artist_embedding(labels[:, ARTIST:ARTIST + 1])
        if not self.timing:
            return start_embedding, None
        total, start = labels[:, TOTAL:TOTAL + 1].float(), labels[:, OFFSET:OFFSET + 1].float()  # (B, 1) each
        end = start + labels[:, LENGTH:LENGTH + 1].float()
        timing = (self.total_length_embedding(total) + self.absolute_position_embedding(start, end)
                  + self.relative_position_embedding(start / total, end / total))
        return start_embedding, timing


# ---- conditioning: lyrics (5b_lyrics) -----------------------------------------------------------------
class LyricEncoder(nn.Module):
    """A causal Transformer over the window's lyric characters. Its activations, projected to the prior's
    width and normalized, are the keys/values read by the prior's cross-attention layers (encoder_kv)."""

    def __init__(self, config):
        super().__init__()
        c = config
        self.transformer = Transformer(c.lyric_vocab, c.n_lyric_tokens, c.encoder_width, c.encoder_attention,
                                       c.encoder_heads, c.encoder_blocks, c.encoder_init_scale, start_token=True,
                                       output=None)
        self.proj = Conv1D(c.encoder_width, c.width, init_std=0.02 * c.encoder_init_scale)
        self.norm = LayerNorm(c.width)
        self.out = nn.Linear(c.width, c.lyric_vocab, bias=False)  # predicts the lyrics, for the prime loss only
        nn.init.normal_(self.out.weight, std=0.02 * c.init_scale)

    def forward(self, lyrics):
        """lyrics (B, E) long -> encoder_kv (B, E, W) float32."""
        prev = F.pad(lyrics, (1, 0))[:, :-1]  # (B, E): position t is fed character t-1
        h = self.transformer(self.transformer.embed(prev, self.transformer.start_token, 0))
        return self.norm(self.proj(h))


# ---- the prior ----------------------------------------------------------------------------------------
def bits(logits, targets):
    """Mean cross-entropy in bits per token: logits (B, t, V), targets (B, t)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()) / math.log(2.0)  # over (B*t, V)


def filter_logits(logits, top_k=0, top_p=0.0):
    """Keep the top_k largest logits, or the smallest set whose probability exceeds top_p; others -> -inf."""
    if top_k > 0 and top_p > 0.0:
        raise ValueError("use top_k or top_p, not both")
    logits = logits.clone()
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits[logits < kth] = -math.inf
    if top_p > 0.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) > top_p
        remove[..., 1:] = remove[..., :-1].clone()  # shift right: keep the first token that crosses top_p
        remove[..., 0] = False
        logits[remove.scatter(-1, order, remove)] = -math.inf  # back from sorted to vocabulary order
    return logits


@dataclass
class Sampling:
    """How Prior.sample draws each token (the released sampling used temperature 0.98-0.99, no top-k/p)."""
    temperature: float = 1.0       # logits are divided by it (temp)
    top_k: int = 0                 # keep the k most likely tokens, 0 = off (top_k)
    top_p: float = 0.0             # keep the smallest set with this probability mass, 0 = off (top_p)
    chunk_size: int = None         # prime positions per prefill pass (chunk_size); None: all in one blocked pass
    mask_lyric_ids: bool = False   # "merged": forbid character ids at music positions (the original does not)


@dataclass
class Window:
    """The conditioning of one window, computed once (Prior.condition): start embedding (B, 1, W), per-position
    conditioning (B, L, W), the lyric encoder's output (B, E, W) or None."""
    start: torch.Tensor
    cond: torch.Tensor
    encoder_kv: torch.Tensor


class Prior(nn.Module):
    """A Jukebox prior: p(codes of this level | labels, lyrics, codes of the level above).

    The conditioning enters as (1) the start embedding at position 0 (artist + genres), (2) a per-position
    embedding added to the input (the upsampled upper codes, or at the top level the timing embedding) and,
    unless merged_decoder, added again after the blocks, and (3) the lyrics: keys/values of the cross-attention
    layers ("encoder"), or a prefix of the token sequence attended to by the prime layers ("merged").
    """

    def __init__(self, config):
        super().__init__()
        c = self.config = config
        self.conditioner = None if c.is_top else Conditioner(c)
        self.labels = LabelConditioner(c)
        self.lyric_encoder = LyricEncoder(c) if c.lyrics == "encoder" else None
        self.transformer = Transformer(c.vocab_size, c.seq_len, c.width, c.attention, c.heads, c.blocks, c.init_scale,
                                       prime_len=c.n_lyric_tokens if c.lyrics == "merged" else 0,
                                       encoder_len=c.n_lyric_tokens if c.lyrics == "encoder" else 0,
                                       output="untied" if c.merged_decoder else "tied")
        for transformer in self.transformers():
            transformer.gradient_checkpointing = c.gradient_checkpointing

    def transformers(self):
        """The music transformer and, for "encoder", the lyric encoder's (FSDP shards their blocks)."""
        return [self.transformer] + ([self.lyric_encoder.transformer] if self.lyric_encoder is not None else [])

    def half_blocks(self, dtype):
        """Run the transformer blocks in float16 or bfloat16, as the released sampling did (the original's
        fp16_params): their Conv1D weights, nearly all the weights, are stored in dtype; biases, LayerNorms,
        embeddings, conditioning and the output layer stay float32. Returns the prior."""
        for transformer in self.transformers():
            for module in transformer.blocks.modules():
                if isinstance(module, Conv1D):
                    module.w.data = module.w.data.to(dtype)
        return self

    # -- conditioning -----------------------------------------------------------------------------------
    def condition(self, y, upper=None):
        """y (B, y_length), upper (B, T/4) -> the Window: start (B, 1, W), cond (B, L, W), encoder_kv."""
        c = self.config
        if y.shape[1] != c.y_length:
            raise ValueError(f"y has {y.shape[1]} entries, this prior expects {c.y_length} (see window_y)")
        start, timing = self.labels(y[:, :c.n_labels])
        if self.conditioner is not None:
            if upper is None:
                raise ValueError("an upsampler needs `upper`, the codes of the level above")
            cond = self.conditioner(upper)   # (B, T, W)
        else:
            cond = timing                    # (B, n_ctx, W)
        if c.lyrics == "merged":             # no per-position conditioning on the lyric prefix
            cond = torch.cat([cond.new_zeros(len(cond), c.n_lyric_tokens, c.width), cond], dim=1)  # (B, L, W)
        encoder_kv = None
        if self.lyric_encoder is not None:   # once per window
            encoder_kv = self.lyric_encoder(y[:, c.n_labels:])
        return Window(start, cond, encoder_kv)

    def sequence(self, tokens, y):
        """Music tokens (B, T) -> the transformer's token sequence (B, L): "merged" puts the window's lyric
        characters first and shifts the music ids past the character ids."""
        c = self.config
        return tokens if c.lyrics != "merged" else torch.cat([y[:, c.n_labels:], tokens + c.lyric_vocab], dim=1)

    def activations(self, window, prev_tokens, position=None):
        """The blocks' output (B, t, W) at positions position .. position+t-1, given the tokens before them
        (B, t). position None: teacher forcing from position 0; else the attention caches are read and extended."""
        first = 0 if position is None else position
        cond = window.cond[:, first:first + prev_tokens.shape[1]]
        h = self.transformer.embed(prev_tokens, window.start, first) + cond
        h = self.transformer(h, window.encoder_kv, position=position)
        return h if self.config.merged_decoder else h + cond

    def extend(self, window, prev_tokens, position=None):
        """Logits (B, t, V) of the positions of activations()."""
        return self.transformer.lm_head(self.activations(window, prev_tokens, position))

    # -- training ---------------------------------------------------------------------------------------
    def sequence_logits(self, tokens, y, upper=None):
        """Teacher-forced logits over the whole transformer sequence: tokens (B, T) -> (logits (B, L, V),
        encoder_kv (B, E, W) or None). For "merged", L and V include the lyric prefix and characters."""
        window = self.condition(y, upper)
        return self.extend(window, F.pad(self.sequence(tokens, y), (1, 0))[:, :-1]), window.encoder_kv

    def logits(self, tokens, y, upper=None):
        """Teacher-forced next-code logits (B, T) -> (B, T, codebook_size). For "merged" these are the music
        positions and music ids only (sample() draws from the full merged vocabulary, see there)."""
        c = self.config
        logits, _ = self.sequence_logits(tokens, y, upper)
        if c.lyrics == "merged":
            logits = logits[:, c.n_lyric_tokens:, c.lyric_vocab:]
        return logits

    def forward(self, tokens, y, upper=None):
        """(B, T) codes -> (loss, metrics); losses in bits per token. The lyric ("prime") loss counts
        with weight prime_loss_fraction, both terms weighted by their share of the tokens."""
        c = self.config
        logits, encoder_kv = self.sequence_logits(tokens, y, upper)
        seq = self.sequence(tokens, y)
        n_prime, n_gen = (0 if c.lyrics == "none" else c.n_lyric_tokens), tokens.shape[1]
        if c.lyrics == "merged":       # one sequence: the first n_lyric_tokens predictions are the lyrics
            prime_loss = bits(logits[:, :n_prime], seq[:, :n_prime])
            logits, seq = logits[:, n_prime:], seq[:, n_prime:]
        elif c.lyrics == "encoder":    # the encoder's projected activations predict the lyrics
            prime_loss = bits(self.lyric_encoder.out(encoder_kv), y[:, c.n_labels:])
        else:
            prime_loss = logits.new_zeros(())
        gen_loss = bits(logits, seq)
        loss = (c.prime_loss_fraction * prime_loss * n_prime + gen_loss * n_gen) / (n_prime + n_gen)
        return loss, {"gen_loss": gen_loss.detach(), "prime_loss": prime_loss.detach()}

    # -- sampling ---------------------------------------------------------------------------------------
    def compile_step(self, cuda_graphs=False):
        """From now on sample() runs each new position through torch.compile(extend), the first ones compiling it:
        replayed as a CUDA graph, or on CPU with a C++ wrapper calling the kernels (no Python per op) and the
        weights frozen into it as constants, prepacked for oneDNN (inductor's global switch; no-grad graphs only)."""
        import torch._inductor.config as inductor
        inductor.freezing |= not cuda_graphs
        dynamo = torch._dynamo.config  # up to 5 graphs per prior and batch size (position 0, a row's start, ...)
        dynamo.recompile_limit = max(dynamo.recompile_limit, 64)
        how = dict(mode="reduce-overhead") if cuda_graphs else dict(options={"cpp_wrapper": True})
        self._compiled_step = torch.compile(self.extend, dynamic=True, **how)

    def start_cache(self, batch, device):
        """Empty attention caches for `batch` new sequences (sample() does this for each window)."""
        for block in self.transformer.blocks:  # the lyric encoder runs once per window, without a cache
            block.attn.start_cache(batch, self.transformer.block_dtype, device)

    def draw(self, logits, sampling, generator=None):
        """One token per row of logits (B, V): temperature, optional filtering, then a categorical draw."""
        logits = logits / sampling.temperature
        if sampling.mask_lyric_ids and self.config.lyrics == "merged":
            logits[:, :self.config.lyric_vocab] = -math.inf
        if sampling.top_k or sampling.top_p:
            logits = filter_logits(logits, sampling.top_k, sampling.top_p)
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]  # (B,)

    @torch.no_grad()
    def sample(self, y, upper=None, prime=None, length=None, sampling=Sampling(), generator=None, progress=None):
        """Codes (B, length) of one window, B = len(y), starting with `prime` (B, P) if given; length defaults
        to n_ctx. The prime fills the attention caches in chunks of sampling.chunk_size positions, then each new
        token costs one cached step. generator: a torch.Generator, for reproducible samples; progress: called with
        B after each sampled position (e.g. a tqdm bar's update). "merged" (1b_lyrics): the lyric characters in y
        are the first part of the prime; jukebox: a character id drawn at a music position becomes code 0."""
        c = self.config
        n, length = len(y), c.n_ctx if length is None else length
        prime = y.new_zeros(n, 0) if prime is None else prime
        if not (len(prime) == n and prime.shape[1] <= length <= c.n_ctx):
            raise ValueError(f"need a prime of {n} rows and prime length <= length <= {c.n_ctx}")
        window = self.condition(y, upper)
        seq = self.sequence(prime, y)          # (B, P) in transformer ids, the lyric prefix first ("merged")
        n_prefix = seq.shape[1] - prime.shape[1]
        prev = y.new_zeros(n, length + n_prefix + 1)  # prev[:, t]: the token fed to position t, i.e. at t - 1
        prev[:, 1:seq.shape[1] + 1] = seq
        self.start_cache(n, y.device)
        chunk = sampling.chunk_size or max(seq.shape[1], 1)
        for position in range(0, seq.shape[1], chunk):  # prefill: the prime only fills the caches
            self.activations(window, prev[:, position:min(position + chunk, seq.shape[1])], position)
        step = getattr(self, "_compiled_step", self.extend)
        for position in range(seq.shape[1], length + n_prefix):
            logits = step(window, prev[:, position:position + 1], position)  # (B, 1, V)
            prev[:, position + 1] = self.draw(logits[:, -1], sampling, generator)
            if progress is not None:
                progress(n)
        tokens = prev[:, 1 + n_prefix:]
        if c.lyrics == "merged":
            tokens = (tokens - c.lyric_vocab).clamp(min=0)  # jukebox: character ids become code 0
        return tokens
