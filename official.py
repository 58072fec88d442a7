"""Load OpenAI's released Jukebox checkpoints (the models of arXiv:2005.00341 §3-4, as released) into ours.

The one file that knows the original's names: its hyperparameters (`l_bins`, `prior_width`, `attn_order`, ...),
its attention-pattern numbers, and its state_dict keys (`prior.transformer._attn_mods.3.attn.c_attn.w`, ...).

Reading order:
  1. read_checkpoint: an allow-list unpickler; a `.pth.tar` never runs code from the file.
  2. HPARAMS, MODELS, ATTN_ORDER: the released hyperparameter sets, files and attention patterns.
  3. vqvae_config / prior_config: official hyperparameters -> our VQVAEConfig / PriorConfig.
  4. key renames and map_state_dict, then load_vqvae / load_prior, and forward() for parity checks.

A released file is a `torch.save` pickle of {'hps': dict, 'model': state_dict, 'opt': ..., 'step': int} (the
original's make_models.save_checkpoint), written by torch 1.4 in the legacy non-zip format; both formats load.
"""
import os
import re
import zipfile

import torch

from data import UserError
from prior import FACTORIZED, Prior, PriorConfig
from vqvae import VQVAE, VQVAEConfig


# ---- 1. Reading a checkpoint without running it -------------------------------------------------------------
# Unpickling calls whatever callables the file names, os.system included. torch's weights_only unpickler calls
# only an allow-list: tensor/storage rebuilds, plain containers and scalars, torch dtypes, devices and Size. We
# add the original's hyperparameter object, a dict subclass whose attributes are its items (pickled as its class
# name and its items): the name is answered with plain `dict`, so no code of the class exists here.
def read_checkpoint(path):
    """A `.pth.tar` (the original's or ours) read onto the CPU. UserError (one line naming the file) when it
    cannot be opened, is truncated or corrupt, or asks for anything but tensors and plain data."""
    try:
        with torch.serialization.safe_globals([(dict, "jukebox.hparams.Hyperparams")]):
            # zip files can be memory-mapped: the 5b priors are over 10 GB
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:  # not the file's fault
        raise UserError(f"{path}: cannot open checkpoint ({e.strerror}); check the path") from None
    except Exception as e:  # whatever a broken file makes torch raise, the user's fix is the same
        text = str(e)
    refused = re.search(r"GLOBAL (\S+)", text)  # the unpickler names the callable it would not call
    if refused:
        raise UserError(f"{path}: refusing to load: it asks for {refused[1]}, not plain data; use a trusted file")
    detail = next((line.split(". ")[0] for line in text.split("error:")[-1].splitlines() if line.strip()), "EOF")
    raise UserError(f"{path}: not a readable checkpoint (truncated or corrupt? {detail[:160]}); download it again")


# ---- 2. The released models: the original's hparams.py entries over its DEFAULTS, the keys we read ----
VQVAE_HPARAMS = dict(  # a dict of official hparams may leave keys out: they take these values
    sr=44100, levels=3, downs_t=(3, 2, 2), strides_t=(2, 2, 2),       # sample rate; hop lengths 8, 32, 128
    emb_width=64, l_bins=2048, l_mu=0.99, revival_threshold=1.0,      # code width, codebook size, EMA, restarts
    width=32, depth=4, hvqvae_multipliers=(2, 1, 1), dilation_growth_rate=3,  # level L: width * multiplier[L]
    vqvae_reverse_decoder_dilation=True, commit=0.02, loss_fn="lmix", lmix_l2=1.0, lmix_linf=0.02, linf_k=2048,
    multispectral=1.0, multispec_loss_n_fft=(2048, 1024, 512), multispec_loss_hop_length=(240, 120, 50),
    multispec_loss_window_size=(1200, 600, 240))
# jukebox: the codebook size and hop lengths are not among a prior's keys: the original takes them from the
# VQ-VAE object, and the `hps` saved with a prior hold the VQ-VAE *defaults* (l_bins 512, downs_t (1, 1)).
_PRIOR_DEFAULTS = dict(
    sr=44100, level=0, n_ctx=1024, prior_width=128, prior_depth=3, heads=1, attn_order=0, blocks=None,
    init_scale=1.0, merged_decoder=False, single_enc_dec=False,
    labels_v3=False, y_bins=0, t_bins=64, max_bow_genre_size=None, min_duration=None, max_duration=None,
    cond_width=128, cond_depth=3, cond_dilation_growth_rate=1, cond_dilation_cycle=None, cond_res_scale=False,
    use_tokens=False, n_tokens=0, n_vocab=0, prime_loss_fraction=0.1,           # lyrics, and their encoder:
    prime_width=128, prime_depth=3, prime_heads=1, prime_attn_order=0, prime_blocks=None, prime_init_scale=1.0)
