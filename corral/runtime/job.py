"""The Job API: a PyTorch training loop opts into distribution, accumulation, precision and checkpoints.

    job = corral.init(strategy="ddp", precision="bf16", grad_accum=2, checkpoint_every=100)
    model, optimizer, loader = job.prepare(model, optimizer, dataset, batch_size=32)
    for epoch in job.epochs(10):
        for x, y in loader:
            job.step(F.cross_entropy(model(x), y))
    job.finish()

Collective calls (`step` on a sync boundary, `save`, `log`, `finish`) must be
made by every rank in the same order, as with torch.distributed itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from corral.errors import UserError
from corral.runtime import checkpoint as ckpt
from corral.runtime import env
from corral.runtime.exitcodes import PREEMPTED_EXIT_CODE
from corral.runtime.loader import ShardedLoader
from corral.runtime.partition import (
    Segment,
    check_partition,
    history_from_state,
    history_to_state,
)
from corral.runtime.report import Reporter
from corral.runtime.strategies import STRATEGIES, Strategy, get_strategy

PRECISIONS = ("fp32", "bf16", "fp16")
# Ranks agree on a SIGTERM about this often (seconds of training between votes);
# a vote is an all-reduce, too costly on every step of a small model.
VOTE_PERIOD_S = 0.25
VOTE_MAX_INTERVAL = 1000
# Rank 0 reports step time, samples/s and progress to the service about this often
# (seconds of training, timed locally: no collective).
REPORT_PERIOD_S = 2.0


def _user_error_hook(previous: Callable[..., Any]) -> Callable[..., Any]:
    """An excepthook that turns an uncaught UserError into one line and exit code 2, like the CLI."""

    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        if isinstance(exc, UserError):
            # sys.__stderr__: torch.distributed swaps sys.stderr for a buffer around the hook.
            print(f"error: {exc}", file=sys.__stderr__, flush=True)
            sys.stdout.flush()
            os._exit(UserError.exit_code)  # an uncaught exception would otherwise exit 1
        previous(exc_type, exc, tb)

    return hook


sys.excepthook = _user_error_hook(sys.excepthook)


@dataclass
class StepStats:
    """Timing of the job's optimizer steps, for logs and the control plane."""

    last_step_s: float = 0.0
    samples: int = 0
    started: float = 0.0


