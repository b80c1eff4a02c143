"""The interface every algorithm implements, and the context the runner hands it.

An algorithm turns data into optimizer updates: ``train_step(step)`` draws its batch
(or generates rollouts), calls ``ctx.update(loss_fn, ...)`` one or more times and returns
a :class:`StepResult` (panel values, tokens, TRL-named extras). The runner owns everything else: the loop, pause/cancel, logging,
evaluation scheduling, checkpoints, resume and distributed ranks.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map

from engine.batching import DataOrder
from engine.compile import compile_pays, fused_step_fn, value_and_grad_fn
from engine.errors import NonFiniteError

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.distributed import World
    from engine.models import LoadedModel

LossFn = Callable[..., tuple[mx.array, dict[str, mx.array]]]

# Where the step is compiled (a GPU), compile the optimizer update and clipping into it too
# (engine.compile.fused_step_fn); benchmarks/gpu_step_levers.py turns it off to compare.
FUSED_STEP = True

# A batch shape is traced and compiled the COMPILE_FROM-th time it comes; before that its step
# runs eager. Compiling a new shape costs the host about a second for a 1B model (a trace and
# its kernels), and long-tailed data (real preference sets) brings a new shape most steps:
# on an H100 such steps took 1.2-2.5 s against 0.22 s for repeated shapes. Running a shape's
# first step eager would avoid that, but the one such H100 run ran out of its 80 GB where the
# compiled steps had peaked at 50 GB (eager keeps every element-wise intermediate), so shapes
# are compiled at once (1) until that is measured; benchmarks/run_ours.py --compile-from 2 tries it.
COMPILE_FROM = 1


def shape_key(args: Any) -> tuple[Any, ...]:
    """What a compiled trace is specialised on: each array's shape and dtype, other values as they are."""
    leaves = tree_flatten(args)
    return tuple((v.shape, v.dtype) if isinstance(v, mx.array) else (type(v).__name__, v if isinstance(v, int | float | str | None) else None) for _, v in leaves)


class _Fp32State:
    """Mixed precision for the optimizer: float32 moments and float32 master weights.

    With bfloat16/float16 weights, MLX's Adam keeps ``m`` and ``v`` in the weights' dtype
    and adds each update straight onto the low-precision weight, where updates smaller
    than the weight's rounding step vanish. Here the update is applied to a float32
    master copy (kept in the optimizer state) and the model gets it rounded to its dtype.
    """

    def init_single(self, parameter: mx.array, state: dict) -> None:
        super().init_single(parameter.astype(mx.float32), state)  # type: ignore[misc]
        if parameter.dtype != mx.float32:
            state["master"] = parameter.astype(mx.float32)

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict) -> mx.array:
        if parameter.dtype == mx.float32:
            return super().apply_single(gradient, parameter, state)  # type: ignore[misc]
        master = state.get("master", parameter.astype(mx.float32))
        master = super().apply_single(gradient.astype(mx.float32), master, state)  # type: ignore[misc]
        state["master"] = master
        return master.astype(parameter.dtype)


class Fp32Adam(_Fp32State, optim.Adam):
    """Adam with float32 moments; bias-corrected as PyTorch's unless ``train.adam_bias_correction = false``."""


class Fp32AdamW(_Fp32State, optim.AdamW):
    """AdamW with float32 moments; bias-corrected as PyTorch's unless ``train.adam_bias_correction = false``."""


