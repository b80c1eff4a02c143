"""Peak MLX memory per algorithm for 0.5B-, 1B- and 7B-class models, LoRA on 4-bit weights.

    python3 benchmarks/memory_table.py --root /tmp/memtab            # builds, measures, prints the table
    python3 benchmarks/memory_table.py --sizes 0.5b --algorithms sft  # a subset

Each model is built with MLX from benchmarks/make_checkpoint.py's shapes (random weights,
real shapes: hidden size, layers, heads, vocabulary), quantized to 4 bits (group 64, as
``model.quantize = "4bit"`` does at load) and saved in mlx-lm's layout with a word-level
tokenizer, so the run's own loader reads it as a published 4-bit model. Each (size,
algorithm) then trains 2 steps in its own process through ``engine.run.Run`` with:
LoRA rank 8 on every linear of every block, ``model.quantize = "4bit"``, bf16 compute,
``train.grad_checkpoint = true``, and one sequence of ~1,024 tokens per micro-batch:

* sft: 4 examples (512 prompt + 512 answer tokens), ``grad_accumulation_steps = 4``;
* dpo: 4 pairs (512 prompt + 256 chosen + 256 rejected), ``grad_accumulation_steps = 4``
  (reference log-probs computed on first use, in the same process);
* grpo: 1 prompt of 256 tokens x 2 completions of 384 new tokens (GRPO has no gradient
  accumulation; the batch is one prompt's group).

The figure is ``mx.get_peak_memory()`` at the end of the process: everything MLX allocated at
once, model load and the reference pass included. Results go to ``--results`` as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

LENGTHS = {"prompt": 512, "answer": 256, "sft_answer": 512, "grpo_prompt": 256, "grpo_new": 384}


def build_quantized(out: Path, size: str, seed: int = 0) -> int:
    """A 4-bit mlx-lm checkpoint of ``size``'s shape with random weights; returns the parameter count."""
    import mlx.core as mx
    from make_checkpoint import llama_config, write_tokenizer  # type: ignore[import-not-found]
    from mlx.utils import tree_flatten
    from mlx_lm.models.llama import Model, ModelArgs
    from mlx_lm.utils import quantize_model, save_config, save_model

    cfg = llama_config(size)
    cfg["torch_dtype"] = "bfloat16"
    mx.random.seed(seed)
    args = ModelArgs.from_dict(cfg)
    model = Model(args)
    model.set_dtype(mx.bfloat16)
    n = sum(v.size for _, v in tree_flatten(model.parameters()))
    model, cfg = quantize_model(model, cfg, group_size=64, bits=4)
    out.mkdir(parents=True, exist_ok=True)
    save_model(out, model)
    save_config(cfg, out / "config.json")
    write_tokenizer(out, cfg["vocab_size"])
    write_data(out / "data", cfg["vocab_size"], seed + 1)
    return n


def write_data(folder: Path, vocab: int, seed: int) -> None:
    rnd = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def words(k: int) -> str:
        return " ".join(f"w{rnd.randrange(4, vocab)}" for _ in range(k))

    L = LENGTHS
    with (folder / "pairs.jsonl").open("w") as fh:
        for _ in range(16):
            fh.write(json.dumps({"prompt": words(L["prompt"] - 1), "chosen": words(L["answer"] - 1), "rejected": words(L["answer"] - 1)}) + "\n")
    with (folder / "sft.jsonl").open("w") as fh:
        for _ in range(16):
            fh.write(json.dumps({"prompt": words(L["prompt"] - 1), "completion": words(L["sft_answer"] - 1)}) + "\n")
    with (folder / "prompts.jsonl").open("w") as fh:
        for _ in range(16):
            fh.write(json.dumps({"prompt": words(L["grpo_prompt"] - 1)}) + "\n")


def overrides(model: Path, algorithm: str) -> list[str]:
    common = [
        f"algorithm={algorithm}",
        f"model.path={model}",
        "model.adapter=lora",
        "model.lora_rank=8",
        "model.quantize=4bit",
        "model.dtype=bfloat16",
        "model.max_length=1100",
        "data.eval=",
        "train.max_steps=2",
        "train.grad_checkpoint=true",
        "train.eval_every=0",
        "train.save_every=0",
        "train.eval_on_start=false",
    ]
    if algorithm == "sft":
        return common + [f"data.train={model / 'data' / 'sft.jsonl'}", "train.batch_size=4", "train.grad_accumulation_steps=4"]
    if algorithm == "dpo":
        return common + [f"data.train={model / 'data' / 'pairs.jsonl'}", "train.batch_size=4", "train.grad_accumulation_steps=4"]
    return common + [
        f"data.train={model / 'data' / 'prompts.jsonl'}",
        "data.task_reward=",
        "train.batch_size=1",
        "grpo.num_generations=2",
        f"generation.max_new_tokens={LENGTHS['grpo_new']}",
        "grpo.mask_truncated_completions=false",
    ]


