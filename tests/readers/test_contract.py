"""One reader contract: every format is a face in exporters.registry, every face (API, CLI, batch,
inspect) reaches readers only through it, and one hostile input gets one answer from every reader."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from exporters.registry import READER_OPTIONS, READERS, detect, face_named
from tests.support import REPO, assert_cli_error, assert_no_output, read_manifest, run_cli

pytest_plugins = ["tests.support.keras_models"]  # the session fixture hf_models

COMMON_OPTIONS = {
    "--layout",
    "--layout-file",
    "--layout-option",
    "--dtype",
    "--cast-loss",
    "--max-shard-size",
    "--digest",
    "--overwrite",
    "--dry-run",
    "--follow-links",
    "--json",
    "-q",
    "--quiet",
    "-v",
    "--verbose",
    "-h",
    "--help",
}
FLAG_OF = {
    "key": "--key",
    "strip_prefix": "--strip-prefix",
    "config": "--config",
    "collections": "--collection",
    "unstack": "--unstack",
    "quantized": "--quantized",
    "max_inflated_size": "--max-inflated-size",
}


def test_faces_are_consistent() -> None:
    """Kinds and commands are unique, options are among the registry's, extras are pyproject's."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    kinds = [f.kind for f in READERS]
    commands = [f.command for f in READERS if f.command]
    assert len(set(kinds)) == len(kinds) and len(set(commands)) == len(commands)
    for face in READERS:
        assert face.extra is None or face.extra in extras, face.kind
        assert set(face.options) <= set(READER_OPTIONS)
        assert face_named(face.kind) is face
        if face.command:
            assert face_named(face.command) is face


@pytest.mark.parametrize("face", [f for f in READERS if f.command], ids=lambda f: f.command)
def test_each_command_takes_exactly_its_readers_options(face) -> None:
    from convert.cli import cli

    command = cli.commands[face.command]
    flags = {opt for param in command.params for opt in getattr(param, "opts", []) if opt.startswith("-")}
    assert flags - COMMON_OPTIONS == {FLAG_OF[o.name] for o in face.options}
    assert command.help == face.summary


def test_listing_the_readers_imports_no_framework() -> None:
    """The registry is read at CLI start-up: its faces must not import any reader's libraries."""
    code = (
        "import sys, exporters.registry, convert.cli; "
        "print(' '.join(m for m in ('numpy', 'h5py', 'msgpack', 'onnx', 'torch', 'tensorflow', 'jax', "
        "'exporters.pytorch.reader', 'exporters.keras.reader') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert loaded.strip() == ""


@pytest.mark.parametrize(
    "index, shard",
    [
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
        ("tf_model.h5.index.json", "tf_model.h5"),
        ("flax_model.msgpack.index.json", "flax_model.msgpack"),
        ("model.safetensors.index.json", "model.safetensors"),
    ],
)
@pytest.mark.parametrize("shard_name", ["../outside.bin", "sub/inner.bin", ".hidden"])
def test_index_pointing_outside_the_folder_is_unsafe_for_every_reader(
    tmp_path: Path, index: str, shard: str, shard_name: str
) -> None:
    """The same attack (a shard name that leaves the folder) is exit 5 whichever framework's index it
    is in (it was 5 for PyTorch, 6 for Keras); nothing is written."""
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 64)
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": {"w": shard_name}}))
    assert detect(folder).kind in {"pytorch", "keras", "flax", "safetensors"}
    for command in ("auto", "inspect"):
        args = (folder,) if command == "inspect" else (folder, tmp_path / "out")
        assert_cli_error(run_cli(command, *args), 5, "points outside the folder")
    assert_no_output(tmp_path / "out")


def test_reader_options_are_recorded_and_verify_reopens_alike(tmp_path: Path) -> None:
    """--key ema picks a non-default dict; the manifest records it, and verify --source (no --key)
    reopens the checkpoint the same way and compares every tensor."""
    torch = pytest.importorskip("torch")
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    ckpt = tmp_path / "train.ckpt"
    torch.save({"state_dict": model.state_dict(), "ema": ema.state_dict(), "epoch": 3}, ckpt)
    rc = run_cli("auto", ckpt, tmp_path / "out", "--key", "ema")
    assert rc[0] == 0, rc[2]
    doc = read_manifest(tmp_path / "out")
    assert doc["source"]["reader_options"] == {"key": "ema", "strip_prefix": "auto"}
    rc = run_cli("verify", tmp_path / "out", "--source", ckpt)
    assert rc[0] == 0 and "2 compared with the source" in rc[1], rc
    # the default dict differs from ema: verifying against it must fail, so the recorded key mattered
    rc = run_cli("verify", tmp_path / "out", "--source", ckpt, "--key", "state_dict")
    assert rc[0] == 8, rc


def write_job_file(path: Path, jobs: list[dict[str, object]]) -> Path:
    lines = []
    for job in jobs:
        lines.append("[[job]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in job.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_batch(job_file: Path, *args: str) -> list[dict[str, object]]:
    rc = run_cli("batch", "--job-file", job_file, "--json", "--jobs", "1", *args, timeout=600)
    rows = [json.loads(line) for line in rc[1].splitlines() if line.startswith("{")]
    return [r for r in rows if "status" in r]


def test_batch_carries_the_tensorflow_key(tmp_path: Path) -> None:
    """A job's key reaches the TensorFlow reader (it was dropped while the manifest recorded it)."""
    tf = pytest.importorskip("tensorflow")
    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
    teacher = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(4)])
    prefix = tf.train.Checkpoint(model=model, teacher=teacher).write(str(tmp_path / "ckpt" / "ckpt"))
    jobs = write_job_file(
        tmp_path / "jobs.toml",
        [
            {"source": prefix + ".index", "output": "teacher", "key": "teacher"},
            {"source": prefix + ".index", "output": "missing", "key": "no_such_object"},
        ],
    )
    rows = {Path(str(r["output"])).name: r for r in run_batch(jobs)}
    assert rows["teacher"]["status"] == "ok", rows
    assert rows["missing"]["status"] == "failed" and rows["missing"]["exit_code"] == 3, rows
    doc = read_manifest(tmp_path / "teacher")
    assert doc["source"]["reader_options"] == {"key": "teacher"}
    assert sorted(t["shape"] for t in doc["tensors"]) == [[4], [4, 3]]  # the teacher's Dense(4), not the model's


