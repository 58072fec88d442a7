"""train.py: every stage learns; 2 processes (DDP or FSDP) equal 1; resume is exact; saves are atomic; the recipe
(learning-rate schedule, beta2, fp16 skips, held-out evaluation); user errors are one line with exit code 2.

CPU only, tiny presets, toy songs from toy.py. Single-process runs call train.main() in this process; the
2-process runs go through torchrun (gloo) exactly as a user starts them.
"""
import argparse
import json
import os
import subprocess
import sys

import pytest
import soundfile as sf
import torch

import data
import prior
import toy
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--preset", "tiny", "--batch-size", "2", "--lr", "1e-3", "--warmup", "1", "--log-every", "1"]
VQ = ["--stage", "vqvae", "--sample-length", "2048", "--bandwidth-batches", "1"]


def run(*argv):
    train.main([str(a) for a in argv])


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def training_rows(out):
    return [row for row in metrics(out) if "loss" in row]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def subprocess_env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def torchrun(*argv, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(ROOT, "train.py"), *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=300)


def assert_same_state(a, b, atol, keys=("model", "ema")):
    for key in keys:
        for k in a[key]:
            torch.testing.assert_close(a[key][k], b[key][k], rtol=0, atol=atol, msg=f"{key} {k}")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These ops are tiny: one thread is as fast, and far faster when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    toy.make_toy(root / "one", n=1, seconds=1.0)  # one song of one second: the windows of a single song
    sf.write(root / "one" / "short.wav", toy.toy_song([5, 5], 0.1, 44100)[0], 44100)  # shorter than a window: left out
    toy.make_toy(root / "many", n=3, seconds=1.0)  # different windows at every index
    (root / "empty").mkdir()
    (root / "one" / "toy_000.wav.pth.tar").write_bytes(b"not a pickle")  # not audio: the dataset skips it
    return root


@pytest.fixture(scope="module")
def vq_run(toy_data, tmp_path_factory):
    """A 4-step VQ-VAE run with checkpoints at steps 2 and 4 and a held-out evaluation; the frozen VQ-VAE of the
    prior tests."""
    out = tmp_path_factory.mktemp("runs") / "vqvae"
    run(*VQ, *FAST, "--batch-size", 1, "--data", toy_data / "one", "--out", out, "--steps", 4, "--save-every", 2,
        "--sample-every", 4, "--eval-data", toy_data / "many", "--eval-every", 2, "--eval-windows", 2)
    return out


def test_vqvae_learns_and_writes_a_complete_checkpoint(vq_run):
    rows = training_rows(vq_run)
    losses = [row["loss"] for row in rows]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert rows[-1]["usage_l0"] > 0 and rows[-1]["samples_per_s"] > 0 and "eta_s" in rows[-1]
    evals = [row for row in metrics(vq_run) if "eval_loss" in row]  # held-out spectral convergence per level
    assert [row["step"] for row in evals] == [2, 4] and all(f"eval_sc_db_l{i}" in evals[0] for i in range(3))
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
    built = train.build_model(ckpt)  # the one EMA rule: the EMA weights when present
    assert not built.training and all(torch.equal(v, ckpt["ema"][k]) for k, v in built.state_dict().items())


def test_vqvae_resume_continues_exactly(toy_data, vq_run, tmp_path):
    out = tmp_path / "resumed"
    run(*VQ, *FAST, "--batch-size", 1, "--data", toy_data / "one", "--out", out, "--steps", 4, "--save-every", 2,
        "--resume", vq_run / "ckpt_0000002.pt", "--eval-data", toy_data / "many", "--eval-every", 2,
        "--eval-windows", 2)
    assert [r["loss"] for r in training_rows(out)] == [r["loss"] for r in training_rows(vq_run)[2:]]
    assert [r for r in metrics(out) if "eval_loss" in r] == [r for r in metrics(vq_run) if "eval_loss" in r][1:]
    assert_same_state(load(vq_run / "ckpt_0000004.pt"), load(out / "ckpt_0000004.pt"), atol=0)


