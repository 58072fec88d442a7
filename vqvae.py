"""The hierarchical VQ-VAE of Jukebox: raw 44.1 kHz audio <-> three levels of discrete codes.

arXiv:2005.00341 §2.1 and §3 (VQ-VAE; random restarts §3.1; separated per-level autoencoders §3.2; spectral
loss §3.3) and Appendix B.1 (architecture), written to load the released `5b/vqvae.pth.tar` one to one.

Reading order: `VQVAEConfig` and `preset`; the convolution stacks (`ResidualBlock` ... `Decoder`); the
`Codebook` (nearest-code quantiser with EMA updates and restarts); the losses; `VQVAE`, which ties one
encoder, codebook and decoder per level together; `estimate_bandwidth` and `spectral_convergence` at the end.

Shapes: B batch, T audio samples, T_l = T / hop_lengths[level] tokens, C conv channels, D code width
(embedding_width), K codebook size, N = B * T_l latent vectors. Audio is (B, T, 1) at the API and (B, 1, T)
inside; convolutions work on (B, C, T).

Module names map onto the official state dict by plain renames (official.py applies them; see its tests):
    bottleneck.level_blocks.{L}.k -> codebooks.{L}.embeddings      .level_blocks. -> .blocks.
    .model. -> .layers.                                            decoders.{L}.out. -> decoders.{L}.output.
The official files hold only `k` per codebook. Our codebooks also keep their EMA state (`ema_sums`,
`ema_counts`, `initialized`) as buffers so that our own checkpoints resume exactly; official.py rebuilds it.
"""
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_STFT = (2048, 256, 1536)  # (n_fft, hop, window) of the bandwidth and spectral convergence (fixed)


@dataclass
class VQVAEConfig:
    sample_rate: int = 44100  # audio samples per second (sr)
    downs: tuple = (3, 2, 2)  # stride-2 downsampling steps added by each level; len = levels (downs_t)
    strides: tuple = (2, 2, 2)  # stride of those steps per level (strides_t)
    codebook_size: int = 2048  # K codes per level, paper §3 (l_bins)
    embedding_width: int = 64  # D channels of a latent / code vector (emb_width)
    width: int = 32  # conv channels before the level multiplier (width)
    depth: int = 4  # residual blocks per stack before the level multiplier (depth)
    level_multipliers: tuple = (2, 1, 1)  # level L uses width*m[L] channels and depth*m[L] blocks (hvqvae_multipliers)
    dilation_growth: int = 3  # block d of a residual stack has dilation growth**d (dilation_growth_rate)
    reverse_decoder_dilation: bool = True  # decoder stacks start at the top dilation (vqvae_reverse_decoder_dilation)
    ema_decay: float = 0.99  # decay of the codebook's running sums and counts (l_mu)
    restart_threshold: float = 1.0  # codes whose EMA count falls below this restart, §3.1 (revival_threshold)
    commit_weight: float = 0.02  # beta of the commitment loss (commit)
    l2_weight: float = 1.0  # weight of the mean squared error (lmix_l2)
    linf_weight: float = 0.02  # weight of the mean of the top linf_k squared errors (lmix_linf)
    linf_k: int = 2048  # how many of the largest squared errors per example the linf term averages (linf_k)
    multispectral_weight: float = 1.0  # weight of the multi-resolution spectral loss, §3.3 (multispectral)
    stft_n_fft: tuple = (2048, 1024, 512)  # FFT sizes of the spectral loss (multispec_loss_n_fft)
    stft_hop: tuple = (240, 120, 50)  # their hop lengths (multispec_loss_hop_length)
    stft_window: tuple = (1200, 600, 240)  # their Hann window lengths (multispec_loss_window_size)
    bandwidth_l2: float = 1.0  # audio variance, divides the l2 and linf terms; 1.0 = unset (bandwidth['l2'])
    bandwidth_spec: float = 1.0  # mean |STFT| norm of a clip, divides the spectral loss (bandwidth['spec'])

    def __post_init__(self):
        # Configs come back from checkpoints with lists where tuples were; keep one type.
        for name in ("downs", "strides", "level_multipliers", "stft_n_fft", "stft_hop", "stft_window"):
            setattr(self, name, tuple(getattr(self, name)))
        if not len(self.downs) == len(self.strides) == len(self.level_multipliers):
            raise ValueError("downs, strides and level_multipliers need one entry per level")
        if not len(self.stft_n_fft) == len(self.stft_hop) == len(self.stft_window):
            raise ValueError("stft_n_fft, stft_hop and stft_window need one entry per STFT")

    @property
    def levels(self):
        return len(self.downs)
    @property
    def hop_lengths(self):  # audio samples per token at each level: (8, 32, 128) for the release
        steps = [stride ** down for down, stride in zip(self.downs, self.strides)]  # each level's own downsampling
        return tuple(math.prod(steps[:n]) for n in range(1, self.levels + 1))
    @property
    def level_widths(self):
        return tuple(self.width * m for m in self.level_multipliers)
    @property
    def level_depths(self):
        return tuple(self.depth * m for m in self.level_multipliers)


