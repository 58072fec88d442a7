"""official.py: safe reading of the original's checkpoint files, the released hparam tables, key mapping."""
import os
import subprocess
import builtins
import collections

import pytest
import torch

import official

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


# ---- a foreign class like the original's hyperparameter object ---------------------------------------------
SETSTATE_CALLS = []


class Hyperparams(dict):  # same shape as the original's: a dict whose attributes are its items
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.__dict__ = self

    def __setstate__(self, state):  # would record a call if the loader used the real class
        SETSTATE_CALLS.append(state)
        self.__dict__ = self


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("payload", [RunsShell, RunsExec, RunsSubprocess])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, fmt, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    save({"hps": payload(str(marker)), "model": {"w": torch.ones(2)}}, path, fmt)
    with pytest.raises(official.CheckpointError, match="refusing to load") as err:
        official.read_checkpoint(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_callable_becomes_inert_placeholder(tmp_path, fmt):
    marker = tmp_path / "called"
    path = tmp_path / "odd.pth.tar"
    save({"extra": CallsUnknownFunction(str(marker)), "model": {"w": torch.arange(3.0)}}, path, fmt)
    ck = official.read_checkpoint(path)
    assert not marker.exists()
    assert isinstance(ck["extra"], official.ForeignObject) and ck["extra"].args == (str(marker),)
    assert torch.equal(ck["model"]["w"], torch.arange(3.0))


@pytest.mark.parametrize("fmt", FORMATS)
def test_foreign_hparams_class_loads_without_running_it(tmp_path, fmt):
    path = tmp_path / "ok.pth.tar"
    sd = collections.OrderedDict(a=torch.randn(3, 4), b=torch.randn(5).half())
    save({"hps": Hyperparams(l_bins=2048, downs_t=(3, 2, 2), name="x"), "model": sd, "step": 7}, path, fmt)
    SETSTATE_CALLS.clear()
    ck = official.read_checkpoint(path)
    assert SETSTATE_CALLS == []
    hps = ck["hps"]
    assert isinstance(hps, official.ForeignObject) and not isinstance(hps, Hyperparams)
    assert hps.foreign_name == "Hyperparams" and hps["l_bins"] == 2048 and hps["downs_t"] == (3, 2, 2)
    assert ck["step"] == 7 and list(ck["model"]) == ["a", "b"]
    assert all(torch.equal(ck["model"][k], sd[k]) and ck["model"][k].dtype == sd[k].dtype for k in sd)


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_file_gives_one_line_error(tmp_path, fmt):
    path = tmp_path / "cut.pth.tar"
    save({"hps": {"l_bins": 2048}, "model": {"w": torch.randn(64, 64)}}, path, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(official.CheckpointError, match="not a readable checkpoint") as err:
        official.read_checkpoint(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(official.CheckpointError, match="cannot open"):
        official.read_checkpoint(tmp_path / "nope.pth.tar")
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(official.CheckpointError, match="not a readable checkpoint"):
        official.read_checkpoint(junk)
