"""Every command and code block of the README, run as written on sources these tests build with the
real frameworks, so the README cannot drift from the tool. A command the README adds must be given
its sources below (the coverage test fails otherwise); the few that are not run say why."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the README's sources are written with torch")

from tests.support import REPO, installed_without_dependencies, read_manifest, run_cli  # noqa: E402

pytest_plugins = ["tests.support.keras_models"]  # hf_models: Hugging Face TF folders written by transformers

README = (REPO / "README.md").read_text(encoding="utf-8")
SENTIMENT = REPO / "fixtures" / "sentiment"
NF_SAVE = REPO / "fixtures" / "neuralforecast" / "3.3.0" / "folder"

# Commands this test does not run, by their first words, and why.
NOT_RUN = {
    "bash scripts/demo.sh": "the set-up command the CI runs itself (a venv from nothing, then the demo)",
    "bash scripts/test.sh": "the set-up command the CI runs itself (a venv from nothing, then this suite)",
    "python3 -m venv": "pip install: needs the package index",
    ".venv/bin/pip install": "pip install: needs the package index",
    "cargo build --release": "builds against crates.io (network); tests/support/rust.py builds the crate offline",
    ".venv/bin/python scripts/bench_": "benchmarks on 1 GiB and larger inputs, run by hand (README, Benchmarks)",
    "convert auto openai-community/gpt2 ": "a Hugging Face repository id: needs the network or that model in the "
    "cache; tests/readers/test_hub_ids.py builds a cache in huggingface_hub's layout and converts from it",
    "convert auto hf://openai-community/gpt2": "as above",
    "rust/target/release/rmc ": "the Rust CLI of the crate above; tests/rust/test_crate.py builds it offline and runs "
    "`rmc verify` and `rmc inspect` (with --json) on converted outputs",
}


def shell_commands(text: str = README) -> list[str]:
    """The commands of the README's indented code blocks: continuation lines joined, comments dropped."""
    commands: list[str] = []
    fenced, in_block, previous_blank, pending = False, False, True, ""
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        if line.startswith("    ") and (in_block or previous_blank):
            in_block = True
            command = re.sub(r"\s+#\s.*$", "", pending + line.strip())
            if command.endswith("\\"):
                pending = command[:-1].strip() + " "
                continue
            pending = ""
            commands.append(command)
        elif line.strip():
            in_block = False
        previous_blank = not line.strip()
    return commands


def fenced_blocks(language: str, text: str = README) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def variants(command: str) -> list[str]:
    """A command with its optional `[...]` part left out, then with it (each `a|b` alternative)."""
    match = re.search(r" \[([^\]]+)\]", command)
    if match is None:
        return [command]
    plain = command[: match.start()] + command[match.end() :]
    return [plain, *(command[: match.start()] + " " + alt + command[match.end() :] for alt in _alternatives(match.group(1)))]


def _alternatives(option: str) -> list[str]:
    flag, _, values = option.partition(" ")
    if not values:
        return ["burn"] if option == "NAME" else [option]
    return [f"{flag} {v}" for v in values.split("|")]


# --- the sources the README names, written by the real frameworks ----------------------------