PRESETS = ("jukebox", "tiny")


def preset(name):
    """'jukebox': the released VQ-VAE (1,878,979 numbers). 'tiny': same hops and levels, CPU-fast (widths 32/16/16)."""
    if name == "jukebox":
        return VQVAEConfig()
    if name == "tiny":
        return VQVAEConfig(width=16, depth=2, codebook_size=256, embedding_width=32)
    raise ValueError(f"unknown VQ-VAE preset {name!r}; choose one of {', '.join(PRESETS)}")


# ---- convolution stacks ----------------------------------------------------------------------------
# Each container below is an nn.Sequential with the official indices: keys differ only by the docstring's renames.
class ResidualBlock(nn.Module):
    """Pre-activation dilated residual block without normalisation: x + res_scale * conv1x1(relu(conv3(relu(x))))
    (official ResConv1DBlock; the weights sit at indices 1 and 3, `model.1` and `model.3`)."""

    def __init__(self, width, dilation, res_scale=1.0):
        super().__init__()
        self.res_scale = res_scale
        self.layers = nn.Sequential(nn.ReLU(), nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation),
                                    nn.ReLU(), nn.Conv1d(width, width, 1))  # the dilated conv keeps T

    def forward(self, x):  # (B, C, T) -> (B, C, T)
        return x + self.res_scale * self.layers(x)


class ResidualStack(nn.Module):
    """`depth` residual blocks of dilations 1, g, g^2, ..., restarting every `dilation_cycle` (official Resnet1D)."""

    def __init__(self, width, depth, dilation_growth, reverse_dilation=False, dilation_cycle=None, res_scale=1.0):
        super().__init__()
        dilations = [dilation_growth ** (d % (dilation_cycle or depth)) for d in range(depth)]
        if reverse_dilation:
            # jukebox: the decoder's stacks list their blocks in reverse, so block 0 has the largest dilation.
            dilations = dilations[::-1]
        self.layers = nn.Sequential(*[ResidualBlock(width, d, res_scale) for d in dilations])

    def forward(self, x):  # (B, C, T) -> (B, C, T)
        return self.layers(x)


