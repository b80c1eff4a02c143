"""Tokenizers and random-weight models in the formats real users bring, built offline.

* ``chatml``: Qwen2.5 / SmolLM2-Instruct style — ChatML template with a default system turn,
  ``<|im_end|>`` is the EOS, no BOS.
* ``llama3``: Llama 3 Instruct style — ``<|begin_of_text|>`` added by the tokenizer's
  post-processor and by the template, header tokens, ``<|eot_id|>`` is the EOS.
* ``base``: a template-less base tokenizer whose EOS is ``<|endoftext|>``.

Byte-level BPE without merges (every byte one token) keeps them tiny while the special
tokens behave as in the real files. Models: mlx-lm's Qwen2 and Llama (GQA) classes with
random weights, saved as mlx-lm loads them.
"""

from __future__ import annotations

import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

FORMATS = {
    "chatml": {
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "config": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None, "chat_template": CHATML_TEMPLATE},
        "bos": None,
    },
    "llama3": {
        "specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "config": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|end_of_text|>", "chat_template": LLAMA3_TEMPLATE},
        "bos": "<|begin_of_text|>",
    },
    "base": {
        "specials": ["<|endoftext|>"],
        "config": {"eos_token": "<|endoftext|>", "bos_token": None, "pad_token": "<|endoftext|>"},
        "bos": None,
    },
}


def write_tokenizer(folder: Path, fmt: str) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    spec = FORMATS[fmt]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(spec["specials"])
    if spec["bos"]:
        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096, **{k: v for k, v in spec["config"].items() if v is not None}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def vocab_size(folder: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size()


def write_model(folder: Path, fmt: str, arch: str = "qwen2", seed: int = 0) -> Path:
    """A random-weight mlx-lm model folder of ``arch`` (qwen2 | llama) with a ``fmt`` tokenizer."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    write_tokenizer(folder, fmt)
    n_vocab = vocab_size(folder)
    cfg = {
        "model_type": arch,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,  # grouped-query attention, as Qwen2.5 and Llama 3 use
        "rms_norm_eps": 1e-6,
        "vocab_size": n_vocab,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    }
    if arch == "qwen2":
        from mlx_lm.models import qwen2 as module
    else:
        from mlx_lm.models import llama as module
    mx.random.seed(seed)
    model = module.Model(module.ModelArgs.from_dict(cfg))
    mx.eval(model.parameters())
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder
