"""Exit 0 is a promise: a cast never turns values into inf or zero silently, every source
array is accounted for, --overwrite replaces only this tool's own output, outputs get the umask's
permissions, option values are parsed strictly, paths work relative or absolute, and detection
cannot take one format's magic for another's. Each test reproduces a user's report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="needs torch to write real checkpoints")

from tests.support import REPO, assert_cli_error, assert_no_output, load_output, read_manifest, run_cli  # noqa: E402

# ---------------------------------------------------------------------------------------------
# option values are parsed strictly
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def batchnorm_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "bn.pt"
    torch.save(torch.nn.BatchNorm1d(4).state_dict(), path)
    return path


@pytest.mark.parametrize(
    "value, dropped",
    [("no", False), ("0", False), ("false", False), ("False", False), ("yes", True), ("1", True), ("true", True)],
)
def test_boolean_layout_option_words(batchnorm_checkpoint: Path, tmp_path: Path, value: str, dropped: bool) -> None:
    out = tmp_path / "out"
    rc, _, err = run_cli("pth-to-safetensors", batchnorm_checkpoint, out, "--layout-option", f"drop_num_batches_tracked={value}")
    assert rc == 0, err
    assert ("num_batches_tracked" not in load_output(out)) == dropped


@pytest.mark.parametrize("value", ["maybe", "", "2", "nope"])
def test_boolean_layout_option_refuses_other_words(batchnorm_checkpoint: Path, tmp_path: Path, value: str) -> None:
    out = tmp_path / "out"
    result = run_cli("pth-to-safetensors", batchnorm_checkpoint, out, "--layout-option", f"drop_num_batches_tracked={value}")
    assert_cli_error(result, 2, "drop_num_batches_tracked", "true/false/yes/no/1/0")
    assert_no_output(out)


# ---------------------------------------------------------------------------------------------
# outputs get the usual permissions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_output_permissions_follow_the_umask(batchnorm_checkpoint: Path, tmp_path: Path, umask: int) -> None:
    import os

    out = tmp_path / "out"
    rc, _, err = run_cli("pth-to-safetensors", batchnorm_checkpoint, out, preexec_fn=lambda: os.umask(umask))
    assert rc == 0, err
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    for f in out.iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f.name


# ---------------------------------------------------------------------------------------------
# detection cannot take one format's magic for another's
# ---------------------------------------------------------------------------------------------


def _safetensors_with_header_length(path: Path, wanted: int) -> dict[str, Any]:
    """A SafeTensors file written by the safetensors library whose header length is `wanted`."""
    import struct

    import numpy as np
    from safetensors.numpy import save_file

    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    for pad in range(wanted):
        save_file(tensors, str(path), metadata={"format": "pt", "note": "x" * pad})
        if struct.unpack("<Q", path.read_bytes()[:8])[0] == wanted:
            return tensors
    raise AssertionError(f"no padding gives a {wanted}-byte header")


@pytest.mark.parametrize("length", [0x280, 0x380, 0x480, 0x580])  # first bytes 80 02 .. 80 05: a pickle's opening
def test_safetensors_whose_header_length_looks_like_a_pickle(tmp_path: Path, length: int) -> None:
    src = tmp_path / "weights.bin"  # no suffix to lean on
    tensors = _safetensors_with_header_length(src, length)
    assert src.read_bytes()[:2] == bytes([0x80, length >> 8])
    rc, out, err = run_cli("inspect", src)
    assert rc == 0, err
    assert out.splitlines()[-1].startswith("safetensors: 1 tensors")
    rc, _, err = run_cli("auto", src, tmp_path / "out")
    assert rc == 0, err
    assert load_output(tmp_path / "out")["w"].tolist() == tensors["w"].tolist()


# ---------------------------------------------------------------------------------------------
# paths work relative or absolute
# ---------------------------------------------------------------------------------------------


def test_orbax_folder_given_a_relative_path(tmp_path: Path) -> None:
    pytest.importorskip("orbax.checkpoint", reason="needs orbax-checkpoint to save a Flax checkpoint")
    import numpy as np
    import orbax.checkpoint as ocp

    kernel = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    bias = np.arange(4, dtype=np.float32)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", {"params": {"Dense_0": {"kernel": kernel, "bias": bias}}})
    checkpointer.wait_until_finished()
    for src, out in (("ckpt", "out"), ("./ckpt/", "sub/../out2")):
        rc, _, err = run_cli("flax-to-safetensors", src, out, cwd=tmp_path)
        assert rc == 0, err
        tensors = load_output(tmp_path / out)
        assert tensors["Dense_0.weight"].numpy().tobytes() == kernel.T.tobytes()
        assert tensors["Dense_0.bias"].numpy().tobytes() == bias.tobytes()
        rc, _, err = run_cli("verify", out, "--source", src, cwd=tmp_path)
        assert rc == 0, err


def test_relative_paths_for_every_command(batchnorm_checkpoint: Path) -> None:
    cwd = batchnorm_checkpoint.parent
    name = batchnorm_checkpoint.name
    assert run_cli("inspect", name, cwd=cwd)[0] == 0
    assert run_cli("pth-to-safetensors", name, "a", cwd=cwd)[0] == 0
    assert run_cli("auto", f"./{name}", "b/", cwd=cwd)[0] == 0
    assert run_cli("verify", "a", "--source", name, cwd=cwd)[0] == 0
    rc, _, err = run_cli("batch", name, "--out-dir", "c", cwd=cwd)
    assert rc == 0, err
    assert (cwd / "c" / batchnorm_checkpoint.stem / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------
# --overwrite replaces only this tool's own output; batch never deletes a file it did not write
# ---------------------------------------------------------------------------------------------


def _user_folder(out: Path) -> dict[str, str]:
    (out / "old_experiments").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "old_experiments" / "run1.log").write_text("loss 0.1")
    return {"notes.txt": "mine", "old_experiments/run1.log": "loss 0.1"}


def _texts(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flags", [(), ("--overwrite",)], ids=["plain", "overwrite"])
def test_a_folder_that_is_no_output_is_never_replaced(batchnorm_checkpoint: Path, tmp_path: Path, flags: tuple[str, ...]) -> None:
    out = tmp_path / "out"
    kept = _user_folder(out)
    line = assert_cli_error(run_cli("pth-to-safetensors", batchnorm_checkpoint, out, *flags), 9, str(out), "notes.txt")
    assert "--overwrite" not in line
    assert _texts(out) == kept


def test_user_files_added_to_an_earlier_output_stop_overwrite(batchnorm_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("pth-to-safetensors", batchnorm_checkpoint, out)[0] == 0
    (out / "notes.txt").write_text("mine")
    before = _texts_or_bytes(out)
    line = assert_cli_error(run_cli("pth-to-safetensors", batchnorm_checkpoint, out, "--overwrite"), 9, "notes.txt")
    assert "--overwrite" not in line
    assert _texts_or_bytes(out) == before


def _texts_or_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_earlier_output_is_replaced_with_overwrite(batchnorm_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("pth-to-safetensors", batchnorm_checkpoint, out, "--max-shard-size", "20", "--layout", "trustformers")[0] == 0
    assert (out / "pytorch_model.bin.index.json").is_file()  # the layout's second index counts as written here
    assert_cli_error(run_cli("pth-to-safetensors", batchnorm_checkpoint, out), 9, "--overwrite")
    rc, _, err = run_cli("pth-to-safetensors", batchnorm_checkpoint, out, "--overwrite")
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.safetensors"]


def test_batch_never_deletes_a_file_it_did_not_write(batchnorm_checkpoint: Path, tmp_path: Path) -> None:
    import json

    out_dir = tmp_path / "converted"
    kept = _user_folder(out_dir / batchnorm_checkpoint.stem)
    rc, stdout, _ = run_cli("batch", batchnorm_checkpoint, "--out-dir", out_dir, "--json")
    assert rc == 11
    job = json.loads(stdout.splitlines()[0])
    assert job["status"] == "failed" and job["exit_code"] == 9 and "notes.txt" in job["error"]
    assert _texts(out_dir / batchnorm_checkpoint.stem) == kept
    # its own earlier output is replaced when the request changes
    other = tmp_path / "other"
    assert run_cli("batch", batchnorm_checkpoint, "--out-dir", other)[0] == 0
    rc, stdout, err = run_cli("batch", batchnorm_checkpoint, "--out-dir", other, "--dtype", "f16", "--json")
    assert rc == 0, err
    assert json.loads(stdout.splitlines()[0])["status"] == "ok"
    assert read_manifest(other / batchnorm_checkpoint.stem)["target"]["dtype"] == "f16"


def test_an_output_converted_onto_itself_is_refused(batchnorm_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("pth-to-safetensors", batchnorm_checkpoint, out)[0] == 0
    before = _texts_or_bytes(out)
    assert_cli_error(run_cli("auto", out, out, "--overwrite"), 2, "holds the source")
    assert _texts_or_bytes(out) == before


# ---------------------------------------------------------------------------------------------
# a cast never turns values into inf or zero silently
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def overflowing_bf16(tmp_path: Path) -> Path:
    path = tmp_path / "bf16.pt"
    torch.save(
        {
            "w": torch.tensor([1e5, -2e5, 3, 1e-8], dtype=torch.bfloat16),
            "ok": torch.tensor([0.5, -1.0, 0.0], dtype=torch.bfloat16),
        },
        path,
    )
    return path


def test_a_cast_that_overflows_is_refused(overflowing_bf16: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_cli_error(
        run_cli("pth-to-safetensors", overflowing_bf16, out, "--dtype", "f16"),
        7,
        "'w'",
        "2 finite value(s) into inf",
        "1 non-zero value(s) into zero",
        "--cast-loss",
    )
    assert_no_output(out)
    # a layout's own cast is held to the same rule: torsh loads F32 only, F64 beyond F32 overflows
    f64 = tmp_path / "f64.pt"
    torch.save({"big": torch.tensor([1e300, 1.0], dtype=torch.float64)}, f64)
    assert_cli_error(run_cli("pth-to-safetensors", f64, out, "--layout", "torsh"), 7, "'big'", "1 finite value(s) into inf")
    assert_no_output(out)


@pytest.mark.parametrize("policy", ["saturate", "accept"])
def test_a_lossy_cast_the_user_accepts_is_recorded(overflowing_bf16: Path, tmp_path: Path, policy: str) -> None:
    out = tmp_path / "out"
    rc, _, err = run_cli("pth-to-safetensors", overflowing_bf16, out, "--dtype", "f16", "--cast-loss", policy)
    assert rc == 0, err
    assert "'w'" in err and "2 finite value(s) into inf" in err  # said on stderr too
    source = torch.load(overflowing_bf16)["w"]
    expected = source.to(torch.float16)  # torch's own cast, the reference rounding
    if policy == "saturate":
        top = torch.finfo(torch.float16).max
        expected = torch.where(torch.isinf(expected), torch.sign(source.float()).half() * top, expected)
    written = load_output(out)["w"]
    assert written.view(torch.int16).tolist() == expected.view(torch.int16).tolist()
    cast = next(t for t in read_manifest(out)["tensors"] if t["name"] == "w")["transforms"][-1]
    assert cast == {"op": "cast", "to": "F16", "lossless": False, "on_loss": policy, "overflowed": 2, "flushed": 1}
    rc, _, err = run_cli("verify", out, "--source", overflowing_bf16)
    assert rc == 0, err


def test_verify_fails_on_a_cast_that_lost_values_unrecorded(overflowing_bf16: Path, tmp_path: Path) -> None:
    """An output whose manifest does not say the loss was accepted (what this tool wrote before)."""
    import json

    out = tmp_path / "out"
    assert run_cli("pth-to-safetensors", overflowing_bf16, out, "--dtype", "f16", "--cast-loss", "accept")[0] == 0
    doc = json.loads((out / "manifest.json").read_text())
    for t in doc["tensors"]:
        for step in t["transforms"]:
            for key in ("on_loss", "overflowed", "flushed"):
                step.pop(key, None)
    (out / "manifest.json").write_text(json.dumps(doc))
    rc, stdout, err = run_cli("verify", out, "--source", overflowing_bf16)
    assert rc == 8, err
    assert "'w'" in err and "into inf" in err


# ---------------------------------------------------------------------------------------------
# every source array is converted, dropped with a recorded reason, or refused
# ---------------------------------------------------------------------------------------------


def _onnx_model(path: Path, nodes: list[Any], initializers: list[Any]) -> Path:
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=initializers,
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _float_tensor(name: str, shape: tuple[int, ...]) -> Any:
    import numpy as np
    from onnx import numpy_helper

    return numpy_helper.from_array(np.random.default_rng(0).standard_normal(shape).astype(np.float32), name)


def test_a_layout_that_leaves_no_tensor_fails(batchnorm_checkpoint: Path, tmp_path: Path) -> None:
    src = tmp_path / "only_counter.pt"
    torch.save({"bn.num_batches_tracked": torch.tensor(3)}, src)
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out, "--layout-option", "drop_num_batches_tracked=true"), 4, "no tensors")
    assert_no_output(out)


# ---------------------------------------------------------------------------------------------
# progress is drawn on stderr
# ---------------------------------------------------------------------------------------------


def _run_with_terminal_stderr(*args: Any, cwd: Path | None = None) -> tuple[int, str, bytes]:
    """The CLI with stderr on a terminal (a pseudo-terminal) and stdout in a pipe, as `convert ... > log`."""
    import os
    import pty
    import subprocess

    from tests.support import cli_prefix

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*cli_prefix(), *map(str, args)], stdout=subprocess.PIPE, stderr=follower, env={**os.environ, "COLUMNS": "100"}, cwd=cwd
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal closed
            break
        if not data:
            break
        seen += data
    stdout, _ = proc.communicate(timeout=120)
    os.close(leader)
    return proc.returncode, stdout.decode(), seen


def test_progress_bar_never_reaches_stdout(tmp_path: Path) -> None:
    src = tmp_path / "big.pt"
    torch.save({f"w{i}": torch.randn(512, 512) for i in range(24)}, src)
    out = tmp_path / "out"
    rc, stdout, terminal = _run_with_terminal_stderr("pth-to-safetensors", src, out)
    assert rc == 0, terminal
    assert stdout.splitlines() == [stdout.strip()] and stdout.startswith(f"wrote {out}"), stdout
    assert "\x1b" not in stdout


# ---------------------------------------------------------------------------------------------
# user mistakes are reported as such
# ---------------------------------------------------------------------------------------------


def test_dynamic_quantized_checkpoint_is_unsupported(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation notice for torch.ao.quantization
        model = torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(torch.nn.Linear(4, 3)), {torch.nn.Linear}, dtype=torch.qint8
        )
    src = tmp_path / "quantized.pt"
    torch.save(model.state_dict(), src)
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out), 4, "quantized")
    assert_no_output(out)


def test_to_onnx_wrong_input_shape_is_a_usage_error(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="needs the onnx extra")
    from tests.support.onnx_models import write_models

    models = write_models(tmp_path)
    src = tmp_path / "mlp.pt"
    torch.save(models.mlp().state_dict(), src)  # its first Linear takes 6 features
    out = tmp_path / "out"
    assert_cli_error(
        run_cli("to-onnx", src, out, "--module", "onnx_models:mlp", "--input-shape", "x=2x5", cwd=tmp_path, timeout=600),
        2,
        "--input-shape",
        "x float32[",
    )
    assert_no_output(out)


# ---------------------------------------------------------------------------------------------
# a missing optional dependency is exit 4 with the install command
# ---------------------------------------------------------------------------------------------


def _isolated_python(distributions: tuple[str, ...]) -> Path:
    """A virtual environment that holds only `distributions` and what they require, linked from
    this environment's installs (made once, kept under the temp folder): the other extras' packages
    are really absent from it."""
    import hashlib
    import re
    import subprocess
    import sys
    import sysconfig
    import tempfile
    from importlib import metadata

    from packaging.requirements import Requirement

    # keyed by this environment too: its links point into sys.prefix, which another checkout's venv does not share
    key = hashlib.sha1(f"{sys.prefix}|{','.join(distributions)}".encode()).hexdigest()[:10]
    root = Path(tempfile.gettempdir()) / f"rmc-only-{key}"
    python = root / "bin" / "python"
    if python.exists():
        return python
    staging = Path(tempfile.mkdtemp(prefix=root.name + "-"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(staging)], check=True)
    site = staging / Path(sysconfig.get_path("purelib")).relative_to(sysconfig.get_path("data"))
    todo, seen = list(distributions), set()
    while todo:
        dist = metadata.distribution(todo.pop())
        key = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if key in seen:
            continue
        seen.add(key)
        for req in map(Requirement, dist.requires or []):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    staging.rename(root)  # python resolves its site folder from its own path, so the move keeps it working
    return python


def _run_isolated(python: Path, *args: Any, cwd: Path) -> tuple[int, str, str]:
    import os
    import subprocess

    repo = REPO
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(python), "-m", "convert.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "PYTHONPATH": str(repo)},
    )
    return proc.returncode, proc.stdout, proc.stderr


def _core_requirements() -> tuple[str, ...]:
    """The core install's distributions, as pyproject.toml declares them (so the two cannot drift)."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return tuple(Requirement(r).name for r in project["dependencies"])


