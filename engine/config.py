"""Typed run configuration: a schema of dataclasses with defaults, ranges, choices and help.

Every field carries its help text and constraints in its dataclass metadata; the TUI's
editor, the CLI's ``--set`` parser and the generated preset reference all read it from
here. Anything invalid raises :class:`ConfigError`, whose message names the key, the value
and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.algorithms.registry import names as _algorithm_names
from engine.errors import ConfigError

ALGORITHMS = _algorithm_names()  # declared in engine/algorithms/registry.py
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "robust", "apo_zero", "apo_down", "sppo_hard", "nca_pair")


def knob(
    default: Any,
    help: str,
    *,
    choices: tuple[Any, ...] | None = None,
    min: float | None = None,
    max: float | None = None,
) -> Any:
    """A config field with one line of help and its allowed values."""
    meta = {"help": help, "choices": choices, "min": min, "max": max}
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    path: str = knob("builtin:tiny-sorter", "Local mlx-lm model folder, Hugging Face repo id, or builtin:<name>.")
    adapter: str = knob("lora", "What to train: LoRA or DoRA adapters, or all weights.", choices=("lora", "dora", "full"))
    lora_rank: int = knob(8, "Rank of the LoRA/DoRA matrices.", min=1, max=1024)
    lora_scale: float = knob(20.0, "Scale applied to the LoRA update (mlx-lm's 'scale').", min=0.0, max=1000.0)
    lora_dropout: float = knob(0.0, "Dropout on the LoRA input.", min=0.0, max=0.9)
    lora_layers: int = knob(-1, "How many of the last transformer blocks get adapters (-1 = all).", min=-1, max=10000)
    dtype: str = knob("auto", "Weights and activations dtype ('auto': as the checkpoint stores them, so bf16 stays bf16); log-softmax and losses always run in float32.", choices=("auto", "float32", "bfloat16", "float16"))
    quantize: str = knob("none", "Quantize the base weights at load (QLoRA-style, through mlx-lm; LoRA/DoRA only): 4bit or 8bit, group size 64. An already quantized model is used as published.", choices=("none", "4bit", "8bit"))
    trust_remote_code: bool = knob(False, "Allow tokenizer code from the model repo to run (off unless you opt in).")
    max_length: int = knob(512, "Longest prompt+completion in tokens; longer pairs are truncated from the prompt's left.", min=8, max=131072)
    init_from: str = knob("", "Start from trained weights: a run directory or checkpoint folder (adapters.safetensors + adapter_config.json); empty: the base as is.")


@dataclass
class DataConfig:
    train: str = knob("", "Training data: a JSONL/JSON/parquet file, a dataset folder (train.jsonl, data/train-*.parquet, save_to_disk output) or a Hub dataset id (paths are relative to the preset).")
    eval: str = knob("", "Held-out data for eval/ rows: a file, folder or Hub id (empty: data.train's data.eval_split when it has one, else none).")
    train_split: str = knob("train", "Split of data.train to train on, with datasets' slice syntax (train, train[:2000], train_prefs[10%:]); a single file's split name is ignored, its slice is not.")
    eval_split: str = knob("test", "Split of data.eval (or of data.train when data.eval is empty) to evaluate on; slices allowed (test[:500]).")
    columns: str = knob("", "Map other column names onto ours: 'prompt=question,chosen=good,rejected=bad' (ours=theirs; ours: prompt, chosen, rejected, completion, messages, text, system, label).")
    chat_template: str = knob("auto", "Chat template for plain rows: auto (templated when the tokenizer has one, as mlx-lm serves them), always, never. Conversational rows are always templated.", choices=("auto", "always", "never"))
    chat_template_file: str = knob("", "A Jinja chat template file (or tokenizer_config.json) to use instead of the tokenizer's (for a tokenizer without one).")
    max_train_examples: int = knob(0, "Train on at most this many rows of the split (0 = all).", min=0, max=100_000_000)
    max_eval_examples: int = knob(256, "At most this many eval examples are scored at each evaluation.", min=1, max=1_000_000)
    shuffle: bool = knob(True, "Shuffle the training data each epoch (seeded by train.seed).")
    group_by_length: bool = knob(
        False,
        "With data.shuffle: batch rows of similar length together (each window of 64 batches of the shuffled order is "
        "sorted by length and cut into batches, whose order is shuffled again): less padding on long-tailed data, the same "
        "rows each epoch, but each batch is less varied (the built-in DPO preset learns more slowly with it). false: plainly "
        "shuffled batches, as TRL's default.",
    )
    task_reward: str = knob("", "Registered reward function that judges an answer exactly right (1) or not; names one to log eval/task_score (greedy answers to data.eval's prompts). Empty: no task score.")


@dataclass
class TrainConfig:
    max_steps: int = knob(100, "Number of optimizer steps (train.epochs, when set, decides instead).", min=1, max=10_000_000)
    epochs: float = knob(0.0, "Train for this many passes over the training data instead of max_steps (0 = use max_steps; 1.5 = one and a half).", min=0.0, max=100_000.0)
    grad_accumulation_steps: int = knob(1, "Split each step's batch (PPO: each minibatch) into this many micro-batches and sum their gradients before one update (same result, less memory; every algorithm; KTO's KL estimate and GRPO/RLOO's rollouts and group advantages still cover the whole batch).", min=1, max=4096)
    batch_size: int = knob(8, "Examples (pairs for preference losses) per optimizer step, across all ranks.", min=1, max=65536)
    learning_rate: float = knob(1e-4, "Peak learning rate.", min=0.0, max=1.0)
    lr_schedule: str = knob("constant", "Learning-rate schedule after warm-up.", choices=("constant", "cosine", "linear"))
    warmup_steps: int = knob(0, "Linear warm-up steps from 0 to the peak learning rate.", min=0, max=10_000_000)
    optimizer: str = knob("adamw", "Optimizer (its state's precision: train.optimizer_state).", choices=("adamw", "adam", "sgd"))
    optimizer_state: str = knob(
        "float32",
        "Adam/AdamW state for bf16/fp16 weights: float32 (moments and a float32 master copy of the weights, 12 bytes a trained "
        "parameter; updates smaller than bf16's rounding step still count) or model (moments in the weights' dtype, updates "
        "applied to the weights directly, as PyTorch/TRL with a bf16 model: 4 bytes a parameter; weight decay and the second "
        "moment's decay mostly round away in bf16, as they do there). float32 weights (and LoRA/DoRA adapters, which are "
        "float32): no difference. Fixed for a run: a resume cannot change it.",
        choices=("float32", "model"),
    )
    weight_decay: float = knob(0.0, "Decoupled weight decay (adamw).", min=0.0, max=1.0)
    adam_bias_correction: bool = knob(True, "Adam/AdamW bias correction of the moments (PyTorch's and TRL's semantics); false: MLX's default, early updates several times larger.")
    max_grad_norm: float = knob(1.0, "Clip the global gradient norm to this value (0 = no clipping).", min=0.0, max=1e6)
    seed: int = knob(0, "Seed for data order, initialisation and sampling.", min=0, max=2**31 - 1)
    grad_checkpoint: bool = knob(False, "Recompute activations in the backward pass to save memory.")
    compile: bool = knob(True, "Compile the train step with mx.compile (length-bucketed shapes).")
    memory_limit_gb: float = knob(0.0, "Cap MLX's memory use in GiB (0 = no cap).", min=0.0, max=4096.0)
    log_every: int = knob(1, "Write a metrics row every N steps.", min=1, max=1_000_000)
    eval_on_start: bool = knob(True, "Evaluate the starting model at step 0 before the first update (TRL's eval_on_start).")
    eval_every: int = knob(25, "Evaluate on data.eval every N steps (and at the end; 0 = only at the end).", min=0, max=1_000_000)
    save_every: int = knob(50, "Checkpoint every N steps (and at the end; 0 = only at the end).", min=0, max=1_000_000)
    on_nan: str = knob("stop", "What to do when the loss or gradients are NaN/inf.", choices=("stop", "skip"))


@dataclass
class SftConfig:
    mask_prompt: bool = knob(True, "Train only on completion tokens (prompt tokens masked).")


@dataclass
class DpoConfig:
    beta: float = knob(0.1, "Strength of the KL constraint to the reference policy.", min=0.0, max=100.0)
    loss_type: str = knob("sigmoid", "DPO loss variant (TRL names).", choices=DPO_LOSSES)
    label_smoothing: float = knob(0.0, "Assumed label noise for the 'robust' (and smoothed sigmoid) loss.", min=0.0, max=0.49)
    precompute_ref_log_probs: bool = knob(False, "Compute every pair's reference log-probs before the first step (TRL's option; frees the initial weights kept for full fine-tuning). Off: each batch's are computed when first used, and cached.")


@dataclass
class RewardConfig:
    margin: float = knob(0.0, "Margin subtracted inside -logsigmoid(r_c - r_r - margin).", min=0.0, max=100.0)
    center_rewards_coefficient: float = knob(0.0, "Weight of the (r_c + r_r)^2 centering term (0 = off).", min=0.0, max=10.0)


@dataclass
class GenerationConfig:
    max_new_tokens: int = knob(16, "Longest completion generated in rollouts.", min=1, max=32768)
    temperature: float = knob(1.0, "Sampling temperature for rollouts.", min=0.0, max=10.0)
    top_p: float = knob(1.0, "Nucleus sampling threshold (1 = off).", min=0.0, max=1.0)


@dataclass
class PpoConfig:
    reward_model: str = knob("", "Path to a trained reward model (a run directory or its checkpoint); empty uses ppo.reward_function.")
    reward_function: str = knob("sorted_letters", "Registered reward function used when no reward model is given.")
    value_model: str = knob("shared", "Value head on the policy trunk ('shared') or a separate copy of the base ('separate').", choices=("shared", "separate"))
    kl_coef: float = knob(0.05, "Initial per-token KL penalty coefficient.", min=0.0, max=100.0)
    kl_estimator: str = knob("k1", "Per-token KL estimator in the reward (k1 can go negative; k3 cannot).", choices=("k1", "k3"))
    adaptive_kl: bool = knob(False, "Adapt kl_coef towards target_kl (coef *= 1 + clip(kl/target-1,±0.2)·n/horizon).")
    target_kl: float = knob(6.0, "Target KL for the adaptive controller.", min=0.0, max=1000.0)
    kl_horizon: int = knob(10000, "Horizon of the adaptive KL controller.", min=1, max=10_000_000)
    cliprange: float = knob(0.2, "Clip range of the policy ratio.", min=0.0, max=10.0)
    cliprange_value: float = knob(0.2, "Clip range of the value prediction.", min=0.0, max=100.0)
    vf_coef: float = knob(0.1, "Weight of the value loss.", min=0.0, max=100.0)
    gamma: float = knob(1.0, "Discount factor for GAE.", min=0.0, max=1.0)
    lam: float = knob(0.95, "GAE lambda.", min=0.0, max=1.0)
    ppo_epochs: int = knob(4, "Optimisation epochs over each rollout batch.", min=1, max=100)
    num_minibatches: int = knob(1, "Minibatches per PPO epoch.", min=1, max=1024)
    whiten_advantages: bool = knob(True, "Whiten advantages over the rollout batch.")
    missing_eos_penalty: float = knob(0.0, "Score penalty for completions that never emit EOS (0 = off).", min=0.0, max=100.0)


@dataclass
class GrpoConfig:
    num_generations: int = knob(8, "Completions sampled per prompt (the group); a step samples train.batch_size prompts x this.", min=2, max=1024)
    epsilon: float = knob(0.2, "Lower clip of the policy ratio.", min=0.0, max=10.0)
    epsilon_high: float = knob(0.0, "Upper clip (0 = same as epsilon; DAPO uses 0.28).", min=0.0, max=10.0)
    beta: float = knob(0.0, "KL penalty weight against the reference (0 = no reference needed).", min=0.0, max=100.0)
    loss_type: str = knob("grpo", "GRPO loss normalisation.", choices=("grpo", "dr_grpo", "dapo", "bnpo"))
    num_iterations: int = knob(1, "Optimisation passes over each batch of generations.", min=1, max=100)
    reward_functions: str = knob("sorted_letters", "Comma-separated registered reward functions, summed.")
    scale_rewards: bool = knob(True, "Divide advantages by the group's reward std.")
    mask_truncated_completions: bool = knob(True, "Leave completions cut at generation.max_new_tokens without EOS out of the loss (TRL's mask_truncated_completions).")


@dataclass
class OrpoConfig:
    beta: float = knob(0.1, "Weight of the odds-ratio term against the chosen answers' NLL (TRL's beta, lambda in the paper).", min=0.0, max=100.0)


@dataclass
class SimpoConfig:
    loss_type: str = knob("simpo", "simpo: length-normalised log-probs with a margin; cpo: summed log-probs (TRL CPO's sigmoid loss).", choices=("simpo", "cpo"))
    beta: float = knob(2.0, "Scale of the log-prob difference inside the sigmoid (SimPO 2.0; CPO uses 0.1).", min=0.0, max=100.0)
    gamma: float = knob(0.5, "SimPO's target reward margin (TRL's simpo_gamma; unused by cpo).", min=0.0, max=100.0)
    cpo_alpha: float = knob(0.0, "Weight of the chosen answers' NLL added to the loss (0 = SimPO; CPO uses 1.0).", min=0.0, max=100.0)
    label_smoothing: float = knob(0.0, "Assumed label noise (conservative loss).", min=0.0, max=0.49)


@dataclass
class RlooConfig:
    num_generations: int = knob(4, "Completions sampled per prompt (k); a step samples train.batch_size prompts x this.", min=2, max=1024)
    reward_functions: str = knob("sorted_letters", "Comma-separated registered reward functions, summed (as grpo.reward_functions).")
    beta: float = knob(0.05, "KL penalty subtracted from each completion's reward: score - beta * summed log-ratio to the reference (0 = no reference).", min=0.0, max=100.0)
    epsilon: float = knob(0.2, "Clip of the policy ratio on passes after the first (rloo.num_iterations > 1).", min=0.0, max=10.0)
    num_iterations: int = knob(1, "Optimisation passes over each batch of generations.", min=1, max=100)
    normalize_advantages: bool = knob(False, "Divide the leave-one-out advantages by their std over the batch.")


@dataclass
class KtoConfig:
    beta: float = knob(0.1, "Strength of the KL constraint to the reference policy (TRL's beta).", min=0.0, max=100.0)
    desirable_weight: float = knob(1.0, "Weight of the desirable answers' losses (raise it when they are the rarer kind).", min=0.0, max=100.0)
    undesirable_weight: float = knob(1.0, "Weight of the undesirable answers' losses.", min=0.0, max=100.0)


REPORTERS = ("tensorboard", "wandb", "trackio")


@dataclass
class ReportConfig:
    to: tuple[str, ...] = knob((), "Experiment trackers that get the run's metrics and samples (empty: none); each is an optional extra (uv sync --extra NAME).", choices=REPORTERS)
    project: str = knob("rlhf-tui", "Project the run is filed under in wandb and trackio (the run's name is its id).")


@dataclass
class RunConfig:
    name: str = knob("run", "Preset name, also the prefix of run ids.")
    description: str = knob("", "One line shown in the presets list.")
    algorithm: str = knob("dpo", "Training algorithm.", choices=ALGORITHMS)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    ppo: PpoConfig = field(default_factory=PpoConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    orpo: OrpoConfig = field(default_factory=OrpoConfig)
    simpo: SimpoConfig = field(default_factory=SimpoConfig)
    rloo: RlooConfig = field(default_factory=RlooConfig)
    kto: KtoConfig = field(default_factory=KtoConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    # Where the preset came from; relative data/model paths resolve against it. Not a knob.
    base_dir: str = field(default="", metadata={"internal": True})


# ---------------------------------------------------------------- schema walking


@dataclass(frozen=True)
class FieldSpec:
    """One editable config key, as the editor and docs see it."""

    key: str  # dotted, e.g. "train.learning_rate"
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None
    min: float | None
    max: float | None

    def describe_allowed(self) -> str:
        if self.type is tuple:  # a list of choices, e.g. report.to
            names = ", ".join(repr(c) for c in self.choices or ())
            return f"a list of {names} (one name, a,b or [\"a\", \"b\"]; empty for none)"
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.type is bool:
            return "true or false"
        kind = {int: "an integer", float: "a number", str: "a string"}[self.type]
        if self.min is not None and self.max is not None:
            return f"{kind} in [{_fmt(self.min)}, {_fmt(self.max)}]"
        return kind


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _resolve_type(tp: Any) -> Any:
    if isinstance(tp, str):
        return {"int": int, "float": float, "str": str, "bool": bool}.get(tp, tp)
    return tp


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(RunConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(hints[f.name])}


def schema() -> list[FieldSpec]:
    """Every user-facing key in order: top-level first, then each section."""
    specs: list[FieldSpec] = []

    def add(prefix: str, cls: type) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if f.metadata.get("internal") or dataclasses.is_dataclass(tp):
                continue
            default = f.default
            specs.append(
                FieldSpec(
                    key=prefix + f.name,
                    type=typing.get_origin(tp) or tp,  # tuple[str, ...] -> tuple
                    default=default,
                    help=f.metadata.get("help", ""),
                    choices=f.metadata.get("choices"),
                    min=f.metadata.get("min"),
                    max=f.metadata.get("max"),
                )
            )

    add("", RunConfig)
    for name, cls in _section_types().items():
        add(name + ".", cls)
    return specs


def field_spec(key: str) -> FieldSpec:
    """The schema entry of a dotted key; ConfigError (with a suggestion) if there is none."""
    for spec in schema():
        if spec.key == key:
            return spec
    raise ConfigError(f"unknown key '{key}'" + _suggest(key))


def _suggest(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, [s.key for s in schema()], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ---------------------------------------------------------------- values


def coerce(spec: FieldSpec, value: Any, *, source: str = "") -> Any:
    """Check one value against its field; return it in the field's type or raise."""
    where = f"{source}: " if source else ""
    bad = f"{where}{spec.key} = {value!r} is not allowed; expected {spec.describe_allowed()}"
    tp = spec.type
    if tp is tuple:
        return _choice_list(spec, value, bad)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(bad)
        out: Any = value
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(bad)
        out = int(value)
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(bad)
        out = float(value)
        if not math.isfinite(out):
            raise ConfigError(bad)
    else:
        if not isinstance(value, str):
            raise ConfigError(bad)
        out = value
    if spec.choices is not None and out not in spec.choices:
        raise ConfigError(bad)
    if spec.min is not None and out < spec.min:
        raise ConfigError(bad)
    if spec.max is not None and out > spec.max:
        raise ConfigError(bad)
    return out


