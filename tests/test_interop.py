"""Ecosystem fit: run directories load in mlx-lm as they are; TRL / mlx-lm / datasets data loads unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import engine
from engine.batching import collate
from engine.data import load_completions, load_pairs, load_prompts
from tests.helpers import ROOT

DATA = ROOT / "presets" / "data"


def slice_jsonl(src: Path, dst: Path, n: int) -> Path:
    dst.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return dst


def train_small(tmp: Path, preset: str, name: str, *extra: str) -> Path:
    train = slice_jsonl(DATA / "sort_train.jsonl", tmp / f"{name}-train.jsonl", 48)
    evl = slice_jsonl(DATA / "sort_eval.jsonl", tmp / f"{name}-eval.jsonl", 16)
    overrides = ["train.max_steps=3", "train.batch_size=8", f"data.train={train}", f"data.eval={evl}", "train.eval_every=0", *extra]
    run = engine.train(preset, overrides=overrides, out_dir=tmp / name)
    assert run.status == "completed", run.summary.get("error")
    return tmp / name


def mlx_lm_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "mlx_lm", *args], capture_output=True, text=True, timeout=300, env=env)


def seq_logps(model, rows) -> list[float]:
    """Summed completion log-probs, written here from the logits (not via engine.logprobs)."""
    batch = collate(rows)
    logits = model(batch.tokens[:, :-1]).astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    picked = mx.take_along_axis(logp, batch.tokens[:, 1:, None], axis=-1)[..., 0]
    return ((picked * batch.mask).sum(axis=-1)).tolist()


def log_softmax(logits: mx.array) -> mx.array:
    logits = logits.astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def max_abs(x: mx.array) -> float:
    return float(mx.abs(x).max().item())


def roundoff_floor(model, tokens: mx.array) -> float:
    """How far ``model``'s log-softmax moves when every weight changes by one float32 epsilon
    (2**-23, relative, random sign): the float32 noise of this network on this input. Storing
    a weight in float32 moves it by at most half that."""
    from mlx.utils import tree_flatten, tree_unflatten

    weights = tree_flatten(model.parameters())
    rng = np.random.default_rng(0)
    eps = float(np.finfo(np.float32).eps)
    nudged = [(k, v * mx.array(1 + eps * rng.choice([-1.0, 1.0], size=v.shape), dtype=v.dtype)) for k, v in weights]
    before = log_softmax(model(tokens))
    model.update(tree_unflatten(nudged))
    try:
        return max_abs(log_softmax(model(tokens)) - before)
    finally:
        model.update(tree_unflatten(weights))


@pytest.fixture(scope="module")
def dpo_full_run(tmp_path_factory) -> Path:
    return train_small(tmp_path_factory.mktemp("dpo"), "tiny-dpo", "dpo", "model.adapter=full")


@pytest.fixture(scope="module")
def sft_lora_run(tmp_path_factory) -> Path:
    return train_small(tmp_path_factory.mktemp("sft"), "tiny-sft", "sft", "model.adapter=lora", "train.learning_rate=0.01")


def test_full_run_loads_in_mlx_lm_with_the_engines_log_probs(dpo_full_run):
    from mlx_lm import load

    cfg = engine.run_config(dpo_full_run)
    base = engine.base_model_path(dpo_full_run)
    assert json.loads((dpo_full_run / "adapter_config.json").read_text())["model"] == base
    model, tok = load(base, adapter_path=str(dpo_full_run))
    ref_model, _ = load(base)
    pairs = load_pairs(cfg.data.eval, tok, cfg.model.max_length, "eval")
    pc = seq_logps(model, [(p.prompt_ids, p.chosen_ids) for p in pairs])
    pr = seq_logps(model, [(p.prompt_ids, p.rejected_ids) for p in pairs])
    rc = seq_logps(ref_model, [(p.prompt_ids, p.chosen_ids) for p in pairs])
    rr = seq_logps(ref_model, [(p.prompt_ids, p.rejected_ids) for p in pairs])

    final = engine.read_metrics(dpo_full_run, "eval")[-1]
    n = len(pairs)
    beta = cfg.dpo.beta
    margins = [beta * ((a - c) - (b - d)) for a, b, c, d in zip(pc, pr, rc, rr, strict=True)]
    assert sum(pc) / n == pytest.approx(final["eval/logps/chosen"], abs=2e-3)
    assert sum(pr) / n == pytest.approx(final["eval/logps/rejected"], abs=2e-3)
    assert sum(margins) / n == pytest.approx(final["eval/rewards/margins"], abs=1e-3)
    assert sum(m > 0 for m in margins) / n == pytest.approx(final["eval/rewards/accuracies"])
    assert max(abs(a - c) for a, c in zip(pc, rc, strict=True)) > 1e-3  # training moved the weights

    scores = engine.score_pairs(dpo_full_run, cfg.data.eval)
    assert [s.margin for s in scores] == pytest.approx(margins, abs=1e-4)
    assert [s.ref_chosen for s in scores] == pytest.approx(rc, abs=1e-4)


def test_lora_run_loads_in_mlx_lm_and_matches_the_eval_loss(sft_lora_run):
    cfg = engine.run_config(sft_lora_run)
    acfg = json.loads((sft_lora_run / "adapter_config.json").read_text())
    assert acfg["fine_tune_type"] == "lora" and acfg["lora_parameters"]["rank"] == cfg.model.lora_rank
    model, tok = engine.load_trained(sft_lora_run)  # = mlx_lm.load(base, adapter_path=run_dir)
    items = load_completions(cfg.data.eval, tok, cfg.model.max_length, "eval")
    batch = collate([(c.prompt_ids, c.completion_ids) for c in items])
    logits = model(batch.tokens[:, :-1]).astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    picked = mx.take_along_axis(logp, batch.tokens[:, 1:, None], axis=-1)[..., 0]
    nll = float((-(picked * batch.mask).sum() / batch.mask.sum()).item())
    final = engine.read_metrics(sft_lora_run, "eval")[-1]
    assert nll == pytest.approx(final["eval/loss"], rel=1e-3)


@pytest.mark.slow
def test_mlx_lm_generate_and_fuse_take_the_run_directory(sft_lora_run, tmp_path):
    base = engine.base_model_path(sft_lora_run)
    gen = mlx_lm_cli("generate", "--model", base, "--adapter-path", str(sft_lora_run), "--prompt", "sort: q c m f", "--max-tokens", "8", "--temp", "0")
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert "Generation:" in gen.stdout or "tokens-per-sec" in gen.stdout

    fused_dir = tmp_path / "fused"
    fuse = mlx_lm_cli("fuse", "--model", base, "--adapter-path", str(sft_lora_run), "--save-path", str(fused_dir))
    assert fuse.returncode == 0, fuse.stderr[-2000:]
    from mlx_lm import load

    fused, tok = load(str(fused_dir))
    adapted, _ = engine.load_trained(sft_lora_run)
    base_model, _ = load(base)
    tokens = mx.array([tok.encode("sort: q c m f\nc f m q")])
    a, f, b = (log_softmax(m(tokens)) for m in (adapted, fused, base_model))
    # Fused (W + s*B*A, rounded once per weight) and adapted (W*x + s*B*(A*x)) are equal in
    # exact arithmetic; in float32 they differ by about what rounding every weight does to this
    # network. That amount is measured here and 16x it is allowed: |a - f| was 0.4-0.7 of it
    # with AVX-512 and AVX2 OpenBLAS kernels and MLX's own BLAS (2e-5 floor; 5e-4 with the
    # previous built-in model on AVX-512), while a LoRA scale off by 0.1% moves 170x the tolerance.
    tol = 16 * roundoff_floor(fused, tokens)
    assert max_abs(a - f) <= tol, (max_abs(a - f), tol)
    top = mx.sort(a, axis=-1)
    clear = (top[..., -1] - top[..., -2]) > 2 * tol  # where greedy decoding picks the same token
    assert mx.all(mx.where(clear, a.argmax(-1) == f.argmax(-1), True)).item()
    assert max_abs(a - b) > 100 * tol, (max_abs(a - b), tol)  # the fused model is the trained one


def test_a_checkpoint_folder_is_an_adapter_path_too(dpo_full_run):
    from mlx_lm import load

    step, ckpt = engine.RunDirectory(dpo_full_run).latest_checkpoint()
    assert engine.adapter_path(dpo_full_run, step) == ckpt
    model, _ = load(engine.base_model_path(dpo_full_run), adapter_path=str(ckpt))
    latest, _ = engine.load_trained(dpo_full_run)
    tokens = mx.array([[5, 6, 7, 8]])
    assert mx.allclose(model(tokens), latest(tokens)).item()
    with pytest.raises(engine.RunDirError, match="no checkpoint for step 999"):
        engine.adapter_path(dpo_full_run, 999)


# ---------------------------------------------------------------- data shapes


@pytest.fixture(scope="module")
def tokenizer():
    from mlx_lm import load

    from engine.models import resolve_model_path

    return load(str(resolve_model_path("builtin:tiny-sorter")))[1]


def write_rows(path: Path, rows: list[dict], *, lines: bool = True) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) if lines else json.dumps(rows, indent=2))
    return path


PLAIN = [
    {"prompt": "sort: q c m\n", "chosen": "c m q", "rejected": "q c m"},
    {"prompt": "sort: b a\n", "chosen": "a b", "rejected": "b a"},
]


def conversational(row: dict) -> dict:
    """TRL's explicit-prompt conversational shape."""
    return {
        "prompt": [{"role": "user", "content": row["prompt"].rstrip("\n")}],
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
    }