@pytest.mark.parametrize("stage,lyrics", [("top", "none"), ("top", "merged"), ("middle", "none"), ("bottom", "none")])
def test_prior_stage_learns(toy_data, vq_run, tmp_path, capsys, stage, lyrics):
    out = tmp_path / stage
    run("--stage", stage, "--lyrics", lyrics, *FAST, "--data", toy_data / "one", "--vqvae", vq_run, "--out", out,
        "--steps", 3, "--lr", "3e-3", "--sample-every", 3, "--eval-data", toy_data / "many", "--eval-every", 3,
        "--eval-windows", 2, "--codes", tmp_path / "codes")
    assert "left out 1 too short" in capsys.readouterr().out  # short.wav: dropped and counted, not padded
    rows = training_rows(out)
    assert rows[-1]["loss"] < rows[0]["loss"], [r["loss"] for r in rows]
    assert rows[-1]["tokens_per_s"] > 0 and metrics(out)[-1]["eval_bits"] > 0  # held-out bits per token
    ckpt = load(out / "ckpt_0000003.pt")
    cfg = train.prior.PriorConfig(**ckpt["config"])
    assert (ckpt["stage"], cfg.level, cfg.lyrics, cfg.codebook_size) == (stage, train.STAGES[stage], lyrics, 256)
    train.prior.Prior(cfg).load_state_dict(ckpt["ema"])
    assert ckpt["vqvae_config"] == load(vq_run / "ckpt_0000004.pt")["config"]  # sample.py pairs them by it
    sampled, rate = sf.read(out / "step_0000003_sample.wav")
    assert rate == cfg.sample_rate and len(sampled) == cfg.sample_length


def test_top_prior_trains_on_each_windows_lyrics(toy_data, vq_run, tmp_path, monkeypatch):
    """--lyrics merged: the sidecar lyrics reach y, the characters that go with each window's place in its song."""
    seen = []
    real_forward = train.prior.Prior.forward

    def spy(self, tokens, y, upper=None):
        seen.append(y.clone())
        return real_forward(self, tokens, y, upper)

    monkeypatch.setattr(train.prior.Prior, "forward", spy)
    run("--stage", "top", "--lyrics", "merged", *FAST, "--data", toy_data / "many", "--vqvae", vq_run, "--out",
        tmp_path, "--steps", 2, "--aug-shift")
    cfg = train.prior.PriorConfig(**load(tmp_path / "ckpt_0000002.pt")["config"])
    songs = []  # each toy song's lyrics as v3 character ids
    for path in sorted((toy_data / "many").glob("toy_*.json")):
        with open(path) as f:
            songs.append(data.tokenize_lyrics(json.load(f)["lyrics"], cfg.label_version))
    rows = torch.cat(seen)  # (4, n_y): 2 steps x batch 2
    assert len(rows) == 4 and all(len(tokens) > cfg.n_lyric_tokens for tokens in songs)
    for y in rows:
        total, offset, lyrics = int(y[0]), int(y[1]), y[cfg.n_labels:].tolist()
        assert offset % cfg.hop_length == 0  # windows start on a code of the level
        assert lyrics in [prior.lyric_window(tokens, cfg.n_lyric_tokens, total, offset, cfg.sample_length)[0]
                          for tokens in songs]
    assert len({tuple(y[cfg.n_labels:].tolist()) for y in rows}) > 1  # different windows, different lyrics


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_trains(toy_data, vq_run, tmp_path, dtype):
    """autocast on CPU; fp16 adds the GradScaler, which skips the steps whose gradients overflow and counts them."""
    run("--stage", "bottom", *FAST, "--data", toy_data / "one", "--vqvae", vq_run, "--out", tmp_path, "--steps", 2,
        "--dtype", dtype)
    rows = training_rows(tmp_path)
    assert all(r["loss"] == r["loss"] for r in rows)  # not NaN
    assert ("loss_scale" in rows[-1]) == ("scale" in load(tmp_path / "ckpt_0000002.pt")["scaler"]) == (dtype == "fp16")
    for before, after in zip([{"loss_scale": 65536.0}] + rows, rows):  # a lowered scale is a skipped step
        assert after["skipped_steps"] == (dtype == "fp16" and after["loss_scale"] < before["loss_scale"])


