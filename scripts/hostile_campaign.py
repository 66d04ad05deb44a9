"""A longer hostile-input campaign for local runs: every file and folder of the hostile corpus, the
NeuralForecast and example fixtures, seeds of the newer readers written by their frameworks (TFLite,
NumPy .npy/.npz/pickles, TorchScript, training checkpoints, ONNX with Constants and subgraphs, TF
checkpoint folders), and
the user documents (layout files, batch job files and reports, manifests given to verify); then
seeded byte-level mutants of all of them. Each runs through the CLI in a child under a 4 GiB
address-space cap, in an empty folder: files and folders through `convert auto`, documents through
the command that reads them. Besides byte flips, structural mutators redo what the third round's
campaign found (issue 35): a file of the input turned into a symbolic or hard link to an outside
file (which must be refused before a byte of it is read, so no run may exit 0 and no error line may
quote it), a torch zip storage byte changed behind its CRC-32 or its local header's lengths edited,
index shard names and TF checkpoint paths too long for the system, TFLite scales and zero points
that lose values, NPY headers with an extra key.

A run fails the campaign when it exits 1 (an internal error), dies of a signal, prints a traceback,
prints anything but exactly one stderr line on failure (batch: one line per failed job is allowed),
leaves output or a staging folder behind after failing, creates a `canary`, or exceeds the peak RSS
or wall-time bounds. The summary prints, per kind, the number of runs, the exit codes, and the worst
peak RSS and wall time: the figures SECURITY.md quotes.

    PYTHONPATH=$PWD /work/venv/bin/python scripts/hostile_campaign.py --mutants 2000 --seed 18 --workers 2
    PYTHONPATH=$PWD /work/venv/bin/python scripts/hostile_campaign.py --kind tf-checkpoint --mutants 300
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import shutil
import struct
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the repository, for tests.support

from tests.support.measured_run import PEAK_RSS_LIMIT, run_measured  # noqa: E402

WALL_LIMIT = 60.0
SEEDS = [REPO / "fixtures" / "example", REPO / "fixtures" / "hostile", REPO / "fixtures" / "neuralforecast"]
OUT = "<out>"  # stands for the run's output folder in a case's arguments
_HEADER = b'{"fc.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}  '  # padded to 8 bytes
SAFETENSORS = len(_HEADER).to_bytes(8, "little") + _HEADER + bytes(8)


@dataclass
class Case:
    label: str
    kind: str
    args: list[object]  # `OUT`: the run's output folder; "<src>.EXT": the input; "<in>/NAME": one of `files`
    batch: bool = False  # batch prints one line per failed job
    files: dict[str, bytes] = field(default_factory=dict)  # written beside the run before it starts
    link: str = ""  # "symlink NAME" / "hardlink NAME": that file of the input (or the input) links outside


def is_folder_seed(path: Path) -> bool:
    return path.is_dir() and any(p.is_file() for p in path.iterdir()) and not any(p.is_dir() for p in path.iterdir())


def corpus_cases() -> list[tuple[Case, dict[str, bytes] | bytes]]:
    """(case, content) of every fixture: single files, and model folders (NeuralForecast saves)."""
    found: list[tuple[Case, dict[str, bytes] | bytes]] = []
    for root in SEEDS:
        for p in sorted(root.rglob("*")):
            rel = str(p.relative_to(REPO))
            if p.is_file() and p.name != "catalog.json" and p.stat().st_size <= 4 << 20 and not is_folder_seed(p.parent):
                found.append((Case(rel, p.suffix.lstrip(".") or "file", ["auto", "<src>", OUT]), p.read_bytes()))
            elif is_folder_seed(p):
                found.append((Case(rel, "folder", ["auto", "<src>", OUT]), {f.name: f.read_bytes() for f in sorted(p.iterdir())}))
    return found


def reader_seeds() -> list[tuple[Case, bytes]]:
    """Files of the newer readers, written by their frameworks (skipped when one is not installed)."""
    import pytest

    from tests.support import fuzz as fr

    made: list[tuple[str, str, bytes]] = []
    builders = [
        ("tflite", "tflite", fr.tflite_seed_bytes),
        ("torchscript", "pt", fr.torchscript_seed_bytes),
        ("training", "pt", fr.training_seed_bytes),
    ]
    for kind, suffix, build in builders:
        try:
            made += [(kind, suffix, blob) for blob in build()]
        except pytest.skip.Exception:
            print(f"no {kind} seeds: its framework is not installed")
    made += [(f"numpy-{k}", k, blob) for k, blobs in fr.numpy_seed_bytes().items() for blob in blobs]
    try:
        from tests.support.onnx_graphs import model_with_subgraphs

        made.append(("onnx", "onnx", model_with_subgraphs().SerializeToString()))
    except pytest.skip.Exception:
        print("no onnx seeds: onnx is not installed")
    return [
        (Case(f"{kind} seed {i}", kind, ["auto", f"<src>.{suffix}", OUT]), blob) for i, (kind, suffix, blob) in enumerate(made)
    ]


def tensorflow_seeds() -> list[tuple[Case, dict[str, bytes] | bytes]]:
    """Checkpoint folders written by TensorFlow, read by `convert auto` without it: a tf.train.Checkpoint
    of a small Keras model, the same cut into slices over many data files (MaxShardSizePolicy), and a
    tf.compat.v1 Saver checkpoint of graph variables with a scalar step."""
    try:
        import numpy as np
        import tensorflow as tf
    except ImportError:
        print("no tensorflow seeds: tensorflow is not installed")
        return []
    scratch = Path(tempfile.mkdtemp(prefix="hostile-tf-seeds-"))
    try:
        model = tf.keras.Sequential([tf.keras.Input((6,)), tf.keras.layers.Dense(5), tf.keras.layers.Dense(3)])
        tf.train.Checkpoint(model=model).save(str(scratch / "v2" / "ckpt"))
        cut = tf.train.CheckpointOptions(experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(48))
        tf.train.Checkpoint(model=model).write(str(scratch / "v2-sliced" / "ckpt"), options=cut)
        with tf.Graph().as_default(), tf.compat.v1.Session() as session:
            rng = np.random.default_rng(0)
            tf.compat.v1.get_variable("dense/kernel", initializer=rng.standard_normal((4, 3)).astype("float32"))
            tf.compat.v1.get_variable("dense/bias", initializer=np.zeros(3, "float32"))
            tf.compat.v1.get_variable("global_step", initializer=np.int64(7))
            session.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver().save(session, str(scratch / "v1" / "model.ckpt"))
        names = ("v2", "v2-sliced", "v1")
        folders = {name: {f.name: f.read_bytes() for f in sorted((scratch / name).iterdir())} for name in names}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return [
        (Case(f"tf-checkpoint seed {name}", "tf-checkpoint", ["auto", "<src>", OUT]), files) for name, files in folders.items()
    ]


def document_seeds() -> list[tuple[Case, dict[str, bytes] | bytes]]:
    """User documents, each with the command that reads it: layout files (built-in ones, and patterns
    that backtrack), job files, batch reports, manifests."""
    from convert.mapping import builtin_layouts, layout_text

    layouts = [layout_text(n).encode() for n in sorted({d["name"] for d in builtin_layouts().values()})]
    layouts += [
        f'name = "mine"\nextends = "pytorch"\n[[rules]]\n{rule}\nto = "x"\n'.encode()
        for rule in [
            "regex = '^(a|aa)+$'",
            "match = '{a...}.{b...}.{c...}.{d...}.{e...}.{f...}.x'",
            "regex = '^(?P<p>.+)\\\\.(?P<q>.+)\\\\.weight$'",
        ]
    ]
    layout_args: list[object] = ["auto", "<in>/model.safetensors", OUT, "--layout-file", "<src>.toml"]
    cases: list[tuple[Case, dict[str, bytes] | bytes]] = [
        (Case("layout file", "layout", layout_args, files={"model.safetensors": SAFETENSORS}), text) for text in layouts
    ]
    job = (
        b'[defaults]\nlayout = "burn"\n[[job]]\nsource = "model.safetensors"\noutput = "o1"\n'
        b'[[job]]\nsource = "model.safetensors"\n'
    )
    cases.append(
        (
            Case(
                "job file",
                "job",
                ["batch", "--job-file", "<src>.toml", "--out-dir", OUT, "--jobs", "1"],
                batch=True,
                files={"model.safetensors": SAFETENSORS},
            ),
            job,
        )
    )
    report = b'{"status": "failed", "source": "model.safetensors", "output": "m"}\n{"status": "ok", "source": "x"}\n'
    cases.append(
        (
            Case(
                "batch report",
                "report",
                ["batch", "<in>/model.safetensors", "--out-dir", OUT, "--jobs", "1", "--retry-failed", "<src>.jsonl"],
                batch=True,
                files={"model.safetensors": SAFETENSORS},
            ),
            report,
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        from convert.api import pth_to_safetensors

        pth_to_safetensors(REPO / "fixtures" / "example" / "tiny_model.pt", Path(tmp) / "o")
        converted = {p.name: p.read_bytes() for p in (Path(tmp) / "o").iterdir()}
    cases.append((Case("converted folder", "manifest", ["verify", "<src>"]), converted))
    return cases


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A few byte flips, splices, truncations or repeated runs: what fuzzers find structure with."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if not buf:
            break
        at = rng.randrange(len(buf))
        op = rng.randrange(5)
        if op == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[at : at + 8] = rng.choice([b"\xff" * 8, b"\x00" * 8, b"\x7f\xff\xff\xff\xff\xff\xff\xff"])
        elif op == 2:
            del buf[at:]
        elif op == 3:
            end = min(len(buf), at + rng.randint(1, 64))
            buf[at:at] = buf[at:end] * rng.randint(2, 50)
        else:
            other = rng.randrange(len(buf))
            buf[at : at + 16] = buf[other : other + 16]
    return bytes(buf)


def mutant(content: dict[str, bytes] | bytes, rng: random.Random) -> dict[str, bytes] | bytes:
    """A file mutated, or a folder with one of its files mutated."""
    if isinstance(content, bytes):
        return mutate(content, rng)
    name = rng.choice(sorted(content))
    return {**content, name: mutate(content[name], rng)}


# --- structural mutators (issue 35) ---------------------------------------------------------------

OUTSIDE = b"root:x:0:0:root:/root:/bin/bash\n"  # what a link to /etc/passwd would read
LEAKS = (OUTSIDE[:8].decode(), str(int.from_bytes(OUTSIDE[:8], "little")), "root:x:0")
LONG_NAME = "x" * 300
Content = dict[str, bytes] | bytes
Made = tuple[Case, Content] | None


def structural(case: Case, content: Content, rng: random.Random) -> Made:
    """A mutant of one of the kinds issue 35 names, when the seed has what it edits (else None)."""
    choices = [link_mutant] if case.args[0] == "auto" else []  # documents named on the command line are the user's
    names = sorted(content) if isinstance(content, dict) else []
    blobs = [content] if isinstance(content, bytes) else [content[n] for n in names]
    if any(b[:4] == b"PK\x03\x04" and _storages(b) for b in blobs):
        choices.append(storage_mutant)
    if any(n.endswith(".index.json") or n == "checkpoint" for n in names):
        choices.append(long_name_mutant)
    if isinstance(content, bytes) and content[4:8] == b"TFL3":
        choices.append(tflite_mutant)
    if isinstance(content, bytes) and content[:6] == b"\x93NUMPY":
        choices.append(npy_key_mutant)
    return rng.choice(choices)(case, content, rng) if choices else None


def link_mutant(case: Case, content: Content, rng: random.Random) -> Made:
    """One file of the input (or the input file itself) a symbolic or hard link to an outside file."""
    how = rng.choice(["symlink", "hardlink"])
    name = rng.choice(sorted(content)) if isinstance(content, dict) else ""
    return Case(
        f"{case.label}, {name or 'itself'} a {how} outside", case.kind, case.args, case.batch, case.files, f"{how} {name}"
    ), content


def _storages(blob: bytes) -> list[zipfile.ZipInfo]:
    import io

    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            return [i for i in zf.infolist() if re.search(r"/(data|constants)/\w+$", i.filename) and i.file_size]
    except (zipfile.BadZipFile, ValueError, NotImplementedError, OSError):
        return []


def storage_mutant(case: Case, content: Content, rng: random.Random) -> Made:
    """A torch zip storage byte changed behind its unchanged CRC-32, or its local header's name or
    extra length edited (the data start moves, the central directory does not)."""

    def edit(blob: bytes) -> tuple[bytes, str]:
        info = rng.choice(_storages(blob))
        buf = bytearray(blob)
        name_len, extra_len = struct.unpack_from("<HH", buf, info.header_offset + 26)
        what = rng.choice(["byte", "name length", "extra length"])
        if what == "byte":
            start = info.header_offset + 30 + name_len + extra_len
            buf[start + rng.randrange(info.file_size)] ^= 1 << rng.randrange(8)
        elif what == "name length":
            struct.pack_into("<HH", buf, info.header_offset + 26, name_len + 1, max(extra_len - 1, 0))
        else:
            struct.pack_into("<H", buf, info.header_offset + 28, max(extra_len - rng.choice([1, 4, 8]), 0))
        return bytes(buf), f"{info.filename} {what}"

    if isinstance(content, bytes):
        blob, what = edit(content)
        return Case(f"{case.label}, {what}", case.kind, case.args, case.batch, case.files), blob
    name = rng.choice([n for n in sorted(content) if content[n][:4] == b"PK\x03\x04" and _storages(content[n])])
    blob, what = edit(content[name])
    return Case(f"{case.label}, {name}: {what}", case.kind, case.args, case.batch, case.files), {**content, name: blob}


def long_name_mutant(case: Case, content: Content, rng: random.Random) -> Made:
    """A shard name of an index, or a TF `checkpoint` file's path, longer than any file system holds."""
    assert isinstance(content, dict)
    name = rng.choice([n for n in sorted(content) if n.endswith(".index.json") or n == "checkpoint"])
    if name == "checkpoint":
        text = f'model_checkpoint_path: "{LONG_NAME}"\n'.encode()
    else:
        doc = json.loads(content[name])
        weight_map = doc.get("weight_map") or {"x": ""}
        weight_map[rng.choice(sorted(weight_map))] = LONG_NAME + ".bin"
        text = json.dumps({**doc, "weight_map": weight_map}).encode()
    return Case(f"{case.label}, a long name in {name}", case.kind, case.args, case.batch, case.files), {**content, name: text}


