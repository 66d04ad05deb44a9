"""`convert to-onnx` for models that take token ids and masks: integer and bool inputs with their
dtypes and value ranges (given, taken from --inputs, or read from the model's own code).

The exports run the CLI as a user does; each graph is then run by ONNX Runtime against the module's
own forward pass at batch sizes and sequence lengths validation did not use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="exports torch models")
pytest.importorskip("onnxruntime", reason="needs the onnx extra")
pytest.importorskip("onnxsim", reason="needs the onnx extra")

from tests.support import REPO as ROOT, assert_cli_error, assert_no_output, read_manifest, run_cli  # noqa: E402
from tests.support.onnx_models import run_onnx, write_models  # noqa: E402

EXAMPLE = ROOT / "fixtures" / "sentiment"

# A user's model file: `--module token_models:NAME` imports it from the working folder.
TOKEN_MODELS = '''
import torch
from torch import nn
import torch.nn.functional as F


class Encoder(nn.Module):
    """A small transformer encoder over token ids, with a Hugging Face style attention mask (1 = keep)."""

    def __init__(self, vocab=30, dim=16, max_len=64):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 2)

    def forward(self, input_ids, attention_mask):
        positions = torch.arange(input_ids.shape[1])
        h = self.tokens(input_ids) + self.positions(positions)
        h = self.encoder(h, src_key_padding_mask=attention_mask == 0)
        keep = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1).clamp(min=1.0))


class Tabular(nn.Module):
    """One float input and one integer input (a category looked up in an embedding)."""

    def __init__(self):
        super().__init__()
        self.category = nn.Embedding(5, 3)
        self.fc = nn.Linear(4 + 3, 2)

    def forward(self, features, category):
        return self.fc(torch.cat([features, self.category(category)], dim=-1))


class BoolMask(nn.Module):
    """The mask goes straight into nn.MultiheadAttention: a bool key padding mask (True = padding)."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x, padding):
        return self.attn(x, x, x, key_padding_mask=padding, need_weights=False)[0]


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(11, 4))

    def forward(self, ids, scores):
        return F.embedding(ids.view(-1, ids.shape[-1]), self.table).masked_fill(scores.unsqueeze(-1) > 0, 0.0)


class Untraceable(nn.Module):
    """Python control flow on values: torch.fx cannot trace it, so nothing is inferred."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(21, 4)

    def forward(self, tokens):
        if tokens.max() >= 21:
            raise ValueError("token ids beyond the vocabulary")
        return self.embed(tokens).mean(1)


def encoder():
    torch.manual_seed(0)
    return Encoder().eval()


def tabular():
    torch.manual_seed(0)
    return Tabular()


def untraceable():
    torch.manual_seed(0)
    return Untraceable()
'''


@pytest.fixture
def models(tmp_path: Path) -> Any:
    return write_models(tmp_path, TOKEN_MODELS, "token_models")


@pytest.fixture
def sentiment(tmp_path: Path) -> Any:
    """The bundled example's module file, copied where a user's working folder would have it."""
    return write_models(tmp_path, (EXAMPLE / "sentiment.py").read_text(), "sentiment")


def save_checkpoint(module: Any, path: Path) -> Path:
    """As a training loop saves it: the state dict beside the epoch."""
    torch.save({"model_state_dict": module.state_dict(), "epoch": 3}, path)
    return path


def export(src: Path, out: Path, *args: str, cwd: Path) -> dict[str, Any]:
    rc, stdout, stderr = run_cli("to-onnx", src, out, *args, cwd=cwd, timeout=600)
    assert rc == 0, stderr
    assert "Traceback" not in stderr
    return read_manifest(out)


def forward(module: Any, *arrays: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(*[torch.from_numpy(a) for a in arrays]).numpy()


def test_sentiment_classifier_exports_with_dynamic_batch_and_sequence(tmp_path: Path, sentiment: Any) -> None:
    """The issue's own command: Embedding -> LSTM(batch_first) -> Linear -> softmax, no dtype given."""
    model = sentiment.build().eval()
    src = save_checkpoint(model, tmp_path / "model.pt")
    doc = export(
        src,
        tmp_path / "onnx",
        "--module",
        "sentiment:build",
        "--input-shape",
        "tokens=4x7",
        "--dynamic-axis",
        "tokens:1=seq",
        cwd=tmp_path,
    )
    graph = doc["graph"]
    (tokens,) = graph["inputs"]
    assert tokens["dtype"] == "int64" and tokens["shape"] == ["batch", "seq"]
    assert tokens["range"] == {"low": 0, "high": sentiment.VOCAB, "from": "nn.Embedding 'embedding' (200 rows)"}
    assert graph["simplified"] is True and "LSTM" in graph["operators"]
    assert graph["validation"]["batch_sizes"] == [4, 6] and graph["validation"]["atol"] == 1e-4
    rng = np.random.default_rng(1)
    for batch, seq in ((1, 3), (5, 19)):  # sizes validation never ran
        ids = rng.integers(0, sentiment.VOCAB, (batch, seq)).astype(np.int64)
        got = run_onnx(tmp_path / "onnx" / "model.onnx", {"tokens": ids})[0]
        np.testing.assert_allclose(got, forward(model, ids), rtol=0, atol=1e-4)
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)