class TrainContext:
    """What an algorithm may use: model, config, optimizer, ranks, and the run's hooks."""

    def __init__(
        self,
        cfg: RunConfig,
        policy: LoadedModel,
        world: World,
        *,
        check: Callable[[], None],
        phase: Callable[[str, int, int], None],
        log: Callable[[str], None],
        alert: Callable[[str], None],
        sample: Callable[..., None],
    ) -> None:
        self.cfg = cfg
        self.policy = policy
        self.model = policy.model
        self.tokenizer = policy.tokenizer
        self.world = world
        self.check = check  # call inside long loops: blocks while paused, raises Cancelled
        self.phase = phase
        self.log = log
        self.alert = alert
        self.sample = sample
        self.trainable: nn.Module = policy.model
        self.optimizer: optim.Optimizer | None = None
        self.step = 0
        self.skipped_steps = 0
        self._shapes_seen: dict[tuple[Any, ...], int] = {}

    # -------------------------------------------------------------- optimisation

    def build_optimizer(self) -> optim.Optimizer:
        t = self.cfg.train
        lr: Any = t.learning_rate
        if t.lr_schedule == "cosine":
            lr = optim.cosine_decay(t.learning_rate, max(t.max_steps - t.warmup_steps, 1))
        elif t.lr_schedule == "linear":
            lr = optim.linear_schedule(t.learning_rate, 0.0, max(t.max_steps - t.warmup_steps, 1))
        if t.warmup_steps > 0:
            warm = optim.linear_schedule(0.0, t.learning_rate, t.warmup_steps)
            lr = optim.join_schedules([warm, lr if callable(lr) else (lambda _: mx.array(t.learning_rate))], [t.warmup_steps])
        # the schedule follows the run's step, not the optimizer's update count: PPO and
        # GRPO make several updates per step (see apply_schedule)
        self._schedule = lr if callable(lr) else None
        start = float(lr(0).item()) if callable(lr) else float(lr)
        fp32 = t.optimizer_state == "float32"  # else MLX's own: moments in the weights' dtype, no master copy
        if t.optimizer == "adamw":
            opt: optim.Optimizer = (Fp32AdamW if fp32 else optim.AdamW)(learning_rate=start, weight_decay=t.weight_decay, bias_correction=t.adam_bias_correction)
        elif t.optimizer == "adam":
            opt = (Fp32Adam if fp32 else optim.Adam)(learning_rate=start, bias_correction=t.adam_bias_correction)
        else:
            opt = optim.SGD(learning_rate=start)
        # initialise from the parameters: MLX otherwise initialises lazily from the first
        # *gradients*, which would make the float32 master weights a copy of the gradients
        opt.init(self.trainable.trainable_parameters())
        self.optimizer = opt
        return opt

    def apply_schedule(self, step: int) -> None:
        """Set the learning rate for run step ``step`` (1-based) from the configured schedule."""
        if self.optimizer is not None and self._schedule is not None:
            self.optimizer.learning_rate = self._schedule(step - 1)

    @property
    def learning_rate(self) -> float:
        assert self.optimizer is not None
        return float(self.optimizer.learning_rate.item())

    def micro_batches(self, items: list[Any]) -> list[list[Any]]:
        """``items`` split into ``train.grad_accumulation_steps`` near-equal, non-empty chunks."""
        k = max(1, min(self.cfg.train.grad_accumulation_steps, len(items)))
        size, extra = divmod(len(items), k)
        out, start = [], 0
        for i in range(k):
            end = start + size + (1 if i < extra else 0)
            out.append(items[start:end])
            start = end
        return out

    def compile_this(self, args: Any) -> bool:
        """Whether to run a step on ``args`` compiled: ``train.compile`` asked, a GPU, and a
        batch of this shape seen ``COMPILE_FROM`` times (counting this one)."""
        if not compile_pays(self.cfg.train.compile):
            return False
        if COMPILE_FROM <= 1:  # the default: no need to count shapes on every step
            return True
        key = shape_key(args)
        seen = self._shapes_seen.get(key, 0) + 1
        self._shapes_seen[key] = seen
        return seen >= COMPILE_FROM

    def update(self, loss_fn: LossFn, *args: Any) -> tuple[float, dict[str, float], float]:
        """One optimizer update of ``self.trainable`` on ``loss_fn(module, *args)``.

        Gradients are averaged over ranks and clipped; a non-finite loss or gradient stops
        the run (or skips the update when ``train.on_nan = "skip"``) before any weight
        changes. Returns (loss, aux metrics, gradient norm) as Python floats.
        """
        assert self.optimizer is not None, "build_optimizer() first"
        compiled = self.compile_this(args)  # compiled on GPU only, for shapes that come again
        fused = None
        if compiled and FUSED_STEP:
            skip = self.cfg.train.on_nan == "skip"  # keep the old weights on the device only where the run goes on
            fused = fused_step_fn(self.trainable, self.optimizer, loss_fn, self.cfg.train.max_grad_norm, self.world.average_gradients, keep_on_non_finite=skip)
        if fused is not None:
            loss, aux, norm = fused(*args)
            mx.eval(loss, norm, aux, self.trainable.parameters(), self.optimizer.state)
            # non-finite: skip had nothing updated on the device; stop raises, and the run saves nothing more
            return self._host_values(loss, norm, aux)[:3]
        step_fn = value_and_grad_fn(self.trainable, loss_fn, compiled)
        (loss, aux), grads = step_fn(*args)
        return self._apply(loss, aux, grads)

    def update_accumulated(self, loss_fn: LossFn, micro: list[tuple[float, tuple[Any, ...]]]) -> tuple[float, dict[str, float], float]:
        """One optimizer update from several micro-batches (``train.grad_accumulation_steps``).

        ``micro`` holds (weight, args) per micro-batch, weights summing to 1 (each chunk's
        share of the batch's pairs, or of its target tokens for a per-token loss), so the
        summed gradient and loss equal the whole batch's. Only one micro-batch's activations
        are alive at a time."""
        if len(micro) == 1:
            return self.update(loss_fn, *micro[0][1])
        assert self.optimizer is not None, "build_optimizer() first"
        total_loss: mx.array | None = None
        total_aux: dict[str, mx.array] = {}
        total_grads: Any = None
        for weight, args in micro:
            self.check()
            step_fn = value_and_grad_fn(self.trainable, loss_fn, self.compile_this(args))  # each micro-batch's own shape
            (loss, aux), grads = step_fn(*args)
            grads = tree_map(lambda g, w=weight: g * w, grads)
            total_grads = grads if total_grads is None else tree_map(mx.add, total_grads, grads)
            total_loss = loss * weight if total_loss is None else total_loss + loss * weight
            for k, v in aux.items():
                total_aux[k] = total_aux[k] + v * weight if k in total_aux else v * weight
            mx.eval(total_grads, total_loss, total_aux)
        assert total_loss is not None
        return self._apply(total_loss, total_aux, total_grads)

    def _host_values(self, loss: mx.array, norm: mx.array, aux: dict[str, mx.array]) -> tuple[float, dict[str, float], float, bool]:
        """(loss, aux metrics, gradient norm) as floats, and whether the step was finite. A
        NaN/inf loss or norm stops the run (the default) or is counted as skipped."""
        loss_f, norm_f = float(loss.item()), float(norm.item())
        finite = math.isfinite(loss_f) and math.isfinite(norm_f)
        if not finite:
            what = "loss" if not math.isfinite(loss_f) else "gradient norm"
            msg = f"step {self.step}: {what} is {loss_f if not math.isfinite(loss_f) else norm_f}"
            if self.cfg.train.on_nan != "skip":
                raise NonFiniteError(f"{msg}; stopped with the last good checkpoint intact (set train.on_nan = skip to skip such steps)")
            self.skipped_steps += 1
            self.alert(f"{msg}; update skipped (train.on_nan = skip)")
        return loss_f, {k: float(v.item()) for k, v in aux.items()}, norm_f, finite

    def _apply(self, loss: mx.array, aux: dict[str, mx.array], grads: Any) -> tuple[float, dict[str, float], float]:
        module = self.trainable
        assert self.optimizer is not None
        grads = self.world.average_gradients(grads)
        max_norm = self.cfg.train.max_grad_norm
        if max_norm > 0:
            grads, norm = optim.clip_grad_norm(grads, max_norm)
        else:
            norm = optim.clip_grad_norm(grads, float("inf"))[1]
        mx.eval(loss, norm, aux)
        loss_f, metrics, norm_f, finite = self._host_values(loss, norm, aux)
        if finite:
            self.optimizer.update(module, grads)
            mx.eval(module.parameters(), self.optimizer.state)
        return loss_f, metrics, norm_f