_LABELS_V2 = dict(y_bins=(120, 4111), t_bins=128, max_bow_genre_size=5, n_vocab=80)  # (genres, artists)
_LABELS_V3 = dict(y_bins=(604, 7898), t_bins=64, max_bow_genre_size=1, n_vocab=79, labels_v3=True)
_UPSAMPLER = dict(_PRIOR_DEFAULTS, **_LABELS_V2, n_ctx=8192, prior_width=1920, prior_depth=72, attn_order=2,
                  blocks=128, init_scale=0.4, cond_width=1024, cond_depth=16, cond_dilation_growth_rate=3,
                  cond_dilation_cycle=8, prime_loss_fraction=0.0)
_TOP = dict(_PRIOR_DEFAULTS, **_LABELS_V2, level=2, n_ctx=8192, prior_width=4800, prior_depth=72, heads=8,
            attn_order=2, blocks=128, init_scale=0.1, min_duration=60.0, max_duration=600.0, merged_decoder=True,
            prime_loss_fraction=0.0)
HPARAMS = {"vqvae": VQVAE_HPARAMS, "upsampler_level_0": _UPSAMPLER, "5b": _TOP,
    "upsampler_level_1": {**_UPSAMPLER, "level": 1, "cond_res_scale": True},
    "5b_lyrics": {**_TOP, "prior_depth": 79, "attn_order": 10, "min_duration": 23.8, "use_tokens": True,
                  "n_tokens": 512, "prime_loss_fraction": 0.4, "prime_width": 1280, "prime_depth": 18,
                  "prime_heads": 4, "prime_attn_order": 2, "prime_blocks": 32, "prime_init_scale": 0.7},
    "1b_lyrics": {**_PRIOR_DEFAULTS, **_LABELS_V3, "level": 2, "n_ctx": 6144, "prior_width": 2048, "heads": 2,
                  "prior_depth": 72, "attn_order": 12, "blocks": 64, "init_scale": 0.2, "min_duration": 17.84,
                  "max_duration": 600.0, "use_tokens": True, "n_tokens": 384, "prime_loss_fraction": 0.4,
                  "single_enc_dec": True}}
_ALIASES = {"prior_5b": "5b", "prior_5b_lyrics": "5b_lyrics", "prior_1b_lyrics": "1b_lyrics"}  # its names
# The files of each released model under the download prefix, by level (the original's make_models.MODELS).
REMOTE_PREFIX = "https://openaipublic.azureedge.net/jukebox/models/"
MODELS = {name: {"vqvae": ("5b/vqvae.pth.tar", "vqvae"), 0: ("5b/prior_level_0.pth.tar", "upsampler_level_0"),
                 1: ("5b/prior_level_1.pth.tar", "upsampler_level_1"), 2: (f"{name}/prior_level_2.pth.tar", name)}
          for name in ("5b", "5b_lyrics", "1b_lyrics")}

# The original numbers its per-layer attention patterns (attn_order, its Transformer.__init__): layer d has the
# kind cycle[d % len(cycle)]. Orders 3, 4, 5 need a "summary" attention no released model has: not implemented.
ATTN_ORDER = {0: ("dense",), 1: ("row", "column"), 9: FACTORIZED + ("dense",),
    2: FACTORIZED,                                                  # upsamplers, 5b, the 5b_lyrics lyric encoder
    6: FACTORIZED + ("cross",), 7: FACTORIZED * 5 + ("cross",), 8: FACTORIZED * 3 + ("cross",),
    10: FACTORIZED * 3 + (FACTORIZED * 3 + ("cross",)) * 7,        # 5b_lyrics: cross at 18, 28, ..., 78
    # layer 15 of every 16 is special, chosen by d % 3: cross/prime at 15 and 31, dense at 47 (period 48)
    11: tuple(("cross", "cross", "dense")[d % 3] if d % 16 == 15 else FACTORIZED[d % 3] for d in range(48)),
    12: tuple(("prime", "prime", "dense")[d % 3] if d % 16 == 15 else FACTORIZED[d % 3] for d in range(48))}

# The values our modules implement (the original's defaults, and every release's); hparams with others are refused.
_IMPLEMENTED = dict(
    attn_order=tuple(ATTN_ORDER), prime_attn_order=tuple(ATTN_ORDER), m_attn=(0.25,), m_mlp=(1.0,),
    prime_m_attn=(0.25,), prime_m_mlp=(1.0,), spread=(None,), pos_init=(False,), prime_pos_init=(False,),
    res_scale=(False,), prime_res_scale=(False,), labels=(True,), copy_input=(False,), cond_m_conv=(1.0,),
    m_conv=(1.0,), dilation_cycle=(None,), use_bottleneck=(True,), lmix_l1=(0.0,), spectral=(0.0,),  # the VQ-VAE's
    loss_fn=("lmix", "l2"))


