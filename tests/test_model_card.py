"""RUN_DIR/README.md: a Hugging Face model card naming what the run used and how to load it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from engine.config import RunConfig
from engine.model_card import render_model_card
from engine.presets import load_preset
from engine.run import Run
from tests.helpers import quick_overrides


def front_matter(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    head, _, body = text[4:].partition("\n---\n")
    return yaml.safe_load(head), body


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("card")
    cfg = load_preset("tiny-sft", [*quick_overrides(tmp, steps=3), "model.lora_rank=4", "train.learning_rate=0.003"])
    run = Run(cfg, out_dir=tmp / "run")
    assert run.run()["status"] == "completed", run.summary.get("error")
    return tmp / "run"


def test_a_finished_run_writes_a_card_naming_what_it_used(sft_run):
    meta, body = front_matter((sft_run / "README.md").read_text())
    assert meta["library_name"] == "mlx"
    assert {"mlx", "sft", "lora"} <= set(meta["tags"])
    assert "base_model" not in meta and "datasets" not in meta  # a built-in model and local files: no Hub ids

    base = json.loads((sft_run / "adapter_config.json").read_text())["model"]
    summary = json.loads((sft_run / "summary.json").read_text())
    train_file = sft_run.parent / "train.jsonl"
    eval_file = sft_run.parent / "valid.jsonl"
    n_train = sum(1 for line in train_file.read_text().splitlines() if line.strip())
    n_eval = sum(1 for line in eval_file.read_text().splitlines() if line.strip())
    assert f"`{base}`" in body and "builtin:tiny-sorter" in body
    assert f"`{train_file}`, split `train`, {n_train:,} rows" in body
    assert f"`{eval_file}`, split `test`, {n_eval:,} rows" in body
    assert "LORA rank 4" in body and "| steps | 3 of 3, batch size 4" in body and "0.003" in body
    assert f"| `loss` | {summary['final_metrics']['loss']:.6g} |" in body
    assert f"| `eval/loss` | {summary['final_eval']['eval/loss']:.6g} |" in body
    assert f"load({base!r}, adapter_path={str(sft_run)!r})" in body  # mlx-lm's own call
    assert f"rlhf-tui fuse {sft_run} --out" in body


def test_hub_base_and_datasets_go_into_the_front_matter():
    cfg = RunConfig()
    cfg.algorithm = "dpo"
    cfg.model.path = "mlx-community/Qwen2.5-0.5B-Instruct-4bit"
    cfg.data.train = "trl-lib/ultrafeedback_binarized"
    cfg.data.train_split = "train[:2000]"
    summary = {"status": "completed", "steps": 10, "max_steps": 10, "final_metrics": {"loss": 0.5, "rewards/accuracies": 0.75},
               "final_eval": {"eval/rewards/accuracies": 0.7}}
    text = render_model_card(cfg, summary, run_dir="/runs/dpo-1", base_model=cfg.model.path, rows={"train": 2000, "eval": None})
    meta, body = front_matter(text)
    assert meta["base_model"] == "mlx-community/Qwen2.5-0.5B-Instruct-4bit"
    assert meta["datasets"] == ["trl-lib/ultrafeedback_binarized"]
    assert "dpo" in meta["tags"]
    assert "split `train[:2000]`, 2,000 rows" in body
    assert "- `dpo.beta` = 0.1" in body and "- `dpo.loss_type` = sigmoid" in body
    assert "| `rewards/accuracies` | 0.75 |" in body and "| `eval/rewards/accuracies` | 0.7 |" in body


def test_a_failed_run_writes_no_card(tmp_path):
    cfg = load_preset("tiny-sft", [*quick_overrides(tmp_path, steps=2), "data.train=/nonexistent/train.jsonl"])
    run = Run(cfg, out_dir=tmp_path / "run")
    assert run.run()["status"] == "failed"
    assert not (tmp_path / "run" / "README.md").exists()
