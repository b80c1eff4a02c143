"""GRPO on the built-in tiny letter-sorter: sample groups of answers, reward the sorted ones.

    uv run python examples/train_grpo.py                 # the preset's steps (a few minutes on 2 CPU cores)
    uv run python examples/train_grpo.py --steps 10 --out runs/grpo-example

The reward is the registered ``sorted_letters`` function (how well an answer sorts the
prompt's letters); no reward model and, with ``grpo.beta = 0``, no reference model are
needed. Prints the mean reward per step and a few sampled completions with their scores
and group-relative advantages.
"""

from __future__ import annotations

import argparse

import engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    parser.add_argument("--out", default=None, help="run directory (default: runs/tiny-grpo-<time>)")
    args = parser.parse_args(argv)
    engine.use_fast_blas()

    overrides = [f"train.max_steps={args.steps}"] if args.steps else []
    config = engine.load_preset("tiny-grpo", overrides=overrides)
    run = engine.Run(config, out_dir=args.out)

    shown = 0
    for event in engine.stream(run):
        if isinstance(event, engine.RunStarted):
            print(f"GRPO, {config.grpo.num_generations} completions per prompt, {event.total_steps} steps -> {event.run_dir}")
        elif isinstance(event, engine.StepMetrics):
            m = event.metrics
            print(f"step {event.step:4d}  reward {m['reward']:.3f}  loss {m['loss']:+.4f}  reward_std {m.get('reward_std', float('nan')):.3f}")
        elif isinstance(event, engine.Sample) and shown < 6:
            shown += 1
            print(f"  sample: {event.prompt.strip()!r} -> {event.completion.strip()!r}  score {event.score:.2f}  advantage {event.advantage:+.2f}")
        elif isinstance(event, engine.RunFailed):
            print(f"failed: {event.error}")

    rows = engine.read_metrics(run.directory.path)
    if rows:
        print(f"{run.status}: mean reward {rows[0]['reward']:.3f} at step 1 -> {rows[-1]['reward']:.3f} at step {rows[-1]['step']}")
    return 0 if run.status == "completed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