def tflite_mutant(case: Case, content: Content, rng: random.Random) -> Made:
    """A quantized tensor's scale made NaN, zero or negative, or its zero point far outside its type."""
    import numpy as np

    from convert.errors import ConvertError
    from exporters.tflite.reader import _Flat

    assert isinstance(content, bytes)
    try:  # a corpus file may be one that is broken already
        fb = _Flat(np.frombuffer(content, np.uint8), "seed")
        fields = [
            (fb.vector(params, 2), fb.vector(params, 3))
            for subgraph in fb.tables(fb.u32(0), 2)
            for tensor in fb.tables(subgraph, 0)
            if (params := fb.ref(tensor, 4)) is not None and fb.vector(params, 2)[1]
        ]
    except ConvertError:
        return None
    if not fields:
        return None
    (scale_at, _), (zero_at, zeros) = rng.choice(fields)
    buf = bytearray(content)
    if rng.random() < 0.5 or not zeros:
        value = rng.choice([float("nan"), 0.0, -1.0, float("inf")])
        struct.pack_into("<f", buf, scale_at, value)
        what = f"scale {value}"
    else:
        value = rng.choice([1000, -(2**40)])
        struct.pack_into("<q", buf, zero_at, value)
        what = f"zero point {value}"
    return Case(f"{case.label}, {what}", case.kind, case.args, case.batch, case.files), bytes(buf)