def layer_kinds(attn_order, depth):
    """The kind of each of `depth` layers for an official attn_order: layer_kinds(12, 72)[15] == "prime"."""
    return tuple(ATTN_ORDER[attn_order][d % len(ATTN_ORDER[attn_order])] for d in range(depth))


# ---- 3. Official hyperparameters -> our configs -----------------------------------------------------------
def _hparams(name_or_hparams, defaults, what):
    """A released set by name ('vqvae', '5b', 'prior_5b', ...), or a dict of official hparams over `defaults`."""
    name = _ALIASES.get(name_or_hparams, name_or_hparams) if isinstance(name_or_hparams, str) else None
    if name is not None and name not in HPARAMS:
        raise UserError(f"unknown official model {name_or_hparams!r}; choose one of {', '.join(HPARAMS)}")
    hp = {**defaults, **(HPARAMS[name] if name else name_or_hparams)}
    bad = [f"{k}={hp[k]!r}" for k, values in _IMPLEMENTED.items() if hp.get(k, values[0]) not in values]
    if bad:
        raise UserError(f"{what}: unsupported official hyperparameters {', '.join(bad)}; use the released values")
    return hp


def vqvae_config(hparams=None):
    """Official VQ-VAE hparams (a name or dict; missing keys = the released values) -> VQVAEConfig."""
    hp = _hparams(hparams or "vqvae", VQVAE_HPARAMS, "vqvae")
    lmix = hp["loss_fn"] == "lmix"  # else plain l2
    return VQVAEConfig(sample_rate=hp["sr"], downs=tuple(hp["downs_t"]), strides=tuple(hp["strides_t"]),
        codebook_size=hp["l_bins"], embedding_width=hp["emb_width"], width=hp["width"], depth=hp["depth"],
        level_multipliers=tuple(hp["hvqvae_multipliers"] or (1,) * len(hp["downs_t"])),
        dilation_growth=hp["dilation_growth_rate"], reverse_decoder_dilation=hp["vqvae_reverse_decoder_dilation"],
        ema_decay=hp["l_mu"], restart_threshold=hp["revival_threshold"], commit_weight=hp["commit"],
        l2_weight=hp["lmix_l2"] if lmix else 1.0, linf_weight=hp["lmix_linf"] if lmix else 0.0, linf_k=hp["linf_k"],
        multispectral_weight=hp["multispectral"], stft_n_fft=tuple(hp["multispec_loss_n_fft"]),
        stft_hop=tuple(hp["multispec_loss_hop_length"]), stft_window=tuple(hp["multispec_loss_window_size"]))


def prior_config(hparams, vqvae_hparams=None):
    """Official prior hparams (a released name, or a dict; missing keys = the original's defaults) and the
    VQ-VAE's (default: the released one, which every released prior uses) -> PriorConfig."""
    hp = _hparams(hparams, _PRIOR_DEFAULTS, "prior")
    vq = vqvae_config(vqvae_hparams)  # jukebox: codebook size and hops come from the VQ-VAE, not the prior's hps
    # 1b_lyrics puts lyrics and music in one sequence; 5b_lyrics reads a separate lyric encoder by cross-attention
    lyrics = "merged" if hp["single_enc_dec"] else "encoder" if hp["use_tokens"] and hp["n_tokens"] else "none"
    config = dict(
        level=hp["level"], n_ctx=hp["n_ctx"], codebook_size=vq.codebook_size, hop_lengths=vq.hop_lengths,
        width=hp["prior_width"], attention=layer_kinds(hp["attn_order"], hp["prior_depth"]), heads=hp["heads"],
        blocks=hp["blocks"], init_scale=hp["init_scale"], merged_decoder=bool(hp["merged_decoder"]),
        n_genres=hp["y_bins"][0], n_artists=hp["y_bins"][1], max_genres=hp["max_bow_genre_size"],
        label_version=3 if hp["labels_v3"] else 2, timing_bins=hp["t_bins"], sample_rate=hp["sr"],
        lyrics=lyrics, n_lyric_tokens=hp["n_tokens"] if lyrics != "none" else 0, lyric_vocab=hp["n_vocab"],
        prime_loss_fraction=hp["prime_loss_fraction"])
    if hp["level"] == vq.levels - 1:  # the top level has timing embeddings
        if hp["min_duration"] is None or hp["max_duration"] is None:
            raise UserError("prior: a top-level prior needs min_duration and max_duration (seconds); set both")
        config.update(min_duration=hp["min_duration"], max_duration=hp["max_duration"])
    else:                             # an upsampler has the Conditioner on the codes of the level above
        config.update(cond_width=hp["cond_width"], cond_depth=hp["cond_depth"],
                      cond_dilation_growth=hp["cond_dilation_growth_rate"], cond_res_scale=bool(hp["cond_res_scale"]),
                      cond_dilation_cycle=hp["cond_dilation_cycle"] or hp["cond_depth"])
    if lyrics == "encoder":
        config.update(encoder_width=hp["prime_width"], encoder_heads=hp["prime_heads"],
                      encoder_attention=layer_kinds(hp["prime_attn_order"], hp["prime_depth"]),
                      encoder_blocks=hp["prime_blocks"], encoder_init_scale=hp["prime_init_scale"])
    return PriorConfig(**config)