def test_bundled_example_end_to_end(tmp_path: Path, sentiment: Any) -> None:
    """The README's commands on the committed checkpoint: SafeTensors for the Rust loaders, then the
    validated graph; both hold the same weights as the checkpoint."""
    from safetensors.numpy import load_file

    rc, _, stderr = run_cli("pth-to-safetensors", "sentiment.pt", tmp_path / "weights", cwd=EXAMPLE)
    assert rc == 0, stderr
    doc = export(
        EXAMPLE / "sentiment.pt",
        tmp_path / "onnx",
        "--module",
        "sentiment:build",
        "--input-shape",
        "tokens=1x16",
        "--dynamic-axis",
        "tokens:1=seq",
        cwd=EXAMPLE,
    )
    assert doc["graph"]["inputs"][0]["dtype"] == "int64"
    assert doc["graph"]["inputs"][0]["range"]["high"] == 200
    model = sentiment.build().eval()
    weights = load_file(str(tmp_path / "weights" / "model.safetensors"))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    ids = np.random.default_rng(2).integers(0, 200, (3, 11)).astype(np.int64)
    got = run_onnx(tmp_path / "onnx" / "model.onnx", {"tokens": ids})[0]
    np.testing.assert_allclose(got, forward(model, ids), rtol=0, atol=1e-4)