class EncoderBlock(nn.Module):
    """`downs` x [strided conv (T -> T/stride), residual stack], then a conv to `out_channels` (EncoderConvBlock)."""

    def __init__(self, in_channels, out_channels, downs, stride, width, depth, dilation_growth):
        super().__init__()
        layers = []
        for step in range(downs):
            layers.append(nn.Sequential(
                # kernel 2*stride, padding stride//2: exactly T -> T/stride for T a multiple of stride
                nn.Conv1d(in_channels if step == 0 else width, width, 2 * stride, stride, stride // 2),
                ResidualStack(width, depth, dilation_growth)))
        layers.append(nn.Conv1d(width, out_channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):  # (B, C_in, T) -> (B, C_out, T / stride**downs)
        return self.layers(x)


class DecoderBlock(nn.Module):
    """A conv from the D code channels, then `downs` x [residual stack, transposed conv (T -> T*stride)].

    Official DecoderConvBock; the last upsampling step returns to the D channels of the latents. The priors'
    Conditioner is one too, on its own channels (the prior width), with a dilation cycle and residual scale.
    """

    def __init__(self, channels, downs, stride, width, depth, dilation_growth, reverse_dilation, dilation_cycle=None,
                 res_scale=1.0):
        super().__init__()
        layers = [nn.Conv1d(channels, width, 3, padding=1)]
        for step in range(downs):
            layers.append(nn.Sequential(
                ResidualStack(width, depth, dilation_growth, reverse_dilation, dilation_cycle, res_scale),
                nn.ConvTranspose1d(width, channels if step == downs - 1 else width, 2 * stride, stride, stride // 2)))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):  # (B, D, T) -> (B, D, T * stride**downs)
        return self.layers(x)


class Encoder(nn.Module):
    """The encoder of one level: raw audio -> latents (B, D, T / hop_lengths[level]).

    §3.2 "separated autoencoders": each level has its own encoder that starts from the audio and repeats
    the downsampling of all levels below it, with this level's width and depth; nothing is shared.
    """

    def __init__(self, config, level):
        super().__init__()
        D, width, depth = config.embedding_width, config.level_widths[level], config.level_depths[level]
        self.blocks = nn.ModuleList(EncoderBlock(1 if i == 0 else D, D, config.downs[i], config.strides[i], width,
                                                 depth, config.dilation_growth) for i in range(level + 1))

    def forward(self, x):  # (B, 1, T) -> (B, D, T_level)
        for block in self.blocks:
            x = block(x)
        return x


class Decoder(nn.Module):
    """The decoder of one level: latents (B, D, T_level) -> audio (B, 1, T), running its blocks top-down."""

    def __init__(self, config, level):
        super().__init__()
        D, width, depth = config.embedding_width, config.level_widths[level], config.level_depths[level]
        self.blocks = nn.ModuleList(DecoderBlock(D, config.downs[i], config.strides[i], width, depth,
                                                 config.dilation_growth, config.reverse_decoder_dilation)
                                    for i in range(level + 1))
        self.output = nn.Conv1d(D, 1, 3, padding=1)

    def forward(self, x):  # (B, D, T_level) -> (B, 1, T)
        for block in reversed(self.blocks):
            x = block(x)
        return self.output(x)


# ---- codebook --------------------------------------------------------------------------------------
def _distributed():
    return dist.is_available() and dist.is_initialized()


class Codebook(nn.Module):
    """K code vectors of width D, learned by exponential moving averages rather than by gradients (official
    BottleneckBlock). Each training step assigns every latent to its nearest code, moves each code to the running
    mean of the latents assigned to it, and restarts codes whose running count fell below `restart_threshold` at
    random latents of the batch (§3.1), so no code stays dead; under torch.distributed over all ranks' batches."""

    def __init__(self, size, width, ema_decay, restart_threshold):
        super().__init__()
        self.size, self.width = size, width
        self.ema_decay, self.restart_threshold = ema_decay, restart_threshold
        self.register_buffer("embeddings", torch.zeros(size, width))  # (K, D), official `k`
        # EMA state; absent from the official files (see restore); kept here so that a resume is exact.
        self.register_buffer("ema_sums", torch.zeros(size, width))  # (K, D) running sum of assigned latents
        self.register_buffer("ema_counts", torch.zeros(size))  # (K,) running count of assigned latents
        self.register_buffer("initialized", torch.tensor(False))  # set by the first training batch

    def quantise(self, x):
        """Nearest code of each row of x (N, D) -> codes (N,) long, squared distances (N,)."""
        # jukebox: squared distance expanded as |x|^2 - 2 x.k + |k|^2, as in the original, so that
        # argmin ties and rounding match the released codes. Rows in chunks bound the (N, K) matrix.
        codes, distances = [], []
        for chunk in x.split(65536):
            k = self.embeddings  # (K, D)
            squared_distances = chunk.pow(2).sum(1, keepdim=True) - 2 * chunk @ k.t() + k.pow(2).sum(1)  # (n, K)
            distance, code = squared_distances.min(dim=1)
            codes.append(code)
            distances.append(distance)
        return torch.cat(codes), torch.cat(distances)

    def encode(self, latents):  # (B, D, T) -> (B, T) long
        B, D, T = latents.shape
        x = latents.permute(0, 2, 1).reshape(B * T, D).float()  # (B, D, T) -> (N, D)
        return self.quantise(x)[0].view(B, T)

    def decode(self, codes):  # (B, T) long -> (B, D, T)
        return F.embedding(codes, self.embeddings).permute(0, 2, 1)  # (B, T, D) -> (B, D, T)

    def forward(self, latents):
        """latents (B, D, T) -> (quantised (B, D, T), straight-through; codes (B, T); commit loss; metrics)."""
        B, D, T = latents.shape
        x = latents.permute(0, 2, 1).reshape(B * T, D).float()  # (B, D, T) -> (N, D)
        # The quantiser works in float32 whatever autocast does outside: the argmin is precision-sensitive.
        with torch.autocast(device_type=x.device.type, enabled=False):
            prenorm = torch.linalg.vector_norm(x - x.mean()) / math.sqrt(x.numel())  # latent scale, metric only
            if self.training and not self.initialized:
                self.initialize(x.detach())
            codes, distances = self.quantise(x.detach())
            quantised = F.embedding(codes, self.embeddings)  # (N, D), from the codebook before this step's update
            metrics = dict(fit=distances.mean(), prenorm=prenorm.detach())
            if self.training:
                metrics.update(self.update(x.detach(), codes))
            # The commitment loss pulls the encoder towards its codes; codes move only by the EMA above.
            commit_loss = F.mse_loss(x, quantised)
        if self.training:
            quantised = x + (quantised - x).detach()  # straight-through: the decoder's gradient goes to the encoder
        # (in eval mode the buffer lookup carries no gradient: the original detaches it too)
        quantised = quantised.view(B, T, D).permute(0, 2, 1).to(latents.dtype)  # (N, D) -> (B, D, T)
        return quantised, codes.view(B, T), commit_loss, metrics

    def _restart_candidates(self, x):
        """K random rows of x (N, D); when N < K, x is first repeated and jittered so that K rows exist. Under
        torch.distributed all ranks' latents are pooled and rank 0's choice is broadcast: every rank keeps the same
        codebook, drawn from the global batch as one process would (the original drew from rank 0's latents)."""
        if _distributed():
            pool = [torch.empty_like(x) for _ in range(dist.get_world_size())]
            dist.all_gather(pool, x.contiguous())
            x = torch.cat(pool)  # (world * N, D), in rank order = the order of one process's batch
        n = x.shape[0]
        if n < self.size:
            x = x.repeat((self.size + n - 1) // n, 1)  # (N, D) -> (N * repeats, D)
            x = x + torch.randn_like(x) * (0.01 / math.sqrt(self.width))
        candidates = x[torch.randperm(x.shape[0], device=x.device)[: self.size]]  # (K, D)
        if _distributed():
            dist.broadcast(candidates, 0)
        return candidates

    @torch.no_grad()
    def initialize(self, x):
        """Codes start at random latents of the first batch, each counted once."""
        candidates = self._restart_candidates(x)
        self.embeddings.copy_(candidates)
        self.ema_sums.copy_(candidates)
        self.ema_counts.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def update(self, x, codes):
        """One EMA step from latents x (N, D) and their codes (N,); restarts dead codes; returns metrics."""
        batch_sums = torch.zeros_like(self.ema_sums).index_add_(0, codes, x)  # (K, D) sum of latents per code
        batch_counts = torch.bincount(codes, minlength=self.size).to(x.dtype)  # (K,)
        candidates = self._restart_candidates(x)
        if _distributed():
            dist.all_reduce(batch_sums)
            dist.all_reduce(batch_counts)
        old = self.embeddings.clone()
        self.ema_sums.mul_(self.ema_decay).add_(batch_sums, alpha=1 - self.ema_decay)
        self.ema_counts.mul_(self.ema_decay).add_(batch_counts, alpha=1 - self.ema_decay)
        used = self.ema_counts >= self.restart_threshold  # (K,)
        # A used code becomes the mean of what it has been assigned; a dead one restarts at a random latent
        # (torch.where: the original's usage*mean + (1-usage)*rand, without NaN from a count underflowed to 0).
        means = self.ema_sums / self.ema_counts[:, None]
        self.embeddings.copy_(torch.where(used[:, None], means, candidates))
        p = batch_counts / batch_counts.sum()  # (K,) code histogram of this batch
        return dict(usage=used.sum().float(),  # codes alive by their EMA count (official usage)
                    batch_usage=(batch_counts >= self.restart_threshold).sum().float(),  # in this batch (used_curr)
                    entropy=-(p * torch.log(p + 1e-8)).sum(),  # nats; log(K) when all codes are equally used
                    codebook_change=torch.linalg.vector_norm(self.embeddings - old) / math.sqrt(old.numel()))  # dk

    @torch.no_grad()
    def restore(self):
        """Rebuild the EMA state from the embeddings alone, after loading an official file: each code counts as
        used once (the original's restore_k)."""
        self.ema_counts.fill_(1.0)
        self.ema_sums.copy_(self.embeddings)
        self.initialized.fill_(True)


# ---- losses ----------------------------------------------------------------------------------------
def stft_magnitude(audio, n_fft, hop, window):
    """|STFT| of audio (B, T) -> (B, n_fft // 2 + 1, frames); centred, reflect-padded, periodic Hann window."""
    hann = torch.hann_window(window, device=audio.device)
    return torch.stft(audio.float(), n_fft, hop, window, hann, return_complex=True).abs()


def reconstruction_loss(x, x_hat, config):
    """'lmix' of the original: l2_weight * MSE + linf_weight * mean of each example's top-k squared errors,
    both divided by the audio variance. x, x_hat: (B, T) -> scalar."""
    squared = (x_hat - x).pow(2)  # (B, T)
    l2 = squared.mean()
    # (k is capped at T so that short test clips work; training clips are far longer than 2048 samples)
    linf = squared.topk(min(config.linf_k, squared.shape[1]), dim=1).values.mean()
    return (config.l2_weight * l2 + config.linf_weight * linf) / config.bandwidth_l2


def multispectral_loss(x, x_hat, config):
    """Mean over the STFT configs of || |STFT(x)| - |STFT(x_hat)| ||_F per example, over bandwidth_spec,
    averaged over the batch. x, x_hat: (B, T) -> scalar."""
    per_example = 0
    for n_fft, hop, window in zip(config.stft_n_fft, config.stft_hop, config.stft_window):
        difference = stft_magnitude(x, n_fft, hop, window) - stft_magnitude(x_hat, n_fft, hop, window)  # (B, F, frames)
        per_example = per_example + torch.linalg.vector_norm(difference, dim=(1, 2))  # (B,)
    per_example = per_example / len(config.stft_n_fft)
    return (per_example / config.bandwidth_spec).mean()


# ---- the model -------------------------------------------------------------------------------------
class VQVAE(nn.Module):
    """Three independent autoencoders, one per level, each with its own codebook (§3.2).

    encode: audio -> codes of every level. decode: the codes of one level -> audio, through that level's
    decoder only. forward: the training loss, summed over the levels.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        levels = range(config.levels)
        self.encoders = nn.ModuleList(Encoder(config, level) for level in levels)
        self.decoders = nn.ModuleList(Decoder(config, level) for level in levels)
        self.codebooks = nn.ModuleList(Codebook(config.codebook_size, config.embedding_width, config.ema_decay,
                                                config.restart_threshold) for _ in levels)

    def _to_channels_first(self, audio):
        """(B, T, 1) -> (B, 1, T), with a clear error for anything the levels cannot tile."""
        hop = self.config.hop_lengths[-1]
        if audio.dim() != 3 or audio.shape[-1] != 1:
            raise ValueError(f"audio must be (batch, samples, 1), got shape {tuple(audio.shape)}")
        if audio.shape[1] % hop != 0 or audio.shape[1] == 0:
            raise ValueError(f"audio length {audio.shape[1]} is not a multiple of the largest hop length {hop}; "
                             f"crop or pad it to a multiple of {hop} samples")
        return audio.permute(0, 2, 1).float()  # (B, T, 1) -> (B, 1, T)

    @torch.no_grad()
    def encode(self, audio):
        """audio (B, T, 1) float -> [codes (B, T / hop) long for each level], index = level, 0 = finest."""
        x = self._to_channels_first(audio)
        return [codebook.encode(encoder(x)) for encoder, codebook in zip(self.encoders, self.codebooks)]

    @torch.no_grad()
    def decode(self, codes, level):
        """codes (B, T_level) long of one level -> audio (B, T_level * hop, 1), unclamped."""
        # jukebox: only the decoder of this level runs; codes of other levels play no part.
        latents = self.codebooks[level].decode(codes)  # (B, T_l) -> (B, D, T_l)
        return self.decoders[level](latents).permute(0, 2, 1)  # (B, 1, T) -> (B, T, 1)

    def forward(self, audio, levels=None):
        """audio (B, T, 1) -> (loss, metrics). Each level is encoded, quantised and decoded on its own, and
        loss = sum over levels of [reconstruction + multispectral_weight * spectral + commit_weight * commit].
        levels: the levels that run (default all); the others, weights and codebooks, stay as they are."""
        cfg = self.config
        x = self._to_channels_first(audio)
        target = x[:, 0]  # (B, 1, T) -> (B, T)
        totals = dict(recons_loss=0.0, multispectral_loss=0.0, commit_loss=0.0)
        metrics = {}
        for level in range(cfg.levels) if levels is None else levels:
            quantised, _, commit_loss, codebook_metrics = self.codebooks[level](self.encoders[level](x))
            x_hat = self.decoders[level](quantised)[:, 0]  # (B, 1, T) -> (B, T)
            losses = dict(recons_loss=reconstruction_loss(target, x_hat, cfg),
                          multispectral_loss=multispectral_loss(target, x_hat, cfg), commit_loss=commit_loss)
            for name, value in losses.items():
                totals[name] = totals[name] + value
                metrics[f"{name}_l{level}"] = value.detach()
            for name, value in codebook_metrics.items():
                metrics[f"{name}_l{level}"] = value.detach()
            with torch.no_grad():
                metrics[f"spectral_convergence_db_l{level}"] = spectral_convergence(target, x_hat)
        loss = (totals["recons_loss"] + cfg.multispectral_weight * totals["multispectral_loss"]
                + cfg.commit_weight * totals["commit_loss"])
        metrics.update({name: value.detach() for name, value in totals.items()})
        return loss, metrics

    @torch.no_grad()
    def restore_codebooks(self):
        """Rebuild the codebooks' EMA state after loading weights that lack it (the official files)."""
        for codebook in self.codebooks:
            codebook.restore()


# ---- data statistics and metrics -------------------------------------------------------------------
@torch.no_grad()
def estimate_bandwidth(batches):
    """Loss normalisers from training audio (the original's calculate_bandwidth), for config.bandwidth_l2 and
    bandwidth_spec. batches: a tensor (B, T, 1) or (B, T), or an iterable of them, cut to the training clip
    length (the spectral norm grows with it). Returns dict(l2=variance of all samples, spec=mean over clips of
    || |STFT| ||_F with the default STFT 2048/256/1536), summed over ranks under torch.distributed."""
    if torch.is_tensor(batches):
        batches = [batches]
    total = None
    for audio in batches:
        audio = _clips(audio).double()  # (B, T, 1) -> (B, T)
        spec_norms = torch.linalg.vector_norm(stft_magnitude(audio, *DEFAULT_STFT).double(), dim=(1, 2))  # (B,)
        # samples, their sum and sum of squares, spectrum norms, clips (float64, on the audio's device)
        stats = torch.stack([audio.new_tensor(audio.numel()), audio.sum(), audio.pow(2).sum(), spec_norms.sum(),
                             audio.new_tensor(audio.shape[0])])
        total = stats if total is None else total + stats
    if total is None:
        raise ValueError("estimate_bandwidth needs at least one batch of audio")
    if _distributed():
        dist.all_reduce(total)
    n, sum_, sum_sq, spec_sum, clips = total.tolist()
    mean = sum_ / n
    return dict(l2=sum_sq / n - mean**2, spec=spec_sum / clips)


def _clips(audio):  # (B, T, 1), (B, T) or (T,) -> (B, T)
    audio = audio[..., 0] if audio.dim() == 3 else audio
    return audio.reshape(-1, audio.shape[-1])


@torch.no_grad()
def spectral_convergence(x, x_hat):
    """Spectral convergence of x_hat against x in dB (lower is better), the paper's reconstruction metric.

    20*log10 of || |S(x)| - |S(x_hat)| ||_F / || |S(x)| ||_F with the default STFT 2048/256/1536, the ratio
    computed per example as the original does (a clip whose spectrum norm is under 2e-3 counts as 0) and
    averaged over the batch, then put in dB. x, x_hat: (B, T, 1), (B, T) or (T,) -> a 0-dim tensor.
    """
    x, x_hat = _clips(x), _clips(x_hat)
    spec, spec_hat = stft_magnitude(x, *DEFAULT_STFT), stft_magnitude(x_hat, *DEFAULT_STFT)
    norm = torch.linalg.vector_norm(spec, dim=(1, 2))  # (B,)
    residual = torch.linalg.vector_norm(spec - spec_hat, dim=(1, 2))  # (B,)
    ratio = (residual * (norm > 2e-3)) / norm.clamp(min=2e-3)  # (B,)
    return 20 * torch.log10(ratio.mean().clamp(min=1e-12))