# ---- 4. State-dict keys, official -> ours, and the loaders -----------------------------------------------
# The first rule whose pattern matches a key renames it. Every key of the six released files maps onto one of ours
# of the same shape (tests/test_official.py checks them all). Conv1D keeps the official `w` (n_in, n_out), `b`.
VQVAE_RENAMES = (
    (r"^bottleneck\.level_blocks\.(\d+)\.k$", r"codebooks.\1.embeddings"),   # the only codebook tensor saved
    (r"^decoders\.(\d+)\.out\.", r"decoders.\1.output."),
    (r"^(encoders|decoders)\.(\d+)\.level_blocks\.(.*)$", r"\1.\2.blocks.\3"))  # and .model. -> .layers.
VQVAE_DERIVED = (r"^codebooks\.\d+\.(ema_sums|ema_counts|initialized)$",)  # rebuilt by restore_codebooks
PRIOR_RENAMES = (
    (r"^prior\.x_emb\.", "transformer.token_embedding."), (r"^prior\.pos_emb\.pos_emb$", "transformer.pos_embedding"),
    (r"^prior\.x_out\.", "transformer.lm_head."),      # tied to x_emb unless merged_decoder; saved twice
    (r"^prior\.transformer\._attn_mods\.", "transformer.blocks."),
    (r"^prime_prior\.start_token$", "lyric_encoder.transformer.start_token"),
    (r"^prime_prior\.x_emb\.", "lyric_encoder.transformer.token_embedding."),
    (r"^prime_prior\.pos_emb\.pos_emb$", "lyric_encoder.transformer.pos_embedding"),
    (r"^prime_prior\.transformer\._attn_mods\.", "lyric_encoder.transformer.blocks."),
    (r"^prime_state_proj\.", "lyric_encoder.proj."), (r"^prime_state_ln\.", "lyric_encoder.norm."),
    (r"^prime_x_out\.", "lyric_encoder.out."),
    (r"^y_emb\.artist_emb\.emb\.", "labels.artist_embedding."),
    (r"^y_emb\.bow_genre_emb\.emb\.", "labels.genre_embedding."),
    (r"^y_emb\.total_length_emb\.emb\.", "labels.total_length_embedding."),
    (r"^y_emb\.absolute_pos_emb\.emb\.", "labels.absolute_position_embedding."),
    (r"^y_emb\.relative_pos_emb\.emb\.", "labels.relative_position_embedding."),
    (r"^conditioner_blocks\.0\.x_emb\.", "conditioner.token_embedding."),
    # jukebox: the Conditioner's residual stacks are `.blocks.`, not `.model.`: checkpoint_res=1 made them ModuleLists
    (r"^conditioner_blocks\.0\.cond\.model\.(\d+)\.0\.blocks\.(\d+)\.model\.",
     r"conditioner.decoder.layers.\1.0.layers.\2.layers."),
    (r"^conditioner_blocks\.0\.cond\.model\.", "conditioner.decoder.layers."),
    (r"^conditioner_blocks\.0\.ln\.", "conditioner.norm."))


def prior_key(key, renames=PRIOR_RENAMES):
    """Our key for an official prior key (by default), or None if no rule knows it."""
    return next((re.sub(pattern, new, key) for pattern, new in renames if re.match(pattern, key)), None)


def vqvae_key(key):
    """Our key for an official VQ-VAE key, or None if no rule knows it."""
    key = prior_key(key, VQVAE_RENAMES)
    return key and key.replace(".model.", ".layers.")  # the original's nn.Sequential is named `model`