def _choice_list(spec: FieldSpec, value: Any, bad: str) -> tuple[str, ...]:
    """A list-of-choices value: a name, ``"a,b"`` or a list of names -> a tuple without repeats."""
    if isinstance(value, str):
        items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ConfigError(bad)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str) or (spec.choices is not None and item not in spec.choices):
            raise ConfigError(bad)
        if item not in out:
            out.append(item)
    return tuple(out)


def parse_text_value(spec: FieldSpec, text: str, *, source: str = "") -> Any:
    """Turn the text typed after ``--set key=`` (or into the editor) into a typed value."""
    where = f"{source}: " if source else ""
    raw = text.strip()
    bad = f"{where}{spec.key} = {text!r} is not allowed; expected {spec.describe_allowed()}"
    if spec.type is bool:
        low = raw.lower()
        if low in ("true", "yes", "on", "1"):
            return True
        if low in ("false", "no", "off", "0"):
            return False
        raise ConfigError(bad)
    try:
        return _parse_text(spec, raw, text, bad, source)
    except ConfigError:
        raise ConfigError(bad) from None


def _parse_text(spec: FieldSpec, raw: str, text: str, bad: str, source: str) -> Any:
    if spec.type is tuple and raw.startswith("["):  # --set 'report.to=["tensorboard","wandb"]'
        try:
            return coerce(spec, tomllib.loads(f"v = {raw}")["v"], source=source)
        except tomllib.TOMLDecodeError:
            raise ConfigError(bad) from None
    if spec.type is int:
        try:
            value: Any = int(raw)
        except ValueError:
            try:
                f = float(raw)
            except ValueError:
                raise ConfigError(bad) from None
            if not f.is_integer():
                raise ConfigError(bad) from None
            value = int(f)
        return coerce(spec, value, source=source)
    if spec.type is float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(bad) from None
        return coerce(spec, value, source=source)
    return coerce(spec, text, source=source)


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.max_steps=50"`` -> ``("train.max_steps", 50)``; raises ConfigError."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.max_steps=50")
    key, _, value = text.partition("=")
    key = key.strip()
    spec = field_spec(key)
    return key, parse_text_value(spec, value, source="--set")


