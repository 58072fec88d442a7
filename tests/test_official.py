"""official.py: safe reading of the original's checkpoint files, the released hparam tables and attention
patterns, key mapping, loading (float32 and half-precision blocks)."""
import builtins
import collections
import os
import re
import subprocess
import sys
import types

import pytest
import torch

import official
from data import UserError

FORMATS = ["zip", "legacy"]  # torch >= 1.6 default, and the torch 1.4 format of the released files


def save(obj, path, fmt):
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))


# ---- objects whose unpickling would run code -------------------------------------------------------------
class RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling with plain pickle would run: os.system('touch MARKER')
        return (os.system, (f"touch {self.marker}",))


class RunsExec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').close()",))


class RunsSubprocess:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", self.marker],))


def touch(path):  # a function of a module the loader does not know: must not be called either
    open(path, "w").close()


class CallsUnknownFunction:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (touch, (self.marker,))


class UnknownDict(dict):  # a class the loader does not know, even a harmless one, is refused
    pass


# ---- the original's hyperparameter object (jukebox.hparams.Hyperparams) ---------------------------------------
SETSTATE_CALLS = []


class Hyperparams(dict):  # the original's: a dict whose attributes are its items
    def __getattr__(self, attr):
        return self[attr]

    def __setattr__(self, attr, value):
        self[attr] = value

    def __setstate__(self, state):  # would record a call if the loader used the real class
        SETSTATE_CALLS.append(state)


