"""Benchmark `convert to-gguf --type q4_k_m` on a llama-shaped Hugging Face folder against llama.cpp's own
`llama_model_quantize` (Q4_K_M) from an F32 GGUF of the same model, in one run.

    .venv/bin/python scripts/bench_gguf_llm.py                  # ~1 GiB of float32 weights, 3 repetitions
    .venv/bin/python scripts/bench_gguf_llm.py --size-gb 0.25 --reps 1 --threads 1

The folder (config.json, model.safetensors of random float32 weights, no tokenizer: both sides run
without a vocabulary) and the F32 GGUF llama.cpp starts from (written by this tool with --type f32) are
made before the clock starts. Contenders, each its own process, their order rotated between repetitions:

  tool       `convert to-gguf SRC OUT --type q4_k_m --no-vocab` (reads SafeTensors, renames, permutes Q/K,
             quantizes, BLAKE3 digests, the error per tensor, fsync, a manifest)
  llama.cpp  `llama_model_quantize(F32.gguf, OUT.gguf, ftype=Q4_K_M, nthread=--threads)` through
             llama-cpp-python (ggml's C quantizers; reads a GGUF already in llama.cpp's names)

Targets (issue 32): the tool's wall time at most 2x llama.cpp's; its peak RSS at most 200 MiB. Exit
status 1 when a target fails. Peak RSS and wall time as in bench_pytorch.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_pytorch import Runner, tool_command

RATIO_TARGET = 2.0
RSS_TARGET_MIB = 200.0
HIDDEN, FFN, VOCAB, HEADS = 2048, 5632, 4096, 16


def make_folder(folder: Path, size_gb: float) -> int:
    """A llama folder of about `size_gb` GB of float32 weights; its parameter count."""
    import numpy as np
    from safetensors.numpy import save_file

    per_layer = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * FFN + 2 * HIDDEN
    layers = max(1, round((size_gb * 1e9 / 4 - 2 * VOCAB * HIDDEN) / per_layer))
    rng = np.random.default_rng(0)

    def randn(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    state = {"model.embed_tokens.weight": randn(VOCAB, HIDDEN), "model.norm.weight": np.ones(HIDDEN, np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[f"{p}.self_attn.{proj}.weight"] = randn(HIDDEN, HIDDEN)
        state[f"{p}.mlp.gate_proj.weight"] = randn(FFN, HIDDEN)
        state[f"{p}.mlp.up_proj.weight"] = randn(FFN, HIDDEN)
        state[f"{p}.mlp.down_proj.weight"] = randn(HIDDEN, FFN)
        state[f"{p}.input_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        state[f"{p}.post_attention_layernorm.weight"] = np.ones(HIDDEN, np.float32)
    state["lm_head.weight"] = randn(VOCAB, HIDDEN)
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"))
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": VOCAB,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return sum(a.size for a in state.values())


LLAMA_CPP = """
import ctypes, sys
import llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
params.nthread = int(sys.argv[3])
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params))
sys.exit(rc)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.07)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp's quantizer threads (the tool uses one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-gguf-llm-"))
    try:
        src = work / "src"
        params = make_folder(src, args.size_gb)
        f32 = work / "f32"
        subprocess.run([*tool_command(), "to-gguf", str(src), str(f32), "--type", "f32", "--no-vocab", "-q"], check=True)
        runner = Runner(work)
        commands = {
            "tool": lambda r: [
                *tool_command(),
                "to-gguf",
                str(src),
                str(work / f"tool{r}"),
                "--type",
                "q4_k_m",
                "--no-vocab",
                "-q",
            ],
            "llama.cpp": lambda r: [
                sys.executable,
                "-c",
                LLAMA_CPP,
                str(f32 / "model.gguf"),
                str(work / f"lc{r}.gguf"),
                str(args.threads),
            ],
        }
        samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in commands}
        for r in range(args.reps):
            order = list(commands) if r % 2 == 0 else list(reversed(commands))
            for name in order:
                wall, cpu, rss, _out = runner.run(name, commands[name](r))
                samples[name].append((wall, cpu, rss))
                shutil.rmtree(work / f"tool{r}", ignore_errors=True)
                (work / f"lc{r}.gguf").unlink(missing_ok=True)
        median = {n: tuple(statistics.median(s[i] for s in v) for i in range(3)) for n, v in samples.items()}
        ratio = median["tool"][0] / median["llama.cpp"][0]
        result = {
            "parameters": params,
            "f32_bytes": params * 4,
            "threads_llama_cpp": args.threads,
            "median": {n: {"wall_s": w, "cpu_s": c, "peak_rss_mib": m} for n, (w, c, m) in median.items()},
            "tool_over_llama_cpp": ratio,
            "targets": {"ratio<=2": ratio <= RATIO_TARGET, "rss<=200MiB": median["tool"][2] <= RSS_TARGET_MIB},
            "rss_note": runner.rss_note,
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"{params * 4 / 2**30:.2f} GiB of f32 weights, {args.reps} repetition(s), llama.cpp threads {args.threads}")
            for n, (w, c, m) in median.items():
                print(f"  {n:10s} wall {w:7.2f} s  cpu {c:7.2f} s  peak RSS {m:7.1f} MiB")
            print(f"  tool / llama.cpp wall: {ratio:.2f} (target <= {RATIO_TARGET}); {runner.rss_note}")
        sys.exit(0 if all(result["targets"].values()) else 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
