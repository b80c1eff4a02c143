"""TRL's DPOTrainer (PyTorch) on the benchmark checkpoint; prints BENCH_RESULT.

Runs with benchmarks/.venv's python on the CPU, or with a CUDA PyTorch on a GPU machine
(``--device cuda --dtype bfloat16``). LoRA through peft (TRL then uses the base model with the
adapter disabled as the reference: no second copy); full fine-tuning loads a reference copy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import report, trl_step_timer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", default="lora", choices=("lora", "full"))
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--precompute-ref", action="store_true")
    ap.add_argument("--liger", action="store_true", help="use_liger_kernel (Liger's RMSNorm/RoPE/SwiGLU kernels) when liger-kernel imports")
    ap.add_argument("--padding-free", action="store_true", help="ask for padding_free (TRL 1.16 warns and falls back to padding)")
    a = ap.parse_args()
    liger = False
    if a.liger:
        try:
            import liger_kernel.transformers  # noqa: F401

            liger = True
        except Exception as err:  # not installed, or no Triton: run without, and say so in the result
            print(f"liger-kernel unavailable: {err}", flush=True)

    import tempfile

    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype)
    data = load_dataset("json", data_files=str(Path(a.model) / "data" / "train.jsonl"), split="train")
    peft_config = None
    if a.adapter == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        )
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"),
        per_device_train_batch_size=a.batch,
        max_steps=a.steps,
        learning_rate=1e-5,
        logging_steps=1,
        # a resumable checkpoint (weights or adapter + optimizer state) at the end, as ours writes
        save_strategy="steps",
        save_steps=a.steps,
        report_to=[],
        max_length=a.max_length,
        bf16=a.dtype == "bfloat16",
        use_cpu=a.device == "cpu",
        dataloader_num_workers=0,
        precompute_ref_log_probs=a.precompute_ref,
        padding_free=a.padding_free,
        use_liger_kernel=liger,
        gradient_checkpointing=False,  # TRL 1.x turns it on by default; off is the faster baseline
        seed=0,
        disable_tqdm=True,
    )
    timer = trl_step_timer(a.device == "cuda")

    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft_config, callbacks=[timer])
    padding_free = bool(getattr(trainer, "padding_free", a.padding_free))
    for w in caught:
        if "padding_free" in str(w.message) or "liger" in str(w.message).lower():
            print(f"TRL warns: {w.message}", flush=True)
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**30 if a.device == "cuda" else None
    report(
        framework="TRL" + (" (precomputed ref)" if a.precompute_ref else "") + (" (liger)" if liger else "") + (" (padding-free)" if padding_free else ""),
        first_step_start=timer.first[0],
        step_times=timer.step_times,
        step_cpu=timer.step_cpu,
        peak_gb=peak,
        extra={"final_loss": out.training_loss, "torch": torch.__version__, "threads": torch.get_num_threads(), "liger": liger, "padding_free": padding_free, "precompute_ref": a.precompute_ref},
    )


if __name__ == "__main__":
    main()