def test_transformer_encoder_with_token_ids_and_attention_mask(tmp_path: Path, models: Any) -> None:
    model = models.encoder()
    src = save_checkpoint(model, tmp_path / "encoder.pt")
    doc = export(
        src,
        tmp_path / "onnx",
        "--module",
        "token_models:encoder",
        "--input-shape",
        "input_ids=2x6",
        "--input-shape",
        "attention_mask=2x6",
        "--dynamic-axis",
        "input_ids:1=seq",
        "--dynamic-axis",
        "attention_mask:1=seq",
        cwd=tmp_path,
    )
    ids, mask = doc["graph"]["inputs"]
    assert ids["dtype"] == "int64" and ids["range"]["high"] == 30 and ids["shape"] == ["batch", "seq"]
    assert mask["dtype"] == "int64" and mask["range"] == {
        "low": 0,
        "high": 2,
        "from": "the mask of nn.TransformerEncoder 'encoder' (src_key_padding_mask)",
    }
    rng = np.random.default_rng(3)
    for batch, seq in ((1, 4), (3, 13)):
        input_ids = rng.integers(0, 30, (batch, seq)).astype(np.int64)
        attention_mask = np.ones((batch, seq), np.int64)
        attention_mask[:, seq // 2 + 1 :] = 0  # padded tails
        got = run_onnx(tmp_path / "onnx" / "model.onnx", {"input_ids": input_ids, "attention_mask": attention_mask})
        np.testing.assert_allclose(got[0], forward(model, input_ids, attention_mask), rtol=0, atol=1e-5)


def test_float_and_integer_inputs_with_range_and_dtype_from_inputs(tmp_path: Path, models: Any) -> None:
    """--input-range narrows the category to 1..3; the .npz's int32 array gives the graph's dtype."""
    model = models.tabular().eval()
    src = save_checkpoint(model, tmp_path / "tabular.pt")
    rng = np.random.default_rng(4)
    np.savez(
        tmp_path / "inputs.npz",
        features=rng.standard_normal((5, 4)).astype(np.float32),
        category=rng.integers(1, 4, 5).astype(np.int32),
    )
    doc = export(
        src,
        tmp_path / "onnx",
        "--module",
        "token_models:tabular",
        "--input-shape",
        "features=2x4",
        "--input-shape",
        "category=2",
        "--input-range",
        "category=1:4",
        "--inputs",
        "inputs.npz",
        cwd=tmp_path,
    )
    features, category = doc["graph"]["inputs"]
    assert features["dtype"] == "float" and "range" not in features
    assert category["dtype"] == "int32" and category["range"] == {"low": 1, "high": 4, "from": "--input-range"}
    assert doc["graph"]["validation"]["inputs"] == ["generated", "inputs.npz"]
    x = rng.standard_normal((7, 4)).astype(np.float32)
    c = rng.integers(0, 5, 7).astype(np.int32)
    got = run_onnx(tmp_path / "onnx" / "model.onnx", {"features": x, "category": c})[0]
    np.testing.assert_allclose(got, forward(model, x, c), rtol=0, atol=1e-5)


def test_explicit_dtype_exports_a_model_nothing_can_be_inferred_from(tmp_path: Path, models: Any) -> None:
    src = save_checkpoint(models.untraceable(), tmp_path / "untraceable.pt")
    args = ("--module", "token_models:untraceable", "--dynamic-axis", "tokens:1=seq")
    result = run_cli("to-onnx", src, tmp_path / "out", *args, "--input-shape", "tokens=2x5", cwd=tmp_path, timeout=600)
    assert_cli_error(result, 2, "forward raised", "tokens float32[4, 7]", "--input-shape NAME=SHAPE:DTYPE")
    assert_no_output(tmp_path / "out")
    doc = export(src, tmp_path / "onnx", *args, "--input-shape", "tokens=2x5:int32", "--input-range", "tokens=0:21", cwd=tmp_path)
    (tokens,) = doc["graph"]["inputs"]
    assert tokens["dtype"] == "int32" and tokens["range"] == {"low": 0, "high": 21, "from": "--input-range"}


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--input-shape", "tokens=4x7:int65"), "unknown dtype 'int65'"),
        (("--input-shape", "tokens=4x7:float32"), "nn.Embedding 'embedding' (200 rows) takes int64 or int32"),
        (("--input-shape", "tokens=4x7:bool"), "takes int64 or int32"),
        (("--input-shape", "words=4x7:int64"), "--input-shape names ['words']"),
        (("--input-shape", "tokens=4x7", "--input-range", "tokens=0-21"), "expected NAME=LOW:HIGH"),
        (("--input-shape", "tokens=4x7", "--input-range", "tokens=5:5"), "LOW < HIGH"),
        (("--input-shape", "tokens=4x7", "--input-range", "tokens=a:b"), "expected NAME=LOW:HIGH"),
        (("--input-shape", "tokens=4x7", "--input-range", "tokens=0:201"), "takes values in [0, 200)"),
        (("--input-shape", "tokens=4x7", "--input-range", "tokens=-1:5"), "takes values in [0, 200)"),
        (("--input-shape", "tokens=4x7", "--input-range", "words=0:5"), "--input-range names ['words']"),
    ],
)
def test_bad_dtype_and_range_options_are_usage_errors(tmp_path: Path, sentiment: Any, args: tuple[str, ...], needle: str) -> None:
    src = save_checkpoint(sentiment.build(), tmp_path / "model.pt")
    result = run_cli("to-onnx", src, tmp_path / "out", "--module", "sentiment:build", *args, cwd=tmp_path, timeout=600)
    assert_cli_error(result, 2, needle)
    assert_no_output(tmp_path / "out")


@pytest.mark.parametrize(
    "tokens, needle",
    [
        (np.array([[1, 2, 200]], np.int64), "'tokens' holds 200, outside [0, 200) (nn.Embedding 'embedding'"),
        (np.array([[1, -3, 2]], np.int64), "'tokens' holds -3, outside [0, 200)"),
        (np.array([[1.0, 2.0, 3.0]], np.float32), "'tokens' is float32[1, 3]; the model takes int64[1, 3]"),
        (np.array([[1, 2, 3]], np.uint8), "'tokens' is uint8, but nn.Embedding"),
    ],
)
def test_wrong_values_or_dtype_in_inputs_file_name_the_input(
    tmp_path: Path, sentiment: Any, tokens: np.ndarray, needle: str
) -> None:
    src = save_checkpoint(sentiment.build(), tmp_path / "model.pt")
    np.savez(tmp_path / "tok.npz", tokens=tokens)
    result = run_cli(
        "to-onnx",
        src,
        tmp_path / "out",
        "--module",
        "sentiment:build",
        "--input-shape",
        "tokens=1x3",
        "--dynamic-axis",
        "tokens:1=seq",
        "--inputs",
        "tok.npz",
        cwd=tmp_path,
        timeout=600,
    )
    assert_cli_error(result, 2, needle)
    assert_no_output(tmp_path / "out")