@pytest.fixture
def original_hparams_module(monkeypatch):
    """Make Hyperparams picklable under the original's name, jukebox.hparams.Hyperparams."""
    module = types.ModuleType("jukebox.hparams")
    module.Hyperparams = Hyperparams
    monkeypatch.setattr(Hyperparams, "__module__", "jukebox.hparams")
    monkeypatch.setitem(sys.modules, "jukebox", types.ModuleType("jukebox"))
    monkeypatch.setitem(sys.modules, "jukebox.hparams", module)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("payload", [RunsShell, RunsExec, RunsSubprocess])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, fmt, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    save({"hps": payload(str(marker)), "model": {"w": torch.ones(2)}}, path, fmt)
    with pytest.raises(UserError, match="refusing to load") as err:
        official.read_checkpoint(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_callable_or_class_is_refused_and_never_runs(tmp_path, fmt):
    marker = tmp_path / "called"
    path = tmp_path / "odd.pth.tar"
    save({"extra": CallsUnknownFunction(str(marker)), "model": {"w": torch.arange(3.0)}}, path, fmt)
    with pytest.raises(UserError, match=r"refusing to load: it asks for \S*touch") as err:
        official.read_checkpoint(path)
    assert not marker.exists()
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    save({"hps": UnknownDict(l_bins=2048), "model": {"w": torch.arange(3.0)}}, path, fmt)
    with pytest.raises(UserError, match=r"refusing to load: it asks for \S*UnknownDict"):
        official.read_checkpoint(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_original_hparams_class_reads_as_a_plain_dict(tmp_path, fmt, original_hparams_module):
    path = tmp_path / "ok.pth.tar"
    sd = collections.OrderedDict(a=torch.randn(3, 4), b=torch.randn(5).half())
    hps = Hyperparams(l_bins=2048, downs_t=(3, 2, 2), name="x", genres={"pop", "jazz"})
    assert hps.l_bins == 2048
    save({"hps": hps, "model": sd, "step": 7, "opt": None, "device": torch.device("cpu"), "dtype": torch.float16,
          "size": torch.Size([2, 3]), "scalars": [1, 2.5, True, None, "s", b"b", complex(1, 2)]}, path, fmt)
    SETSTATE_CALLS.clear()
    ck = official.read_checkpoint(path)
    assert SETSTATE_CALLS == []
    hps = ck["hps"]
    assert type(hps) is dict and hps == {"l_bins": 2048, "downs_t": (3, 2, 2), "name": "x", "genres": {"pop", "jazz"}}
    assert ck["step"] == 7 and list(ck["model"]) == ["a", "b"] and type(ck["model"]) is collections.OrderedDict
    assert all(torch.equal(ck["model"][k], sd[k]) and ck["model"][k].dtype == sd[k].dtype for k in sd)
    assert (ck["device"], ck["dtype"], ck["size"]) == (torch.device("cpu"), torch.float16, torch.Size([2, 3]))
    assert ck["scalars"] == [1, 2.5, True, None, "s", b"b", complex(1, 2)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_file_gives_one_line_error(tmp_path, fmt):
    path = tmp_path / "cut.pth.tar"
    save({"hps": {"l_bins": 2048}, "model": {"w": torch.randn(64, 64)}}, path, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable checkpoint") as err:
        official.read_checkpoint(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(UserError, match="cannot open"):
        official.read_checkpoint(tmp_path / "nope.pth.tar")
    with pytest.raises(UserError, match="cannot open"):
        official.read_checkpoint(tmp_path)  # a folder
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        official.read_checkpoint(junk)


# ---- released hyperparameters and the key tables of the six released files --------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The keys and shapes of the six released files, listed from the original classes built with the released
# hyperparameters (see the header of the file).
KEYS_TSV = os.path.join(ROOT, "tests", "data", "official_state_dict_keys.tsv")
RELEASED_FILES = {  # section title in the table -> our name, unique parameter count of the released file
    "5b/vqvae.pth.tar": ("vqvae", 1_878_979),
    "5b/prior_level_0.pth.tar (upsampler_level_0)": ("upsampler_level_0", 981_298_176),
    "5b/prior_level_1.pth.tar (upsampler_level_1)": ("upsampler_level_1", 981_298_176),
    "5b/prior_level_2.pth.tar (prior_5b)": ("5b", 5_060_452_800),
    "5b_lyrics/prior_level_2.pth.tar (prior_5b_lyrics)": ("5b_lyrics", 5_640_506_800),
    "1b_lyrics/prior_level_2.pth.tar (prior_1b_lyrics)": ("1b_lyrics", 942_643_200),
}


def released_key_tables():
    tables, section = {}, None
    with open(KEYS_TSV) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("### "):
                section = tables.setdefault(line[4:], [])
            elif line and not line.startswith("#"):
                key, shape, _dtype = line.split("\t")
                section.append((key, tuple(int(n) for n in shape.strip("()").split(",") if n.strip())))
    return tables


def test_released_hparams_give_our_presets():
    import prior
    import vqvae
    assert official.vqvae_config("vqvae") == vqvae.preset("jukebox")
    for name in prior.RELEASED:
        assert official.prior_config(name) == prior.preset(name), name
        assert official.prior_config(name).attention == prior.preset(name).attention, name
    assert official.prior_config("prior_1b_lyrics") == prior.preset("1b_lyrics")
    with pytest.raises(UserError, match="unknown official model"):
        official.prior_config("6b")
    with pytest.raises(UserError, match="unsupported official hyperparameters m_mlp=4.0"):
        official.prior_config({**official.HPARAMS["5b"], "m_mlp": 4.0})
    with pytest.raises(UserError, match="unsupported official hyperparameters attn_order=3"):
        official.prior_config({**official.HPARAMS["5b"], "attn_order": 3})  # a "summary" pattern
    with pytest.raises(UserError, match="unsupported official hyperparameters loss_fn='l1'"):
        official.vqvae_config({**official.HPARAMS["vqvae"], "loss_fn": "l1"})


def test_released_layer_patterns():
    layer_kinds = official.layer_kinds
    upsampler = layer_kinds(2, 72)  # also 5b (72 layers) and the 5b_lyrics lyric encoder (18 layers)
    assert upsampler == ("row", "column", "prev_row") * 24
    lyrics_5b = layer_kinds(10, 79)
    cross_at = [18, 28, 38, 48, 58, 68, 78]
    assert [d for d, k in enumerate(lyrics_5b) if k == "cross"] == cross_at
    assert lyrics_5b[:18] == ("row", "column", "prev_row") * 6
    assert lyrics_5b[19:28] == ("row", "column", "prev_row") * 3 and lyrics_5b[68] == "cross"  # alignment layer
    lyrics_1b = layer_kinds(12, 72)
    assert [d for d, k in enumerate(lyrics_1b) if k == "prime"] == [15, 31, 63]
    assert [d for d, k in enumerate(lyrics_1b) if k == "dense"] == [47]
    assert all(k == ("row", "column", "prev_row")[d % 3] for d, k in enumerate(lyrics_1b) if d % 16 != 15)
    assert lyrics_1b[63] == "prime"  # alignment layer
    assert set(official.ATTN_ORDER) == {0, 1, 2, 6, 7, 8, 9, 10, 11, 12}  # 3, 4, 5: "summary" kinds, not implemented


def test_every_released_key_maps_once_onto_our_full_size_models():
    import prior
    import vqvae
    tables = released_key_tables()
    assert set(tables) == set(RELEASED_FILES)
    for section, (name, n_params) in RELEASED_FILES.items():
        official_keys = {key: torch.empty(shape, device="meta") for key, shape in tables[section]}
        assert len(official_keys) == len(tables[section])  # no key listed twice
        with torch.device("meta"):
            if name == "vqvae":
                model = vqvae.VQVAE(official.vqvae_config(name))
                rename, derived = official.vqvae_key, official.VQVAE_DERIVED
            else:
                model = prior.Prior(official.prior_config(name))
                rename, derived = official.prior_key, ()
        ours = model.state_dict()
        mapped = official.map_state_dict(official_keys, ours, rename, derived, section)
        # every official key used once, every one of our parameters covered, same shapes (checked inside)
        assert len(mapped) == len(official_keys)
        covered = {id(p) for k, p in model.named_parameters(remove_duplicate=False) if k in mapped}
        assert covered == {id(p) for p in model.parameters()}
        saved_buffers = sum(b.numel() for k, b in model.named_buffers() if k in mapped)  # the codebooks
        assert sum(p.numel() for p in model.parameters()) + saved_buffers == n_params, name


# ---- small official-format checkpoints written here: load, round trip, refusals ---------------------------
# Our key -> the original's, written independently of official.py's tables (so the two check each other).
TO_OFFICIAL_VQVAE = (
    (r"^codebooks\.(\d+)\.embeddings$", r"bottleneck.level_blocks.\1.k"),
    (r"^decoders\.(\d+)\.output\.", r"decoders.\1.out."),
    (r"^(encoders|decoders)\.(\d+)\.blocks\.", r"\1.\2.level_blocks."),
)
TO_OFFICIAL_PRIOR = (
    (r"^transformer\.token_embedding\.", "prior.x_emb."),
    (r"^transformer\.lm_head\.", "prior.x_out."),
    (r"^transformer\.pos_embedding$", "prior.pos_emb.pos_emb"),
    (r"^transformer\.blocks\.", "prior.transformer._attn_mods."),
    (r"^lyric_encoder\.transformer\.start_token$", "prime_prior.start_token"),
    (r"^lyric_encoder\.transformer\.token_embedding\.", "prime_prior.x_emb."),
    (r"^lyric_encoder\.transformer\.pos_embedding$", "prime_prior.pos_emb.pos_emb"),
    (r"^lyric_encoder\.transformer\.blocks\.", "prime_prior.transformer._attn_mods."),
    (r"^lyric_encoder\.proj\.", "prime_state_proj."),
    (r"^lyric_encoder\.norm\.", "prime_state_ln."),
    (r"^lyric_encoder\.out\.", "prime_x_out."),
    (r"^labels\.artist_embedding\.", "y_emb.artist_emb.emb."),
    (r"^labels\.genre_embedding\.", "y_emb.bow_genre_emb.emb."),
    (r"^labels\.total_length_embedding\.", "y_emb.total_length_emb.emb."),
    (r"^labels\.absolute_position_embedding\.", "y_emb.absolute_pos_emb.emb."),
    (r"^labels\.relative_position_embedding\.", "y_emb.relative_pos_emb.emb."),
    (r"^conditioner\.token_embedding\.", "conditioner_blocks.0.x_emb."),
    (r"^conditioner\.decoder\.layers\.(\d+)\.0\.layers\.(\d+)\.layers\.", r"conditioner_blocks.0.cond.model.\1.0.blocks.\2.model."),
    (r"^conditioner\.decoder\.layers\.", "conditioner_blocks.0.cond.model."),
    (r"^conditioner\.norm\.", "conditioner_blocks.0.ln."),
)


def to_official(model, table, extra=()):
    out = collections.OrderedDict()
    for key, value in model.state_dict().items():
        for pattern, repl in table:
            if re.match(pattern, key):
                new = re.sub(pattern, repl, key)
                for a, b in extra:
                    new = new.replace(a, b)
                out[new] = value.clone()
                break
    return out


TINY_VQVAE = {**official.HPARAMS["vqvae"], "width": 16, "depth": 2, "l_bins": 256, "emb_width": 32}
_TINY = dict(n_ctx=64, prior_width=32, prior_depth=3, heads=2, attn_order=2, blocks=8, init_scale=1.0,
             y_bins=(10, 20), t_bins=16, max_bow_genre_size=2, n_vocab=80,
             l_bins=512, downs_t=(1, 1), strides_t=(2, 2), levels=2)  # the misleading VQ-VAE defaults in saved hps
TINY_PRIORS = {
    "upsampler": dict(_TINY, level=1, cond_width=24, cond_depth=3, cond_dilation_growth_rate=3,
                      cond_dilation_cycle=2, cond_res_scale=True, cond_c_res=1),
    "5b_lyrics-like": dict(_TINY, level=2, prior_depth=4, attn_order=6, merged_decoder=True, use_tokens=True,
                           n_tokens=16, prime_width=24, prime_depth=2, prime_heads=2, prime_attn_order=2,
                           prime_blocks=4, prime_init_scale=0.7, min_duration=0.5, max_duration=10.0,
                           fp16_params=True),
    "1b_lyrics-like": dict(_TINY, level=2, n_ctx=48, prior_width=16, prior_depth=16, attn_order=12,
                           single_enc_dec=True, use_tokens=True, n_tokens=16, n_vocab=79, labels_v3=True,
                           y_bins=(12, 30), max_bow_genre_size=1, min_duration=0.5, max_duration=10.0),
}


@torch.no_grad()
def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():  # every value random: zero-inits and LayerNorm ones could hide a bad mapping
        p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def official_file(path, model_sd, hps, fmt):  # the original saved its hps as a plain dict
    save({"hps": dict(hps), "model": model_sd, "opt": None, "step": 3}, path, fmt)


def inputs(config, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, config.codebook_size, (2, config.n_ctx), generator=g)
    upper = None if config.is_top else torch.randint(0, config.codebook_size, (2, config.n_ctx // 4), generator=g)
    sr = config.sample_rate
    y = torch.tensor([[int(5 * sr), int(1.5 * sr) + 7, config.sample_length, 3, 1, -1][: config.n_labels],
                      [int(8 * sr), 11, config.sample_length, 19, 2, 0][: config.n_labels]])
    lyrics = torch.randint(0, config.lyric_vocab, (2, config.y_length - config.n_labels), generator=g)
    return tokens, torch.cat([y, lyrics], 1), upper


@pytest.mark.parametrize("name,fmt", [("upsampler", "legacy"), ("5b_lyrics-like", "zip"), ("1b_lyrics-like", "legacy")])
def test_official_prior_file_round_trip(tmp_path, monkeypatch, name, fmt):
    import prior
    monkeypatch.setitem(official.HPARAMS, "vqvae", TINY_VQVAE)  # the VQ-VAE these priors pair with
    hp = TINY_PRIORS[name]
    config = official.prior_config(hp, TINY_VQVAE)
    assert config.codebook_size == 256 and config.hop_lengths == (8, 32, 128)  # from the VQ-VAE, not hps
    model = prior.Prior(config).eval()
    randomize(model)
    sd = to_official(model, TO_OFFICIAL_PRIOR)
    if hp.get("fp16_params"):  # jukebox: the 5b files keep Conv1D w in float16
        sd = collections.OrderedDict((k, v.half() if k.endswith(".w") else v) for k, v in sd.items())
        with torch.no_grad():
            for k, p in model.named_parameters():
                if k.endswith(".w"):
                    p.copy_(p.half().float())
    path = tmp_path / "prior_level_2.pth.tar"
    official_file(path, sd, hp, fmt)
    loaded = official.load_prior(path, hp)
    assert loaded.config == config and not loaded.training
    ours = model.state_dict()
    assert loaded.state_dict().keys() == ours.keys()
    assert all(torch.equal(loaded.state_dict()[k], ours[k]) for k in ours)
    if not config.merged_decoder:
        assert loaded.transformer.lm_head.weight is loaded.transformer.token_embedding.weight
    tokens, y, upper = inputs(config)
    want = official.forward(model, tokens, y, upper)
    assert want.shape == (2, config.seq_len, config.vocab_size)
    assert torch.equal(official.forward(loaded, tokens, y, upper), want)
    # half precision as the original's fp16_params: only the Conv1D weights inside transformer blocks
    in_blocks = {k for k in ours if re.match(r"^(lyric_encoder\.)?transformer\.blocks\.\d+\..*\.w$", k)}
    assert in_blocks and (config.lyrics != "encoder" or any(k.startswith("lyric_encoder") for k in in_blocks))
    for dtype in (torch.bfloat16, torch.float16):
        half = official.load_prior(path, hp, dtype=dtype)
        reference = official.load_prior(path, hp).half_blocks(dtype).state_dict()
        assert half.state_dict().keys() == reference.keys() and not half.training
        for k, v in half.state_dict().items():
            assert v.dtype == reference[k].dtype == (dtype if k in in_blocks else torch.float32), k
            assert torch.equal(v, reference[k]), k
        if not config.merged_decoder:
            assert half.transformer.lm_head.weight is half.transformer.token_embedding.weight
        logits = official.forward(half, tokens, y, upper)
        assert logits.shape == want.shape and torch.isfinite(logits).all()


def test_official_vqvae_file_round_trip(tmp_path):
    import vqvae
    config = official.vqvae_config(TINY_VQVAE)
    assert config == vqvae.preset("tiny")
    model = vqvae.VQVAE(config).eval()
    randomize(model, seed=1)
    with torch.no_grad():
        for codebook in model.codebooks:
            codebook.embeddings.normal_()
    path = tmp_path / "vqvae.pth.tar"
    sd = to_official(model, TO_OFFICIAL_VQVAE, extra=((".layers.", ".model."),))
    assert all(not k.startswith("codebooks") and "ema" not in k for k in sd)
    official_file(path, collections.OrderedDict(("module." + k, v) for k, v in sd.items()), TINY_VQVAE, "legacy")
    loaded = official.load_vqvae(path, TINY_VQVAE)
    for k, v in model.state_dict().items():
        if "ema" not in k and "initialized" not in k:
            assert torch.equal(loaded.state_dict()[k], v), k
    for codebook in loaded.codebooks:  # EMA state rebuilt from the codes, as the original's restore_k
        assert torch.equal(codebook.ema_sums, codebook.embeddings) and bool(codebook.initialized)
        assert torch.equal(codebook.ema_counts, torch.ones(config.codebook_size))
    audio = torch.randn(2, 512, 1)
    assert all(torch.equal(a, b) for a, b in zip(loaded.encode(audio), model.encode(audio)))


def test_file_that_does_not_fit_is_refused_with_the_keys(tmp_path, monkeypatch):
    import prior
    monkeypatch.setitem(official.HPARAMS, "vqvae", TINY_VQVAE)
    hp = TINY_PRIORS["upsampler"]
    model = prior.Prior(official.prior_config(hp, TINY_VQVAE))
    sd = to_official(model, TO_OFFICIAL_PRIOR)
    path = tmp_path / "p.pth.tar"

    def refused(state, *expected):
        official_file(path, state, hp, "zip")
        with pytest.raises(UserError) as err:
            official.load_prior(path, hp)
        assert "\n" not in str(err.value) and str(path) in str(err.value)
        for text in expected:
            assert text in str(err.value)

    refused({k: v for k, v in sd.items() if k != "prior.pos_emb.pos_emb"}, "1 missing", "transformer.pos_embedding")
    refused({**sd, "prior.extra.w": torch.zeros(1)}, "1 unexpected", "prior.extra.w")
    refused({**sd, "conditioner_blocks.0.ln.bias": torch.zeros(7)}, "1 wrong shape", "conditioner_blocks.0.ln.bias (7,)")
    other = prior.Prior(official.prior_config(TINY_PRIORS["5b_lyrics-like"], TINY_VQVAE))  # the wrong model
    with pytest.raises(UserError, match="missing.*unexpected"):
        official.map_state_dict(sd, other.state_dict(), official.prior_key, (), "upsampler file")
    save({"hps": {}, "weights": sd}, path, "zip")
    with pytest.raises(UserError, match="no 'model' state dict"):
        official.load_prior(path, hp)


def test_release_files_follow_the_download_layout(tmp_path):
    with pytest.raises(UserError, match="5b/vqvae.pth.tar: missing; download https://"):
        official.release_files(tmp_path, "1b_lyrics")
    for relative in ("5b/vqvae.pth.tar", "5b/prior_level_0.pth.tar", "5b/prior_level_1.pth.tar",
                     "1b_lyrics/prior_level_2.pth.tar"):
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    files = official.release_files(tmp_path, "1b_lyrics")
    assert files[2] == (str(tmp_path / "1b_lyrics/prior_level_2.pth.tar"), "1b_lyrics")
    assert [files[k][1] for k in ("vqvae", 0, 1)] == ["vqvae", "upsampler_level_0", "upsampler_level_1"]
    with pytest.raises(UserError, match="5b_lyrics/prior_level_2.pth.tar: missing"):
        official.release_files(tmp_path, "5b_lyrics")
    with pytest.raises(UserError, match="unknown released model"):
        official.release_files(tmp_path, "7b")