def npy_key_mutant(case: Case, content: Content, rng: random.Random) -> Made:
    """An NPY header with a key numpy does not know, in the header's padding."""
    assert isinstance(content, bytes)
    if content[6] != 1:
        return None
    length = struct.unpack_from("<H", content, 8)[0]
    header = content[10 : 10 + length].rstrip(b" \n")
    edited = header[:-1] + rng.choice([b"'scale': 0.5, }", b"'x': 1, }"])
    if len(edited) >= length:
        return None
    return Case(f"{case.label}, an extra header key", case.kind, case.args, case.batch, case.files), (
        content[:10] + edited.ljust(length - 1) + b"\n" + content[10 + length :]
    )


def _make_link(src: Path, how: str, name: str, inputs: Path) -> None:
    """Move the file out to `inputs/outside/` (its bytes replaced by OUTSIDE) and link it back."""
    path = src / name if name else src
    outside = inputs / "outside" / (name or src.name)
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_bytes(OUTSIDE)
    path.unlink()
    path.symlink_to(outside) if how == "symlink" else path.hardlink_to(outside)


def run_one(case: Case, content: dict[str, bytes] | bytes, work: Path) -> dict[str, object]:
    work.mkdir(parents=True)
    inputs = work.parent / f"{work.name}-in"
    inputs.mkdir()
    for name, data in case.files.items():
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        (inputs / name).write_bytes(data)
    src_arg = next(str(a) for a in case.args if str(a).startswith("<src>"))
    src = inputs / ("src" + src_arg[len("<src>") :])
    if isinstance(content, bytes):
        src.write_bytes(content)
    else:
        src.mkdir()
        for name, data in content.items():
            (src / name).write_bytes(data)
    if case.link:
        how, _, name = case.link.partition(" ")
        _make_link(src, how, name, inputs)
    args = [
        work / "out"
        if a == OUT
        else src
        if a == src_arg
        else inputs / str(a)[len("<in>/") :]
        if str(a).startswith("<in>/")
        else a
        for a in case.args
    ]
    started = time.perf_counter()
    run = run_measured(*args, cwd=work)
    wall = time.perf_counter() - started
    problems = []
    lines = run.stderr.splitlines()
    if run.code == 1 or run.code < 0:
        problems.append(f"exit {run.code}")
    if "Traceback" in run.stderr:
        problems.append("traceback")
    if not case.batch and run.code not in (0, 130) and (len(lines) != 1 or not lines[0].startswith("convert: error: ")):
        problems.append(f"{len(lines)} stderr lines")
    if not case.batch and run.code != 0 and any(p.name != "canary" for p in work.iterdir()):
        problems.append("output left after a failure")
    if case.link and run.code != 5:
        problems.append(f"a link outside exits {run.code}, not 5")
    if case.link and any(leak in run.stderr + run.stdout for leak in LEAKS):
        problems.append("the outside file's bytes reached the output")
    if (work / "canary").exists() or (inputs / "canary").exists():
        problems.append("CANARY: code ran")
    if run.peak_rss > PEAK_RSS_LIMIT or wall > WALL_LIMIT:
        problems.append(f"{run.peak_rss >> 20} MiB, {wall:.0f} s")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(inputs, ignore_errors=True)
    return {
        "label": case.label,
        "kind": case.kind,
        "code": run.code,
        "rss": run.peak_rss,
        "wall": wall,
        "problems": problems,
        "stderr": run.stderr[-300:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=500)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--structural", type=float, default=0.3, help="share of mutants made by the structural mutators")
    parser.add_argument("--kind", action="append", help="only seeds of this kind, and their mutants (repeatable)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    seeds: list[tuple[Case, dict[str, bytes] | bytes]] = [
        *corpus_cases(),
        *reader_seeds(),
        *tensorflow_seeds(),
        *document_seeds(),
    ]
    if args.kind:
        seeds = [(case, content) for case, content in seeds if case.kind in args.kind]
        if not seeds:
            parser.error(f"no seeds of kind {', '.join(args.kind)}")
    cases = list(seeds)
    for i in range(args.mutants):
        case, content = rng.choice(seeds)
        made = structural(case, content, rng) if rng.random() < args.structural else None
        if made is not None:
            cases.append(
                (Case(f"mutant {i} of {made[0].label}", case.kind, case.args, case.batch, case.files, made[0].link), made[1])
            )
            continue
        cases.append((Case(f"mutant {i} of {case.label}", case.kind, case.args, case.batch, case.files), mutant(content, rng)))
    scratch = Path(tempfile.mkdtemp(prefix="hostile-campaign-"))
    started = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        results = list(pool.map(lambda ic: run_one(*ic[1], scratch / f"w{ic[0]}"), enumerate(cases)))
    shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"{len(results)} runs ({len(seeds)} seeds, {args.mutants} mutants, seed {args.seed}) in "
        f"{time.perf_counter() - started:.0f} s"
    )
    by_kind: dict[str, list[dict[str, object]]] = collections.defaultdict(list)
    for r in results:
        by_kind[str(r["kind"])].append(r)
    for kind, runs in sorted(by_kind.items()):
        codes = collections.Counter(r["code"] for r in runs)
        worst_rss = max(runs, key=lambda r: r["rss"])
        worst_wall = max(runs, key=lambda r: r["wall"])
        print(
            f"{kind:12} {len(runs):5} runs; exits "
            + ", ".join(f"{c}: {n}" for c, n in sorted(codes.items()))
            + f"; max RSS {int(worst_rss['rss']) >> 20} MiB; max wall {worst_wall['wall']:.1f} s"
        )
    worst_rss = max(results, key=lambda r: r["rss"])
    worst_wall = max(results, key=lambda r: r["wall"])
    print(
        f"worst peak RSS {int(worst_rss['rss']) >> 20} MiB ({worst_rss['label']}); "
        f"worst wall {worst_wall['wall']:.1f} s ({worst_wall['label']})"
    )
    failures = [r for r in results if r["problems"]]
    for r in failures:
        print(f"FAIL {r['label']}: {'; '.join(r['problems'])}: {r['stderr']!r}")
    print(json.dumps({"runs": len(results), "failures": len(failures)}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