def _torch_sources(root: Path) -> None:
    from safetensors.torch import save_file
    from torch import nn

    torch.manual_seed(0)
    shutil.copy(SENTIMENT / "sentiment.pt", root / "model.pt")  # {"model_state_dict": ..., "epoch": ...}
    shutil.copy(SENTIMENT / "sentiment.py", root / "sentiment.py")
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    state = net.state_dict()
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in state.items()},
            "epoch": 3,
            "global_step": 30,
            "optimizer_states": [optimizer.state_dict()],
        },
        root / "last.ckpt",
    )
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 1}, root / "run.ckpt")
    torch.save({"model": {"ema": state, "online": state}, "step": 5}, root / "ckpt.pt")
    torch.save({"model": state, "ema": {k: v * 0.5 for k, v in state.items()}}, root / "ema.pt")
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2)
    torch.save(
        {
            "model": state,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "epoch": 2,
        },
        root / "train.pt",
    )
    torch.save({"ema": state, "epoch": 1}, root / "train.ckpt")
    with torch.no_grad():  # a weight-normed conv (an audio decoder's) and a spectral-normed discriminator
        tts = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 3, 3)))
        gan = nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Linear(4, 2)))
    torch.save(tts.state_dict(), root / "tts.pt")
    torch.save(gan.state_dict(), root / "gan.pt")
    torch.save(net, root / "whole.pt")  # a whole module: its classes become records, never imported
    torch.save({"model": net, "ema": net, "optimizer": optimizer.state_dict(), "epoch": 2}, root / "yolo.pt")
    (root / "hf-folder").mkdir()
    torch.save(state, root / "hf-folder" / "pytorch_model.bin")
    (root / "hf-folder" / "config.json").write_text(json.dumps({"model_type": "toy"}))
    torch.jit.save(torch.jit.trace(net, torch.randn(1, 4)), str(root / "silero_vad.jit"))
    for folder, name in (("models", "a.pt"), ("models", "b.pth"), ("more", "c.ckpt")):
        (root / folder).mkdir(exist_ok=True)
        torch.save(state, root / folder / name)
    batch = torch.export.Dim("batch")
    torch.export.save(
        torch.export.export(net.eval(), (torch.randn(2, 4),), dynamic_shapes=({0: batch},)), str(root / "model.pt2")
    )
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "models.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn

        class Tagger(nn.Module):
            def __init__(self):
                super().__init__()
                self.gru = nn.GRU(8, 16, batch_first=True)
                self.head = nn.Linear(16, 5)

            def forward(self, tokens):
                return self.head(self.gru(tokens)[0])

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3)
                self.fc = nn.Linear(4, 2)

            def forward(self, x):
                return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

        def build():
            return Net()

        def tagger():
            return Tagger()
    """)
    )
    sys.path.insert(0, str(root))
    try:
        import mypkg.models as models
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("mypkg.models", None)
        sys.modules.pop("mypkg", None)
    save_file(models.build().state_dict(), str(root / "weights.safetensors"))
    torch.save(models.tagger().state_dict(), root / "tagger.pt")
    np.savez(root / "params.npz", dense_kernel=np.ones((3, 2), np.float32), bias=np.zeros(2, np.float32))


def _embedding_model(work: Path) -> None:
    """`--module mypkg.models:build --input-shape ids=1x9:int32 --input-range ids=0:30000`: token ids."""
    (work / "mypkg" / "models.py").write_text(
        textwrap.dedent("""
        from torch import nn

        class Ids(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(30000, 8)
                self.fc = nn.Linear(8, 2)

            def forward(self, ids):
                return self.fc(self.emb(ids).mean(1))

        def build():
            return Ids()
    """)
    )
    torch.manual_seed(1)
    from torch import nn

    class Ids(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(30000, 8)
            self.fc = nn.Linear(8, 2)

    torch.save(Ids().state_dict(), work / "model.pt")


def _flax_sources(root: Path) -> None:
    pytest.importorskip("flax", reason="the Flax commands need flax and jax (the jax extra)")
    import jax
    import orbax.checkpoint as ocp
    from flax import linen as nn

    from tests.support import flax_nets as fh

    x = np.zeros((2, 4), np.float32)
    params = nn.Dense(3).init(jax.random.PRNGKey(0), x)
    (root / "params.msgpack").write_bytes(fh.to_bytes(params))
    state = {"params": params["params"], "ema_params": params["params"], "step": 3}
    (root / "state.msgpack").write_bytes(fh.to_bytes(state))
    stacked = fh.Stacked().init(jax.random.PRNGKey(1), np.zeros((2, fh.EMBED), np.float32))
    (root / "scan.msgpack").write_bytes(fh.to_bytes(stacked))
    for folder in ("hf-flax-folder", "flax_model_folder"):
        (root / folder).mkdir()
        (root / folder / "flax_model.msgpack").write_bytes(fh.to_bytes(params["params"]))
        (root / folder / "config.json").write_text(json.dumps({"model_type": "toy"}))
    ocp.PyTreeCheckpointer().save((root / "ckpt_dir").absolute(), params)
    (root / "mypkg").mkdir(exist_ok=True)
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "flax_models.py").write_text(
        textwrap.dedent("""
        from flax import nnx

        class Net(nnx.Module):
            def __init__(self, rngs):
                self.fc = nnx.Linear(4, 2, rngs=rngs)

            def __call__(self, x):
                return self.fc(x)

        def build():
            return Net(nnx.Rngs(0))
    """)
    )
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.fc = nnx.Linear(4, 2, rngs=rngs)

    pure = nnx.state(Net(nnx.Rngs(0)), (nnx.Param, nnx.BatchStat)).to_pure_dict()
    (root / "net.msgpack").write_bytes(fh.to_bytes(pure))


KERAS_SCRIPT = """
import sys, json, numpy as np
import keras, tensorflow as tf
root = sys.argv[1]
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu", name="hidden"),
                          keras.layers.Dense(2, name="head")])