def measure_one(model: Path, algorithm: str, chunk_positions: int | None = None) -> None:
    """In a child process: train 2 steps, print the peak."""
    import tempfile

    import mlx.core as mx

    from engine import logprobs
    from engine.presets import load_preset
    from engine.run import Run

    if chunk_positions is not None:
        logprobs.CHUNK_POSITIONS = chunk_positions

    cfg = load_preset(f"tiny-{algorithm}", overrides(model, algorithm))
    t0 = time.time()
    run = Run(cfg, out_dir=tempfile.mkdtemp(prefix="memtab-"))
    summary = run.run()
    rows = [r for r in run.directory.read_metrics() if "loss" in r]
    out = {
        "status": summary["status"],
        "error": summary.get("error"),
        "peak_gb": mx.get_peak_memory() / 2**30,
        "active_gb": mx.get_active_memory() / 2**30,
        "seconds": time.time() - t0,
        "step_s": [r.get("step_time_s") for r in rows],
        "active_after_step1_gb": rows[0].get("memory_active_gb") if rows else None,  # weights + optimizer state, what stays
        "device": str(mx.default_device()),
        "chunk_positions": chunk_positions,  # None: the engine's, sized by the vocabulary
    }
    print("MEMTAB " + json.dumps(out), flush=True)


def table(results: list[dict]) -> str:
    sizes = list(dict.fromkeys(r["size"] for r in results))
    algs = list(dict.fromkeys(r["algorithm"] for r in results))
    by = {(r["size"], r["algorithm"]): r for r in results}
    head = "| model (4-bit, LoRA r8) | params | " + " | ".join(f"{a} peak GB" for a in algs) + " |"
    lines = [head, "| --- | ---: | " + " | ".join("---:" for _ in algs) + " |"]
    for s in sizes:
        any_r = next(r for r in results if r["size"] == s)
        cells = []
        for a in algs:
            r = by.get((s, a))
            cells.append("—" if r is None else (f"{r['peak_gb']:.2f}" if r.get("status") == "completed" else f"failed: {r.get('error') or r.get('status')}"))
        lines.append(f"| {s} | {any_r['params'] / 1e9:.2f}B | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/tmp/memtab")
    ap.add_argument("--sizes", default="0.5b,1b,7b")
    ap.add_argument("--algorithms", default="sft,dpo,grpo")
    ap.add_argument("--results", default="")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "ALGORITHM"), help=argparse.SUPPRESS)
    ap.add_argument("--table", default="", help="print the table of an earlier results file and exit")
    ap.add_argument("--chunk-positions", type=int, default=None, help="positions per chunk of the output layer (default: the engine's, CHUNK_LOGITS logits; 2048 was the fixed size before 2026-12-06)")
    a = ap.parse_args()
    if a.one:
        measure_one(Path(a.one[0]), a.one[1], a.chunk_positions)
        return
    if a.table:
        print(table([json.loads(x) for x in Path(a.table).read_text().splitlines() if x.strip()]))
        return
    results = []
    for size in a.sizes.split(","):
        folder = Path(a.root) / size
        t0 = time.time()
        if not (folder / "config.json").exists():
            params = build_quantized(folder, size)
            (folder / "params.txt").write_text(str(params))
        params = int((folder / "params.txt").read_text())
        print(f"{size}: {params / 1e9:.2f}B parameters, 4-bit checkpoint ready in {time.time() - t0:.0f} s", flush=True)
        for alg in a.algorithms.split(","):
            chunk = [] if a.chunk_positions is None else ["--chunk-positions", str(a.chunk_positions)]
            proc = subprocess.run([sys.executable, __file__, "--one", str(folder), alg, *chunk], capture_output=True, text=True)
            r = {"size": size, "algorithm": alg, "params": params}
            lines = [x for x in proc.stdout.splitlines() if x.startswith("MEMTAB ")]
            if lines:
                r |= json.loads(lines[-1][len("MEMTAB ") :])
            else:
                r |= {"status": "crashed", "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
            results.append(r)
            print(f"  {alg}: {r.get('status')} peak {r.get('peak_gb', float('nan')):.2f} GB in {r.get('seconds', 0):.0f} s {r.get('error') or ''}", flush=True)
            if a.results:
                with open(a.results, "a") as fh:
                    fh.write(json.dumps(r) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
