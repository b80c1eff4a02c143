"""TRL's GRPOTrainer (PyTorch, no vLLM: generation through transformers) on the benchmark
checkpoint; prints BENCH_RESULT. The reward is the built-in ``length`` reward (words / 10),
written out here so both trainers score completions the same way.

    benchmarks/.venv/bin/python benchmarks/peers/trl_grpo.py --model benchmarks/.cache/cpu --prompts 2 --generations 4 --new 16 --steps 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import report, trl_step_timer  # noqa: E402


def length_reward(completions, **kw):
    return [len(c.split()) / 10.0 for c in completions]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", default="full", choices=("lora", "full"))
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step")
    ap.add_argument("--generations", type=int, default=8, help="completions per prompt")
    ap.add_argument("--new", type=int, default=256, help="max new tokens")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--liger", action="store_true", help="use_liger_kernel when liger-kernel imports")
    a = ap.parse_args()

    import tempfile

    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype)
    data = load_dataset("json", data_files=str(Path(a.model) / "data" / "prompts.jsonl"), split="train")
    peft_config = None
    if a.adapter == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM", target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    liger = False
    if a.liger:
        try:
            import liger_kernel  # noqa: F401

            liger = True
        except Exception as err:
            print(f"liger-kernel unavailable: {err}", flush=True)
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-grpo-"),
        per_device_train_batch_size=a.prompts * a.generations,  # completions per step
        num_generations=a.generations,
        max_completion_length=a.new,
        max_steps=a.steps,
        learning_rate=1e-6,
        beta=0.0,
        temperature=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=a.dtype == "bfloat16",
        use_cpu=a.device == "cpu",
        dataloader_num_workers=0,
        gradient_checkpointing=False,
        use_liger_kernel=liger,
        use_vllm=False,
        seed=0,
        disable_tqdm=True,
    )
    completion_tokens: list[float] = []
    timer = trl_step_timer(a.device == "cuda")

    class Lengths(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                completion_tokens.append(float(logs["completions/mean_length"]))

    trainer = GRPOTrainer(model=model, reward_funcs=[length_reward], args=args, train_dataset=data, processing_class=tok, peft_config=peft_config, callbacks=[timer, Lengths()])
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**30 if a.device == "cuda" else None
    report(
        framework="TRL GRPOTrainer" + (" (liger)" if liger else ""),
        first_step_start=timer.first[0],
        step_times=timer.step_times,
        step_cpu=timer.step_cpu,
        peak_gb=peak,
        extra={"torch": torch.__version__, "mean_completion_tokens": completion_tokens, "prompts": a.prompts, "generations": a.generations, "new": a.new},
    )


if __name__ == "__main__":
    main()
