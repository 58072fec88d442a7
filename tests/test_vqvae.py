"""Tests of vqvae.py: shapes, the official layout and size, the codebook's EMA / restarts / gradients,
the losses, and that the tiny model learns a 1 s clip. CPU only, a few seconds each except the overfit."""
import dataclasses
import math
import os

import pytest
import torch

from vqvae import (VQVAE, Codebook, VQVAEConfig, estimate_bandwidth, multispectral_loss, preset,
                   reconstruction_loss, spectral_convergence)

SR = 44100


def toy_clip(seconds=1.0):
    """Four decaying harmonic notes (A3, C#4, E4, A4), T a multiple of 128 -> (1, T, 1)."""
    T = int(seconds * SR) // 128 * 128
    clip = torch.zeros(T)
    note_length = T // 4
    t = torch.arange(note_length) / SR
    for i, f in enumerate([220.0, 277.18, 329.63, 440.0]):
        envelope = torch.exp(-3.0 * t / t[-1])
        clip[i * note_length:(i + 1) * note_length] = envelope * sum(
            0.3 / h * torch.sin(2 * math.pi * f * h * t) for h in (1, 2, 3))
    return clip.view(1, T, 1)


def test_shapes_and_hops_per_level():
    assert VQVAEConfig().hop_lengths == preset("tiny").hop_lengths == (8, 32, 128)
    torch.manual_seed(0)
    model = VQVAE(preset("tiny")).eval()
    audio = torch.randn(2, 1024, 1) * 0.1
    codes = model.encode(audio)
    assert [c.shape for c in codes] == [(2, 128), (2, 32), (2, 8)]
    for level, c in enumerate(codes):
        assert c.dtype == torch.long and 0 <= c.min() and c.max() < 256
        assert model.decode(c, level).shape == (2, 1024, 1)
    # The release-size model, as in the acceptance command.
    assert [c.shape for c in VQVAE(VQVAEConfig()).encode(torch.zeros(1, 1024, 1))] == [(1, 128), (1, 32), (1, 8)]


def test_length_not_multiple_of_top_hop_is_a_clear_error():
    model = VQVAE(preset("tiny"))
    with pytest.raises(ValueError, match="multiple of the largest hop length 128"):
        model.encode(torch.zeros(1, 1000, 1))
    with pytest.raises(ValueError, match=r"\(batch, samples, 1\)"):
        model(torch.zeros(1, 1024))


def test_release_size_on_meta_device():
    with torch.device("meta"):
        model = VQVAE(VQVAEConfig())
    convs = sum(p.numel() for p in model.parameters())
    codebooks = sum(c.embeddings.numel() for c in model.codebooks)
    # The official 1,878,979 counts every tensor of the released file: conv weights and biases plus the
    # three 2048x64 codebooks `k`, which are buffers there and here (learned by EMA, not by gradients).
    assert convs == 1_485_763
    assert codebooks == 3 * 2048 * 64
    assert convs + codebooks == 1_878_979


def test_decoder_dilations_are_reversed():
    model = VQVAE(VQVAEConfig())
    dilation = lambda stack: [block.layers[1].dilation[0] for block in stack.layers]
    assert dilation(model.encoders[0].blocks[0].layers[0][1]) == [1, 3, 9, 27, 81, 243, 729, 2187]
    assert dilation(model.decoders[0].blocks[0].layers[1][0]) == [2187, 729, 243, 81, 27, 9, 3, 1]
    assert dilation(model.decoders[2].blocks[2].layers[2][0]) == [27, 9, 3, 1]


def test_losses_are_zero_for_identical_input():
    torch.manual_seed(0)
    cfg = preset("tiny")
    x = torch.randn(2, 4096) * 0.1
    assert multispectral_loss(x, x.clone(), cfg).item() == 0.0
    assert reconstruction_loss(x, x.clone(), cfg).item() == 0.0
    assert multispectral_loss(x, 0.5 * x, cfg).item() > 0
    assert spectral_convergence(x, x.clone()) < -200  # ratio 0, floored at 1e-12
    assert abs(spectral_convergence(x, 0.5 * x) - 20 * math.log10(0.5)) < 1e-3  # | |S| - |S|/2 | = |S|/2


def test_estimate_bandwidth():
    t = torch.arange(8192) / SR
    sine = 0.5 * torch.sin(2 * math.pi * 441.0 * t)
    batch = torch.stack([sine, -sine]).unsqueeze(-1)  # (2, T, 1)
    b = estimate_bandwidth(batch)
    assert abs(b["l2"] - 0.125) < 1e-3  # variance of a sine of amplitude 0.5
    assert b == pytest.approx(estimate_bandwidth([batch[:1], batch[1:]]))  # batches or one tensor alike
    assert b["spec"] > 0


