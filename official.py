"""Load OpenAI's released Jukebox checkpoints (the models of arXiv:2005.00341 §3-4, as released) into ours.

This is the one file that knows the original's names: its hyperparameter names (`l_bins`, `prior_width`,
`attn_order`, ...) and its state_dict keys (`prior.transformer._attn_mods.3.attn.c_attn.w`, ...).

Reading order:
  1. read_checkpoint: a restricted unpickler; a `.pth.tar` never runs code from the file.
  2. HPARAMS: the released hyperparameter sets, by name, with the original's names.
  3. vqvae_config / prior_config: official hyperparameters -> our VQVAEConfig / PriorConfig.
  4. key mapping official <-> ours, load_vqvae / load_prior, and forward() for parity checks.

The released files are pickles written by `torch.save` holding {'hps': ..., 'model': state_dict, 'opt': ...,
'step': ...} (the original's make_models.save_checkpoint). They were made with torch 1.4, so presumably in the legacy non-zip
format; both formats load.

Shapes (forward): B batch, T music tokens of a window (n_ctx), L transformer sequence (T, or lyric tokens + T
for 1b_lyrics), V vocabulary (codebook size, or lyric characters + codebook size for 1b_lyrics).
"""
import _compat_pickle
import os
import pickle
import re
import zipfile

import torch


class CheckpointError(ValueError):
    """A checkpoint file the user pointed us at is unsafe, unreadable, or does not fit the model.
    The message is one line naming the file and what to do; CLIs print it and exit with code 2."""


# ----------------------------------------------------------------------------------------------------------
# 1. Safe reading
#
# torch.load(weights_only=True) is tried first. It refuses any class it does not know, and the original's
# files may hold some (e.g. a hyperparameter object under 'hps'). For those we unpickle again with a
# restricted Unpickler: tensors, storages and plain containers are rebuilt; any other class becomes an
# inert ForeignObject that records its arguments and state but runs no code of its own; names that could
# execute code (os.system, builtins.eval, subprocess.*, ...) are refused outright. Nothing is ever imported
# on behalf of the file.
# ----------------------------------------------------------------------------------------------------------

class ForeignObject(dict):
    """Stand-in for an object of a class we do not have. Never calls the real class. A dict subclass so that
    pickled dict subclasses (like the original's Hyperparams) keep their items; other payloads are kept in
    `.args`, `.kwargs`, `.state` and `.list_items`."""
    foreign_module = ""
    foreign_name = ""

    def __new__(cls, *args, **kwargs):  # called by the REDUCE and NEWOBJ opcodes
        obj = dict.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.list_items = args, kwargs, None, []
        return obj

    def __init__(self, *args, **kwargs):  # do not let dict.__init__ interpret the pickled arguments
        pass

    def __setstate__(self, state):  # BUILD opcode
        self.state = state

    def append(self, item):  # APPEND(S) opcodes for pickled list subclasses
        self.list_items.append(item)

    def extend(self, items):
        self.list_items.extend(items)

    def __reduce__(self):  # never let a placeholder be re-pickled as if it were the real thing
        raise TypeError(f"cannot pickle a placeholder for {self.foreign_module}.{self.foreign_name}")

    def __repr__(self):
        return f"<foreign {self.foreign_module}.{self.foreign_name}: {dict.__repr__(self)}>"


_FOREIGN_CLASSES = {}


def _foreign_class(module, name):
    key = (module, name)
    if key not in _FOREIGN_CLASSES:
        _FOREIGN_CLASSES[key] = type(str(name), (ForeignObject,),
                                     {"foreign_module": module, "foreign_name": name, "__module__": __name__})
    return _FOREIGN_CLASSES[key]


def _safe_reconstructor(cls, base, state):
    # Protocol 0/1 pickles of dict/list subclasses use copyreg._reconstructor(cls, base, state); the real one
    # calls base.__new__(cls, state). Only placeholders and allow-listed plain types get here.
    if isinstance(cls, type) and issubclass(cls, ForeignObject):
        return cls(base, state)
    if cls in (dict, list, set, frozenset, tuple) or cls is _ALLOWED[("collections", "OrderedDict")]:
        return cls() if state is None else cls(state)
    raise _Refused(f"copyreg._reconstructor of {cls!r}")