# ---------------------------------------------------------------- building


def config_from_dict(data: dict[str, Any], *, source: str = "", base_dir: str = "") -> RunConfig:
    """Build a RunConfig from a nested dict (a parsed TOML), rejecting anything unknown."""
    where = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}expected a table of settings")
    cfg = RunConfig()
    sections = _section_types()
    for key, value in data.items():
        if key in sections:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}[{key}] must be a table, found {value!r}")
            for sub, subval in value.items():
                set_value(cfg, f"{key}.{sub}", subval, source=source)
        else:
            set_value(cfg, key, value, source=source)
    cfg.base_dir = base_dir
    return cfg


def set_value(cfg: RunConfig, key: str, value: Any, *, source: str = "") -> None:
    """Set dotted ``key`` on ``cfg`` after checking ``value`` against the schema (ConfigError if not allowed)."""
    try:
        spec = field_spec(key)
    except ConfigError as err:
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}{err}") from None
    value = coerce(spec, value, source=source)
    target: Any = cfg
    *parents, leaf = key.split(".")
    for p in parents:
        target = getattr(target, p)
    setattr(target, leaf, value)


def get_value(cfg: RunConfig, key: str) -> Any:
    """The value of dotted ``key`` (e.g. ``"train.max_steps"``) in ``cfg``."""
    target: Any = cfg
    for part in key.split("."):
        target = getattr(target, part)
    return target


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``"key=value"`` strings (as given to ``--set``) to ``cfg`` in place and return it."""
    for text in overrides:
        key, value = parse_override(text)
        set_value(cfg, key, value, source="--set")
    return cfg


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The fully resolved config as nested plain data (what config.toml holds)."""
    out: dict[str, Any] = {}
    sections = _section_types()
    for f in dataclasses.fields(RunConfig):
        if f.metadata.get("internal"):
            continue
        value = getattr(cfg, f.name)
        if f.name in sections:
            out[f.name] = dataclasses.asdict(value)
        else:
            out[f.name] = value
    return out