def test_fp16_steps_with_non_finite_gradients_are_skipped(toy_data, vq_run, tmp_path, monkeypatch):
    """A non-finite loss under fp16 is not an error: the GradScaler skips the step (no weight changes, scale
    halved), the row counts it, and training goes on."""
    real_forward, calls = train.prior.Prior.forward, []

    def spiky(self, tokens, y, upper=None):
        loss, parts = real_forward(self, tokens, y, upper)
        calls.append(1)
        return (loss * float("inf") if len(calls) == 2 else loss), parts  # the second step overflows

    monkeypatch.setattr(train.prior.Prior, "forward", spiky)
    run("--stage", "bottom", *FAST, "--data", toy_data / "one", "--vqvae", vq_run, "--out", tmp_path, "--steps", 3,
        "--dtype", "fp16", "--save-every", 1)
    rows = training_rows(tmp_path)
    assert [r["skipped_steps"] for r in rows] == [0, 1, 0] and rows[1]["loss_scale"] == rows[0]["loss_scale"] / 2
    one, two = load(tmp_path / "ckpt_0000001.pt"), load(tmp_path / "ckpt_0000002.pt")
    assert all(torch.equal(one["model"][k], two["model"][k]) for k in one["model"])  # the skipped step changed nothing


def test_learning_rate_schedule():
    """Warmup, then constant; or from --lr-decay-start a linear decay to 0 over --lr-decay steps."""
    args = argparse.Namespace(lr=1.0, warmup=4, lr_decay_start=0, lr_decay=0)
    assert [train.learning_rate(s, args) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    args = argparse.Namespace(lr=1.0, warmup=0, lr_decay_start=2, lr_decay=4)
    assert [train.learning_rate(s, args) for s in range(8)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]


def test_beta2_follows_the_presets_recipe(toy_data, vq_run, tmp_path, monkeypatch):
    """The released 5b prior trained with beta2 0.925; --preset 5b defaults to it (a tiny stand-in here)."""
    real_preset = train.prior.preset
    monkeypatch.setattr(train.prior, "preset", lambda name, **kw: real_preset("tiny" if name == "5b" else name, **kw))
    for preset, beta2 in (("5b", 0.925), ("tiny", 0.999)):
        run("--stage", "top", *FAST, "--preset", preset, "--data", toy_data / "one", "--vqvae", vq_run, "--out",
            tmp_path / preset, "--steps", 1)
        ckpt = load(tmp_path / preset / "ckpt_0000001.pt")
        assert ckpt["train"]["beta2"] == beta2 and ckpt["optimizer"]["param_groups"][0]["betas"] == (0.9, beta2)


def test_prior_on_the_released_vqvae_file(toy_data, vq_run, tmp_path, monkeypatch):
    """--vqvae NAME.pth.tar goes through official.load_vqvae (stubbed here with our tiny VQ-VAE)."""
    released = tmp_path / "vqvae.pth.tar"
    released.write_bytes(b"stand-in")
    tiny = train.load_vqvae(str(vq_run))
    monkeypatch.setattr(train.official, "load_vqvae", lambda path: tiny if path == str(released) else None)
    run("--stage", "bottom", *FAST, "--data", toy_data / "one", "--vqvae", released, "--out", tmp_path / "run",
        "--steps", 1)
    assert load(tmp_path / "run" / "ckpt_0000001.pt")["config"]["codebook_size"] == 256


def test_checkpoint_api_refuses_the_wrong_files(vq_run, tmp_path):
    """The one loader and the one pairing check that sample.py uses."""
    with pytest.raises(data.UserError, match="is a 'vqvae' checkpoint, not 'top'; pass it to --vqvae"):
        train.read_checkpoint(str(vq_run), "top", "--top")
    assert train.find_checkpoint(str(vq_run), "vqvae", "--vqvae").endswith("ckpt_0000004.pt")
    vq = train.load_vqvae(str(vq_run))
    cfg = prior.preset("tiny", level=1)
    train.check_pair(cfg, vq.config, None, "p.pt", "--middle")  # codebook 256, same hops and rate
    with pytest.raises(data.UserError, match="codebook_size 2048 but the VQ-VAE has 256"):
        train.check_pair(prior.preset("upsampler_level_1"), vq.config, None, "p.pt", "--middle")
    other = dict(load(vq_run / "ckpt_0000004.pt")["config"], commit_weight=0.5)
    with pytest.raises(data.UserError, match="trained on another VQ-VAE .*commit_weight"):
        train.check_pair(cfg, vq.config, other, "p.pt", "--middle")


# ---- several processes: DDP and FSDP ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def parallel_runs(toy_data, vq_run, tmp_path_factory):
    """An upsampler (the codes of the level above travel with each window) trained with the same global batch of 4
    by 1 process x 2 micro-batches, 2 processes with DDP, and 2 with FSDP; checkpoints at steps 1 and 2."""
    root = tmp_path_factory.mktemp("parallel")
    args = ["--stage", "middle", *FAST, "--batch-size", 4, "--micro-batch", 2, "--data", toy_data / "many",
            "--vqvae", vq_run, "--steps", 2, "--save-every", 1, "--grad-checkpoint"]
    run(*args, "--out", root / "one", "--codes", root / "codes_one")
    outputs = {"one": None}
    for name, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        outputs[name] = torchrun(*args, *extra, "--out", root / name, "--codes", root / f"codes_{name}")
        assert outputs[name].returncode == 0, outputs[name].stderr[-3000:]
    return root, args, outputs


def test_two_processes_equal_one_exactly(parallel_runs):
    """The codes come from the cache (each rank encoding its share of the songs), so the inputs are identical and
    the results equal bit for bit."""
    root, _, outputs = parallel_runs
    assert "2 process(es) x 1 micro-batch(es) of 2 = global batch 4" in outputs["ddp"].stdout
    one_codes, two_codes = sorted((root / "codes_one").rglob("*.npy")), sorted((root / "codes_ddp").rglob("*.npy"))
    assert [p.name for p in one_codes] == [p.name for p in two_codes] and len(one_codes) == 9
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(one_codes, two_codes))
    a, b = load(root / "one" / "ckpt_0000002.pt"), load(root / "ddp" / "ckpt_0000002.pt")
    assert a["data_position"] == b["data_position"] == 8 and len(b["rng"]) == 2
    assert_same_state(a, b, atol=0)
    assert [r["loss"] for r in metrics(root / "one")] == [r["loss"] for r in metrics(root / "ddp")]


