"""Scoring preference pairs with a model: per-pair log-probs, implicit reward, reward-model scores.

The pair inspector (and ``engine.score_pairs``) use this to show which pairs a model gets
wrong. A :class:`Scorer` holds the models to score with:

* ``base_scorer(cfg)`` -- the base model alone (policy = reference, margin 0; whether it
  prefers the chosen answer is read from its log-probs);
* ``checkpoint_scorer(path)`` -- a run directory (its latest weights) or one of its
  ``checkpoints/step-N`` folders, against its base model; a reward run's checkpoint gives a
  reward-model scorer instead;
* ``weights_scorer(cfg, adapter_config, weights)`` -- weights taken from a live run
  (``Run.weights_snapshot()``, taken between steps) applied to a separate copy of the model.

Log-probs are summed over answer tokens with the prompt masked, in float32, exactly as
DPO computes them; the reference is the base model as training saw it at step 0.
Nothing here imports the UI; mlx is imported lazily so ``import engine`` stays light.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import Cancelled, ModelError, RunDirError

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.data import PreferencePair

Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]


@dataclass(frozen=True)
class PairScore:
    """One preference pair scored by a policy and its reference (the base model).

    Log-probs are summed over answer tokens (the prompt is masked), as DPO uses them.
    ``chosen_reward = beta * (policy_chosen - ref_chosen)`` and likewise for rejected;
    ``margin = chosen_reward - rejected_reward`` is the implicit reward margin (> 0: the
    policy prefers the chosen answer more than the reference did). ``rm_chosen`` and
    ``rm_rejected`` are a reward model's scores when one did the scoring.
    """

    where: str
    prompt: str
    chosen: str
    rejected: str
    policy_chosen: float
    policy_rejected: float
    ref_chosen: float
    ref_rejected: float
    beta: float
    rm_chosen: float | None = None
    rm_rejected: float | None = None

    @property
    def chosen_reward(self) -> float:
        return self.beta * (self.policy_chosen - self.ref_chosen)

    @property
    def rejected_reward(self) -> float:
        return self.beta * (self.policy_rejected - self.ref_rejected)

    @property
    def margin(self) -> float:
        return self.chosen_reward - self.rejected_reward

    @property
    def policy_prefers_chosen(self) -> bool:
        return self.policy_chosen > self.policy_rejected

    @property
    def logp_gap(self) -> float:
        """policy log p(chosen) - log p(rejected): > 0 when the policy itself favours chosen."""
        return self.policy_chosen - self.policy_rejected

    @property
    def rm_margin(self) -> float | None:
        if self.rm_chosen is None or self.rm_rejected is None:
            return None
        return self.rm_chosen - self.rm_rejected


@dataclass
class Scorer:
    """The models one scoring pass uses, and how to read their numbers.

    ``kind``: ``"base"`` (policy is the reference), ``"policy"`` (trained weights against
    the base) or ``"reward"`` (a Bradley-Terry reward model). ``label`` says where the weights
    came from, for the UI.
    """

    kind: str
    label: str
    tokenizer: Any
    max_length: int
    beta: float
    policy: Any = None
    reference: Any = None
    reward_model: Any = None
    config: RunConfig | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def prefers_chosen(self, score: PairScore) -> bool:
        """The model's verdict on a pair: reward-model scores, the implicit reward margin
        (DPO's ``rewards/accuracies``), or for the base model its own log-probs."""
        if self.kind == "reward":
            return bool(score.rm_margin is not None and score.rm_margin > 0)
        if self.kind == "base":
            return score.policy_prefers_chosen
        return score.margin > 0

    def verdict(self, score: PairScore) -> float:
        """The number sorted on to find wrong pairs: negative means the model disagrees with the label."""
        if self.kind == "reward":
            return float(score.rm_margin or 0.0)
        if self.kind == "base":
            return score.logp_gap
        return score.margin


# ---------------------------------------------------------------- building scorers


def _fresh_policy(cfg: RunConfig) -> Any:
    """The model as training starts it: base weights, dtype, adapters attached (identity)."""
    from engine.models import load_policy

    loaded = load_policy(cfg)
    loaded.model.eval()
    return loaded


def base_scorer(cfg: RunConfig, beta: float | None = None) -> Scorer:
    """Score with the base model of ``cfg`` (no trained weights): margins are 0."""
    loaded = _fresh_policy(cfg)
    return Scorer(
        kind="base",
        label=f"base model {cfg.model.path}",
        tokenizer=loaded.tokenizer,
        max_length=cfg.model.max_length,
        beta=cfg.dpo.beta if beta is None else beta,
        policy=loaded.model,
        reference=loaded.model,
        config=cfg,
    )


def weights_scorer(cfg: RunConfig, weights: dict[str, Any], *, label: str = "live weights", beta: float | None = None) -> Scorer:
    """Score with ``weights`` (trainable parameters by name) applied to a separate model copy."""
    loaded = _fresh_policy(cfg)
    model = loaded.model
    _load_trainable(model, list(weights.items()), label)
    reference = _fresh_policy(cfg).model
    return Scorer(
        kind="policy",
        label=label,
        tokenizer=loaded.tokenizer,
        max_length=cfg.model.max_length,
        beta=cfg.dpo.beta if beta is None else beta,
        policy=model,
        reference=reference,
        config=cfg,
    )


def live_scorer(run: Any, beta: float | None = None) -> Scorer:
    """Score with a running (or finished) in-process Run's current weights, taken between steps."""
    if getattr(run, "ctx", None) is None:
        raise ModelError("the run has not loaded its model yet; try again after its first step")
    weights = run.weights_snapshot()
    return weights_scorer(run.config, weights, label=f"live weights at step {run.step}", beta=beta)


def _load_trainable(model: Any, items: list[tuple[str, Any]], where: str) -> None:
    try:
        model.load_weights(items, strict=False)
    except Exception as err:  # noqa: BLE001 - shapes that do not fit: say where from
        raise ModelError(f"{where}: these weights do not fit the model ({err})") from None
    import mlx.core as mx

    mx.eval(model.parameters())


def find_checkpoint(path: str | Path, step: int | None = None) -> tuple[Path, Path]:
    """(run directory, folder holding ``adapters.safetensors``) for a run dir or a checkpoint folder."""
    from engine.run_reader import resolve_weights

    found = resolve_weights(path, step)
    if found.run_dir is None:  # scoring reads the run's config (beta, max_length, algorithm)
        raise RunDirError(f"{found.folder}: not a run directory (no config.toml) nor one of its checkpoints")
    return found.run_dir, found.folder


def checkpoint_scorer(path: str | Path, step: int | None = None, beta: float | None = None) -> Scorer:
    """Score with a run's checkpoint (latest unless ``step``) against its base model.

    A checkpoint of a reward run (``algorithm = "reward"``) gives a reward-model scorer.
    """
    from engine.config import config_from_dict, load_toml

    run_dir, ck = find_checkpoint(path, step)
    cfg = config_from_dict(load_toml(run_dir / "config.toml"), source=str(run_dir / "config.toml"))
    step_label = _step_of(ck)
    label = f"{run_dir.name} {step_label}"
    if cfg.algorithm == "reward" and (ck / "extra.safetensors").exists():
        from engine.reward_model import load_reward_model

        rm, tokenizer, _ = load_reward_model(ck, trust_remote_code=cfg.model.trust_remote_code)
        return Scorer(kind="reward", label=f"reward model {label}", tokenizer=tokenizer, max_length=cfg.model.max_length,
                      beta=cfg.dpo.beta if beta is None else beta, reward_model=rm, config=cfg,
                      info={"run_dir": str(run_dir), "checkpoint": str(ck)})
    from engine.trained_model import load_trained_model

    # the policy: the checkpoint on its base as training built it (model.dtype, quantize, init_from)
    policy, tokenizer, _ = load_trained_model(ck, dtype=cfg.model.dtype)
    return Scorer(kind="policy", label=label, tokenizer=tokenizer, max_length=cfg.model.max_length,
                  beta=cfg.dpo.beta if beta is None else beta, policy=policy, reference=_fresh_policy(cfg).model,
                  config=cfg, info={"run_dir": str(run_dir), "checkpoint": str(ck)})


def _step_of(ck: Path) -> str:
    state = ck / "trainer_state.json"
    try:
        return f"step {int(json.loads(state.read_text())['step'])}"
    except (OSError, ValueError, KeyError, TypeError):
        return "latest" if ck.name != "checkpoints" else ck.name


# ---------------------------------------------------------------- scoring


def pair_logprobs(
    model: Any,
    pairs: Sequence[PreferencePair],
    batch_size: int = 16,
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    done_before: int = 0,
    total: int | None = None,
) -> list[tuple[float, float]]:
    """(log p(chosen), log p(rejected)) per pair, summed over answer tokens, float32."""
    import mlx.core as mx

    from engine.algorithms.dpo import pair_rows
    from engine.batching import collate
    from engine.logprobs import sequence_logprobs

    total = len(pairs) if total is None else total
    out: list[tuple[float, float]] = []
    for start in range(0, len(pairs), batch_size):
        if should_stop is not None and should_stop():
            raise Cancelled()
        chunk = pairs[start : start + batch_size]
        batch = collate(pair_rows(chunk))
        logps = mx.stop_gradient(sequence_logprobs(model, batch.tokens, batch.mask))
        mx.eval(logps)
        values = logps.tolist()
        n = len(chunk)
        out.extend(zip(values[:n], values[n:], strict=True))
        if progress is not None:
            progress(done_before + start + n, total)
    if any(not math.isfinite(v) for pair in out for v in pair):
        raise ModelError("scoring produced non-finite log-probs (are these weights trained to NaN?)")
    return out


def reward_scores(
    reward_model: Any,
    pairs: Sequence[PreferencePair],
    batch_size: int = 16,
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> list[tuple[float, float]]:
    """(score(chosen), score(rejected)) per pair from a Bradley-Terry reward model."""
    out: list[tuple[float, float]] = []
    for start in range(0, len(pairs), batch_size):
        if should_stop is not None and should_stop():
            raise Cancelled()
        chunk = pairs[start : start + batch_size]
        rows = [(p.prompt_ids, p.chosen_ids) for p in chunk] + [(p.prompt_ids, p.rejected_ids) for p in chunk]
        values = reward_model.score_rows(rows, chunk=2 * len(chunk)).tolist()
        n = len(chunk)
        out.extend(zip(values[:n], values[n:], strict=True))
        if progress is not None:
            progress(start + n, len(pairs))
    return out


def tokenize_pairs(scorer: Scorer, data: str | Path, split: str = "train") -> list[PreferencePair]:
    """The pairs of a preference file, tokenised as the scorer's model was trained on them."""
    from engine.data import load_pairs

    return load_pairs(str(data), scorer.tokenizer, scorer.max_length, split)


def score(
    scorer: Scorer,
    pairs: Sequence[PreferencePair],
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> list[PairScore]:
    """Score every pair; ``progress(done, total)`` after each batch; ``should_stop()`` true cancels."""
    n = len(pairs)
    rm: list[tuple[float | None, float | None]] = [(None, None)] * n
    if scorer.kind == "reward":
        got = reward_scores(scorer.reward_model, pairs, batch_size, progress=progress, should_stop=should_stop)
        rm = [(c, r) for c, r in got]
        zeros = [(0.0, 0.0)] * n
        policy, ref = zeros, zeros
    elif scorer.kind == "base" or scorer.reference is scorer.policy:
        policy = pair_logprobs(scorer.policy, pairs, batch_size, progress=progress, should_stop=should_stop)
        ref = policy
    else:
        total = 2 * n
        policy = pair_logprobs(scorer.policy, pairs, batch_size, progress=progress, should_stop=should_stop, total=total)
        ref = pair_logprobs(scorer.reference, pairs, batch_size, progress=progress, should_stop=should_stop, done_before=n, total=total)
    return [
        PairScore(p.where, p.prompt, p.chosen, p.rejected, pc, pr, rc, rr, scorer.beta, rmc, rmr)
        for p, (pc, pr), (rc, rr), (rmc, rmr) in zip(pairs, policy, ref, rm, strict=True)
    ]


def cleaned_path(data: str | Path) -> Path:
    """Where the cleaned copy of ``data`` goes: ``<name>.cleaned.jsonl`` beside it (never the original)."""
    p = Path(data)
    suffix = ".json" if p.suffix == ".json" else ".jsonl"
    candidate = p.with_name(f"{p.stem}.cleaned{suffix}")
    n = 2
    while candidate.exists():
        candidate = p.with_name(f"{p.stem}.cleaned-{n}{suffix}")
        n += 1
    return candidate


def save_without(data: str | Path, drop_lines: set[int] | frozenset[int]) -> tuple[Path, int]:
    """Copy a preference file without the rows on ``drop_lines`` (line numbers as data.py reports
    them, e.g. the flagged pairs); return (the new file, rows kept). The original is untouched."""
    from engine.data import read_rows, resolve_data_file
    from engine.rundir import atomic_write_text

    source = resolve_data_file(str(data))
    rows = read_rows(source)
    kept = [obj for line, obj in rows if line not in drop_lines]
    out = cleaned_path(source)
    if out.suffix == ".json":
        text = json.dumps(kept, ensure_ascii=False, indent=1) + "\n"
    else:
        text = "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in kept)
    atomic_write_text(out, text)
    return out, len(kept)


__all__ = [
    "PairScore",
    "Scorer",
    "base_scorer",
    "cleaned_path",
    "checkpoint_scorer",
    "find_checkpoint",
    "live_scorer",
    "pair_logprobs",
    "reward_scores",
    "save_without",
    "score",
    "tokenize_pairs",
    "weights_scorer",
]
