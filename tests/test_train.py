"""train.py (issue 5): every stage learns, 2 processes equal 1, resume is exact, saves are atomic, user errors.

CPU only, tiny presets, toy songs from data.make_toy. Single-process runs call train.main() in this process;
the 2-process runs go through torchrun (gloo) exactly as a user starts them.
"""
import json
import os
import subprocess
import sys

import pytest
import soundfile as sf
import torch

import data
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--preset", "tiny", "--batch-size", "2", "--lr", "1e-3", "--warmup", "1", "--log-every", "1"]
VQ = ["--stage", "vqvae", "--sample-length", "2048", "--bandwidth-batches", "1"]


def run(*argv):
    train.main([str(a) for a in argv])


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def subprocess_env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def torchrun(*argv, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(ROOT, "train.py"), *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=300)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These ops are tiny: one thread is as fast, and far faster when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    data.make_toy(root / "one", n=1, seconds=0.04)  # one song shorter than every window: the same batch each step
    data.make_toy(root / "many", n=3, seconds=1.0)  # different windows at every index
    (root / "empty").mkdir()
    (root / "one" / "toy_000.wav.pth.tar").write_bytes(b"not a pickle")  # not audio: the dataset skips it
    return root


@pytest.fixture(scope="module")
def vq_run(toy, tmp_path_factory):
    """A 4-step VQ-VAE run with checkpoints at steps 2 and 4; the frozen VQ-VAE of the prior tests."""
    out = tmp_path_factory.mktemp("runs") / "vqvae"
    run(*VQ, *FAST, "--batch-size", 1, "--data", toy / "one", "--out", out, "--steps", 4, "--save-every", 2,
        "--sample-every", 4)
    return out