def implicit_prompt(row: dict) -> dict:
    """TRL's implicit-prompt conversational shape (as in trl-lib/ultrafeedback_binarized)."""
    user = {"role": "user", "content": row["prompt"].rstrip("\n")}
    return {
        "chosen": [user, {"role": "assistant", "content": row["chosen"]}],
        "rejected": [user, {"role": "assistant", "content": row["rejected"]}],
        "score_chosen": 8.0,
        "score_rejected": 2.0,
    }


def ids(pairs) -> list[tuple]:
    return [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in pairs]


def test_trl_conversational_shapes_tokenise_like_the_plain_shape(tokenizer, tmp_path):
    plain = load_pairs(str(write_rows(tmp_path / "plain.jsonl", PLAIN)), tokenizer, 64)
    explicit = load_pairs(str(write_rows(tmp_path / "conv.jsonl", [conversational(r) for r in PLAIN])), tokenizer, 64)
    implicit = load_pairs(str(write_rows(tmp_path / "impl.jsonl", [implicit_prompt(r) for r in PLAIN])), tokenizer, 64)
    assert ids(explicit) == ids(plain) == ids(implicit)
    assert plain[0].chosen_ids[-1] == tokenizer.eos_token_id


def test_trl_implicit_prompt_in_plain_text(tokenizer, tmp_path):
    # TRL's standard format with an implicit prompt, e.g. {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    rows = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in PLAIN]
    implicit = load_pairs(str(write_rows(tmp_path / "implicit.jsonl", rows)), tokenizer, 64)
    explicit = load_pairs(str(write_rows(tmp_path / "plain.jsonl", PLAIN)), tokenizer, 64)
    assert ids(implicit) == ids(explicit)
    (sky,) = load_pairs(str(write_rows(tmp_path / "sky.jsonl", [{"chosen": "the sky is blue", "rejected": "the sky is green"}])), tokenizer, 64)
    assert (sky.prompt, sky.chosen, sky.rejected) == ("the sky is", " blue", " green")  # as TRL's extract_prompt
    with pytest.raises(engine.DataError, match=r"bad\.jsonl:1: .*no differing answer"):
        load_pairs(str(write_rows(tmp_path / "bad.jsonl", [{"chosen": "same", "rejected": "same"}])), tokenizer, 64)


