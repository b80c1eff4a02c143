"""Score a preference file with a trained run: per-pair log-probs and implicit reward margin.

    uv run python examples/score_pairs.py RUN_DIR [--data FILE] [--step N] [--limit 20]
    uv run python examples/score_pairs.py --steps 50     # no run yet: train tiny-dpo first

For a DPO (or SFT) run, for each pair it prints the policy's and the reference's (the base model's) summed
log-probs of the chosen and rejected answers, and the implicit DPO reward margin
``beta * ((pi_c - ref_c) - (pi_r - ref_r))``; positive means training moved the policy
towards the chosen answer. For a reward-model run it prints the reward model's scores.
The default data is the run's own eval file.
"""

from __future__ import annotations

import argparse

import engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", help="a run directory (default: train tiny-dpo first)")
    parser.add_argument("--data", default=None, help="preference file (default: the run's data.eval)")
    parser.add_argument("--step", type=int, default=None, help="score checkpoint N instead of the latest weights")
    parser.add_argument("--limit", type=int, default=20, help="score at most this many pairs (default: 20)")
    parser.add_argument("--steps", type=int, default=100, help="steps for the tiny-dpo run made when no RUN_DIR is given")
    parser.add_argument("--out", default=None, help="where that run goes")
    args = parser.parse_args(argv)
    engine.use_fast_blas()

    run_dir = args.run_dir
    if run_dir is None:
        run = engine.train("tiny-dpo", overrides=[f"train.max_steps={args.steps}"], out_dir=args.out)
        if run.status != "completed":
            print(f"training {run.status}: {run.summary.get('error', '')}")
            return 1
        run_dir = str(run.directory.path)
    data = args.data or engine.run_config(run_dir).data.eval or engine.run_config(run_dir).data.train

    scores = engine.score_pairs(run_dir, data, step=args.step, limit=args.limit)
    if scores and scores[0].rm_chosen is not None:  # a reward-model run scores each answer
        for s in scores:
            print(f"{s.where.rsplit('/', 1)[-1]:<24} reward chosen {s.rm_chosen:+8.3f}  rejected {s.rm_rejected:+8.3f}")
        right = sum(s.rm_margin > 0 for s in scores)
        print(f"{len(scores)} pairs: the reward model prefers chosen in {right} ({right / len(scores):.0%})")
        return 0
    print(f"{'pair':<24} {'policy c/r':>17} {'reference c/r':>17} {'margin':>8}")
    for s in scores:
        where = s.where.rsplit("/", 1)[-1]
        print(f"{where:<24} {s.policy_chosen:8.2f} {s.policy_rejected:8.2f} {s.ref_chosen:8.2f} {s.ref_rejected:8.2f} {s.margin:+8.3f}")
    wins = sum(s.margin > 0 for s in scores)
    mean = sum(s.margin for s in scores) / max(len(scores), 1)
    print(f"{len(scores)} pairs: implicit reward prefers chosen in {wins} ({wins / max(len(scores), 1):.0%}), mean margin {mean:+.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
