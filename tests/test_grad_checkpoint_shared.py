"""Gradient checkpointing must not change the gradients, on the shared-prompt path too.

The shared-prompt path (engine.logprobs) runs the prompts once and lets the answers attend
to the prompt's keys and values through a cache object. Checkpointed blocks recompute their
activations in the backward pass; if the prompt's keys/values reached the answers' blocks as
closed-over constants, the answers' gradient would never reach the prompt's layers (it did
not, under mlx-lm's grad_checkpoint: the embedding's gradient was off by 75%). Recomputing the
same float32 operations on the same inputs gives the same numbers, so the comparison allows
only rounding of the sums (1e-6 of the gradient's norm).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_checkpointed_blocks_give_the_same_dpo_gradients_on_the_shared_prompt_path() -> None:
    # its own process: checkpointing patches the block class for the whole process
    code = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, "tests")
        import mlx.core as mx, mlx.nn as nn, numpy as np
        from mlx.utils import tree_flatten
        from test_chunked_logprobs import tiny_llama
        from engine.batching import collate_shared
        from engine.compile import enable_grad_checkpoint
        from engine.logprobs import shared_prompt_logprobs, shared_prompt_stats

        model = tiny_llama(True)
        rnd = np.random.default_rng(3)
        prompts = [[int(t) for t in rnd.integers(3, 97, rnd.integers(2, 12))] for _ in range(4)]
        answers = [[int(t) for t in rnd.integers(3, 97, rnd.integers(1, 9))] for _ in range(8)]
        b = collate_shared(prompts, answers)

        def loss(fn):
            def f(m):
                lp, _ = fn(m, b.prompts, b.prompt_pad, b.answers)
                s = (lp * b.mask).sum(-1)
                return -nn.log_sigmoid(0.1 * (s[:4] - s[4:])).mean()
            return f

        def flat(g):
            return np.concatenate([np.array(v).ravel() for _, v in sorted(tree_flatten(g))])

        before = {name: nn.value_and_grad(model, loss(fn))(model) for name, fn in (("plain", shared_prompt_logprobs), ("chunked", shared_prompt_stats))}
        assert enable_grad_checkpoint(model)
        assert getattr(type(model.model.layers[0]), "_rlhf_tui_checkpointed", False)
        for name, fn in (("plain", shared_prompt_logprobs), ("chunked", shared_prompt_stats)):
            l0, g0 = before[name]
            l1, g1 = nn.value_and_grad(model, loss(fn))(model)
            a, c = flat(g0), flat(g1)
            assert abs(float(l0) - float(l1)) <= 1e-6 * abs(float(l0)), (name, float(l0), float(l1))
            assert np.linalg.norm(a - c) <= 1e-6 * np.linalg.norm(a), (name, np.linalg.norm(a - c) / np.linalg.norm(a))
        print("OK")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]