def test_mlx_lm_lora_rows_with_a_system_field_become_chats(tokenizer, tmp_path):
    # mlx-lm-lora's DPO rows: prompt/chosen/rejected strings plus an optional system message
    system = "You sort letters."
    lora_rows = [{"system": system, **r} for r in PLAIN]
    chats = [{**conversational(r), "prompt": [{"role": "system", "content": system}, {"role": "user", "content": r["prompt"]}]} for r in PLAIN]
    a = load_pairs(str(write_rows(tmp_path / "lora.jsonl", lora_rows)), tokenizer, 64)
    b = load_pairs(str(write_rows(tmp_path / "chat.jsonl", chats)), tokenizer, 64)
    assert ids(a) == ids(b)
    # its GRPO rows: prompt, answer, system; the answer is kept for reward functions
    (p,) = load_prompts(str(write_rows(tmp_path / "grpo.jsonl", [{"prompt": "sort: b a", "answer": "a b", "system": system}])), tokenizer, 64)
    assert p.extra == {"answer": "a b"}
    with pytest.raises(engine.DataError, match=r"bad\.jsonl:1: 'system' must be a string"):
        load_pairs(str(write_rows(tmp_path / "bad.jsonl", [{"system": 3, **PLAIN[0]}])), tokenizer, 64)