CORE = _core_requirements()


@pytest.fixture(scope="session")
def core_python() -> Path:
    return _isolated_python(CORE)


def test_the_isolated_core_really_lacks_the_extras(core_python: Path, tmp_path: Path) -> None:
    import subprocess

    probe = subprocess.run(
        [
            str(core_python),
            "-c",
            "import importlib.util as u; import numpy, safetensors, click; "
            "print([m for m in ('h5py', 'onnx', 'torch', 'msgpack') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stderr


def _keras_file(tmp_path: Path) -> Path:
    """A .keras zip as Keras 3 lays it out (config.json, metadata.json, model.weights.h5), written with h5py."""
    import json
    import zipfile

    import h5py
    import numpy as np

    weights = tmp_path / "model.weights.h5"
    with h5py.File(weights, "w") as f:
        f.create_dataset("layers/dense/vars/0", data=np.ones((2, 3), np.float32))
        f.create_dataset("layers/dense/vars/1", data=np.zeros(3, np.float32))
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {"layers": []}}))
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        zf.write(weights, "model.weights.h5")
    return path


@pytest.mark.parametrize("kind", ["keras", "h5", "onnx", "tensorflow"])
def test_missing_reader_extra_is_exit_4_with_the_install_command(core_python: Path, tmp_path: Path, kind: str) -> None:
    if kind == "tensorflow":  # read without TensorFlow, but with protobuf, which the core lacks
        tf = pytest.importorskip("tensorflow", reason="needs TensorFlow to write a checkpoint")
        src = Path(tf.train.Checkpoint(v=tf.Variable([1.0, 2.0])).write(str(tmp_path / "ckpt" / "ckpt")) + ".index")
        extra, command = "tensorflow", "tf-to-safetensors"
    elif kind == "onnx":
        pytest.importorskip("onnx", reason="needs onnx to write a model")
        src = _onnx_model(tmp_path / "m.onnx", [], [_float_tensor("w", (2, 2))])
        extra, command = "onnx", "onnx-to-safetensors"
    else:
        pytest.importorskip("h5py", reason="needs h5py to write the file")
        src = _keras_file(tmp_path)
        if kind == "h5":
            src = tmp_path / "model.weights.h5"
        extra, command = "keras", "keras-to-safetensors"
    for cmd in (command, "auto"):
        out = tmp_path / f"out-{cmd}"
        rc, _, err = _run_isolated(core_python, cmd, src, out, cwd=tmp_path)
        assert rc == 4, err
        assert_one_line(err, f"pip install 'rust-model-convert[{extra}]'")
        assert_no_output(out)
    rc, _, err = _run_isolated(core_python, "inspect", src, cwd=tmp_path)
    assert rc == 4 and f"rust-model-convert[{extra}]" in err, err