def map_state_dict(official, ours, rename, derived=(), source="checkpoint"):
    """{official key: tensor} -> {our key: that tensor}. Each official key must map to a distinct key of `ours` (our
    state_dict) of the same shape, covering all of ours but the `derived` patterns; else UserError naming them."""
    mapped, unexpected, wrong_shape = {}, [], []
    for key, value in official.items():
        key = key.removeprefix("module.")  # saved from a DistributedDataParallel wrapper
        target = rename(key)
        if target is None or target not in ours or target in mapped:
            unexpected.append(key if target not in mapped else f"{key} (a second {target})")
        elif value.shape != ours[target].shape:
            wrong_shape.append(f"{key} {tuple(value.shape)} vs ours {tuple(ours[target].shape)}")
        else:
            mapped[target] = value
    missing = [k for k in ours if k not in mapped and not any(re.match(p, k) for p in derived)]
    detail = "; ".join(f"{len(keys)} {what}: {', '.join(keys[:4])}{' ...' * (len(keys) > 4)}" for what, keys in
                       (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)) if keys)
    if detail:
        raise UserError(f"{source}: does not fit the model ({detail}); check the file belongs to this model")
    return mapped


def _load(model, path, rename, derived=()):
    """Fill `model` (on the meta device) from the official file, each tensor converted to the model's dtype in turn
    and the file's copy dropped: memory peaks near one copy of the weights. `derived` keys start as zeros."""
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise UserError(f"{path}: no 'model' state dict inside; expected an official Jukebox .pth.tar")
    ours = model.state_dict()
    mapped = map_state_dict(checkpoint.pop("model"), ours, rename, derived, str(path))  # the one reference left
    state = {key: mapped.pop(key).to(like.dtype) if key in mapped else torch.zeros(like.shape, dtype=like.dtype)
             for key, like in ours.items()}
    first_name = {}  # a Parameter -> the first of its names
    ties = [(name, first_name.setdefault(id(p), name)) for name, p in model.named_parameters(remove_duplicate=False)]
    model.load_state_dict(state, assign=True)
    for name, first in ties:  # assign=True gave each name its own Parameter: tie them again
        if name != first:
            module, _, attr = name.rpartition(".")
            setattr(model.get_submodule(module), attr, model.get_parameter(first))
    return model.eval()


def load_vqvae(path, hparams=None):
    """An official VQ-VAE file (5b/vqvae.pth.tar; hparams: a name or dict, default 'vqvae') -> VQVAE, eval, CPU."""
    with torch.device("meta"):
        model = VQVAE(vqvae_config(hparams))
    _load(model, path, vqvae_key, VQVAE_DERIVED)
    model.restore_codebooks()  # EMA sums and counts from the codebook, as the original's restore_k
    return model


def load_prior(path, name_or_hparams, dtype=torch.float32):
    """An official prior file -> our Prior in eval mode, on the CPU. name_or_hparams: a released name (HPARAMS,
    or the original's prior_* names) or a dict of official hparams. dtype float16 / bfloat16 gives half_blocks(dtype)
    (the original's fp16_params: blocks' Conv1D weights in dtype, the rest float32) with no float32 copy made."""
    with torch.device("meta"):
        model = Prior(prior_config(name_or_hparams))
    if dtype != torch.float32:
        model.half_blocks(dtype)  # on the empty model: sets the dtype each of the file's tensors is converted to
    return _load(model, path, prior_key)  # jukebox: the 5b files may hold Conv1D `w` in float16: converted alike


def release_files(directory, model):
    """Where one released model's files lie under `directory`, laid out like the download (MODELS):
    {"vqvae": (path, hparams name), 0: ..., 1: ..., 2: ...}. UserError naming the first missing file and its URL."""
    if model not in MODELS:
        raise UserError(f"unknown released model {model!r}; choose one of {', '.join(MODELS)}")
    files = {part: (os.path.join(directory, relative), name) for part, (relative, name) in MODELS[model].items()}
    for part, (path, _) in files.items():
        if not os.path.isfile(path):
            raise UserError(f"{path}: missing; download {REMOTE_PREFIX}{MODELS[model][part][0]} to that path")
    return files


@torch.no_grad()
def forward(prior, tokens, y, upper=None):
    """Teacher-forced logits as the original's preds, for parity checks: tokens (B, n_ctx) music codes, y
    (B, y_length) labels (prior.window_y), upper (B, n_ctx/4) the level above -> float32 (B, L, V); for 1b_lyrics
    L = n_tokens + n_ctx and V = n_vocab + l_bins (music ids shifted by n_vocab), else (B, n_ctx, l_bins)."""
    logits, _ = prior.sequence_logits(tokens, y, upper)
    return logits.float()