model.save(f"{root}/model.keras")
model.save_weights(f"{root}/model.weights.h5")
open(f"{root}/model.json", "w").write(model.to_json())
model.save(f"{root}/model.h5")
model.export(f"{root}/saved_model_dir", verbose=False)
tf.train.Checkpoint(model=model).write(f"{root}/ckpt/ckpt")
open(f"{root}/model.tflite", "wb").write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
"""


def _keras_sources(root: Path) -> None:
    pytest.importorskip("tensorflow", reason="the Keras/TF sources are written with TensorFlow and Keras")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", KERAS_SCRIPT, str(root)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _nf_sources(root: Path) -> None:
    """A NeuralForecast 3.3 save of the models every README command takes (dense layers only): the
    bundled fixture without the models `--layout neuro-divergent` and `to-onnx` refuse by design."""
    keep = ("MLP", "NHITS", "NLinear")
    folder = root / "nf_folder"
    shutil.copytree(NF_SAVE, folder)
    config = json.loads((folder / "configuration.json").read_text())
    config["configuration"]["alias_to_model"] = {k: v for k, v in config["configuration"]["alias_to_model"].items() if k in keep}
    (folder / "configuration.json").write_text(json.dumps(config))
    for path in folder.glob("*_0.safetensors"):
        if path.name.removesuffix("_0.safetensors") not in keep:
            path.unlink()


def _onnx_model(work: Path) -> None:
    """`out/model.onnx` for onnx-to-safetensors: a graph exported by torch.onnx."""
    pytest.importorskip("onnx", reason="needs the onnx extra")
    (work / "out").mkdir()
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.randn(1, 4),), str(work / "out" / "model.onnx"), dynamo=False)


def _tf1_sources(work: Path) -> None:
    """Google's TF1 BERT layout (a BertForPreTraining of one layer, with its optimizer slots), saved with
    tf.compat.v1's Saver, and the rule file the README names, where the README's path has it."""
    pytest.importorskip("tensorflow", reason="the TF1 checkpoint is written with TensorFlow")
    from tests.support.tf1 import save_with_slots

    h = 8
    shapes = {"bert/embeddings/word_embeddings": (30, h), "bert/embeddings/LayerNorm/gamma": (h,)}
    shapes |= {f"bert/encoder/layer_0/attention/self/query/{r}": (h, h) if r == "kernel" else (h,) for r in ("kernel", "bias")}
    shapes |= {"cls/seq_relationship/output_weights": (2, h), "cls/seq_relationship/output_bias": (2,)}
    save_with_slots(work / "bert_model.ckpt", shapes, slots=("adam_m",))
    shutil.copytree(REPO / "examples" / "layouts", work / "examples" / "layouts")


def _llm_sources(work: Path) -> None:
    """A Hugging Face llama folder with its SentencePiece tokenizer (tests/support/llm.py)."""
    pytest.importorskip("sentencepiece", reason="the language model's tokenizer is trained with sentencepiece")
    from tests.support.llm import tiny_llama

    tiny_llama(work / "llm-folder")


GROUPS: dict[str, Callable[[Path], None]] = {
    "torch": _torch_sources,
    "llm": _llm_sources,
    "tf1": _tf1_sources,
    "flax": _flax_sources,
    "keras": _keras_sources,
    "nf": _nf_sources,
}
# The README's source names, by the group that writes them.
GROUP_OF = {
    name: group
    for group, names in {
        "torch": [
            "model.pt",
            "last.ckpt",
            "ckpt.pt",
            "hf-folder/",
            "SRC",
            "models/",
            "train.pt",
            "ema.pt",
            "tts.pt",
            "gan.pt",
            "whole.pt",
            "yolo.pt",
            "run.ckpt",
            "silero_vad.jit",
            "params.npz",
            "model.pt2",
            "weights.safetensors",
            "tagger.pt",
            "out/",
            "out/model.onnx",
            "out/model.gguf",
        ],
        "flax": ["params.msgpack", "hf-flax-folder/", "ckpt_dir/", "state.msgpack", "scan.msgpack", "net.msgpack"],
        "keras": ["model.keras", "model.weights.h5", "model.h5", "saved_model_dir/", "ckpt/ckpt", "model.tflite"],
        "nf": ["nf_folder/"],
        "tf1": ["bert_model.ckpt"],
        "llm": ["llm-folder/"],
    }.items()
    for name in names
}

# What a command needs in its folder besides its group's sources.
SETUP: dict[str, Callable[[Path], None]] = {
    "convert verify out/": lambda work: _convert_into_out(work),
    "convert verify out/ --source model.pt": lambda work: _convert_into_out(work),
    "convert verify out/ --source nf_folder/": lambda work: _convert_into_out(work, "nf-to-safetensors", "nf_folder/"),
    "convert onnx-to-safetensors out/model.onnx weights/": _onnx_model,
    "convert inspect out/model.gguf": lambda work: _convert_into_out(work, "to-gguf"),
    "convert to-onnx model.pt out/ --module mypkg.models:build --input-shape ids=1x9:int32 --input-range ids=0:30000": (
        _embedding_model
    ),
    "convert to-onnx model.pt out/ --module sentiment:build --input-shape tokens=4x7 --dynamic-axis tokens:1=seq "
    "--quantize qdq-int8 --calibration calib.npz --quantized-atol 0.01": lambda work: np.savez(
        work / "calib.npz", tokens=np.random.default_rng(0).integers(0, 200, (32, 7))
    ),
}
NEEDS = {  # commands whose group is not their first source's, or that need a module on top
    "convert layouts": [],
    "convert layouts burn": [],
    "convert keras-to-safetensors hf-tf-folder/ out/": ["hf-tf"],
    "convert verify out/ --source nf_folder/": ["nf"],
    "convert to-onnx net.msgpack out/ --framework jax --module mypkg.flax_models:build --input-shape x=1x4": ["flax", "jax2onnx"],
}


def _convert_into_out(work: Path, command: str = "pth-to-safetensors", src: str = "model.pt") -> None:
    rc, _, stderr = run_cli(command, src, "out/", "-q", cwd=work, timeout=300)
    assert rc == 0, stderr


def groups_of(command: str) -> list[str]:
    if command in NEEDS:
        return NEEDS[command]
    words = shlex.split(command)
    source = next((w for w in words[2:] if not w.startswith("-")), "")
    if source not in GROUP_OF:
        raise AssertionError(f"README command {command!r}: source {source!r} has no builder in tests/test_readme.py")
    return [GROUP_OF[source]]


def not_run(command: str) -> str | None:
    return next((why for prefix, why in NOT_RUN.items() if command.startswith(prefix)), None)


def _runnable() -> list[str]:
    seen: dict[str, None] = {}
    in_sentiment = _sentiment_block()
    for command in shell_commands():
        if command in in_sentiment:
            continue
        for variant in [command] if not_run(command) else variants(command):
            seen[variant] = None
    return list(seen)


def _sentiment_block() -> list[str]:
    commands = shell_commands()
    start = commands.index("cd fixtures/sentiment")
    return commands[start : start + 4]


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Callable[[str], Path]:
    """A group's sources, written once per session when first asked for."""
    built: dict[str, Path] = {}

    def get(group: str) -> Path:
        if group not in built:
            root = tmp_path_factory.mktemp(f"readme-{group}")
            if group == "hf-tf":  # BERT saved by transformers' TF class with save_pretrained
                shutil.copytree(request.getfixturevalue("hf_models") / "hf" / "bert" / "single", root / "hf-tf-folder")
            elif group == "jax2onnx":  # a folder for PYTHONPATH, as tests/outputs/onnx/test_jax.py installs it
                import importlib.util

                found = None if importlib.util.find_spec("jax2onnx") is None else root
                found = found or installed_without_dependencies("jax2onnx==0.17.1", "jax2onnx", "jax2onnx-0.17.1")
                if found is None:
                    pytest.skip("jax2onnx is not installable here")
                root = found
            else:
                GROUPS[group](root)
            built[group] = root
        return built[group]

    return get