@dataclass
class StepResult:
    """What one training step measured: the panel values, the work done, and the
    algorithm's own metrics under TRL's names (``extras``, in the order they are logged)."""

    loss: float
    grad_norm: float
    num_tokens: float  # prompt + completion tokens this rank processed (tokens_per_sec)
    reward: float | None  # the panel's reward (what it means: engine.algorithms.registry)
    kl: float | None = None  # the panel's KL; None where the algorithm has no reference
    extras: dict[str, float | None] = field(default_factory=dict)

    def metrics(self) -> dict[str, float | None]:
        """The metrics row's algorithm part: ``loss``, ``grad_norm``, ``kl``, ``reward``, then the extras."""
        out: dict[str, float | None] = {"loss": self.loss, "grad_norm": self.grad_norm, "kl": self.kl, "reward": self.reward}
        out.update((k, v) for k, v in self.extras.items() if k not in out)
        return out


class Algorithm(ABC):
    """batch -> loss + metrics. Subclasses set ``name`` and implement ``train_step``."""

    name: ClassVar[str]
    # train_step splits its batch with ctx.micro_batches + ctx.update_accumulated
    supports_grad_accumulation: ClassVar[bool] = False

    def __init__(self, ctx: TrainContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg

    def setup(self, saved: dict[str, mx.array]) -> None:
        """Load data, build heads, precompute what is fixed (reference log-probs...).

        ``saved`` holds what ``run_arrays`` returned when this run started, on resume.
        """
        return None

    def trainable_module(self) -> nn.Module:
        """The module whose trainable parameters the optimizer updates."""
        return self.ctx.model

    def read_data(self, kind: str) -> tuple[Any, list[Any]]:
        """(train, eval) as ``kind`` ('pairs' | 'completions' | 'prompts') from the run's data
        (read before the model loaded; train tokenised lazily); sets ``self.order`` over train."""
        from engine.data import run_data

        self.ctx.phase("reading data", 0, 0)
        data = run_data(self.ctx)
        train, evals = getattr(data, kind)("train"), getattr(data, kind)("eval")
        lengths = getattr(train, "char_lengths", None) if self.cfg.data.group_by_length else None
        self.order = self.data_order(len(train), lengths() if lengths else None)
        return train, evals

    def data_order(self, n: int, lengths: Sequence[int] | None = None) -> DataOrder:
        """The seeded, resumable order over ``n`` training examples, this rank's share of each
        batch; with ``lengths`` (``data.group_by_length``), examples of similar length batched together."""
        cfg, world = self.cfg, self.ctx.world
        return DataOrder(n, cfg.train.batch_size, cfg.train.seed, cfg.data.shuffle, world.rank, world.size, lengths=lengths)

    def train_size(self) -> int:
        """How many training examples one epoch covers (for ``train.epochs``)."""
        for name in ("train", "prompts", "examples"):
            items = getattr(self, name, None)
            if items is not None:
                return len(items)
        raise NotImplementedError(f"{type(self).__name__} does not say how many training examples it has")

    @abstractmethod
    def train_step(self, step: int) -> StepResult:
        """Do one step's updates; return what the step measured."""

    def evaluate(self) -> dict[str, float]:
        """Metrics on held-out data, keys without the ``eval/`` prefix ({} when no eval set)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state to resume from: the data position (``self.order``) where there is
        one; algorithms with more (controllers, RNG) extend it."""
        order = getattr(self, "order", None)
        return {"order": order.state_dict()} if order is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        order = getattr(self, "order", None)
        if order is not None and "order" in state:
            order.load_state_dict(state["order"])

    def extra_arrays(self) -> dict[str, mx.array]:
        """Arrays saved with each checkpoint beside the policy (e.g. a value head)."""
        return {}

    def load_extra_arrays(self, arrays: dict[str, mx.array]) -> None:
        """Restore what ``extra_arrays`` returned."""
        return None

    def run_arrays(self) -> dict[str, mx.array]:
        """Arrays saved once per run (e.g. cached reference log-probs)."""
        return {}