def test_batch_carries_keras_config_and_flax_unstack(tmp_path: Path) -> None:
    """Keras `config` and Flax `unstack`/`collections` can be given to batch (they could not)."""
    keras = pytest.importorskip("keras")
    msgpack = pytest.importorskip("msgpack")
    import numpy as np

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="head")])
    model.save_weights(tmp_path / "model.weights.h5")
    (tmp_path / "model.json").write_text(model.to_json())

    def arr(a: np.ndarray) -> msgpack.ExtType:
        return msgpack.ExtType(1, msgpack.packb((list(a.shape), a.dtype.name, a.tobytes()), use_bin_type=True))

    kernel = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)  # three stacked Dense(4 -> 5)
    tree = {
        "params": {"layers": {"Dense_0": {"kernel": arr(kernel), "bias": arr(np.zeros((3, 5), np.float32))}}},
        "ema": {"layers": {"Dense_0": {"kernel": arr(kernel + 1), "bias": arr(np.ones((3, 5), np.float32))}}},
    }
    (tmp_path / "scan.msgpack").write_bytes(msgpack.packb(tree, use_bin_type=True))
    jobs = write_job_file(
        tmp_path / "jobs.toml",
        [
            {"source": "model.weights.h5", "output": "keras", "config": "model.json"},
            {"source": "scan.msgpack", "output": "flax", "unstack": ["layers"], "collections": ["ema"]},
        ],
    )
    rows = run_batch(jobs)
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
    keras_doc = read_manifest(tmp_path / "keras")
    assert keras_doc["architecture"]["source_model"]["layers_from"] == "config"
    assert keras_doc["source"]["reader_options"] == {"config": str(tmp_path / "model.json"), "max_inflated_size": None}
    flax_doc = read_manifest(tmp_path / "flax")
    names = {t["name"] for t in flax_doc["tensors"]}
    assert names == {f"layers.{i}.Dense_0.{p}" for i in range(3) for p in ("weight", "bias")}
    assert flax_doc["source"]["details"]["collections"] == ["ema"]
    for out, src in (("keras", "model.weights.h5"), ("flax", "scan.msgpack")):
        rc = run_cli("verify", tmp_path / out, "--source", tmp_path / src)
        assert rc[0] == 0, rc


@pytest.fixture(scope="module")
def sharded_folders(
    gpt2_folders: dict[str, Any], hf_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, str]]:
    """One sharded Hugging Face folder per framework whose index a reader checks, each written by its
    framework's save_pretrained (folder, index file name)."""
    safetensors = tmp_path_factory.mktemp("st") / "sharded"
    gpt2_folders["model"].save_pretrained(safetensors, safe_serialization=True, max_shard_size="20KB")
    return {
        "pytorch": (gpt2_folders["sharded"], "pytorch_model.bin.index.json"),
        "safetensors": (safetensors, "model.safetensors.index.json"),
        "tf-h5": (hf_models / "hf" / "gpt2" / "sharded", "tf_model.h5.index.json"),
    }


def _lie(folder: Path, index_name: str, lie: str) -> str:
    """Make the index's weight_map lie; the tensor name the lie is about."""
    path = folder / index_name
    index = json.loads(path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    if lie == "moved":  # a tensor placed in a shard that lacks it
        name = next(n for n, f in sorted(index["weight_map"].items()) if f == shards[0])
        index["weight_map"][name] = shards[-1]
    else:  # a tensor no shard holds
        name = "/".join([*sorted(index["weight_map"])[0].split("/")[:-1], "ghost.weight"])
        index["weight_map"][name] = shards[0]
    path.write_text(json.dumps(index))
    return name.split("/", 1)[-1]  # a TF weight's name without the model's name, which its shard does not store


@pytest.mark.parametrize("lie", ["moved", "ghost"])
@pytest.mark.parametrize("framework", ["pytorch", "safetensors", "tf-h5"])
def test_an_index_that_lies_is_exit_6_for_every_reader(
    sharded_folders: dict[str, tuple[Path, str]], tmp_path: Path, framework: str, lie: str
) -> None:
    """The same lie in a Hugging Face index (a tensor placed in a shard that lacks it, or one no shard
    holds) gets the same answer whichever framework's shards it lists: exit 6 naming the tensor, from
    a conversion and from verify --source alike (it converted with exit 0 for SafeTensors and
    tf_model.h5 shards, and verify --source passed)."""
    honest, index_name = sharded_folders[framework]
    src = tmp_path / "model"
    shutil.copytree(honest, src)
    out = tmp_path / "out"
    assert run_cli("auto", src, out)[0] == 0
    needle = _lie(src, index_name, lie)
    assert_cli_error(run_cli("auto", src, tmp_path / "lied"), 6, needle)
    assert_no_output(tmp_path / "lied")
    assert_cli_error(run_cli("verify", out, "--source", src), 6, needle)