def test_fsdp_equals_ddp_and_resumes_exactly(parallel_runs):
    root, args, outputs = parallel_runs
    assert "| fsdp |" in outputs["fsdp"].stdout
    ddp, fsdp = load(root / "ddp" / "ckpt_0000002.pt"), load(root / "fsdp" / "ckpt_0000002.pt")
    assert set(fsdp["model"]) == set(ddp["model"]) and fsdp["optimizer"]["state"].keys() == ddp["optimizer"]["state"].keys()
    assert_same_state(ddp, fsdp, atol=1e-5)
    for r1, r2 in zip(metrics(root / "ddp"), metrics(root / "fsdp")):
        assert abs(r1["loss"] - r2["loss"]) < 1e-5
    train.build_model(fsdp)  # an FSDP checkpoint is an ordinary one
    resumed = torchrun(*args, "--fsdp", "--out", root / "fsdp_resumed", "--codes", root / "codes_fsdp",
                       "--resume", root / "fsdp" / "ckpt_0000001.pt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = load(root / "fsdp_resumed" / "ckpt_0000002.pt")
    assert_same_state(fsdp, again, atol=0)
    assert metrics(root / "fsdp_resumed")[0]["loss"] == metrics(root / "fsdp")[1]["loss"]
    for k, state in fsdp["optimizer"]["state"].items():
        assert all(torch.equal(v, again["optimizer"]["state"][k][n]) for n, v in state.items()), k
    as_ddp = torchrun(*args, "--out", root / "ddp_resumed", "--codes", root / "codes_fsdp",  # and back to DDP
                      "--resume", root / "fsdp" / "ckpt_0000001.pt")
    assert as_ddp.returncode == 0, as_ddp.stderr[-3000:]
    assert_same_state(ddp, load(root / "ddp_resumed" / "ckpt_0000002.pt"), atol=1e-5)


def test_two_process_vqvae_keeps_codebooks_in_sync(toy_data, tmp_path):
    """torchrun --nproc_per_node=2 train.py --stage vqvae on CPU/gloo. Every checkpoint compares a fingerprint
    of all weights and codebook buffers across ranks and fails the run if they differ."""
    args = [*VQ, *FAST, "--data", toy_data / "many", "--steps", 2]
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


def test_checkpoint_killed_mid_write_leaves_the_previous_one(toy_data, vq_run, tmp_path):
    out = tmp_path / "run"
    args = ["--stage", "bottom", *FAST, "--data", toy_data / "many", "--vqvae", vq_run, "--steps", 2]
    script = KILL_AT_SECOND_SAVE.format(root=ROOT)
    result = subprocess.run([sys.executable, "-c", script, *map(str, args), "--out", str(out), "--save-every", "1"],
                            capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=300)
    assert result.returncode == -9, result.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["ckpt_0000001.pt", "ckpt_0000002.pt.tmp", "metrics.jsonl"]
    assert load(out / "ckpt_0000001.pt")["step"] == 1  # intact
    run(*args, "--out", out, "--resume", out)  # a run folder resumes from its newest complete checkpoint
    assert sorted(os.listdir(out)) == ["ckpt_0000001.pt", "ckpt_0000002.pt", "metrics.jsonl"]


# ---- user errors -----------------------------------------------------------------------------------------------

PRIOR = ["--stage", "bottom", "--data", "{toy}/one", "--vqvae", "{vq}"]
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
    "wrong-stage --resume": (PRIOR + ["--resume", "{vq}"], "is a 'vqvae' checkpoint"),
    "--resume of another config": (VQ + ["--data", "{toy}/one", "--resume", "{vq}", "--batch-size", "1",
                                         "--lr", "5e-4"], "--lr 0.001 but this command has --lr 0.0005"),
    "zero log interval": (VQ + ["--data", "{toy}/one", "--log-every", "0"], "--log-every 0: must be in [1, inf)"),
    "batch not divisible": (VQ + ["--data", "{toy}/one", "--batch-size", "3", "--micro-batch", "2"], "--micro-batch"),
    "non-finite loss": (PRIOR + ["--lr", "1e30", "--warmup", "0"], "loss became"),
    "non-finite bf16 loss": (PRIOR + ["--lr", "1e30", "--warmup", "0", "--dtype", "bf16"], "loss became"),
    "fp16 skips in a row": (PRIOR + ["--lr", "1e30", "--warmup", "0", "--dtype", "fp16", "--max-skipped", "1"],
                            "1 steps in a row"),
    "--eval-every alone": (VQ + ["--data", "{toy}/one", "--eval-every", "1"], "needs --eval-data"),
    "--fsdp for the VQ-VAE": (VQ + ["--data", "{toy}/one", "--fsdp"], "for prior stages"),
    "--fsdp in one process": (PRIOR + ["--fsdp"], "torchrun"),
    "--aug-blend for a prior": (PRIOR + ["--aug-blend"], "--aug-blend for --stage vqvae"),
    "--level-steps for a prior": (PRIOR + ["--level-steps", "3,3,3"], "--stage vqvae only"),
    "--level-steps too few": (VQ + ["--data", "{toy}/one", "--level-steps", "3,3"], "three step counts"),
    "--level-steps short of --steps": (VQ + ["--data", "{toy}/one", "--level-steps", "1,2,2"], "at least --steps 3"),
    "unknown flag": (VQ + ["--data", "{toy}/one", "--bogus"], "unrecognized arguments: --bogus"),
    "code cache on a file": (PRIOR + ["--codes", "{toy}/one/toy_000.wav"], "cannot create the code cache"),
}


