"""Build the benchmark's Llama-shaped checkpoint and preference data, locally, no download.

One folder serves all three trainers: the weights are saved as a Hugging Face
``LlamaForCausalLM`` (``config.json`` + ``model.safetensors``), which mlx-lm loads as is and
TRL loads with ``AutoModelForCausalLM.from_pretrained``. The tokenizer is a word-level
``tokenizers`` tokenizer over a synthetic vocabulary, so every word is one token and the
pairs have exact, known lengths.

    uv run python benchmarks/make_checkpoint.py --out benchmarks/.cache/small
    uv run python benchmarks/make_checkpoint.py --size 1b --out /tmp/llama-1b   # GPU run

Sizes: ``cpu`` (~5M parameters: the shared 2-core CPU here), ``small`` (~13M), ``1b`` (~1.04B, Llama-3.2-1B blocks),
``0.5b`` and ``7b`` (Qwen2.5-0.5B / -7B shapes; float32 files that large are only practical
through benchmarks/memory_table.py, which builds them 4-bit).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

SIZES = {
    "cpu": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, vocab_size=8192),
    "small": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2, vocab_size=8192),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, vocab_size=32768),
    # real shapes for the memory table (benchmarks/memory_table.py builds these 4-bit with MLX):
    # Qwen2.5-0.5B's and Qwen2.5-7B's blocks, heads and vocabularies, as Llama blocks
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, vocab_size=151936),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
PAD, BOS, EOS = 0, 1, 2


def llama_config(size: str) -> dict:
    s = SIZES[size]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "torch_dtype": "float32",
        "initializer_range": 0.02,
        **s,
    }


def random_weights(cfg: dict, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = d // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    out = {"model.embed_tokens.weight": w(v, d), "model.norm.weight": np.ones(d, np.float32)}
    if not cfg["tie_word_embeddings"]:
        out["lm_head.weight"] = w(v, d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out |= {
            p + "self_attn.q_proj.weight": w(d, d),
            p + "self_attn.k_proj.weight": w(kv, d),
            p + "self_attn.v_proj.weight": w(kv, d),
            p + "self_attn.o_proj.weight": w(d, d),
            p + "mlp.gate_proj.weight": w(f, d),
            p + "mlp.up_proj.weight": w(f, d),
            p + "mlp.down_proj.weight": w(d, f),
            p + "input_layernorm.weight": np.ones(d, np.float32),
            p + "post_attention_layernorm.weight": np.ones(d, np.float32),
        }
    return out


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(SPECIALS)} | {f"w{i}": i for i in range(len(SPECIALS), vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "model_max_length": 4096,
                "add_bos_token": True,
                # mlx-lm-lora renders every pair through a chat template: this one is the plain text
                "chat_template": "{% for m in messages %}{{ m['content'] }}{% if not loop.last %} {% endif %}{% endfor %}",
            },
            indent=1,
        )
    )
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}))


def write_pairs(path: Path, n: int, vocab_size: int, prompt_len: int, answer_len: int, seed: int) -> None:
    rnd = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(f"w{rnd.randrange(len(SPECIALS), vocab_size)}" for _ in range(k))

    with path.open("w") as fh:
        for _ in range(n):
            # lengths vary a little, as real data does (exercises length buckets)
            p = prompt_len + rnd.randrange(-8, 9)
            row = {"prompt": words(p), "chosen": words(answer_len + rnd.randrange(-8, 9)), "rejected": words(answer_len + rnd.randrange(-8, 9))}
            fh.write(json.dumps(row) + "\n")


def build(out: Path, size: str = "small", seed: int = 0, pairs: int = 128, prompt_len: int = 120, answer_len: int = 72, layers: int = 0) -> Path:
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    cfg = llama_config(size)
    if layers:
        cfg["num_hidden_layers"] = layers
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD}))
    save_file(random_weights(cfg, seed), str(out / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer(out, cfg["vocab_size"])
    data = out / "data"
    data.mkdir(exist_ok=True)
    write_pairs(data / "train.jsonl", pairs, cfg["vocab_size"], prompt_len, answer_len, seed + 1)
    write_pairs(data / "valid.jsonl", 8, cfg["vocab_size"], prompt_len, answer_len, seed + 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/.cache/cpu")
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu")
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=120)
    ap.add_argument("--answer-len", type=int, default=72)
    ap.add_argument("--layers", type=int, default=0, help="override the size's number of blocks")
    a = ap.parse_args()
    path = build(Path(a.out), a.size, pairs=a.pairs, prompt_len=a.prompt_len, answer_len=a.answer_len, layers=a.layers)
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "numpy") as f:
        n = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    print(f"wrote {path} ({n / 1e6:.1f}M parameters)")


if __name__ == "__main__":
    main()
