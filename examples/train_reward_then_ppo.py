"""Classic RLHF on the built-in tiny letter-sorter: train a reward model, then PPO against it.

    uv run python examples/train_reward_then_ppo.py
    uv run python examples/train_reward_then_ppo.py --reward-steps 20 --ppo-steps 5 --out runs/rlhf-example

Step 1 trains a Bradley-Terry reward model (``tiny-reward``) on the bundled preference
pairs and reports its held-out accuracy. Step 2 runs PPO (``tiny-ppo``: policy + value
head, GAE, clipped losses, KL penalty to the reference) with that reward model scoring
the policy's own completions (``ppo.reward_model`` = the reward run's directory).
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

    ppo_overrides = [f"ppo.reward_model={reward_run.directory.path}"]
    if args.ppo_steps:
        ppo_overrides.append(f"train.max_steps={args.ppo_steps}")
    ppo_run = engine.train("tiny-ppo", overrides=ppo_overrides, out_dir=root / "ppo" if root else None, on_event=report)
    rows = engine.read_metrics(ppo_run.directory.path)
    if rows:
        print(f"PPO {ppo_run.status}: reward {rows[0]['reward']:+.3f} at step 1 -> {rows[-1]['reward']:+.3f} at step {rows[-1]['step']}")
    return 0 if ppo_run.status == "completed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