def resolved(cfg: RunConfig) -> RunConfig:
    """A copy whose relative model/data paths are made absolute (what a run directory stores)."""
    import copy

    out = copy.deepcopy(cfg)
    out.model.path = resolve_path(cfg, cfg.model.path)
    out.data.train = resolve_path(cfg, cfg.data.train)
    out.data.eval = resolve_path(cfg, cfg.data.eval)
    out.data.chat_template_file = resolve_path(cfg, cfg.data.chat_template_file)
    out.ppo.reward_model = resolve_path(cfg, cfg.ppo.reward_model)
    out.model.init_from = resolve_path(cfg, cfg.model.init_from)
    return out


def diff(cfg: RunConfig, base: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ: key -> (base value, new value)."""
    return {
        s.key: (get_value(base, s.key), get_value(cfg, s.key))
        for s in schema()
        if get_value(base, s.key) != get_value(cfg, s.key)
    }


def load_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: TOML syntax error: {err}") from None


def load_config_file(path: Path, overrides: list[str] | None = None) -> RunConfig:
    """A config from a TOML file (relative paths resolve against its folder), with overrides applied."""
    path = Path(path)
    cfg = config_from_dict(load_toml(path), source=str(path), base_dir=str(path.parent.resolve()))
    return apply_overrides(cfg, overrides or [])


def resolve_path(cfg: RunConfig, value: str) -> str:
    """A relative data or model path in a preset resolves against the preset's folder."""
    if not value or value.startswith("builtin:"):
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    if cfg.base_dir and (Path(cfg.base_dir) / p).exists():
        return str((Path(cfg.base_dir) / p).resolve())
    return str(p)


__all__ = [
    "ALGORITHMS",
    "ConfigError",
    "FieldSpec",
    "RunConfig",
    "apply_overrides",
    "config_from_dict",
    "diff",
    "field_spec",
    "get_value",
    "load_config_file",
    "parse_override",
    "parse_text_value",
    "resolve_path",
    "schema",
    "set_value",
    "to_dict",
]
