"""Write the Rust crate's own test data: small outputs of this tool, and the values they must give.

    .venv/bin/python scripts/make_rust_fixtures.py          # into rust/rmc-load/tests/data

`cargo test` (rust/rmc-load/tests/*.rs) opens these without Python, so the crate is tested on its
own; tests/rust/test_fixtures.py runs it and checks that this script still writes the committed
bytes (run the script and commit the result when a change to the writers is meant).

Each fixture is a conversion by the `convert` CLI of a tiny seeded torch checkpoint:
    safetensors/   `pth-to-safetensors --dtype f16 --digest sha256`: one file, a tied (aliased) head
    sharded/       the same checkpoint in f32, blake3, in shards with model.safetensors.index.json
    gguf/          `to-gguf`: Q4_K, Q8_0, F16 and F32 tensors in one model.gguf
and expected/<fixture>/<tensor name>.f32 holds every name's values as little-endian f32, from the
reference reader: torch for the SafeTensors ones (after the same cast), the `gguf` package's
dequantizer for the GGUF one. The manifests record the checkpoint's temporary path; it is written
as its bare file name so that regeneration is byte-identical.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "rust" / "rmc-load" / "tests" / "data"
CHECKPOINT = "model.pt"


class Tied(nn.Module):
    """An embedding with an output head tied to it, a Linear and a LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.fc = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 16, bias=False)
        self.head.weight = self.emb.weight


def normal(rng: np.random.Generator, *shape: int) -> torch.Tensor:
    """Seeded values from numpy's generator, the same on every machine (torch.randn's vectorized
    path depends on the CPU's instruction set)."""
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))


def tied_model() -> Tied:
    rng = np.random.default_rng(0)
    model = Tied()
    with torch.no_grad():
        for p in model.parameters():  # the tied weight once
            p.copy_(normal(rng, *p.shape))
    return model


def gguf_state() -> dict[str, torch.Tensor]:
    """One tensor per ggml type the Rust test dequantizes (rows of 256 for Q4_K's super-blocks)."""
    rng = np.random.default_rng(1)
    return {
        "proj.weight": normal(rng, 4, 256),  # --type q4_k
        "q8.weight": normal(rng, 4, 64),  # overridden to q8_0
        "half.weight": normal(rng, 3, 10),  # overridden to f16
        "norm.weight": normal(rng, 256),  # 1-D: stays f32
    }


def convert(*args: object) -> None:
    """`convert ARGS -q`, this checkout's code first on the path."""
    cmd = [sys.executable, "-m", "convert.cli", *map(str, args), "-q"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"convert {' '.join(map(str, args))} failed ({proc.returncode}): {proc.stderr.strip()}")


def land(out: Path, dest: Path, checkpoint: Path) -> None:
    """Move a conversion into `dest`, the checkpoint's temporary path in its manifest made bare."""
    manifest = out / "manifest.json"
    manifest.write_text(manifest.read_text(encoding="utf-8").replace(str(checkpoint), checkpoint.name), encoding="utf-8")
    shutil.copytree(out, dest)


def write_expected(folder: Path, values: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True)
    for name, array in values.items():
        (folder / f"{name}.f32").write_bytes(np.ascontiguousarray(array, dtype="<f4").tobytes())


def safetensors_fixtures(work: Path, dest: Path) -> None:
    model = tied_model()
    checkpoint = work / "tied" / CHECKPOINT
    checkpoint.parent.mkdir()
    torch.save(model.state_dict(), checkpoint)
    ways = {
        "safetensors": (("--dtype", "f16", "--digest", "sha256"), torch.float16),
        "sharded": (("--max-shard-size", "600B"), torch.float32),
    }
    for name, (options, dtype) in ways.items():
        convert("pth-to-safetensors", checkpoint, work / name, *options)
        land(work / name, dest / name, checkpoint)
        torch_values = {k: v.detach().to(dtype).float().numpy() for k, v in model.state_dict(keep_vars=True).items()}
        write_expected(dest / "expected" / name, torch_values)


def gguf_fixture(work: Path, dest: Path) -> None:
    import gguf

    checkpoint = work / "gguf-source" / CHECKPOINT
    checkpoint.parent.mkdir()
    torch.save(gguf_state(), checkpoint)
    overrides = ("--type-override", "q8.weight=q8_0", "--type-override", "half.weight=f16")
    convert("to-gguf", checkpoint, work / "gguf", "--type", "q4_k", *overrides)
    land(work / "gguf", dest / "gguf", checkpoint)
    reader = gguf.GGUFReader(dest / "gguf" / "model.gguf")
    dequantized = {t.name: gguf.quants.dequantize(np.asarray(t.data), t.tensor_type) for t in reader.tensors}
    write_expected(dest / "expected" / "gguf", dequantized)


def write_fixtures(dest: Path) -> None:
    """Every fixture into the empty folder `dest`."""
    with tempfile.TemporaryDirectory(prefix="rmc-rust-fixtures-") as tmp:
        safetensors_fixtures(Path(tmp), dest)
        gguf_fixture(Path(tmp), dest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DATA, help="folder to (re)write (its old contents are replaced)")
    args = parser.parse_args()
    if args.out.exists():
        if any(args.out.iterdir()) and not (args.out / "expected").is_dir():
            sys.exit(f"{args.out} is not empty and holds no earlier fixtures: give an empty or new folder")
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    write_fixtures(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