class _Refused(pickle.UnpicklingError):
    pass


_ALLOWED = {
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    **{("builtins", n): getattr(__import__("builtins"), n)
       for n in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str",
                 "bytes", "bytearray", "slice", "range", "object")},
    **{("torch", n): getattr(torch, n)
       for n in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8",
                 "bool")},
}

# Top-level modules whose names are refused with an error instead of a placeholder: these are how a pickle
# runs a command or imports code. (A placeholder would be inert too; refusing says clearly what the file is.)
_DENIED_MODULES = {
    "os", "posix", "nt", "sys", "subprocess", "shutil", "builtins", "__builtin__", "importlib", "imp",
    "pickle", "_pickle", "cPickle", "marshal", "runpy", "code", "codeop", "types", "ctypes", "socket", "io",
    "_io", "functools", "operator", "pty", "platform", "webbrowser", "signal", "tempfile", "pathlib", "glob",
    "threading", "multiprocessing", "asyncio", "urllib", "http", "ftplib", "smtplib", "inspect", "pdb",
    "bdb", "copyreg", "timeit", "trace", "cProfile", "profile", "pydoc", "zipimport", "torch", "numpy",
    "dill", "joblib", "site", "sysconfig", "distutils", "setuptools", "pip", "ensurepip", "venv",
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        # Protocol-2 pickles (torch.save's default) store python-2 names, e.g. subprocess.call is written as
        # commands.call; translate them the way pickle itself would before judging them.
        py3 = _compat_pickle.NAME_MAPPING.get((module, name))
        py3_module, py3_name = py3 if py3 else (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
        if (py3_module, py3_name) in _ALLOWED:
            return _ALLOWED[(py3_module, py3_name)]
        if ({module.split(".")[0], py3_module.split(".")[0]} & _DENIED_MODULES
                or "__" in name or not name.isidentifier()):
            raise _Refused(f"{py3_module}.{py3_name}")
        return _foreign_class(py3_module, py3_name)


class _RestrictedPickleModule:
    """What torch.load needs from a `pickle_module`: Unpickler, load (and the error type)."""
    __name__ = "jukebox_restricted_pickle"
    Unpickler = _RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file, **kwargs):
        return _RestrictedUnpickler(file, **kwargs).load()


def read_checkpoint(path):
    """Read a `.pth.tar` (the original's or ours) onto the CPU without running code from it.
    Raises CheckpointError (one line) for unsafe, truncated or unreadable files."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot open checkpoint ({e.strerror}); check the path") from None
    mmap = zipfile.is_zipfile(path)  # new-format files can be memory-mapped (the 5b priors are >10 GB)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001  (an unknown class, or a broken file: decided below)
        first_error = e
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap,
                          pickle_module=_RestrictedPickleModule)
    except _Refused as e:
        raise CheckpointError(
            f"{path}: refusing to load: the pickle asks for {e.args[0]}, which could run code; "
            f"only use checkpoints from a source you trust") from None
    except Exception as e:  # noqa: BLE001
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(first_error, pickle.UnpicklingError) and "Unsupported" not in str(first_error):
            detail = str(first_error).strip().splitlines()[0]
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt? {detail[:160]}); "
                              f"download it again") from None


# ----------------------------------------------------------------------------------------------------------
# 2. The released hyperparameter sets, with the original's names (the original's hparams.py; values are the
#    original's registry entries resolved over its defaults, restricted to what shapes the models).
# ----------------------------------------------------------------------------------------------------------

VQVAE_HPARAMS = dict(
    sr=44100,                        # sample rate (Hz)
    levels=3, downs_t=(3, 2, 2), strides_t=(2, 2, 2),   # hop lengths 8, 32, 128
    emb_width=64, l_bins=2048, l_mu=0.99,               # code dim, codebook size, codebook EMA decay
    width=32, depth=4, m_conv=1.0, hvqvae_multipliers=(2, 1, 1),   # level L: width*mult[L], depth*mult[L]
    dilation_growth_rate=3, dilation_cycle=None, vqvae_reverse_decoder_dilation=True,
    commit=0.02, spectral=0.0, multispectral=1.0,
    loss_fn="lmix", lmix_l1=0.0, lmix_l2=1.0, lmix_linf=0.02, linf_k=2048,
    multispec_loss_n_fft=(2048, 1024, 512), multispec_loss_hop_length=(240, 120, 50),
    multispec_loss_window_size=(1200, 600, 240),
    revival_threshold=1.0, use_bottleneck=True,
)

# The original's defaults for every prior (its DEFAULTS "prior", "prior_attn_block", "cond_conv_block",
# "prime_attn_block", ...), so each released set below is complete on its own. The codebook size and the
# hop lengths are not among them: the original takes those from the VQ-VAE object (make_prior), and the
# `hps` saved with a prior hold the VQ-VAE *defaults* (l_bins 512, downs_t (1, 1)), not the real values.
_PRIOR_DEFAULTS = dict(
    sr=44100, level=0, n_ctx=1024, prior_width=128, prior_depth=3, heads=1, attn_order=0, blocks=None, spread=None,
    attn_dropout=0.0, resid_dropout=0.0, emb_dropout=0.0, zero_out=False, res_scale=False, pos_init=False,
    init_scale=1.0, m_attn=0.25, m_mlp=1.0, c_res=0, c_attn=0, c_mlp=0,
    labels=True, labels_v3=False, y_bins=0, t_bins=64, max_bow_genre_size=None,
    min_duration=None, max_duration=None,
    merged_decoder=False, single_enc_dec=False, copy_input=False,
    cond_width=128, cond_depth=3, cond_m_conv=1.0, cond_zero_out=False, cond_res_scale=False,
    cond_dilation_growth_rate=1, cond_dilation_cycle=None, cond_c_res=0,
    use_tokens=False, n_tokens=0, n_vocab=0, prime_loss_fraction=0.1,
    prime_width=128, prime_depth=3, prime_heads=1, prime_attn_order=0, prime_blocks=None, prime_spread=None,
    prime_attn_dropout=0.0, prime_resid_dropout=0.0, prime_emb_dropout=0.0, prime_zero_out=False,
    prime_res_scale=False, prime_pos_init=False, prime_init_scale=1.0, prime_m_attn=0.25, prime_m_mlp=1.0,
    prime_c_res=0, prime_c_attn=0, prime_c_mlp=0,
    fp16_params=False, alignment_layer=None, alignment_head=None,
)
_LABELS_V2 = dict(y_bins=(120, 4111), t_bins=128, max_bow_genre_size=5, n_vocab=80)
_LABELS_V3 = dict(y_bins=(604, 7898), t_bins=64, max_bow_genre_size=1, n_vocab=79, labels_v3=True)
_UPSAMPLER = dict(
    n_ctx=8192, prior_width=1920, prior_depth=72, heads=1, attn_order=2, blocks=128, init_scale=0.4, c_res=1,
    cond_width=1024, cond_depth=16, cond_dilation_growth_rate=3, cond_dilation_cycle=8, cond_c_res=1,
    use_tokens=False, prime_loss_fraction=0.0, fp16_params=False,
)

HPARAMS = {
    "vqvae": VQVAE_HPARAMS,
    "upsampler_level_0": {**_PRIOR_DEFAULTS, **_LABELS_V2, **_UPSAMPLER, "level": 0},
    "upsampler_level_1": {**_PRIOR_DEFAULTS, **_LABELS_V2, **_UPSAMPLER, "level": 1, "cond_res_scale": True},
    "5b": {**_PRIOR_DEFAULTS, **_LABELS_V2,
           "level": 2, "n_ctx": 8192, "prior_width": 4800, "prior_depth": 72, "heads": 8, "attn_order": 2,
           "blocks": 128, "init_scale": 0.1, "c_res": 1, "min_duration": 60.0, "max_duration": 600.0,
           "use_tokens": False, "n_tokens": 0, "prime_loss_fraction": 0.0, "merged_decoder": True,
           "fp16_params": True},
    "5b_lyrics": {**_PRIOR_DEFAULTS, **_LABELS_V2,
                  "level": 2, "n_ctx": 8192, "prior_width": 4800, "prior_depth": 79, "heads": 8,
                  "attn_order": 10, "blocks": 128, "init_scale": 0.1, "c_res": 1,
                  "prime_width": 1280, "prime_depth": 18, "prime_heads": 4, "prime_attn_order": 2,
                  "prime_blocks": 32, "prime_init_scale": 0.7, "prime_c_res": 1,
                  "min_duration": 23.8, "max_duration": 600.0, "use_tokens": True, "n_tokens": 512,
                  "prime_loss_fraction": 0.4, "merged_decoder": True, "fp16_params": True,
                  "alignment_layer": 68, "alignment_head": 2},
    "1b_lyrics": {**_PRIOR_DEFAULTS, **_LABELS_V3,
                  "level": 2, "n_ctx": 6144, "prior_width": 2048, "prior_depth": 72, "heads": 2,
                  "attn_order": 12, "blocks": 64, "init_scale": 0.2, "c_res": 1,
                  "min_duration": 17.84, "max_duration": 600.0, "use_tokens": True, "n_tokens": 384,
                  "prime_loss_fraction": 0.4, "single_enc_dec": True, "fp16_params": False,
                  "alignment_layer": 63, "alignment_head": 0},
}
_ALIASES = {"prior_5b": "5b", "prior_5b_lyrics": "5b_lyrics", "prior_1b_lyrics": "1b_lyrics"}

# Which files make up each released model, by level, as laid out under the download prefix (the original's make_models.MODELS).
REMOTE_PREFIX = "https://openaipublic.azureedge.net/jukebox/models/"
MODELS = {
    name: {"vqvae": ("5b/vqvae.pth.tar", "vqvae"),
           0: ("5b/prior_level_0.pth.tar", "upsampler_level_0"),
           1: ("5b/prior_level_1.pth.tar", "upsampler_level_1"),
           2: (f"{name}/prior_level_2.pth.tar", name)}
    for name in ("5b", "5b_lyrics", "1b_lyrics")
}


# The original's attn_order numbers name the per-layer attention kinds (its Transformer.__init__).
# Each official hparam `attn_order` (the keys; for loading official configs only) names a cycle of kinds
# that the layers repeat: layer d has kind cycle[d % len(cycle)]. The orders 3, 4, 5 use "summary" kinds
# that no released model has and are left out.
FACTORIZED = ("row", "column", "prev_row")


def _with(cycle, replaced):
    """cycle with some layers replaced: _with(FACTORIZED * 2, {5: "dense"}) ends in "dense"."""
    return tuple(replaced.get(d, kind) for d, kind in enumerate(cycle))


ATTN_ORDER = {
    0: ("dense",),
    1: ("row", "column"),
    2: FACTORIZED,                                                    # upsamplers, 5b, 5b_lyrics' lyric encoder
    6: FACTORIZED + ("cross",),
    7: FACTORIZED * 5 + ("cross",),
    8: FACTORIZED * 3 + ("cross",),
    9: FACTORIZED + ("dense",),
    10: FACTORIZED * 3 + (FACTORIZED * 3 + ("cross",)) * 7,           # 5b_lyrics: cross at 18, 28, ..., 78
    11: _with(FACTORIZED * 16, {15: "cross", 31: "cross", 47: "dense"}),
    12: _with(FACTORIZED * 16, {15: "prime", 31: "prime", 47: "dense"}),  # 1b_lyrics: prime at 15, 31, 63
}


def layer_kinds(attn_order, depth):
    """Kind of each of `depth` layers for an official attn_order: layer_kinds(12, 72)[15] == "prime"."""
    cycle = ATTN_ORDER[attn_order]
    return tuple(cycle[d % len(cycle)] for d in range(depth))


def official_hparams(name_or_hparams):
    """A released set by name ('vqvae', 'upsampler_level_0', '5b', 'prior_5b', ...) as a fresh dict, or a
    dict of official hparams passed through (missing prior keys take the original's defaults)."""
    if isinstance(name_or_hparams, str):
        name = _ALIASES.get(name_or_hparams, name_or_hparams)
        if name not in HPARAMS:
            raise CheckpointError(f"unknown official model {name_or_hparams!r}; "
                                  f"choose one of {', '.join(HPARAMS)}")
        return dict(HPARAMS[name])
    return dict(name_or_hparams)


# ----------------------------------------------------------------------------------------------------------
# 3. Official hyperparameters -> our configs
# ----------------------------------------------------------------------------------------------------------

def _unsupported(hp, allowed, what):
    """Refuse official settings that change the network in a way our modules do not implement."""
    bad = [f"{k}={hp[k]!r}" for k, ok in allowed.items() if k in hp and hp[k] not in ok]
    if bad:
        raise CheckpointError(f"{what}: unsupported official hyperparameters {', '.join(bad)} "
                              f"(only the released models' values are implemented)")


def vqvae_config(hparams=None):
    """Official VQ-VAE hparams (a name or dict; missing keys = the released values) -> vqvae.VQVAEConfig."""
    from vqvae import VQVAEConfig
    hp = {**VQVAE_HPARAMS, **official_hparams(hparams or "vqvae")}
    _unsupported(hp, {"m_conv": (1.0,), "dilation_cycle": (None,), "use_bottleneck": (True,),
                      "loss_fn": ("lmix", "l2"), "lmix_l1": (0.0, 0)}, "vqvae")
    if hp["levels"] != len(hp["downs_t"]):
        raise CheckpointError(f"vqvae: levels={hp['levels']} but downs_t has {len(hp['downs_t'])} entries")
    return VQVAEConfig(
        sample_rate=hp["sr"], downs=tuple(hp["downs_t"]), strides=tuple(hp["strides_t"]),
        codebook_size=hp["l_bins"], embedding_width=hp["emb_width"], width=hp["width"], depth=hp["depth"],
        level_multipliers=tuple(hp["hvqvae_multipliers"] or (1,) * hp["levels"]),
        dilation_growth=hp["dilation_growth_rate"], reverse_decoder_dilation=hp["vqvae_reverse_decoder_dilation"],
        ema_decay=hp["l_mu"], restart_threshold=hp["revival_threshold"], commit_weight=hp["commit"],
        l2_weight=hp["lmix_l2"] if hp["loss_fn"] == "lmix" else 1.0,
        linf_weight=hp["lmix_linf"] if hp["loss_fn"] == "lmix" else 0.0, linf_k=hp["linf_k"],
        multispectral_weight=hp["multispectral"], stft_n_fft=tuple(hp["multispec_loss_n_fft"]),
        stft_hop=tuple(hp["multispec_loss_hop_length"]), stft_window=tuple(hp["multispec_loss_window_size"]),
    )


def prior_config(hparams, vqvae_hparams=None):
    """Official prior hparams (a released name, or a dict; missing keys = the original's defaults) and the
    VQ-VAE's (default: the released one, which every released prior uses) -> prior.PriorConfig."""
    from prior import PriorConfig
    hp = {**_PRIOR_DEFAULTS, **official_hparams(hparams)}
    # jukebox: codebook size and hops come from the VQ-VAE, whatever the prior's own hps say
    vq = vqvae_config(vqvae_hparams)
    _unsupported(hp, {"m_attn": (0.25,), "m_mlp": (1.0, 1), "spread": (None,), "pos_init": (False,),
                      "res_scale": (False,), "labels": (True,), "copy_input": (False,), "cond_m_conv": (1.0, 1),
                      "prime_m_attn": (0.25,), "prime_m_mlp": (1.0, 1), "prime_pos_init": (False,),
                      "prime_res_scale": (False,)}, "prior")
    top = hp["level"] == vq.levels - 1
    if hp["single_enc_dec"]:
        lyrics = "merged"          # 1b_lyrics: lyrics and music in one sequence
    elif hp["use_tokens"] and hp["n_tokens"]:
        lyrics = "encoder"         # 5b_lyrics: a separate lyric encoder, read by cross-attention
    else:
        lyrics = "none"
    cfg = dict(
        level=hp["level"], n_ctx=hp["n_ctx"], codebook_size=vq.codebook_size, hop_lengths=vq.hop_lengths,
        width=hp["prior_width"], attention=layer_kinds(hp["attn_order"], hp["prior_depth"]), heads=hp["heads"],
        blocks=hp["blocks"], init_scale=hp["init_scale"], merged_decoder=bool(hp["merged_decoder"]),
        n_genres=hp["y_bins"][0], n_artists=hp["y_bins"][1], max_genres=hp["max_bow_genre_size"],
        label_version=3 if hp["labels_v3"] else 2, timing_bins=hp["t_bins"], sample_rate=hp["sr"],
        lyrics=lyrics, n_lyric_tokens=hp["n_tokens"] if lyrics != "none" else 0, lyric_vocab=hp["n_vocab"],
        prime_loss_fraction=hp["prime_loss_fraction"],
    )
    if top:  # timing embeddings: only the top level has them
        if hp["min_duration"] is None or hp["max_duration"] is None:
            raise CheckpointError("prior: a top-level prior needs min_duration and max_duration (seconds)")
        cfg.update(min_duration=hp["min_duration"], max_duration=hp["max_duration"])
    else:    # the Conditioner on the codes of the level above
        cfg.update(cond_width=hp["cond_width"], cond_depth=hp["cond_depth"],
                   cond_dilation_growth=hp["cond_dilation_growth_rate"],
                   cond_dilation_cycle=hp["cond_dilation_cycle"] or hp["cond_depth"],
                   cond_res_scale=bool(hp["cond_res_scale"]))
    if lyrics == "encoder":
        cfg.update(encoder_width=hp["prime_width"],
                   encoder_attention=layer_kinds(hp["prime_attn_order"], hp["prime_depth"]),
                   encoder_heads=hp["prime_heads"],
                   encoder_blocks=hp["prime_blocks"], encoder_init_scale=hp["prime_init_scale"])
    return PriorConfig(**cfg)


# ----------------------------------------------------------------------------------------------------------
# 4. State-dict keys: official -> ours, and the loaders
#
# Each table is applied in order with re.sub; the first rule whose pattern matches a key renames it. Every
# key of the six released files maps onto exactly one of our keys with the same shape (tests/test_official.py
# checks this against tests/data/official_state_dict_keys.tsv). Conv1D keeps its official `w` (n_in, n_out) / `b`.
# ----------------------------------------------------------------------------------------------------------

VQVAE_RENAMES = (
    (r"^bottleneck\.level_blocks\.(\d+)\.k$", r"codebooks.\1.embeddings"),   # the only codebook tensor saved
    (r"^decoders\.(\d+)\.out\.", r"decoders.\1.output."),
    (r"^(encoders|decoders)\.(\d+)\.level_blocks\.(.*)$", r"\1.\2.blocks.\3"),  # then .model. -> .layers. below
)
# Our codebooks' EMA state is not in the official files; VQVAE.restore_codebooks rebuilds it from `k`.
VQVAE_DERIVED = (r"^codebooks\.\d+\.(ema_sums|ema_counts|initialized)$",)

PRIOR_RENAMES = (
    (r"^prior\.x_emb\.", "transformer.token_embedding."),
    (r"^prior\.x_out\.", "transformer.lm_head."),      # tied to x_emb unless merged_decoder; saved twice
    (r"^prior\.pos_emb\.pos_emb$", "transformer.pos_embedding"),
    (r"^prior\.transformer\._attn_mods\.", "transformer.blocks."),
    (r"^prime_prior\.start_token$", "lyric_encoder.transformer.start_token"),
    (r"^prime_prior\.x_emb\.", "lyric_encoder.transformer.token_embedding."),
    (r"^prime_prior\.pos_emb\.pos_emb$", "lyric_encoder.transformer.pos_embedding"),
    (r"^prime_prior\.transformer\._attn_mods\.", "lyric_encoder.transformer.blocks."),
    (r"^prime_state_proj\.", "lyric_encoder.proj."),
    (r"^prime_state_ln\.", "lyric_encoder.norm."),
    (r"^prime_x_out\.", "lyric_encoder.out."),
    (r"^y_emb\.artist_emb\.emb\.", "labels.artist_embedding."),
    (r"^y_emb\.bow_genre_emb\.emb\.", "labels.genre_embedding."),
    (r"^y_emb\.total_length_emb\.emb\.", "labels.total_length_embedding."),
    (r"^y_emb\.absolute_pos_emb\.emb\.", "labels.absolute_position_embedding."),
    (r"^y_emb\.relative_pos_emb\.emb\.", "labels.relative_position_embedding."),
    (r"^conditioner_blocks\.0\.x_emb\.", "conditioner.token_embedding."),
    (r"^conditioner_blocks\.0\.cond\.model\.0\.", "conditioner.convs.0."),
    # jukebox: the conditioner's residual stacks are named `.blocks.` (not `.model.`): the original built
    # them with checkpoint_res=1, which swaps its Sequential for a ModuleList.
    (r"^conditioner_blocks\.0\.cond\.model\.(\d+)\.0\.blocks\.(\d+)\.model\.1\.",
     r"conditioner.convs.\1.resnet.\2.conv_dilated."),
    (r"^conditioner_blocks\.0\.cond\.model\.(\d+)\.0\.blocks\.(\d+)\.model\.3\.",
     r"conditioner.convs.\1.resnet.\2.conv_1x1."),
    (r"^conditioner_blocks\.0\.cond\.model\.(\d+)\.1\.", r"conditioner.convs.\1.upsample."),
    (r"^conditioner_blocks\.0\.ln\.", "conditioner.norm."),
)


def _rename(key, renames, then=()):
    for pattern, replacement in renames:
        if re.match(pattern, key):
            key = re.sub(pattern, replacement, key)
            for old, new in then:
                key = key.replace(old, new)
            return key
    return None


def vqvae_key(key):
    """Our key for an official VQ-VAE key, or None if no rule knows it."""
    return _rename(key, VQVAE_RENAMES, then=((".model.", ".layers."),))


def prior_key(key):
    """Our key for an official prior key, or None if no rule knows it."""
    return _rename(key, PRIOR_RENAMES)


def _shape(value):  # a tensor, or a shape tuple as in state_dict_keys.tsv
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def map_state_dict(official, ours, rename, derived=(), source="checkpoint"):
    """Rename an official state dict onto our keys and check it covers `ours` exactly.

    official: {key: tensor or shape}; ours: {key: tensor or shape} of our model (its state_dict).
    Returns {our key: official value}. Every official key must map to a distinct key of ours with the
    same shape, and every key of ours must be covered, except those matching a `derived` pattern.
    Raises CheckpointError listing the offending keys.
    """
    mapped, unexpected, wrong_shape, sources = {}, [], [], {}
    for key, value in official.items():
        key = key[len("module."):] if key.startswith("module.") else key  # DDP-wrapped saves
        target = rename(key)
        if target is None or target not in ours or target in mapped:
            unexpected.append(key + (f" (-> {target}, already from {sources[target]})" if target in mapped else ""))
            continue
        if _shape(value) != _shape(ours[target]):
            wrong_shape.append(f"{key} {_shape(value)} vs ours {_shape(ours[target])}")
            continue
        mapped[target], sources[target] = value, key
    missing = [k for k in ours if k not in mapped and not any(re.match(p, k) for p in derived)]
    problems = [(what, keys) for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)) if keys]
    if problems:
        detail = "; ".join(f"{len(keys)} {what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                           for what, keys in problems)
        raise CheckpointError(f"{source}: does not fit the model ({detail}); "
                              f"check the file belongs to this model / hyperparameters")
    return mapped


def _official_state_dict(path):
    checkpoint = read_checkpoint(path)
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: no 'model' state dict inside; expected an official Jukebox .pth.tar")
    return state


def _load_into(model, mapped, dtype, path):
    """Put the mapped tensors into `model` (built on the meta device), keeping tied parameters tied."""
    ties = {}  # our key -> first key holding the same Parameter
    first = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        ties[name] = first.setdefault(id(p), name)
    state = {}
    for key in list(mapped):  # convert one tensor at a time, dropping the file's copy as we go (peak memory)
        value = mapped.pop(key)
        state[key] = value.to(dtype) if value.is_floating_point() else value
    model.load_state_dict(state, strict=False, assign=True)
    for name, owner in ties.items():  # assign=True gave each name its own Parameter: tie them again
        if name != owner:
            module_name, _, attr = name.rpartition(".")
            owner_module, _, owner_attr = owner.rpartition(".")
            setattr(model.get_submodule(module_name), attr, getattr(model.get_submodule(owner_module), owner_attr))
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{path}: nothing to load for {', '.join(left[:4])}; the file does not fit the model")
    return model


def load_vqvae(path, hparams=None):
    """An official VQ-VAE file (e.g. 5b/vqvae.pth.tar) -> our VQVAE in eval mode, float32, on the CPU.
    hparams: a name or dict of official hyperparameters (default: the released 'vqvae')."""
    from vqvae import VQVAE
    config = vqvae_config(hparams)
    with torch.device("meta"):
        model = VQVAE(config)
    mapped = map_state_dict(_official_state_dict(path), model.state_dict(), vqvae_key, VQVAE_DERIVED, str(path))
    for name, buffer in list(model.named_buffers()):  # the derived codebook state: zeros, then restore
        if name not in mapped:
            mapped[name] = torch.zeros(buffer.shape, dtype=buffer.dtype)
    _load_into(model, mapped, torch.float32, path)
    model.restore_codebooks()  # EMA sums/counts from the codebook, as the original's restore_k
    return model.eval()


def load_prior(path, name_or_hparams, dtype=torch.float32, vqvae_hparams=None):
    """An official prior file -> our Prior in eval mode, on the CPU.

    name_or_hparams: 'upsampler_level_0', 'upsampler_level_1', '5b', '5b_lyrics', '1b_lyrics' (or the
    original's prior_* names), or a dict of official hyperparameters; vqvae_hparams: the VQ-VAE's (default:
    the released one). dtype: float32 (default), or
    bfloat16 / float16 to halve the memory of the big priors. The model is built on the meta device and
    takes the file's tensors (converted to dtype), so memory is about one copy of the weights. (jukebox: the
    5b files may hold their Conv1D `w` in float16; they are converted like everything else.)
    """
    from prior import Prior
    config = prior_config(name_or_hparams, vqvae_hparams)
    with torch.device("meta"):
        model = Prior(config)
    mapped = map_state_dict(_official_state_dict(path), model.state_dict(), prior_key, (), str(path))
    return _load_into(model, mapped, dtype, path).eval()


def release_files(directory, model):
    """Where one released model's files lie under `directory`, laid out like the download (MODELS):
    {"vqvae": (path, hparams name), 0: ..., 1: ..., 2: ...}. Raises CheckpointError naming the first missing
    file and its download URL."""
    if model not in MODELS:
        raise CheckpointError(f"unknown released model {model!r}; choose one of {', '.join(MODELS)}")
    files = {}
    for part, (relative, name) in MODELS[model].items():
        path = os.path.join(directory, relative)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: missing; download {REMOTE_PREFIX}{relative} to that path")
        files[part] = (path, name)
    return files


@torch.no_grad()
def forward(prior, tokens, y, upper=None):
    """Teacher-forced logits in the original's layout, for checking against it.

    tokens (B, n_ctx) music codes; y (B, y_length) the official label vector (prior.make_y);
    upper (B, n_ctx/4) codes of the level above (upsamplers). Returns float32 (B, L, V) over the
    transformer's whole sequence and vocabulary, like the original's preds: for 1b_lyrics L = n_tokens +
    n_ctx and V = n_vocab + l_bins (music ids shifted by n_vocab), otherwise (B, n_ctx, l_bins).
    """
    logits, _ = prior.sequence_logits(tokens, y, upper)
    return logits.float()
