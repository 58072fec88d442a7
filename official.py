"""Load OpenAI's released Jukebox checkpoints (arXiv:2005.00341, §5 and the model release) into our modules.

This is the one file that knows the original's names: its hyperparameter names (`l_bins`, `prior_width`,
`attn_order`, ...) and its state_dict keys (`prior.transformer._attn_mods.3.attn.c_attn.w`, ...).

Reading order:
  1. read_checkpoint: a restricted unpickler; a `.pth.tar` never runs code from the file.
  2. HPARAMS: the released hyperparameter sets, by name, with the original's names.
  3. vqvae_config / prior_config: official hyperparameters -> our VQVAEConfig / PriorConfig.
  4. key mapping official <-> ours, load_vqvae / load_prior, and forward() for parity checks.

The released files are pickles written by `torch.save` (torch 1.4, legacy non-zip format) holding
{'hps': ..., 'model': state_dict, 'opt': ..., 'step': ...}; see shared/jukebox/FACTS.md §6.
"""
import _compat_pickle
import pickle
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