@pytest.mark.parametrize("name", USER_ERRORS)
def test_user_errors_exit_2_with_one_line(toy_data, vq_run, tmp_path, capsys, name):
    argv, words = USER_ERRORS[name]
    argv = [a.format(toy=toy_data, vq=vq_run) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        run(*FAST, *argv, "--steps", 3, "--out", tmp_path / "out")  # later flags win
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()  # (data.py may warn before, e.g. about unknown artists)
    assert err[-1].startswith("error: ") and words in err[-1], err
    assert not any(line.startswith(("error", "Traceback", "usage")) for line in err[:-1]), err
    assert not (tmp_path / "out").exists() or not train.checkpoint_paths(tmp_path / "out")  # nothing saved


def bad_values(interval, kind):
    """Values outside a flag's range: below or at its open lower end, at its open upper end, nan, not a number."""
    low, high = interval[1:-1].split(", ")
    values = [str(kind(float(low)) - 1) if interval[0] == "[" else low, "x"]
    return values + (["nan"] if kind is float else []) + ([high] if high != "inf" else [])


def test_every_numeric_flag_is_range_checked(tmp_path, capsys):
    for name, (kind, _, interval, _) in train.NUMBERS.items():
        flag = "--" + name.replace("_", "-")
        for value in bad_values(interval, kind):
            with pytest.raises(SystemExit) as exit_info:
                run("--stage", "top", "--data", tmp_path, "--out", tmp_path / "out", flag, value)
            err = capsys.readouterr().err
            assert exit_info.value.code == 2 and err.count("\n") == 1 and flag in err, (flag, value, err)
    assert not (tmp_path / "out").exists()


def test_cli_user_error_has_no_traceback(toy_data):
    result = subprocess.run([sys.executable, "train.py", *VQ, "--data", str(toy_data / "empty")], capture_output=True,
                            text=True, env=subprocess_env(), cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_every_flag_is_explained():
    for action in train.build_parser()._actions:
        assert action.help, action.dest
    assert "in [0, 1)" in train.build_parser().format_help()  # numeric flags show their valid range


def test_level_steps_train_each_level_for_its_own_steps(toy_data, tmp_path):
    """--level-steps 2,4,2: levels 0 and 2 stop after step 2 (weights and codebooks as the run of 2 steps left
    them), level 1 trains on to step 4 as in a plain run (without clipping: the global norm couples the levels)."""
    args = [*VQ, *FAST, "--batch-size", 1, "--data", toy_data / "one", "--steps", 4, "--save-every", 2, "--clip", 0]
    run(*args, "--out", tmp_path / "plain")
    run(*args, "--out", tmp_path / "levels", "--level-steps", "2,4,2")
    two, four = (load(tmp_path / "plain" / f"ckpt_000000{n}.pt")["model"] for n in (2, 4))
    assert_same_state({"model": two}, load(tmp_path / "levels" / "ckpt_0000002.pt"), atol=0, keys=("model",))
    for key, value in load(tmp_path / "levels" / "ckpt_0000004.pt")["model"].items():
        level = int(key.split(".")[1])  # encoders.L. / decoders.L. / codebooks.L.
        if level != 1:
            assert torch.equal(value, two[key]), key
        elif "weight" in key:  # level 1 trained on: close to the plain run (the codebooks' random restarts draw
            assert not torch.equal(value, two[key]), key  # from a stream that levels 0 and 2 no longer share)
            torch.testing.assert_close(value, four[key], rtol=0, atol=1e-3, msg=key)
    rows = training_rows(tmp_path / "levels")
    assert "usage_l0" in rows[1] and "usage_l0" not in rows[-1] and "usage_l1" in rows[-1]  # the levels that ran