class Job:
    """One worker's view of a training job: rank, device, strategy, checkpoints and the step loop."""

    def __init__(
        self,
        *,
        strategy: str = "ddp",
        precision: str = "fp32",
        grad_accum: int = 1,
        max_grad_norm: float | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        checkpoint_every: int | None = None,
        seed: int = 0,
        **strategy_options: Any,
    ) -> None:
        if strategy not in STRATEGIES:
            raise UserError(f"unknown strategy {strategy!r}; choose one of: {', '.join(sorted(STRATEGIES))}")
        if precision not in PRECISIONS:
            raise UserError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if grad_accum < 1:
            raise UserError(f"grad_accum must be >= 1, got {grad_accum}")
        if checkpoint_every is not None and checkpoint_every < 1:
            raise UserError(f"checkpoint_every must be >= 1 or None, got {checkpoint_every}")
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise UserError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")

        self.rank = env.rank()
        self.local_rank = env.local_rank()
        self.world_size = env.world_size()
        self.is_main = self.rank == 0
        self.device = self._pick_device()
        if precision == "fp16" and self.device.type != "cuda":
            raise UserError("precision 'fp16' needs a CUDA device (it uses a GradScaler); use 'bf16' or 'fp32' on CPU")
        self.precision = precision
        self.grad_accum = grad_accum
        self.max_grad_norm = max_grad_norm
        self.checkpoint_every = checkpoint_every
        self.seed = seed
        ckpt_dir = checkpoint_dir if checkpoint_dir is not None else env.checkpoint_dir()
        self.checkpoint_dir = Path(ckpt_dir) if ckpt_dir else None

        self.step_count = 0
        self.epoch = 0
        self.state: dict[str, Any] = {}
        self.stats = StepStats(started=time.perf_counter())
        self.restored_from: int | None = None  # optimizer step of the checkpoint we resumed from
        self._history: tuple[Segment, ...] = ()
        self._micro = 0
        self._sync_ctx: contextlib.ExitStack | None = None
        self._boundary_next = True
        self._from_loader = False  # the current micro-step's batch came from our loader
        self._loader: ShardedLoader | None = None
        self._model: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._scaler: torch.amp.GradScaler | None = None
        self._stop_requested = False
        self._stop_flag: torch.Tensor | None = None
        self._ctrl_group: Any = None
        self._stop_work: Any = None
        self._next_vote_step = 0
        self._epochs_total: int | None = None
        self._last_boundary = time.perf_counter()
        self._straggle = env.straggler_factor(self.rank)
        self._straggle_from = self._last_boundary

        # The strategy checks its options before any process group starts.
        self.strategy: Strategy = get_strategy(
            strategy, world_size=self.world_size, device=self.device, **strategy_options
        )
        self._init_process_group()
        _seed_everything(seed)
        self._payload = ckpt.load(ckpt.checkpoint_path(self.checkpoint_dir)) if self.checkpoint_dir else None
        if self._payload is not None:
            self.step_count = int(self._payload["step"])
            self.epoch = int(self._payload["epoch"])
            self.state = dict(self._payload.get("state", {}))
            self._history = history_from_state(self._payload["sampler"]["history"])
            self.restored_from = self.step_count
        self._previous_sigterm = signal.getsignal(signal.SIGTERM)
        with contextlib.suppress(ValueError):  # not the main thread: no handler, no preemption
            signal.signal(signal.SIGTERM, self._on_sigterm)
        # Under the service, rank 0 reports metrics from a background thread; otherwise
        # there is no reporter and the loop pays one `is None` check per optimizer step.
        self._reporter: Reporter | None = Reporter.from_env() if self.is_main else None
        self._reset_report_window()
        self._reported_progress: float | None = None

    # -- set-up -------------------------------------------------------------

    def _pick_device(self) -> torch.device:
        if torch.cuda.is_available():
            index = self.local_rank % torch.cuda.device_count()
            torch.cuda.set_device(index)
            return torch.device("cuda", index)
        return torch.device("cpu")

    def _init_process_group(self) -> None:
        if dist.is_initialized() or not (env.under_launcher() or self.world_size > 1):
            return
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        # Its functions take `group=group.WORLD` as a default argument, evaluated on import:
        # imported after the group exists (torch._dynamo imports it, e.g. when an optimizer
        # is built), it would hold the group forever and _release_groups() could not end it.
        with contextlib.suppress(ImportError):
            import torch.distributed.nn.functional  # noqa: F401
        dist.init_process_group(backend, timeout=dt.timedelta(minutes=10))
        if self.world_size > 1:
            # A second gloo group carries the preemption vote asynchronously,
            # so it never queues behind the gradient all-reduces.
            self._ctrl_group = dist.new_group(backend="gloo")
            self._stop_flag = torch.zeros(2)

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one rank is running."""
        return dist.is_initialized() and self.world_size > 1

    def prepare(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        dataset: Any,
        batch_size: int,
        partition: str = "strided",
        shuffle: bool = True,
        drop_last: bool = False,
        *,
        costs: Sequence[float] | None = None,
        key: Callable[[int], Any] | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        num_workers: int = 0,
    ) -> tuple[nn.Module, torch.optim.Optimizer, ShardedLoader]:
        """Move and wrap the model for the strategy, restore a checkpoint, and build this rank's loader.

        Args:
            model: the user's module (constructed identically on every rank).
            optimizer: an optimizer over `model.parameters()`.
            dataset: a map-style dataset (len and integer indexing).
            batch_size: samples per worker per micro-step.
            partition: "strided", "range", "hash" or "balanced" (needs `costs`).
        Returns:
            (model, optimizer, loader) in the order given; iterate the loader once per epoch.
        """
        check_partition(partition)
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        model.to(self.device)
        if self._payload is not None:
            self.strategy.load_state_dict(model, self._payload["model"])
            optimizer.load_state_dict(self._payload["optimizer"])
        if self.precision == "bf16":
            # Patch forward (as Accelerate does) so the user's own forward call autocasts.
            model.forward = torch.autocast(self.device.type, dtype=torch.bfloat16)(model.forward)
        elif self.precision == "fp16":
            model.forward = torch.autocast(self.device.type, dtype=torch.float16)(model.forward)
            self._scaler = torch.amp.GradScaler(self.device.type)
            if self._payload is not None and "scaler" in self._payload:
                self._scaler.load_state_dict(self._payload["scaler"])
        self._model = self.strategy.wrap_model(model)
        self._optimizer = optimizer
        self.strategy.attach(self, self._model, optimizer)
        self._loader = (self.strategy.loader_class or ShardedLoader)(
            self,
            dataset,
            batch_size,
            partition=partition,
            shuffle=shuffle,
            drop_last=drop_last,
            costs=costs,
            key=key,
            collate_fn=collate_fn,
            num_workers=num_workers,
        )
        if self._payload is not None:
            _restore_rng(self._payload.get("rng", []), self.rank)
            self._payload = None  # free the memory; everything is restored
        self._straggle_from = time.perf_counter()  # a straggler's first step excludes the set-up
        self._reset_report_window()  # nor does the first reported step time
        return self._model, optimizer, self._loader

    # -- the loop -----------------------------------------------------------

    def epochs(self, n: int) -> Iterator[int]:
        """Yield epoch numbers up to `n`, starting after the last completed one when resuming."""
        if n < 0:
            raise UserError(f"number of epochs must be >= 0, got {n}")
        self._epochs_total = n
        while self.epoch < n:
            yield self.epoch
            self._flush_accumulation()
            self.epoch += 1
            self._history = ()
            if self.checkpoint_dir is not None:
                self.save()

    def _begin_micro_step(self, *, last_of_epoch: bool) -> None:
        """Called by the loader before it yields a batch: open no_sync unless this micro-step syncs."""
        self._end_micro_step_context()
        boundary = (self._micro + 1) % self.grad_accum == 0 or last_of_epoch
        self._boundary_next = boundary
        self._from_loader = True
        if not boundary and self._model is not None:
            # The decision must precede the forward pass: DDP prepares its
            # reducer during forward, so no_sync() opens before the batch is used.
            self._sync_ctx = contextlib.ExitStack()
            self._sync_ctx.enter_context(self.strategy.no_sync(self._model))

    def _end_micro_step_context(self) -> None:
        if self._sync_ctx is not None:
            self._sync_ctx.close()
            self._sync_ctx = None

    def step(self, loss: torch.Tensor) -> None:
        """Backward `loss` scaled by 1/grad_accum; on an accumulation boundary sync, clip, step, zero, checkpoint."""
        if self._optimizer is None or self._model is None:
            raise UserError("call job.prepare(model, optimizer, dataset, ...) before job.step(loss)")
        # Without our loader there is no look-ahead: every grad_accum-th call syncs.
        boundary = self._boundary_next if self._from_loader else (self._micro + 1) % self.grad_accum == 0
        scaled = loss / self.grad_accum if self.grad_accum > 1 else loss
        (self._scaler.scale(scaled) if self._scaler else scaled).backward()
        self._end_micro_step_context()
        if self._from_loader and self._loader is not None:
            self.stats.samples += self._loader.batch_size * self.world_size
        self._from_loader = False
        self._micro += 1
        if boundary:
            self._optimizer_step()

    def _flush_accumulation(self) -> None:
        """An epoch ended mid-accumulation (the user skipped batches): apply what was accumulated."""
        self._end_micro_step_context()
        if self._micro == 0 or self._optimizer is None or self._model is None:
            return
        if self.distributed and self.strategy.syncs_in_backward:
            # These micro-steps ran under no_sync(): average their gradients by hand.
            for p in self._model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world_size
        self._optimizer_step()

    def _optimizer_step(self) -> None:
        assert self._optimizer is not None and self._model is not None
        opt = self._optimizer
        if self._scaler is not None:
            self._scaler.unscale_(opt)
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self._model.parameters(), self.max_grad_norm)
        if self._scaler is not None:
            self._scaler.step(opt)
            self._scaler.update()
        else:
            self.strategy.optimizer_step(opt)
        opt.zero_grad(set_to_none=True)
        self._micro = 0
        self.step_count += 1
        if self._loader is not None:
            # Everything yielded so far is now inside the model's weights.
            self._loader.batches_done = self._loader.yielded
        self._straggler_delay()
        if self._reporter is not None and self._last_boundary >= self._report_due:
            self._report_throughput()
        if not self.strategy.lockstep:
            return  # asynchronous workers checkpoint and stop together where their loader syncs them
        if self.checkpoint_every and self.step_count % self.checkpoint_every == 0 and self.checkpoint_dir:
            self.save()
        if self._should_stop():
            self._exit_preempted()

    def _straggler_delay(self) -> None:
        now = time.perf_counter()
        self.stats.last_step_s = now - self._last_boundary
        if self._straggle > 1.0:
            # Slower by this step's own time, not by set-up or what ran between epochs (e.g. the
            # wait for parameter servers to start, which would stall a straggler for seconds).
            time.sleep((self._straggle - 1.0) * (now - max(self._last_boundary, self._straggle_from)))
            now = time.perf_counter()
        self._last_boundary = now

    # -- preemption ---------------------------------------------------------

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._stop_requested = True

    def _should_stop(self) -> bool:
        """Agree across ranks whether to stop, without a collective on every step.

        Ranks vote with one small asynchronous all-reduce (MAX over [stop, -interval]):
        it carries the stop flag and each rank's proposal for how many steps to wait
        before the next vote, about VOTE_PERIOD_S of work. All ranks read the result
        at the same later step, so they stop at the same step and checkpoint together.
        """
        if not self.distributed or self._stop_flag is None:
            return self._stop_requested
        if self.step_count < self._next_vote_step:
            return False
        decided = False
        interval = 1
        if self._stop_work is not None:
            self._stop_work.wait()
            decided = bool(self._stop_flag[0].item() > 0)
            interval = int(-self._stop_flag[1].item())
            self._stop_work = None
        if not decided:
            step_s = max(self.stats.last_step_s, 1e-6)
            proposal = max(1, min(VOTE_MAX_INTERVAL, int(VOTE_PERIOD_S / step_s)))
            self._stop_flag[0] = 1.0 if self._stop_requested else 0.0
            self._stop_flag[1] = -float(proposal)
            self._stop_work = dist.all_reduce(
                self._stop_flag, op=dist.ReduceOp.MAX, group=self._ctrl_group, async_op=True
            )
        self._next_vote_step = self.step_count + interval
        return decided

    def _exit_preempted(self) -> None:
        if self.checkpoint_dir is not None:
            self.save()
        if self.is_main:
            print(
                f"[corral] preempted at step {self.step_count}: checkpoint saved, exiting {PREEMPTED_EXIT_CODE}",
                flush=True,
            )
        if self.distributed:
            with contextlib.suppress(Exception):
                dist.barrier()
        self._teardown()
        sys.exit(PREEMPTED_EXIT_CODE)

    # -- checkpoints, metrics, end -----------------------------------------

    def save(self) -> None:
        """Write a checkpoint (every rank must call it; rank 0 writes the file atomically)."""
        if self.checkpoint_dir is None or self._model is None or self._optimizer is None:
            return
        rng = _rng_state()
        if self.distributed:
            states: list[Any] = [None] * self.world_size
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        if self.is_main:
            history = self._history
            if self._loader is not None and self._loader._plan is not None and self._loader.batches_done:
                history = history + (self._loader.segment(),)
            payload = {
                "step": self.step_count,
                "epoch": self.epoch,
                "model": self.strategy.state_dict(self._model),
                "optimizer": self.strategy.optimizer_state_dict(self._optimizer),
                "sampler": {"history": history_to_state(history)},
                "rng": states,
                "state": self.state,
                "world_size": self.world_size,
                "saved_at": time.time(),
            }
            if self._scaler is not None:
                payload["scaler"] = self._scaler.state_dict()
            ckpt.save_atomic(payload, ckpt.checkpoint_path(self.checkpoint_dir))
        if self.distributed:
            dist.barrier()

    def log(self, **metrics: float) -> dict[str, float]:
        """Average `metrics` over ranks; the main rank prints them and appends them to metrics.jsonl."""
        names = sorted(metrics)
        values = torch.tensor([float(metrics[k]) for k in names], dtype=torch.float64)
        if self.distributed and names:
            dist.all_reduce(values)
            values /= self.world_size
        averaged = {k: float(v) for k, v in zip(names, values.tolist())}
        if self.is_main:
            record = {"step": self.step_count, "epoch": self.epoch, "time": time.time(), **averaged}
            if self._reporter is not None:
                self._reporter.report(self.step_count, {**averaged, "epoch": self.epoch}, record["time"])
            total = f"/{self._epochs_total}" if self._epochs_total else ""
            _console().print(
                f"[bold]step {self.step_count}[/] epoch {self.epoch + 1}{total} "
                + " ".join(f"{k}=[cyan]{v:.4g}[/]" for k, v in averaged.items())
            )
            if self.checkpoint_dir is not None:
                self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
                with open(self.checkpoint_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
        return averaged

    def finish(self) -> None:
        """Save a final checkpoint (when a directory is set) and leave the process group."""
        self._flush_accumulation()
        if self.checkpoint_dir is not None:
            self.save()
        if self.distributed:
            # Nobody tears down gloo while a peer may still talk to it (that aborts the peer).
            self._wait_vote()
            dist.barrier()
        self._teardown()

    # -- reporting to the service (rank 0 under the service only) ------------

    def _reset_report_window(self) -> None:
        self._report_from = time.perf_counter()
        self._report_due = self._report_from + REPORT_PERIOD_S
        self._report_step = self.step_count
        self._report_samples = self.stats.samples

    def _report_throughput(self) -> None:
        """Queue step_time, samples_per_s (all ranks) and progress since the last report."""
        assert self._reporter is not None
        values: dict[str, float] = {}
        steps = self.step_count - self._report_step
        # Up to the last optimizer step: the final report leaves out what finish() costs.
        elapsed = self._last_boundary - self._report_from
        if steps > 0 and elapsed > 0:
            values["step_time"] = elapsed / steps
            # Every rank runs the same batches, so rank 0's rate times the world size is the job's.
            values["samples_per_s"] = (self.stats.samples - self._report_samples) / elapsed
            # The configuration the step time belongs to: the service fits each job's
            # throughput model (corral.sched.goodput) keyed by nodes, replicas and local batch.
            if self._loader is not None:
                values["replicas"] = float(self.world_size)
                values["local_batch"] = float(self._loader.batch_size)
                values["nodes"] = float(env.num_nodes())
        progress = self._progress()
        if progress is not None and progress != self._reported_progress:
            values["progress"] = self._reported_progress = progress
        if values:
            self._reporter.report(self.step_count, values)
        self._reset_report_window()

    def _progress(self) -> float | None:
        """Fraction of job.epochs(n) done, within the epoch by the loader's position; None before epochs()."""
        n = self._epochs_total
        if n is None:
            return None
        if n == 0 or self.epoch >= n:
            return 1.0
        within = 0.0
        loader = self._loader
        plan = loader._plan if loader is not None else None
        if loader is not None and plan is not None and plan.epoch == self.epoch and plan.num_batches and plan.n:
            # The plan covers what earlier segments of this epoch left (after a resume): count both.
            left = len(plan.pool)
            within = (plan.n - left + left * min(1.0, loader.batches_done / plan.num_batches)) / plan.n
        return min(1.0, (self.epoch + within) / n)

    def _release_groups(self) -> None:
        """Drop our references to the process groups, so that gloo's threads end now, not at exit.

        destroy_process_group() only forgets the groups; a group's threads stop when its
        last reference goes, and DDP's reducer (in the model the user still holds) keeps
        one. Left running, a gloo thread may still hold a finished collective's tensors
        when the interpreter shuts down; dropping them then takes the GIL, which kills the
        thread and aborts the process after a successful run (SIGABRT, "terminate called
        without an active exception"; cf. PyTorch PR #179291). Released here, the threads
        are joined while Python is alive (the group's handle releases the GIL to join them).
        """
        self._ctrl_group = None
        self._stop_flag = None
        ddp = self._model
        if isinstance(ddp, nn.parallel.DistributedDataParallel):
            # The user's model stays usable after finish(): it runs its module, without communication.
            # DDP's internals, on purpose: torch has no API to release them (hence the type: ignores).
            ddp.forward = ddp.module.__call__  # type: ignore[method-assign]
            ddp.reducer = ddp.logger = None  # type: ignore[assignment]  # the reducer holds the group
            ddp._comm_hooks = []  # a hook's state may hold it too
            ddp.process_group = None  # type: ignore[assignment]  # last: dropping the handle joins the threads

    def _wait_vote(self) -> None:
        if self._stop_work is not None:
            with contextlib.suppress(Exception):
                self._stop_work.wait()
            self._stop_work = None

    def _teardown(self) -> None:
        self._end_micro_step_context()
        self._wait_vote()
        self.strategy.close()
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
            self._release_groups()
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, self._previous_sigterm)
        if self._reporter is not None:
            # The last numbers (progress 1.0 at the end), sent within about 2 s or dropped.
            self._report_throughput()
            self._reporter.close()
            self._reporter = None


def init(
    strategy: str = "ddp",
    precision: str = "fp32",
    grad_accum: int = 1,
    max_grad_norm: float | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    seed: int = 0,
    **strategy_options: Any,
) -> Job:
    """Join the job: read the launcher's environment, start the process group, resume a checkpoint."""
    return Job(
        strategy=strategy,
        precision=precision,
        grad_accum=grad_accum,
        max_grad_norm=max_grad_norm,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        seed=seed,
        **strategy_options,
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _restore_rng(states: list[Any], rank: int) -> None:
    """Restore this rank's RNG; a rank that did not exist at save time keeps its fresh seed."""
    if rank >= len(states) or states[rank] is None:
        return
    s = states[rank]
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])


_CONSOLE = None


def _console() -> Any:
    global _CONSOLE
    if _CONSOLE is None:
        from rich.console import Console

        _CONSOLE = Console(highlight=False, soft_wrap=True)
    return _CONSOLE
