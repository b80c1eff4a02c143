"""Classic RLHF on the built-in tiny letter-sorter: train a reward model, then PPO against it.

    uv run python examples/train_reward_then_ppo.py
    uv run python examples/train_reward_then_ppo.py --reward-steps 20 --ppo-steps 5 --out runs/rlhf-example

Step 1 trains a Bradley-Terry reward model (``tiny-reward``) on the bundled preference
pairs and reports its held-out accuracy. Step 2 runs PPO (``tiny-ppo``: policy + value
head, GAE, clipped losses, KL penalty to the reference) with that reward model scoring
the policy's own completions (``ppo.reward_model`` = the reward run's directory).

At the end it reports the task's own scores, which PPO never sees: ``eval/task_score``
(the share of held-out prompts whose greedy answer is exactly the sorted letters, from the
PPO run's eval rows) and the ``sorted_letters`` score of PPO's samples. That is how to tell
learning from reward hacking. The built-in pairs' rejected answers include the policy's
own failure kinds (letters left as given, shuffled, swapped, missing, invented, repeated),
so the reward model (about 0.9 held-out accuracy) ranks what the policy writes, and the
task score climbs with the reward-model score (measured: 0.16 at step 0 -> 0.97 after 50
PPO steps at ``ppo.kl_coef = 0.2``). A reward model trained only on pairs unlike the
policy's answers gets hacked instead; a labelling round (``l`` in the console) trains one
on the policy's own answers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import engine


def report(event: engine.Event) -> None:
    """Print what a person watching the run wants to see (called on the training thread)."""
    if isinstance(event, engine.RunStarted):
        print(f"{event.algorithm}: {event.total_steps} steps -> {event.run_dir}")
    elif isinstance(event, engine.StepMetrics):
        m = event.metrics
        kl = "-" if m.get("kl") is None else f"{m['kl']:+.4f}"
        print(f"  step {event.step:4d}  loss {m['loss']:.4f}  reward {m['reward']:+.3f}  kl {kl}")
    elif isinstance(event, engine.EvalMetrics):
        shown = {k: round(v, 4) for k, v in event.metrics.items() if k.startswith("eval/") and isinstance(v, float)}
        print(f"  eval at step {event.step}: {shown}")
    elif isinstance(event, engine.RunFailed):
        print(f"  failed: {event.error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reward-steps", type=int, default=None, help="reward-model steps (default: the preset's)")
    parser.add_argument("--ppo-steps", type=int, default=None, help="PPO steps (default: the preset's)")
    parser.add_argument("--out", default=None, help="folder for both run directories (default: runs/)")
    args = parser.parse_args(argv)
    engine.use_fast_blas()
    root = Path(args.out) if args.out else None

    reward_overrides = [f"train.max_steps={args.reward_steps}"] if args.reward_steps else []
    reward_run = engine.train(
        "tiny-reward",
        overrides=reward_overrides,
        out_dir=root / "reward" if root else None,
        on_event=report,
    )
    if reward_run.status != "completed":
        return 1
    accuracy = reward_run.summary["final_eval"].get("eval/accuracy")
    print(f"reward model done: held-out accuracy {accuracy:.3f}" if accuracy is not None else "reward model done")

    ppo_overrides = [f"ppo.reward_model={reward_run.directory.path}", "ppo.kl_coef=0.2"]
    if args.ppo_steps:
        ppo_overrides.append(f"train.max_steps={args.ppo_steps}")
    ppo_run = engine.train("tiny-ppo", overrides=ppo_overrides, out_dir=root / "ppo" if root else None, on_event=report)
    rows = engine.read_metrics(ppo_run.directory.path)
    if rows:
        print(f"PPO {ppo_run.status}: reward {rows[0]['reward']:+.3f} at step 1 -> {rows[-1]['reward']:+.3f} at step {rows[-1]['step']}")
    held_out = [(r["step"], r["eval/task_score"]) for r in engine.read_metrics(ppo_run.directory.path, "eval") if "eval/task_score" in r]
    if held_out:
        (s0, v0), (s1, v1) = held_out[0], held_out[-1]
        print(f"held-out task score (eval/task_score, greedy answers exactly sorted, unseen by PPO): {v0:.3f} at step {s0} -> {v1:.3f} at step {s1}")
    first, last = task_scores(ppo_run.directory.path)
    if first is not None:
        print(f"task score of the samples (sorted_letters, unseen by PPO): {first:.3f} in the first quarter -> {last:.3f} in the last")
    return 0 if ppo_run.status == "completed" else 1


def task_scores(run_dir: Path) -> tuple[float | None, float | None]:
    """Mean ``sorted_letters`` score of the samples in the first and last quarter of steps."""
    import json

    from engine.rewards import sorted_letters_score

    path = Path(run_dir) / "samples.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    steps = sorted({r["step"] for r in rows})
    if not steps:
        return None, None
    quarter = max(1, len(steps) // 4)

    def mean(chosen: list[int]) -> float:
        scores = [sorted_letters_score(r["prompt"], r["completion"]) for r in rows if r["step"] in set(chosen)]
        return sum(scores) / len(scores)

    return mean(steps[:quarter]), mean(steps[-quarter:])


if __name__ == "__main__":
    raise SystemExit(main())
