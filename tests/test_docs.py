"""The docs never disagree with the code: generated reference, live links, real keys, real commands."""

from __future__ import annotations

import ast
import importlib.util
import re

import pytest

import engine
from engine.config import schema
from tests.helpers import ROOT

DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
SECTIONS = tuple(dict.fromkeys(s.key.split(".")[0] for s in schema() if "." in s.key))  # every config section
FILE_SUFFIXES = ("jsonl", "json", "toml", "safetensors", "py", "md", "csv", "parquet", "arrow", "log")


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_preset_reference", ROOT / "scripts" / "gen_preset_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_readme_keeps_the_two_setup_commands_in_a_code_block():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    block = code_blocks(setup, "sh")[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["uv run rlhf-tui", "uv run pytest"]


def test_the_preset_reference_is_generated_from_the_schema():
    generated = load_generator().render()
    committed = (ROOT / "docs" / "presets.md").read_text()
    assert committed == generated, "docs/presets.md is stale: run uv run python scripts/gen_preset_reference.py"
    for spec in schema():
        assert f"`{spec.key}`" in committed


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_point_at_files_that_exist(page):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_config_key_named_in_the_docs_exists(page):
    keys = {s.key for s in schema()}
    text = page.read_text()
    pattern = rf"`(?:--set )?((?:{'|'.join(SECTIONS)})\.[a-z_]+)"
    for key in re.findall(pattern, text):
        if key.rsplit(".", 1)[1] in FILE_SUFFIXES:
            continue
        assert key in keys, f"{page.name} names config key {key!r}, which does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_snippets_parse_and_use_real_engine_names(page):
    for block in code_blocks(page.read_text(), "python"):
        ast.parse(block)
        for name in re.findall(r"\bengine\.([A-Za-z_]+)", block):
            is_module = (ROOT / "engine" / f"{name}.py").exists() or (ROOT / "engine" / name).is_dir()
            assert name in engine.__all__ or is_module, f"{page.name}: engine.{name} is not part of the public API"


def test_cli_commands_in_the_docs_exist():
    from rlhf_tui.cli import SUBCOMMANDS

    for page in PAGES:
        for sub in re.findall(r"rlhf-tui (\w+) (?:RUN_DIR|runs/|PRESET|tiny-|--)", page.read_text()):
            if sub.startswith("tiny"):
                continue
            assert sub in SUBCOMMANDS, f"{page.name} uses 'rlhf-tui {sub}', which is not a subcommand"


def test_every_event_type_is_documented():
    import dataclasses

    from engine import events

    api_doc = (ROOT / "docs" / "python-api.md").read_text()
    for name in dir(events):
        cls = getattr(events, name)
        if isinstance(cls, type) and issubclass(cls, events.Event) and cls is not events.Event:
            assert f"`{name}`" in api_doc, f"docs/python-api.md does not document {name}"
            for f in dataclasses.fields(cls):
                if f.name != "time":
                    assert f"`{f.name}`" in api_doc, f"docs/python-api.md does not name {name}.{f.name}"


def test_algorithms_doc_covers_every_algorithm():
    text = (ROOT / "docs" / "algorithms.md").read_text()
    for name in engine.ALGORITHMS:
        assert f'algorithm = "{name}"' in text
        assert re.search(rf"^\| `{name}` \|", text, re.M), f"summary table lacks {name}"


def test_the_dpo_metric_names_in_the_docs_are_the_ones_a_run_writes(tmp_path):
    data = ROOT / "presets" / "data"
    train = tmp_path / "train.jsonl"
    train.write_text("".join(data.joinpath("sort_train.jsonl").read_text().splitlines(keepends=True)[:16]))
    run = engine.train("tiny-dpo", overrides=["train.max_steps=1", "train.batch_size=8", f"data.train={train}", "data.eval="], out_dir=tmp_path / "run")
    assert run.status == "completed", run.summary.get("error")
    row = engine.read_metrics(tmp_path / "run")[0]
    text = (ROOT / "docs" / "algorithms.md").read_text()
    dpo_section = text.split("## DPO", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`((?:rewards|logps|logits)/[a-z]+)`", dpo_section))
    assert named and named <= set(row), named - set(row)
    for key in ("loss", "kl", "reward", "tokens_per_sec", "grad_norm", "learning_rate", "step_time_s", "memory_active_gb", "memory_peak_gb"):
        assert key in row and f"`{key}`" in text


def test_readme_pictures_are_console_snapshots():
    readme = (ROOT / "README.md").read_text()
    pictures = re.findall(r"!\[[^\]]*\]\((docs/images/[^)]+\.svg)\)", readme)
    assert "docs/images/console.svg" in pictures
    for picture in pictures:
        head = (ROOT / picture).read_text()[:400]
        assert head.startswith("<svg") and "Generated with Rich" in head, picture


def test_ci_runs_the_readme_test_command_on_macos_and_linux_for_each_python():
    workflow = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert re.search(r"^\s+run: uv run pytest\s*$", workflow, re.M)
    assert re.search(r"os: \[ubuntu-latest, macos-latest\]", workflow)
    versions = re.search(r"python: \[(.*?)\]", workflow).group(1)
    assert [v.strip(' "') for v in versions.split(",")] == ["3.11", "3.12", "3.13"]
    assert "libopenblas0-pthread" in workflow
    requires = re.search(r'requires-python = ">=(3\.\d+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert requires == "3.11"


@pytest.mark.slow
def test_the_readme_python_example_runs_as_written(tmp_path):
    import os
    import subprocess
    import sys

    readme = (ROOT / "README.md").read_text()
    (snippet,) = code_blocks(readme.split("## From Python", 1)[1].split("\n## ", 1)[0], "python")
    assert '"train.max_steps=50"' in snippet
    script = tmp_path / "example.py"
    script.write_text(snippet.replace('"train.max_steps=50"', '"train.max_steps=2", "data.max_eval_examples=16"'))
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("1 ") and lines[1].startswith("2 ")
    assert lines[2].startswith("completed {'eval/loss'")
    assert (tmp_path / "runs" / "dpo-from-python" / "summary.json").exists()
