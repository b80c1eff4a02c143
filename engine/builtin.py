"""The built-in default: a tiny Llama that sorts letters, built deterministically on first use.

The task is one a reader can judge at a glance: the prompt ``sort: q c m f`` asks for the
letters in alphabetical order, ``c f m q`` and then EOS (3 to 5 letters, so an exact answer
is a short reach). Preference pairs have the sorted answer as chosen and, as rejected, a
wrong answer of the kinds a policy produces: the letters left as given, shuffled, one swap,
a letter missing, invented or repeated. ``exact_sort`` is the task's reward for
``eval/task_score``.

The base model is a 2-layer Llama (d = 128) with a character-level tokenizer, pre-trained
for 4,000 steps on the task's format with answers sorted 40% of the time and left in the
given order the rest. It has learnt both, and that keeping the order is more likely:
greedy answers are exactly sorted for about 15% of held-out prompts (step-0 task score),
sampled answers for about 40%. SFT teaches it the format it should prefer, and DPO,
PPO and GRPO make the sorted answer its first choice: each tiny preset takes the task
score from about 0.15 to above 0.9 in under a minute on two CPU cores.

Nothing is downloaded: the model ships with the project in ``presets/models/tiny-sorter``
(1.6 MB, mlx-lm's format). ``build_tiny_sorter`` is the recipe that made it (tokenizer
built with ``tokenizers``, mlx-lm's Llama class from seed 0, the seeded pre-training
stream); ``python -m engine.builtin DIR`` runs it. The shipped weights were built this way
on an H200 with MLX's CUDA backend (about 30 s). On a CPU the build takes about 9
CPU-minutes and gives other weights (float rounding compounds over 4,000 steps) with the
same behaviour: on 256 held-out prompts, greedy answers exactly sorted 0.08 (shipped 0.10),
sampled 0.43 (shipped 0.44). A copy of the project without the folder rebuilds it on first
use into the user cache directory.
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
MODEL_VERSION = "v3"
PRETRAIN_STEPS = 4000
PRETRAIN_BATCH = 64
PRETRAIN_LR = 2e-3
PRETRAIN_WARMUP = 100
SORTED_SHARE = 0.4  # pre-training answers that are sorted; the rest keep the prompt's order
MIN_LETTERS, MAX_LETTERS = 3, 5
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


def letter_count(rng: random.Random) -> int:
    return rng.randint(MIN_LETTERS, MAX_LETTERS)


def wrong_answer(letters: list[str], rng: random.Random) -> list[str]:
    """A wrong answer of one of the kinds a policy produces (never the sorted letters).

    Left as given (what the base model does), shuffled, sorted with one swap, a letter
    missing, a letter replaced by one not in the prompt, or a letter repeated.
    """
    k = len(letters)
    right = sorted(letters)
    kind = rng.random()
    if kind < 0.35:
        out = list(letters)  # left as given
    elif kind < 0.55:
        out = rng.sample(letters, k)  # shuffled
    elif kind < 0.7:
        out = list(right)
        i = rng.randrange(k - 1)
        out[i], out[i + 1] = out[i + 1], out[i]  # one mistake
    elif kind < 0.8:
        out = list(right)
        del out[rng.randrange(k)]  # a letter missing (cut short)
    elif kind < 0.9:
        out = list(right)
        out[rng.randrange(k)] = rng.choice([c for c in LETTERS if c not in letters])  # an invented letter
        out.sort()
    else:
        out = list(right)
        i = rng.randrange(k)
        out.insert(i, out[i])  # a letter repeated
    if out == right:
        out = right[::-1]
    return out


def make_sorting_pairs(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` preference pairs: chosen sorts the letters, rejected is a wrong answer."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        letters = rng.sample(LETTERS, letter_count(rng))
        pairs.append(
            {
                "prompt": sort_prompt(letters),
                "chosen": sorted_answer(letters),
                "rejected": " ".join(wrong_answer(letters, rng)),
            }
        )
    return pairs


def make_sorting_prompts(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"prompt": sort_prompt(rng.sample(LETTERS, letter_count(rng)))} for _ in range(n)]


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
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "intermediate_size": 384,
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


def pretrain_examples(seed: int, sorted_share: float = SORTED_SHARE) -> Iterator[tuple[str, str]]:
    """The pre-training stream: a ``sort:`` prompt, then its letters sorted (``sorted_share``
    of the time) or left in the given order (the rest)."""
    rng = random.Random(seed)
    while True:
        letters = rng.sample(LETTERS, letter_count(rng))
        answer = sorted(letters) if rng.random() < sorted_share else letters
        yield sort_prompt(letters), " ".join(answer)


def build_tiny_sorter(
    folder: Path,
    steps: int = PRETRAIN_STEPS,
    sorted_share: float = SORTED_SHARE,
    config: dict | None = None,
) -> None:
    """Create the tiny base model: random init from seed 0, then the pre-training below.

    It pre-trains on the task's format with answers of two kinds: the prompt's letters
    sorted (``SORTED_SHARE`` of them) or left in the given order (the rest). The model
    learns both, and that the second is more likely: its greedy answers mostly keep the
    given order (a low ``eval/task_score``), while sampled answers are often sorted. SFT
    on sorted answers, DPO on sorted-vs-wrong pairs and RL with a sorting reward can then
    make the sorted answer its first choice: the task score climbs within minutes on a CPU.
    Deterministic for a given MLX build and device (seeded init and data); the shipped
    weights were made with ``python -m engine.builtin DIR`` on a GPU, and a CPU build
    behaves the same with other weights (see the module docstring).
    """
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(folder)
    cfg = config or model_config()
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))

    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(cfg))
    vocab = {t: i for i, t in enumerate(vocabulary())}
    eos = vocab["</s>"]

    def encode(prompt: str, answer: str) -> tuple[list[int], int]:
        p = [vocab[c] for c in prompt]
        return p + [vocab[c] for c in answer] + [eos], len(p)

    examples = pretrain_examples(seed=12345, sorted_share=sorted_share)
    warm = min(PRETRAIN_WARMUP, max(steps // 10, 1))
    schedule = optim.join_schedules([optim.linear_schedule(0.0, PRETRAIN_LR, warm), optim.cosine_decay(PRETRAIN_LR, max(steps - warm, 1))], [warm])
    opt = optim.AdamW(learning_rate=schedule, weight_decay=0.0, bias_correction=True)
    width = 2 * (len("sort: \n") + 2 * MAX_LETTERS) + 2

    def loss_fn(model, inputs, targets, mask):
        logits = model(inputs).astype(mx.float32)
        ce = nn.losses.cross_entropy(logits, targets) * mask
        return ce.sum() / mask.sum()

    step = nn.value_and_grad(model, loss_fn)
    for _ in range(steps):
        rows = [encode(*next(examples)) for _ in range(PRETRAIN_BATCH)]
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