def test_every_readme_command_has_its_sources_or_a_reason() -> None:
    for command in shell_commands():
        if not_run(command) or command in _sentiment_block():
            continue
        for variant in variants(command):
            groups_of(variant)  # raises naming the command when a source has no builder
    assert len(shell_commands()) > 40  # the extraction found the README's blocks


@pytest.mark.parametrize("command", _runnable())
def test_readme_command(command: str, sources: Callable[[str], Path], tmp_path: Path) -> None:
    why = not_run(command)
    if why:
        pytest.skip(why)
    work = tmp_path / "work"
    work.mkdir()
    path = [str(REPO)]
    for group in groups_of(command):
        root = sources(group)
        if group == "jax2onnx":
            path.append(str(root))
        else:
            shutil.copytree(root, work, dirs_exist_ok=True)
    if command in SETUP:
        SETUP[command](work)
    words = shlex.split(command.replace(" SRC ", " model.pt "))
    assert words[0] == "convert", command
    proc = subprocess.run(
        [sys.executable, "-m", "convert.cli", *words[1:]],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(path), "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
    assert "error" not in proc.stderr, proc.stderr


def test_readme_sentiment_walkthrough(tmp_path: Path) -> None:
    """`cd fixtures/sentiment`, then its three commands, /tmp/sentiment as a folder of this test's."""
    pytest.importorskip("onnxruntime", reason="to-onnx validates with ONNX Runtime (the onnx extra)")
    block = _sentiment_block()
    assert block[0] == "cd fixtures/sentiment"
    work = tmp_path / "sentiment"
    shutil.copytree(SENTIMENT, work)
    for command in block[1:]:
        words = shlex.split(command.replace("/tmp/sentiment", str(tmp_path / "results")))
        rc, _, stderr = run_cli(*words[1:], cwd=work, timeout=600)
        assert rc == 0, f"{command}: {stderr}"
    graph = read_manifest(tmp_path / "results" / "onnx")["graph"]
    assert graph["inputs"][0]["range"] == {"low": 0, "high": 200, "from": "nn.Embedding 'embedding' (200 rows)"}


def test_readme_python_api_runs_as_written(sources: Callable[[str], Path], tmp_path: Path) -> None:
    (block,) = fenced_blocks("python")
    work = tmp_path / "work"
    for group in ("torch", "flax", "keras", "nf"):
        shutil.copytree(sources(group), work, dirs_exist_ok=True)
    (work / "snippet.py").write_text(block)
    proc = subprocess.run(
        [sys.executable, "snippet.py"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_manifest(work / "out")["target"]["dtype"] == "bf16"  # the second call replaced the first
    assert read_manifest(work / "ckpt_out")["target"]["layout"] == "candle"


def test_readme_rule_file_runs_on_top_of_burn(tmp_path: Path) -> None:
    (block,) = fenced_blocks("toml")
    (tmp_path / "my_rules.toml").write_text(block)
    torch.manual_seed(0)
    state = {"enc.emb.weight": torch.randn(10, 4), "head.weight": torch.randn(3, 4), "head.bias": torch.randn(3)}
    torch.save(state, tmp_path / "model.pt")
    rc, _, stderr = run_cli("pth-to-safetensors", "model.pt", "out/", "--layout-file", "my_rules.toml", cwd=tmp_path)
    assert rc == 0, stderr
    tensors = {t["name"]: t for t in read_manifest(tmp_path / "out")["tensors"]}
    assert "enc.embedding.weight" in tensors
    assert tensors["head.weight"]["shape"] == [4, 3]  # the rule's transpose


def test_readme_rust_blocks_are_the_tested_example_or_fragments() -> None:
    """The quickstart is rust/rmc-load/examples/quickstart.rs (built and run by tests/rust/test_crate.py); the
    per-layout snippets are fragments of a user's program (its model types), not a program to run."""
    blocks = fenced_blocks("rust")
    example = (REPO / "rust" / "rmc-load" / "examples" / "quickstart.rs").read_text()
    assert any(block.strip() in example for block in blocks), "the README's quickstart is not the tested example"
    assert all("MyModel" in block or "fn main" in block or "HuggingFaceLoader" in block for block in blocks)


def test_readme_exit_code_table_is_the_tools() -> None:
    from convert.errors import EXIT_CODES

    table = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", README, re.M))
    assert set(map(int, table)) == set(EXIT_CODES)