def assert_one_line(stderr: str, needle: str) -> None:
    from tests.support import assert_one_line_error

    assert_one_line_error(stderr, needle)


def test_to_onnx_without_the_onnx_extra(tmp_path: Path) -> None:
    python = _isolated_python((*CORE, "torch"))
    from tests.support.onnx_models import write_models

    models = write_models(tmp_path)
    src = tmp_path / "mlp.pt"
    torch.save(models.mlp().state_dict(), src)
    out = tmp_path / "out"
    rc, _, err = _run_isolated(python, "to-onnx", src, out, "--module", "onnx_models:mlp", "--input-shape", "x=2x6", cwd=tmp_path)
    assert rc == 4, err
    assert_one_line(err, "pip install 'rust-model-convert[onnx]'")
    assert_no_output(out)


# ---------------------------------------------------------------------------------------------
# batch stops on Ctrl-C, says so, and reports what finished
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("presses", [1, 2])
def test_batch_ctrl_c_stops_and_reports_finished_jobs(tmp_path: Path, jobs: str, presses: int) -> None:
    import json
    import os
    import signal
    import subprocess
    import time

    from tests.support import cli_prefix

    for i in range(2):
        torch.save({"w": torch.randn(4, 4)}, tmp_path / f"a{i}.pt")
    hanging = tmp_path / "z_pipe.pt"
    os.mkfifo(hanging)  # a source that never finishes opening: the batch is busy when Ctrl-C comes
    report = tmp_path / "report.jsonl"
    out_dir = tmp_path / "converted"
    proc = subprocess.Popen(
        [
            *cli_prefix(),
            "batch",
            str(tmp_path / "a0.pt"),
            str(tmp_path / "a1.pt"),
            str(hanging),
            "--out-dir",
            str(out_dir),
            "--jobs",
            jobs,
            "--report",
            str(report),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if report.exists() and report.read_text().count('"status": "ok"') == 2:
            break
        time.sleep(0.1)
    assert report.read_text().count('"status": "ok"') == 2, "the two good jobs did not finish"
    time.sleep(0.3)  # the hanging job has started
    for _ in range(presses):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "stopping" in stderr, stderr
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert sorted(Path(r["source"]).name for r in rows if r.get("status") == "ok") == ["a0.pt", "a1.pt"]
    summary = rows[-1]["summary"]
    assert summary["interrupted"] is True and summary["ok"] == 2
    leftovers = [p.name for p in out_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


def test_to_onnx_shows_its_progress_on_stderr(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="needs the onnx extra")
    from tests.support.onnx_models import write_models

    models = write_models(tmp_path)
    src = tmp_path / "mlp.pt"
    torch.save(models.mlp().state_dict(), src)
    rc, stdout, terminal = _run_with_terminal_stderr(
        "to-onnx", src, tmp_path / "out", "--module", "onnx_models:mlp", "--input-shape", "x=2x6", cwd=tmp_path
    )  # --module imports from there
    assert rc == 0, terminal
    assert b"exporting" in terminal and b"validating" in terminal
    assert stdout.startswith(f"wrote {tmp_path / 'out'}") and "\x1b" not in stdout, stdout