def test_vqvae_learns_and_writes_a_complete_checkpoint(vq_run):
    rows = metrics(vq_run)
    losses = [row["loss"] for row in rows]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert rows[-1]["usage_l0"] > 0 and rows[-1]["samples_per_s"] > 0 and "eta_s" in rows[-1]
    audio = ["step_0000004_input.wav"] + [f"step_0000004_recon_l{level}.wav" for level in range(3)]  # --sample-every
    assert sorted(os.listdir(vq_run)) == ["ckpt_0000002.pt", "ckpt_0000004.pt", "metrics.jsonl", *audio]

    ckpt = load(vq_run / "ckpt_0000004.pt")  # weights_only: nothing but plain data and tensors
    assert {"stage", "step", "config", "model", "ema", "optimizer", "scaler", "rng", "data_position"} <= set(ckpt)
    assert (ckpt["stage"], ckpt["step"], ckpt["data_position"]) == ("vqvae", 4, 4 * 1)
    assert ckpt["config"]["bandwidth_l2"] != 1.0 and ckpt["config"]["bandwidth_spec"] != 1.0  # estimated from data
    model = train.vqvae.VQVAE(train.vqvae.VQVAEConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    model.load_state_dict(ckpt["ema"])  # also a complete state dict, kept apart from the trained weights
    differs = [k for k in ckpt["model"] if not torch.equal(ckpt["model"][k], ckpt["ema"][k])]
    assert differs and set(differs) <= set(dict(model.named_parameters()))  # buffers (codebooks) are shared


def test_vqvae_resume_continues_exactly(toy, vq_run, tmp_path):
    out = tmp_path / "resumed"
    run(*VQ, *FAST, "--batch-size", 1, "--data", toy / "one", "--out", out, "--steps", 4, "--save-every", 2,
        "--resume", vq_run / "ckpt_0000002.pt")
    assert [r["loss"] for r in metrics(out)] == [r["loss"] for r in metrics(vq_run)[2:]]
    a, b = load(vq_run / "ckpt_0000004.pt"), load(out / "ckpt_0000004.pt")
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


@pytest.mark.parametrize("stage,lyrics", [("top", "none"), ("top", "merged"), ("middle", "none"), ("bottom", "none")])
def test_prior_stage_learns(toy, vq_run, tmp_path, stage, lyrics):
    out = tmp_path / stage
    run("--stage", stage, "--lyrics", lyrics, *FAST, "--data", toy / "one", "--vqvae", vq_run, "--out", out,
        "--steps", 3, "--lr", "3e-3", "--sample-every", 3)
    rows = metrics(out)
    assert rows[-1]["loss"] < rows[0]["loss"], [r["loss"] for r in rows]
    assert rows[-1]["tokens_per_s"] > 0
    ckpt = load(out / "ckpt_0000003.pt")
    cfg = train.prior.PriorConfig(**ckpt["config"])
    assert (ckpt["stage"], cfg.level, cfg.lyrics, cfg.codebook_size) == (stage, train.STAGE_LEVEL[stage], lyrics, 256)
    train.prior.Prior(cfg).load_state_dict(ckpt["ema"])
    assert ckpt["vqvae_config"] == load(vq_run / "ckpt_0000004.pt")["config"]  # sample.py pairs them by it
    sampled, rate = sf.read(out / "step_0000003_sample.wav")
    assert rate == cfg.sample_rate and len(sampled) == cfg.sample_length


def test_top_prior_trains_on_each_windows_lyrics(toy, vq_run, tmp_path, monkeypatch):
    """--lyrics merged: the sidecar lyrics reach y, the characters that go with each window's place in its song."""
    seen = []
    real_forward = train.prior.Prior.forward

    def spy(self, tokens, y, upper=None):
        seen.append(y.clone())
        return real_forward(self, tokens, y, upper)

    monkeypatch.setattr(train.prior.Prior, "forward", spy)
    run("--stage", "top", "--lyrics", "merged", *FAST, "--data", toy / "many", "--vqvae", vq_run, "--out", tmp_path,
        "--steps", 2)
    cfg = train.prior.PriorConfig(**load(tmp_path / "ckpt_0000002.pt")["config"])
    songs = []  # each toy song's lyrics as v3 character ids
    for path in sorted((toy / "many").glob("toy_*.json")):
        with open(path) as f:
            songs.append(data.tokenize_lyrics(json.load(f)["lyrics"], cfg.label_version))
    rows = torch.cat(seen)  # (4, n_y): 2 steps x batch 2
    assert len(rows) == 4 and all(len(tokens) > cfg.n_lyric_tokens for tokens in songs)
    for y in rows:
        total, offset, lyrics = int(y[0]), int(y[1]), y[cfg.n_labels:].tolist()
        assert lyrics in [data.lyric_window(tokens, cfg.n_lyric_tokens, total, offset, cfg.sample_length)[0]
                          for tokens in songs]
    assert len({tuple(y[cfg.n_labels:].tolist()) for y in rows}) > 1  # different windows, different lyrics


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_trains(toy, vq_run, tmp_path, dtype):
    """autocast on CPU; fp16 adds the GradScaler, whose first steps are skipped (inf gradients at scale 65536)."""
    run("--stage", "bottom", *FAST, "--data", toy / "one", "--vqvae", vq_run, "--out", tmp_path, "--steps", 2,
        "--dtype", dtype)
    rows = metrics(tmp_path)
    assert all(r["loss"] == r["loss"] for r in rows)  # not NaN
    assert ("loss_scale" in rows[-1]) == ("scale" in load(tmp_path / "ckpt_0000002.pt")["scaler"]) == (dtype == "fp16")


def test_prior_on_the_released_vqvae_file(toy, vq_run, tmp_path, monkeypatch):
    """--vqvae NAME.pth.tar goes through official.load_vqvae (stubbed here with our tiny VQ-VAE)."""
    released = tmp_path / "vqvae.pth.tar"
    released.write_bytes(b"stand-in")
    tiny = train.load_frozen_vqvae(str(vq_run))
    monkeypatch.setattr(train.official, "load_vqvae", lambda path: tiny if path == str(released) else None)
    run("--stage", "bottom", *FAST, "--data", toy / "one", "--vqvae", released, "--out", tmp_path / "run", "--steps", 1)
    assert load(tmp_path / "run" / "ckpt_0000001.pt")["config"]["codebook_size"] == 256


def test_two_processes_equal_one(toy, vq_run, tmp_path):
    """Same global batch of 4: 1 process x 2 micro-batches of 2 (accumulated) vs 2 processes x 1 micro-batch of 2;
    an upsampler, so the codes of the level above travel with each window too."""
    args = ["--stage", "middle", *FAST, "--batch-size", 4, "--micro-batch", 2, "--data", toy / "many",
            "--vqvae", vq_run, "--steps", 2, "--grad-checkpoint"]
    run(*args, "--out", tmp_path / "one")
    result = torchrun(*args, "--out", tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es) x 1 micro-batch(es) of 2 = global batch 4" in result.stdout
    a, b = load(tmp_path / "one" / "ckpt_0000002.pt"), load(tmp_path / "two" / "ckpt_0000002.pt")
    assert a["data_position"] == b["data_position"] == 8 and len(b["rng"]) == 2
    for key in ("model", "ema"):
        for k in a[key]:
            torch.testing.assert_close(a[key][k], b[key][k], rtol=0, atol=1e-5, msg=f"{key} {k}")
    for r1, r2 in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two")):
        assert abs(r1["loss"] - r2["loss"]) < 1e-5


def test_two_process_vqvae_keeps_codebooks_in_sync(toy, tmp_path):
    """torchrun --nproc_per_node=2 train.py --stage vqvae on CPU/gloo. Every checkpoint compares a fingerprint
    of all weights and codebook buffers across ranks and fails the run if they differ."""
    args = [*VQ, *FAST, "--data", toy / "many", "--steps", 2]
    result = torchrun(*args, "--out", tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    two = load(tmp_path / "two" / "ckpt_0000002.pt")
    assert two["step"] == 2 and len(two["rng"]) == 2 and two["model"]["codebooks.0.initialized"]
    # Against one process with the same global batch. Convolutions round differently for batch 1 and 2, so a
    # near-tie in a code assignment may flip: that moves the codebook's EMA buffers by (1 - decay) and, through
    # the decoder's input, the weights by ~1e-4 within two steps. So: losses to 1e-5, weights to 1e-3, no buffers.
    run(*args, "--out", tmp_path / "one")
    one = load(tmp_path / "one" / "ckpt_0000002.pt")
    params = dict(train.vqvae.VQVAE(train.vqvae.VQVAEConfig(**one["config"])).named_parameters())
    worst = max((one["model"][k] - two["model"][k]).abs().max().item() for k in params)
    losses = max(abs(a["loss"] - b["loss"]) for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two")))
    assert losses < 1e-5, losses
    assert worst < 1e-3, worst


KILL_AT_SECOND_SAVE = """
import os, signal, sys, torch
sys.path.insert(0, {root!r})
import train
real_save, calls = torch.save, []
def dying_save(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # the second checkpoint: some bytes reach the disk, then the process dies
        f.write(b"half a checkpoint"); f.flush(); os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = dying_save
train.main(sys.argv[1:])
"""


def test_checkpoint_killed_mid_write_leaves_the_previous_one(toy, vq_run, tmp_path):
    out = tmp_path / "run"
    args = ["--stage", "bottom", *FAST, "--data", toy / "many", "--vqvae", vq_run, "--steps", 2]
    script = KILL_AT_SECOND_SAVE.format(root=ROOT)
    result = subprocess.run([sys.executable, "-c", script, *map(str, args), "--out", str(out), "--save-every", "1"],
                            capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=300)
    assert result.returncode == -9, result.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["ckpt_0000001.pt", "ckpt_0000002.pt.tmp", "metrics.jsonl"]
    assert load(out / "ckpt_0000001.pt")["step"] == 1  # intact
    run(*args, "--out", out, "--resume", out)  # a run folder resumes from its newest complete checkpoint
    assert sorted(os.listdir(out)) == ["ckpt_0000001.pt", "ckpt_0000002.pt", "metrics.jsonl"]


USER_ERRORS = {  # name: (arguments after the stage's own, words the one-line message must contain)
    "empty data folder": (VQ + ["--data", "{toy}/empty"], "no readable audio"),
    "missing data folder": (VQ + ["--data", "{toy}/nowhere"], "not a folder"),
    "no --vqvae": (["--stage", "top", "--data", "{toy}/one"], "needs --vqvae"),
    "missing --vqvae file": (["--stage", "top", "--data", "{toy}/one", "--vqvae", "{toy}/none.pt"], "no such file"),
    "missing released file": (["--stage", "top", "--data", "{toy}/one", "--vqvae", "{toy}/vqvae.pth.tar"],
                              "no such file"),
    "bad released file": (["--stage", "top", "--data", "{toy}/one", "--vqvae", "{toy}/one/toy_000.wav.pth.tar"],
                          "--vqvae"),
    "--vqvae not a checkpoint": (["--stage", "top", "--data", "{toy}/one", "--vqvae", "{toy}/one/toy_000.wav"],
                                 "not a readable checkpoint"),
    "wrong-stage --resume": (["--stage", "bottom", "--data", "{toy}/one", "--vqvae", "{vq}", "--resume", "{vq}"],
                             "is a 'vqvae' checkpoint"),
    "--resume of another config": (VQ + ["--data", "{toy}/one", "--resume", "{vq}", "--batch-size", "1",
                                         "--lr", "5e-4"], "--lr 0.001 but this command has --lr 0.0005"),
    "zero log interval": (VQ + ["--data", "{toy}/one", "--log-every", "0"], "--log-every 0: must be at least 1"),
    "batch not divisible": (VQ + ["--data", "{toy}/one", "--batch-size", "3", "--micro-batch", "2"], "--micro-batch"),
    "non-finite loss": (["--stage", "bottom", "--data", "{toy}/one", "--vqvae", "{vq}", "--lr", "1e30",
                         "--warmup", "0"], "loss became"),
}


@pytest.mark.parametrize("name", USER_ERRORS)
def test_user_errors_exit_2_with_one_line(toy, vq_run, tmp_path, capsys, name):
    argv, words = USER_ERRORS[name]
    argv = [a.format(toy=toy, vq=vq_run) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        run(*FAST, *argv, "--steps", 3, "--out", tmp_path / "out")  # later flags win
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()  # (data.py may warn before, e.g. about unknown artists)
    assert err[-1].startswith("error: ") and words in err[-1], err
    assert not any(line.startswith(("error", "Traceback")) for line in err[:-1]), err
    assert not (tmp_path / "out").exists() or not train.checkpoint_paths(tmp_path / "out")  # nothing saved


def test_cli_user_error_has_no_traceback(toy):
    result = subprocess.run([sys.executable, "train.py", *VQ, "--data", str(toy / "empty")], capture_output=True,
                            text=True, env=subprocess_env(), cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_every_flag_is_explained():
    for action in train.build_parser()._actions:
        assert action.help, action.dest