def test_range_on_a_float_input_and_float_values_for_an_index_are_usage_errors(tmp_path: Path, models: Any) -> None:
    src = save_checkpoint(models.tabular(), tmp_path / "tabular.pt")
    shapes = ("--module", "token_models:tabular", "--input-shape", "features=2x4", "--input-shape", "category=2")
    result = run_cli("to-onnx", src, tmp_path / "out", *shapes, "--input-range", "features=0:3", cwd=tmp_path, timeout=600)
    assert_cli_error(result, 2, "'features' is float32; ranges are for integer and bool inputs")
    np.savez(tmp_path / "inputs.npz", features=np.zeros((2, 4), np.float32), category=np.zeros(2, np.float32))
    result = run_cli("to-onnx", src, tmp_path / "out", *shapes, "--inputs", "inputs.npz", cwd=tmp_path, timeout=600)
    assert_cli_error(result, 2, "'category' is float32[2]; the model takes int64[2]")
    assert_no_output(tmp_path / "out")


def test_hints_from_the_traced_forward(models: Any, sentiment: Any) -> None:
    """What each model's code says: embedding indices, bool and derived masks, functional lookups;
    nothing for an untraceable forward or a float input."""
    from exporters.onnx_export.torch_hints import input_hints

    hint = input_hints(sentiment.build(), ["tokens"])["tokens"]
    assert hint.dtypes[0] == "int64" and hint.range == (0, 200)
    hints = input_hints(models.encoder(), ["input_ids", "attention_mask"])
    assert hints["input_ids"].range == (0, 30)  # the smallest table it indexes is the token table
    assert hints["attention_mask"].dtypes[0] == "int64" and hints["attention_mask"].range == (0, 2)
    direct = input_hints(models.BoolMask(), ["x", "padding"])
    assert list(direct) == ["padding"] and direct["padding"].dtypes[0] == "bool"
    assert "key_padding_mask" in direct["padding"].reason
    functional = input_hints(models.Functional(), ["ids", "scores"])
    assert functional["ids"].range == (0, 11) and "F.embedding" in functional["ids"].reason
    assert functional["scores"].dtypes[0] == "int64" and "masked_fill" in functional["scores"].reason
    assert input_hints(models.untraceable(), ["tokens"]) == {}
    assert input_hints(models.tabular(), ["features", "category"]).keys() == {"category"}


def test_generated_inputs_respect_dtype_and_range() -> None:
    from exporters.onnx_export.inputs import input_sets
    from exporters.onnx_export.spec import InputSpec

    specs = [
        InputSpec("ids", (2, 5), np.dtype("int32"), {0: "batch", 1: "seq"}, (7, 12), "--input-range"),
        InputSpec("mask", (2, 5), np.dtype("bool"), {0: "batch", 1: "seq"}, (0, 2), "a mask"),
        InputSpec("x", (2, 3), np.dtype("float32"), {0: "batch"}),
    ]
    small, big = input_sets(specs, None, None)
    assert small.arrays["ids"].shape == (2, 5) and big.arrays["ids"].shape == (4, 7)
    for arrays in (small.arrays, big.arrays):
        assert arrays["ids"].dtype == np.int32 and arrays["ids"].min() >= 7 and arrays["ids"].max() < 12
        assert arrays["mask"].dtype == np.bool_ and arrays["x"].dtype == np.float32
    assert len(np.unique(big.arrays["ids"])) > 2  # the whole range, not just its two lowest values


def test_pt2_program_with_token_ids_records_their_range(tmp_path: Path, sentiment: Any) -> None:
    model = sentiment.build().eval()
    ids = torch.randint(0, 200, (3, 9))
    dims = {"tokens": {0: torch.export.Dim("batch")}}  # torch.export fixes an LSTM's sequence length
    torch.export.save(torch.export.export(model, (ids,), dynamic_shapes=dims), tmp_path / "sentiment.pt2")
    doc = export(tmp_path / "sentiment.pt2", tmp_path / "onnx", cwd=tmp_path)
    (tokens,) = doc["graph"]["inputs"]
    assert tokens["dtype"] == "int64" and tokens["shape"] == ["batch", 9]
    assert tokens["range"] == {"low": int(ids.min()), "high": int(ids.max()) + 1, "from": "the program's example inputs"}
    result = run_cli(
        "to-onnx", tmp_path / "sentiment.pt2", tmp_path / "out", "--input-range", "tokens=0:200", cwd=tmp_path, timeout=600
    )
    assert_cli_error(result, 2, "drop --input-shape, --input-range")
    assert_no_output(tmp_path / "out")