def test_mlx_lm_data_folder_with_train_and_valid(tokenizer, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_rows(folder / "train.jsonl", PLAIN)
    write_rows(folder / "valid.jsonl", PLAIN[:1])
    assert len(load_pairs(str(folder), tokenizer, 64, "train")) == 2
    assert len(load_pairs(str(folder), tokenizer, 64, "eval")) == 1


def test_mlx_lm_sft_shapes_load_alike(tokenizer, tmp_path):
    chat = [{"messages": [{"role": "user", "content": "sort: q c m"}, {"role": "assistant", "content": "c m q"}]}]
    completion = [{"prompt": "sort: q c m\n", "completion": "c m q"}]
    a = load_completions(str(write_rows(tmp_path / "chat.jsonl", chat)), tokenizer, 64)
    b = load_completions(str(write_rows(tmp_path / "comp.jsonl", completion)), tokenizer, 64)
    c = load_completions(str(write_rows(tmp_path / "pref.jsonl", PLAIN[:1])), tokenizer, 64)
    assert [(x.prompt_ids, x.completion_ids) for x in a] == [(x.prompt_ids, x.completion_ids) for x in b] == [(x.prompt_ids, x.completion_ids) for x in c]
    text = load_completions(str(write_rows(tmp_path / "text.jsonl", [{"text": "sort: b a\na b"}])), tokenizer, 64)
    assert len(text) == 1 and text[0].completion_ids[-1] == tokenizer.eos_token_id


def test_datasets_to_json_files_load(tokenizer, tmp_path):
    # datasets' Dataset.to_json writes JSON lines even into a ".json" file (lines=True by default)
    as_lines = load_pairs(str(write_rows(tmp_path / "train.json", PLAIN)), tokenizer, 64)
    as_array = load_pairs(str(write_rows(tmp_path / "array.json", PLAIN, lines=False)), tokenizer, 64)
    assert ids(as_lines) == ids(as_array) == ids(load_pairs(str(write_rows(tmp_path / "p.jsonl", PLAIN)), tokenizer, 64))
    prompts = load_prompts(str(write_rows(tmp_path / "prompts.json", [{"prompt": r["prompt"]} for r in PLAIN])), tokenizer, 64)
    assert len(prompts) == 2


def test_parquet_and_arrow_files_load_with_pyarrow(tokenizer, tmp_path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        with pytest.raises(engine.DataError, match=r"train\.parquet.*pyarrow"):
            (tmp_path / "train.parquet").write_bytes(b"PAR1")
            load_pairs(str(tmp_path / "train.parquet"), tokenizer, 64)
        pytest.skip("pyarrow is not installed: checked the message that says how to read parquet files")
    table = pa.Table.from_pylist(PLAIN)
    pq.write_table(table, tmp_path / "train.parquet")
    with pa.OSFile(str(tmp_path / "train.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    expected = ids(load_pairs(str(write_rows(tmp_path / "p.jsonl", PLAIN)), tokenizer, 64))
    assert ids(load_pairs(str(tmp_path / "train.parquet"), tokenizer, 64)) == expected
    assert ids(load_pairs(str(tmp_path / "train.arrow"), tokenizer, 64)) == expected


# ---------------------------------------------------------------- export


def fake_run(tmp: Path) -> tuple[Path, list[dict]]:
    rows = [
        {"step": 1, "elapsed_s": 0.5, "loss": 0.6931, "kl": None, "reward": 0.25, "tokens_per_sec": 1000.0},
        {"step": 2, "elapsed_s": 1.0, "loss": 0.61, "kl": None, "reward": 0.5, "tokens_per_sec": 1100.0},
        {"step": 2, "elapsed_s": 1.2, "eval/loss": 0.6, "eval/reward": 0.55},
    ]
    run = tmp / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo')  # torn tail
    return run, rows


def test_export_csv_and_jsonl_from_the_cli(tmp_path):
    import csv

    from tests.helpers import cli

    run, rows = fake_run(tmp_path)
    out = cli("export", str(run))
    assert out.returncode == 0, out.stderr
    table = list(csv.DictReader(out.stdout.splitlines()))
    assert list(table[0])[:2] == ["step", "elapsed_s"] and "eval/loss" in table[0]
    assert len(table) == 3
    assert [float(r["loss"]) for r in table[:2]] == [0.6931, 0.61]
    assert table[0]["kl"] == "" and table[2]["loss"] == "" and float(table[2]["eval/loss"]) == 0.6

    out = cli("export", str(run), "--kind", "eval", "--output", str(tmp_path / "eval.jsonl"))
    assert out.returncode == 0, out.stderr
    assert [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()] == rows[2:]

    out = cli("export", str(tmp_path / "missing"))
    assert out.returncode == 2 and "missing: run directory not found" in out.stderr
