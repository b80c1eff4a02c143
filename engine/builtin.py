"""The built-in default: a tiny Llama that sorts letters, built deterministically on first use.

The task is one a reader can judge at a glance: the prompt ``sort: q c m f`` asks for the
letters in alphabetical order; the chosen answer is ``c f m q``, the rejected one is the
letters left as given, shuffled, or sorted with one mistake. The base model is a 2-layer
Llama with a character-level tokenizer, pre-trained with 700 SFT steps to *copy* the
letters in the given order (so it answers with the right letters but does not sort);
preference tuning and RL then teach it to sort.

Nothing is downloaded: the model ships with the project in ``presets/models/tiny-sorter``
(0.8 MB, mlx-lm's format). ``build_tiny_sorter`` is the recipe that made it (tokenizer
built with ``tokenizers``, mlx-lm's Llama class from seed 0, the copy warm-up); a copy of
the project without the folder rebuilds it on first use into the user cache directory
(``python -m engine.builtin DIR`` writes it anywhere).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import string
import tempfile
from collections.abc import Iterator
from pathlib import Path

BUILTIN_MODELS = ("tiny-sorter",)
MODEL_VERSION = "v2"
WARMUP_STEPS = 700
WARMUP_BATCH = 64
WARMUP_LR = 1e-3
LETTERS = string.ascii_lowercase
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
CHAT_TEMPLATE = (
    # a user turn ends with one newline (a prompt's own trailing newline is not doubled); an
    # assistant turn with </s>. ("{{ '\\n' }}": HF renders with trim_blocks, which would eat a
    # literal newline after a block tag.)
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}"
    "{% if not m['content'].endswith('\\n') %}{{ '\\n' }}{% endif %}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{% endif %}"
)


def vocabulary() -> list[str]:
    chars = list(LETTERS) + list(string.digits) + list(" :\n.,!?-=+*/'\"()")
    return SPECIAL_TOKENS + chars


# ---------------------------------------------------------------- the task


def sort_prompt(letters: list[str]) -> str:
    return "sort: " + " ".join(letters) + "\n"


def sorted_answer(letters: list[str]) -> str:
    return " ".join(sorted(letters))


def make_sorting_pairs(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` preference pairs: chosen sorts the letters, rejected does not."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        k = rng.randint(3, 6)
        letters = rng.sample(LETTERS, k)
        chosen = sorted(letters)
        kind = rng.random()
        if kind < 0.4:
            rejected = list(letters)  # left as given
        elif kind < 0.8:
            rejected = rng.sample(letters, k)  # shuffled
        else:
            rejected = sorted(letters)
            i = rng.randrange(k - 1)
            rejected[i], rejected[i + 1] = rejected[i + 1], rejected[i]  # one mistake
        if rejected == chosen:
            rejected = chosen[::-1]
        pairs.append(
            {
                "prompt": sort_prompt(letters),
                "chosen": " ".join(chosen),
                "rejected": " ".join(rejected),
            }
        )
    return pairs


def make_sorting_prompts(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"prompt": sort_prompt(rng.sample(LETTERS, rng.randint(3, 6)))} for _ in range(n)]


def write_builtin_data(folder: Path) -> None:
    """(Re)write the bundled data files; they are committed, this documents how they were made."""
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, rows: list[dict[str, str]]) -> None:
        with open(folder / name, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")

    dump("sort_train.jsonl", make_sorting_pairs(2000, seed=1))
    dump("sort_eval.jsonl", make_sorting_pairs(200, seed=2))
    dump("sort_prompts.jsonl", make_sorting_prompts(500, seed=3))
    dump("sort_prompts_eval.jsonl", make_sorting_prompts(64, seed=4))


# ---------------------------------------------------------------- the model


def cache_root() -> Path:
    env = os.environ.get("RLHF_TUI_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("rlhf-tui"))


def builtin_model_path(name: str = "tiny-sorter") -> Path:
    """The folder of a built-in model, building it first if it is not there yet."""
    if name not in BUILTIN_MODELS:
        from engine.errors import ModelError

        raise ModelError(f"unknown built-in model 'builtin:{name}'; available: {', '.join('builtin:' + m for m in BUILTIN_MODELS)}")
    from engine.presets import builtin_dir

    shipped = builtin_dir() / "models" / name
    if (shipped / "model.safetensors").exists():
        return shipped
    folder = cache_root() / "models" / f"{name}-{MODEL_VERSION}"
    if (folder / "model.safetensors").exists():
        return folder
    _build_locked(folder)
    return folder


def _build_locked(folder: Path) -> None:
    import fcntl

    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "model.safetensors").exists():
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            build_tiny_sorter(tmp)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def write_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models

    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.decoder = decoders.Fuse()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "model_max_length": 256,
                "chat_template": CHAT_TEMPLATE,
            },
            indent=2,
        )
    )


def model_config() -> dict:
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 96,
        "num_hidden_layers": 2,
        "intermediate_size": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": len(vocabulary()),
        "max_position_embeddings": 256,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def _copy_examples(seed: int) -> Iterator[tuple[str, str]]:
    rng = random.Random(seed)
    while True:
        letters = rng.sample(LETTERS, rng.randint(3, 6))
        yield sort_prompt(letters), " ".join(letters)


def build_tiny_sorter(folder: Path, warmup_steps: int = WARMUP_STEPS) -> None:
    """Create the tiny base model: random init from seed 0, then the copy warm-up.

    The warm-up teaches the answer format (the prompt's letters in the given order, then
    EOS) but not sorting, so greedy answers are unsorted and sampled ones vary: room for
    preference tuning and RL to improve.
    """
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(folder)
    cfg = model_config()
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))

    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(cfg))
    vocab = {t: i for i, t in enumerate(vocabulary())}
    eos = vocab["</s>"]

    def encode(prompt: str, answer: str) -> tuple[list[int], int]:
        p = [vocab[c] for c in prompt]
        return p + [vocab[c] for c in answer] + [eos], len(p)

    examples = _copy_examples(seed=12345)
    opt = optim.Adam(learning_rate=optim.cosine_decay(WARMUP_LR, warmup_steps))
    width = 32

    def loss_fn(model, inputs, targets, mask):
        logits = model(inputs).astype(mx.float32)
        ce = nn.losses.cross_entropy(logits, targets) * mask
        return ce.sum() / mask.sum()

    step = nn.value_and_grad(model, loss_fn)
    for _ in range(warmup_steps):
        rows = [encode(*next(examples)) for _ in range(WARMUP_BATCH)]
        ids = mx.array([r + [0] * (width - len(r)) for r, _ in rows])
        pos = mx.arange(width - 1)[None, :]
        plen = mx.array([p for _, p in rows])[:, None]
        rlen = mx.array([len(r) for r, _ in rows])[:, None]
        mask = ((pos >= plen - 1) & (pos < rlen - 1)).astype(mx.float32)
        loss, grads = step(model, ids[:, :-1], ids[:, 1:], mask)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state, loss)
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())), metadata={"format": "mlx"})


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-sorter")
    build_tiny_sorter(target)
    print(f"built {target}")
