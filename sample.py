"""Sample music with the Jukebox priors: top codes -> middle codes -> bottom codes -> audio.

Implements the sampling of arXiv:2005.00341 §4.4 (ancestral, windowed and primed sampling, Figure 3) with the
window bookkeeping of the released sampler (facts: ../shared/jukebox/FACTS.md §5.2). Reading order:
  1. `sample_level`: one level, window by window; every window after the first is primed with its overlap.
  2. `sample_levels`: the levels top to bottom; an upsampler window sees exactly the codes above it.
  3. `run`: the inputs (prime audio or saved codes) and the outputs (wavs and codes after each level).
  4. `main`: the command line.

Shapes: B samples in the batch, T tokens of one level, S raw audio samples. `codes` is a list indexed by
level (0 bottom, 1 middle, 2 top) of LongTensors (B, T_level). Per-level settings are indexed the same way,
as in the original's --hop_fraction. "samples per token" is the VQ-VAE hop length of a level (8, 32, 128).
"""
import argparse
import dataclasses
import math
import os
import sys

import torch
from tqdm import tqdm

LEVEL_NAMES = {2: "top", 1: "middle", 0: "bottom"}  # level -> train.py stage of the prior sampling it


class UserError(Exception):
    """A problem the user can fix (bad file, bad flag): main() prints it on one line and exits with code 2."""


@dataclasses.dataclass
class Settings:
    """How to sample. Tuples are indexed by level: (bottom, middle, top)."""
    hop_fraction: tuple = (0.5, 0.5, 0.125)  # window hop / n_ctx (released sample.py --hop_fraction)
    temperature: tuple = (0.99, 0.99, 0.98)  # softmax temperature (Colab notebook: top .98, upsamplers .99)
    top_k: int = 0  # keep the k most likely tokens, 0 = off (released: 0)
    top_p: float = 0.0  # nucleus sampling mass, 0 = off (released: 0.0)
    chunk_size: int = 32  # prime tokens per prefill step (released: 32; 16 for the 5b top prior)
    batch_size: int = 16  # samples per prior.sample call (released max_batch_size: 16; 3 for the 5b top)


# ---- 1. one level, window by window ---------------------------------------------------------------------

def window_starts(total, n_ctx, hop):
    """First token of each n_ctx-token window over `total` tokens, `hop` apart, the last ending at `total`."""
    # jukebox: get_starts -- range(0, total - n_ctx + hop, hop) with the last start moved back to total - n_ctx,
    # so the last window overlaps its predecessor by more than the usual n_ctx - hop tokens.
    return [min(start, total - n_ctx) for start in range(0, total - n_ctx + hop, hop)]


def windows(total, n_ctx, hop):
    """(start, end) token ranges that cover [0, total); one partial window when total < n_ctx."""
    assert 1 <= hop <= n_ctx, f"window hop {hop} must be in [1, n_ctx={n_ctx}]"
    if total <= n_ctx:
        return [(0, total)]  # jukebox: sample_partial_window -- a single window shorter than the context
    return [(start, start + n_ctx) for start in window_starts(total, n_ctx, hop)]


def window_labels(y, start, n_ctx, samples_per_token):
    """The label vector y (B, n_y) of FACTS §3.6 for the window starting at token `start` of its level."""
    y = y.clone()
    y[:, 1] += start * samples_per_token  # offset in raw samples: drives the top prior's timing embeddings
    y[:, 2] = n_ctx * samples_per_token  # jukebox: the prior's full window length, even for a partial window
    # (issue 8, lyrics: the lyric tokens of y are re-centred on this window here.)
    return y


def sample_level(prior, codes, level, total, samples_per_token, y, settings, upper=None, upper_ratio=4,
                 generator=None, progress=None):
    """Extend codes[level] (B, T) to (B, total) in place, window by window.

    `prior` is anything with `config.n_ctx` and the `Prior.sample` signature. Tokens already in codes[level]
    (a prime, or a run being continued) are kept and primed on, never sampled again; each window samples only
    the tokens after them. `upper` (B, total // upper_ratio) are the codes of the level above, for an
    upsampler: a window [start, end) is conditioned on exactly upper[:, start // ratio : end // ratio].
    `progress(k)` is told each time k tokens of every sample in the batch are done.
    """
    n_ctx = prior.config.n_ctx
    hop = int(settings.hop_fraction[level] * n_ctx)  # jukebox: int(hop_fraction * n_ctx), e.g. top 1024
    batch = codes[level].shape[0]
    for start, end in windows(total, n_ctx, hop):
        have = codes[level].shape[1]
        assert have >= start, f"gap: window starts at {start} but only {have} tokens exist"
        if have >= end:
            continue  # the window is already full: a long prime, or a continued run
        window_upper = None
        if upper is not None:
            assert start % upper_ratio == 0 and end % upper_ratio == 0, "upsampler windows align with the level above"
            window_upper = upper[:, start // upper_ratio:end // upper_ratio]  # (B, (end - start) / ratio)
        y_window = window_labels(y, start, n_ctx, samples_per_token)
        new = []
        for rows in torch.arange(batch).split(settings.batch_size):  # jukebox: max_batch_size per call
            prime = codes[level][rows, start:]  # (b, have - start): the overlap with the previous window
            out = prior.sample(
                len(rows), y_window[rows], upper=None if window_upper is None else window_upper[rows],
                prime=prime if prime.shape[1] > 0 else None, sample_tokens=end - start,
                temperature=settings.temperature[level], top_k=settings.top_k, top_p=settings.top_p,
                chunk_size=settings.chunk_size, generator=generator)  # (b, end - start), prime included
            new.append(out[:, have - start:])  # (b, end - have): only the tokens sampled now
        codes[level] = torch.cat([codes[level], torch.cat(new).to(codes[level].device)], dim=1)
        if progress is not None:
            progress(end - have)
    return codes[level]


# ---- 2. the levels, top to bottom -----------------------------------------------------------------------

def sample_levels(prior_for, codes, levels, total_samples, hop_lengths, labels_for, settings, generator=None,
                  on_level_done=None):
    """Sample `levels` top to bottom, each to total_samples // hop_lengths[level] tokens; codes updated in place.

    prior_for(level) -> the prior of that level (loaded only when its turn comes, so one prior is in memory at
    a time); labels_for(prior) -> its base label vector y (B, n_y); on_level_done(level) is called as soon as a
    level is complete, so its outputs are written before the next (slower) level starts.
    """
    top = len(hop_lengths) - 1
    for level in sorted(levels, reverse=True):
        prior = prior_for(level)
        total = total_samples // hop_lengths[level]
        upper, ratio = None, None
        if level < top:  # an upsampler: conditioned on the codes of the level above
            upper, ratio = codes[level + 1], hop_lengths[level + 1] // hop_lengths[level]
            assert upper.shape[1] * ratio >= total, f"level {level + 1} has too few codes to upsample"
        have = codes[level].shape[1]
        with tqdm(total=max(total - have, 0), unit="tok", desc=f"level {level} ({LEVEL_NAMES.get(level, level)})",
                  dynamic_ncols=True, disable=total <= have) as bar:
            sample_level(prior, codes, level, total, hop_lengths[level], labels_for(prior), settings, upper=upper,
                         upper_ratio=ratio, generator=generator, progress=bar.update)
        if on_level_done is not None:
            on_level_done(level)
    return codes
