"""Tests for sample.py: window bookkeeping with a dummy prior, an end-to-end run with tiny models, bad inputs."""
import types

import pytest
import torch

import sample

K = 10_000  # the dummy's "codebook": large, so that token values name their absolute position


class DummyPrior:
    """Has the Prior.sample signature; emits token = absolute position mod K and records every call.

    It learns where its window starts from the label offset y[:, 1] (raw samples), as a real top prior does.
    """

    def __init__(self, n_ctx, samples_per_token):
        self.config = types.SimpleNamespace(n_ctx=n_ctx)
        self.samples_per_token = samples_per_token
        self.calls = []

    def sample(self, n, y, upper=None, prime=None, sample_tokens=None, temperature=1.0, top_k=0, top_p=0.0,
               chunk_size=32, generator=None):
        start = int(y[0, 1]) // self.samples_per_token
        primed = 0 if prime is None else prime.shape[1]
        assert 0 <= primed < sample_tokens <= self.config.n_ctx
        self.calls.append(dict(start=start, prime=prime, sample_tokens=sample_tokens, upper=upper, y=y.clone()))
        new = ((start + torch.arange(primed, sample_tokens)) % K).expand(n, -1)  # (n, sample_tokens - primed)
        return new if prime is None else torch.cat([prime, new], dim=1)


def labels(batch):
    return lambda prior: torch.tensor([[10_000_000, 0, 0, 0, -1]]).expand(batch, -1)


def run_levels(total_samples, n_ctx=(64, 64, 32), hop_lengths=(2, 8, 32), prime=None, batch=2, levels=(2, 1, 0),
               settings=None):
    priors = {level: DummyPrior(n_ctx[level], hop_lengths[level]) for level in range(3)}
    codes = [torch.zeros(batch, 0, dtype=torch.long) for _ in range(3)] if prime is None else prime
    done = []
    sample.sample_levels(priors.__getitem__, codes, levels, total_samples, hop_lengths, labels(batch),
                         settings or sample.Settings(batch_size=1), on_level_done=done.append)
    return codes, priors, done


@pytest.mark.parametrize("total", [1, 31, 32, 33, 64, 65, 100, 1000, 1001])
@pytest.mark.parametrize("n_ctx,hop_fraction", [(32, 0.125), (32, 0.5), (16, 1.0), (48, 0.3)])
def test_windows_cover_every_token_once(total, n_ctx, hop_fraction):
    prior = DummyPrior(n_ctx, samples_per_token=1)
    codes = [torch.zeros(3, 0, dtype=torch.long)]
    settings = sample.Settings(hop_fraction=(hop_fraction,), batch_size=2)
    sample.sample_level(prior, codes, 0, total, 1, labels(3)(prior), settings)
    assert torch.equal(codes[0], (torch.arange(total) % K).expand(3, -1))  # exact, no gap, nothing shifted
    calls = prior.calls[::2]  # two calls per window: batch 3 in pieces of 2
    assert sum(c["sample_tokens"] - (0 if c["prime"] is None else c["prime"].shape[1]) for c in calls) == total
    assert calls[0]["prime"] is None  # the first window is ancestral
    for c in calls[1:]:  # later windows are primed with exactly the tokens they overlap (none if hop = n_ctx)
        primed = 0 if c["prime"] is None else c["prime"].shape[1]
        assert primed > 0 or hop_fraction == 1.0
        assert primed == 0 or torch.equal(c["prime"][0], torch.arange(c["start"], c["start"] + primed) % K)
        assert c["sample_tokens"] == n_ctx
    if total >= n_ctx:
        hop = int(hop_fraction * n_ctx)
        starts = [c["start"] for c in calls]
        assert starts[-1] == total - n_ctx and all(s % hop == 0 for s in starts[:-1])
        assert all(c["prime"] is None or c["prime"].shape[1] == n_ctx - hop for c in calls[1:-1])


def test_released_window_starts():
    # 5b top prior, 60 s: 20672 top tokens, n_ctx 8192, hop 0.125 * 8192 = 1024
    starts = sample.window_starts(20672, 8192, 1024)
    assert starts[:3] == [0, 1024, 2048] and starts[-1] == 20672 - 8192 and len(starts) == 14


def test_labels_per_window():
    codes, priors, _ = run_levels(total_samples=32 * 200, levels=(2,))
    for c in priors[2].calls:
        assert int(c["y"][0, 1]) == c["start"] * 32  # offset in raw samples
        assert int(c["y"][0, 2]) == 32 * 32  # the prior's window length in raw samples
        assert int(c["y"][0, 0]) == 10_000_000  # total length untouched


def test_upsampler_windows_get_exactly_the_codes_above():
    codes, priors, done = run_levels(total_samples=32 * 40)  # top 40, middle 160, bottom 640 tokens
    assert done == [2, 1, 0]
    for level in range(3):
        assert torch.equal(codes[level], (torch.arange(32 * 40 // (2, 8, 32)[level]) % K).expand(2, -1))
    assert all(c["upper"] is None for c in priors[2].calls)
    for level in (1, 0):
        for c in priors[level].calls:
            end = c["start"] + c["sample_tokens"]
            assert c["start"] % 4 == 0 and end % 4 == 0
            assert torch.equal(c["upper"], codes[level + 1][:1, c["start"] // 4:end // 4])


def test_prime_codes_start_every_level():
    hop_lengths = (2, 8, 32)
    prime_samples = 32 * 37  # longer than a whole top window (32 tokens), so one window is skipped
    prime = [-1 - torch.arange(prime_samples // hop).expand(2, -1) for hop in hop_lengths]
    codes, priors, _ = run_levels(total_samples=32 * 90, prime=[p.clone() for p in prime])
    for level in range(3):
        total = 32 * 90 // hop_lengths[level]
        have = prime[level].shape[1]
        assert torch.equal(codes[level][:, :have], prime[level])  # the prime's codes, untouched
        assert torch.equal(codes[level][:, have:], (torch.arange(have, total) % K).expand(2, -1))
        first = priors[level].calls[0]  # the first window sampled is primed with the prime's codes
        assert torch.equal(first["prime"], prime[level][:1, first["start"]:])


def test_partial_window_with_prime():
    # total shorter than one context: one window, primed with the prime, sampling only the rest
    prime = [-1 - torch.arange(n).expand(1, -1) for n in (16, 4, 1)]
    codes, priors, _ = run_levels(total_samples=32 * 3, prime=[p.clone() for p in prime], batch=1)
    for level, total in enumerate((48, 12, 3)):
        assert codes[level].shape == (1, total)
        assert len(priors[level].calls) == 1 and priors[level].calls[0]["sample_tokens"] == total
        assert torch.equal(priors[level].calls[0]["prime"], prime[level]) and codes[level][0, -1] == total - 1


def test_continue_skips_full_windows():
    codes, priors, _ = run_levels(total_samples=32 * 50, levels=(2,))
    first = len(priors[2].calls)
    more = [codes[0], codes[1], codes[2].clone()]
    codes2, priors2, _ = run_levels(total_samples=32 * 120, prime=more, levels=(2,))
    assert torch.equal(codes2[2], (torch.arange(120) % K).expand(2, -1))
    assert all(c["start"] + c["sample_tokens"] > 50 for c in priors2[2].calls) and first > 0