def test_one_ema_update_equals_hand_computation():
    codebook = Codebook(size=4, width=2, ema_decay=0.9, restart_threshold=1.0)
    codebook.embeddings.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]))
    codebook.ema_counts.copy_(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    codebook.ema_sums.copy_(codebook.embeddings * codebook.ema_counts[:, None])
    codebook.initialized.fill_(True)
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 1.0], [1.0, 9.0]])  # codes 0, 0, 1, 2; code 3 unused
    quantised, codes, commit_loss, metrics = codebook(rows.t().unsqueeze(0))  # (N, D) -> (1, D, N)

    assert codes.tolist() == [[0, 0, 1, 2]]
    # The output uses the codebook from before the update; commitment = mean squared distance to it.
    assert torch.equal(quantised[0].t(), torch.tensor([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    assert commit_loss.item() == pytest.approx((1 + 1 + 2 + 2) / 8)
    # counts: 0.9 * old + 0.1 * batch counts (2, 1, 1, 0); sums likewise with the batch sums.
    assert torch.allclose(codebook.ema_counts, torch.tensor([2.0, 1.9, 1.9, 0.9]))
    sums = torch.tensor([[0.1, 0.1], [18.9, 0.1], [0.1, 18.9], [9.0, 9.0]])
    assert torch.allclose(codebook.ema_sums, sums)
    # Codes 0-2 move to sum / count; code 3 (count 0.9 < 1) restarts at one of the batch's latents.
    assert torch.allclose(codebook.embeddings[:3], sums[:3] / torch.tensor([2.0, 1.9, 1.9])[:, None])
    assert any(torch.equal(codebook.embeddings[3], row) for row in rows)
    assert metrics["usage"].item() == 3 and metrics["batch_usage"].item() == 3
    p = torch.tensor([0.5, 0.25, 0.25])
    assert metrics["entropy"].item() == pytest.approx(-(p * p.log()).sum().item(), abs=1e-6)


def test_restarts_revive_a_mostly_dead_codebook():
    torch.manual_seed(0)
    K, D = 64, 8
    codebook = Codebook(size=K, width=D, ema_decay=0.99, restart_threshold=1.0)
    codebook.embeddings.fill_(100.0)  # every code far from the data and identical: all latents pick code 0
    codebook.ema_counts.zero_()
    codebook.ema_counts[0] = 1000.0  # only code 0 is alive
    codebook.ema_sums.copy_(codebook.embeddings * codebook.ema_counts[:, None])
    codebook.initialized.fill_(True)
    batch = lambda: torch.randn(4, D, 128)  # (B, D, T): 512 latents
    assert codebook.eval()(batch())[1].unique().numel() == 1
    codebook.train()
    for _ in range(3):
        codebook(batch())
    used = codebook.eval()(batch())[1].unique().numel()
    assert used > K // 2, f"only {used} of {K} codes in use after restarts"


def test_gradients_pass_straight_through_the_quantiser():
    torch.manual_seed(0)
    codebook = Codebook(size=16, width=4, ema_decay=0.99, restart_threshold=1.0).train()
    latents = torch.randn(2, 4, 32, requires_grad=True)
    quantised, codes, _, _ = codebook(latents)
    # Values are the codes (taken before this step's update moved them), gradients are the identity.
    assert codes.shape == (2, 32)
    weight = torch.randn_like(quantised)
    (quantised * weight).sum().backward()
    assert torch.equal(latents.grad, weight)
    # In the full model every encoder learns from the reconstruction alone (no commitment term).
    model = VQVAE(dataclasses.replace(preset("tiny"), commit_weight=0.0))
    loss, _ = model(torch.randn(1, 2048, 1) * 0.1)
    loss.backward()
    for encoder in model.encoders:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_tiny_model_overfits_a_one_second_clip():
    torch.manual_seed(0)
    audio = toy_clip(1.0)
    cfg = preset("tiny")
    bandwidth = estimate_bandwidth(audio)
    cfg.bandwidth_l2, cfg.bandwidth_spec = bandwidth["l2"], bandwidth["spec"]
    model = VQVAE(cfg)

    def convergence():  # spectral convergence in dB of the finest level's encode -> decode
        model.eval()
        result = spectral_convergence(audio, model.decode(model.encode(audio)[0], 0))
        model.train()
        return result

    before = convergence()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    after = before
    for step in range(1, 81):  # stops as soon as the margin is reached (about 30 steps), to stay fast
        loss, metrics = model(audio)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= 20 and step % 5 == 0:
            after = convergence()
            if after < before - 10:
                break
    assert after < before - 10, f"spectral convergence {before:.1f} dB -> {after:.1f} dB after {step} steps"
    assert metrics["usage_l0"] > 0.5 * cfg.codebook_size


def _codebook_rank(rank, world_size, init_file, out_dir):
    """One rank of test_codebooks_agree_across_ranks: its own data, then save its codebook."""
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(rank)  # different data and different local random draws on each rank
    codebook = Codebook(size=32, width=4, ema_decay=0.9, restart_threshold=1.0).train()
    for _ in range(3):
        codebook(torch.randn(2, 4, 8) + rank)  # 16 latents < 32 codes: restarts come from tiled, jittered rows
    torch.save(codebook.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_codebooks_agree_across_ranks(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_codebook_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name in ("embeddings", "ema_sums", "ema_counts"):
        assert torch.equal(states[0][name], states[1][name]), name
    # Counts are summed over ranks. They start at 1 per code (32 in all) and each step keeps 0.9 of them and
    # adds 0.1 * the 32 latents of both ranks, so the total stays 32; without the all-reduce it would drift
    # to the 16 latents of one rank.
    assert states[0]["ema_counts"].sum().item() == pytest.approx(32.0, rel=1e-5)
