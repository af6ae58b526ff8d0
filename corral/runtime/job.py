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
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from corral.errors import UserError
from corral.runtime import checkpoint as ckpt
from corral.runtime import env
from corral.runtime.adaptive import AdaptiveBatch, Choice
from corral.runtime.exitcodes import PREEMPTED_EXIT_CODE
from corral.runtime.loader import ShardedLoader, first_batch
from corral.runtime.partition import (
    Segment,
    check_partition,
    history_from_state,
    history_to_state,
)
from corral.runtime.report import Reporter
from corral.runtime.rng import restore_rng, rng_state, seed_everything
from corral.runtime.strategies import STRATEGIES, Context, MicroStep, Strategy, get_strategy
from corral.runtime.throughput import ReportWindow
from corral.runtime.vote import StopVote

PRECISIONS = ("fp32", "bf16", "fp16")


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
        batch_size: int | str | None = None,
        initial_batch: int | None = None,
        max_batch: int | None = None,
        lr_scaling: str = "adascale",
        max_local_batch: int | None = None,
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
        self.adaptive = _adaptive_batch(
            strategy, grad_accum, batch_size, initial_batch, max_batch, lr_scaling, max_local_batch
        )
        self.batch_size = batch_size if isinstance(batch_size, int) else None  # prepare()'s default

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
        self.history: tuple[Segment, ...] = ()  # parts of the current epoch consumed by earlier runs
        self.loader: ShardedLoader | None = None
        self.micro_step = 0  # micro-steps taken in the current accumulation window
        self._sync_ctx: contextlib.ExitStack | None = None
        self._boundary_next = True
        self._from_loader = False  # the current micro-step's batch came from our loader
        self._model: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._scaler: torch.amp.GradScaler | None = None
        self._epochs_total: int | None = None
        self._last_boundary = time.perf_counter()
        self._straggle = env.straggler_factor(self.rank)
        self._straggle_from = self._last_boundary

        # The strategy checks its options before any process group starts.
        ctx = Context(self.rank, self.world_size, self.local_rank, self.device, precision, grad_accum, seed)
        self.strategy: Strategy = get_strategy(strategy, ctx, **strategy_options)
        if self.adaptive is not None and not getattr(self.strategy, "measure", False):
            raise UserError(
                "batch_size='adaptive' needs the gradient noise scale, which compression='powersgd:...', "
                "local_sgd and noise_scale=False turn off"
            )
        self._init_process_group()
        self._vote = StopVote(self.distributed)  # after the process group: it makes its own
        seed_everything(seed)
        self._payload = ckpt.load(ckpt.checkpoint_path(self.checkpoint_dir)) if self.checkpoint_dir else None
        if self._payload is not None:
            self.step_count = int(self._payload["step"])
            self.epoch = int(self._payload["epoch"])
            self.state = dict(self._payload.get("state", {}))
            self.history = history_from_state(self._payload["sampler"]["history"])
            self.restored_from = self.step_count
            saved_adaptive = self._payload.get("adaptive")
            if self.adaptive is not None and saved_adaptive is not None:
                self.adaptive.load_state_dict(saved_adaptive)
                if saved_adaptive.get("gns") is not None:
                    self.strategy.gns.load_state_dict(saved_adaptive["gns"])  # type: ignore[attr-defined]
        self._previous_sigterm = signal.getsignal(signal.SIGTERM)
        with contextlib.suppress(ValueError):  # not the main thread: no handler, no preemption
            signal.signal(signal.SIGTERM, self._on_sigterm)
        # Under the service, rank 0 reports metrics from a background thread; otherwise
        # there is no reporter and the loop pays one `is None` check per optimizer step.
        self._reporter: Reporter | None = Reporter.from_env() if self.is_main else None
        self._window = ReportWindow()
        self._reported_progress: float | None = None
        self._step_samples = 0  # nominal samples (all replicas) of the current optimizer step

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

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one rank is running."""
        return dist.is_initialized() and self.world_size > 1

    @property
    def dp_rank(self) -> int:
        """This rank's data-parallel replica: which share of each global batch its loader yields."""
        return self.strategy.dp_rank

    @property
    def dp_size(self) -> int:
        """The number of data-parallel replicas that split each global batch."""
        return self.strategy.dp_size

    @property
    def stop_requested(self) -> bool:
        """This rank was asked to stop (SIGTERM); the ranks agree on when at the next vote."""
        return self._vote.requested

    def prepare(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        dataset: Any,
        batch_size: int | None = None,
        partition: str = "strided",
        shuffle: bool = True,
        drop_last: bool = False,
        *,
        costs: Sequence[float] | None = None,
        key: Callable[[int], Any] | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        num_workers: int = 0,
    ) -> tuple[nn.Module, torch.optim.Optimizer, ShardedLoader]:
        """Move and wrap (or split) the model for the strategy, restore a checkpoint, and build this rank's loader.

        Args:
            model: the user's module (constructed identically on every rank).
            optimizer: an optimizer over `model.parameters()`.
            dataset: a map-style dataset (len and integer indexing).
            batch_size: samples per data-parallel replica per micro-step (default: init's; under
                batch_size="adaptive" the job chooses it and it must be left out).
            partition: "strided", "range", "hash" or "balanced" (needs `costs`).
        Returns:
            (model, optimizer, loader) in the order given; iterate the loader once per epoch.
        """
        check_partition(partition)
        if self.adaptive is not None:
            if batch_size is not None:
                raise UserError(
                    "under batch_size='adaptive' the job chooses the batch: leave batch_size out of prepare()"
                )
            batch_size = self._decide().local_batch
        batch_size = self.batch_size if batch_size is None else batch_size
        if batch_size is None:
            raise UserError("job.prepare needs batch_size= (or corral.init(batch_size=...))")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        model.to(self.device)
        if self.precision == "bf16":
            # Patch forward (as Accelerate does) so the user's own forward call autocasts.
            model.forward = torch.autocast(self.device.type, dtype=torch.bfloat16)(model.forward)
        elif self.precision == "fp16":
            model.forward = torch.autocast(self.device.type, dtype=torch.float16)(model.forward)
            self._scaler = torch.amp.GradScaler(self.device.type)
            if self._payload is not None and "scaler" in self._payload:
                self._scaler.load_state_dict(self._payload["scaler"])
        self._model = self.strategy.prepare(
            model, optimizer, lambda: first_batch(dataset, batch_size, collate_fn, self.device)
        )
        if self._payload is not None:
            self.strategy.load_state(self._model, optimizer, self._payload["model"], self._payload["optimizer"])
            saved = self._payload.get("strategy_ranks") or []
            if len(saved) == self.world_size and saved[self.rank] is not None:
                self.strategy.load_rank_state(self._model, optimizer, saved[self.rank])
        self._optimizer = optimizer
        self.strategy.attach(self, self._model, optimizer)
        loader = (self.strategy.loader_class or ShardedLoader)(
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
        self.loader = loader
        if self._payload is not None:
            restore_rng(self._payload.get("rng", []), self.rank)
            self._payload = None  # free the memory; everything is restored
        self._straggle_from = time.perf_counter()  # a straggler's first step excludes the set-up
        self._window.reset(self.step_count, self.stats.samples)  # nor does the first reported step time
        return self._model, optimizer, loader

    # -- the loop -----------------------------------------------------------

    def epochs(self, n: int) -> Iterator[int]:
        """Yield epoch numbers up to `n`, starting after the last completed one when resuming.

        Under batch_size="adaptive", until n epochs' worth of progress at initial_batch is made:
        a larger batch makes less progress per sample, so this may take more passes (epochs).
        """
        if n < 0:
            raise UserError(f"number of epochs must be >= 0, got {n}")
        if self.adaptive is not None and self.loader is None:
            raise UserError("under batch_size='adaptive' call job.prepare(...) before job.epochs(n)")
        self._epochs_total = n
        while not self._trained(n):
            yield self.epoch
            self._flush_accumulation()
            self.epoch += 1
            self.history = ()
            if self.adaptive is not None:
                self._decide()
            if self.checkpoint_dir is not None:
                self.save()

    def _trained(self, n: int) -> bool:
        if self.adaptive is None or self.loader is None:
            return self.epoch >= n
        return self.adaptive.progress >= n * len(self.loader.dataset)

    def progress_reached(self) -> bool:
        """Asked by the loader at each optimizer step's start: the adaptive job made the progress epochs() asked."""
        return (
            self.adaptive is not None
            and self._epochs_total is not None
            and self.micro_step == 0
            and self._trained(self._epochs_total)
        )

    def _decide(self) -> Choice:
        """Choose the batch for this world size from rank 0's measurements, the same on every rank."""
        assert self.adaptive is not None
        if self._model is not None:  # later decisions: with what rank 0 measured since the last one
            latest = self.strategy.gradient_stats().get("noise_scale")
            shared = [(self.adaptive.step_times, self.adaptive.noise_scale if latest is None else latest)]
            if self.distributed:
                dist.broadcast_object_list(shared, src=0)
            self.adaptive.step_times, self.adaptive.noise_scale = shared[0]
        choice = self.adaptive.choose(env.num_nodes(), self.dp_size, self.step_count)
        self.grad_accum = choice.accum
        if self.loader is not None:
            self.loader.batch_size = choice.local_batch
        if self.is_main:
            phi = self.adaptive.noise_scale
            _console().print(
                f"[corral] adaptive batch: {choice.replicas} x {choice.local_batch} x {choice.accum} = "
                f"{choice.global_batch} (noise scale {'unknown' if phi is None else f'{phi:.4g}'}, "
                f"lr x {self.adaptive.lr_factor():.3g}, {self.adaptive.lr_scaling})"
            )
        return choice

    def use_loader(self, loader: ShardedLoader) -> None:
        """Called by a loader as an epoch's iteration starts: its position is what checkpoints record."""
        self.loader = loader
        self._straggle_from = time.perf_counter()  # a straggler's step time excludes what ran between epochs

    def begin_micro_step(self, *, last_of_epoch: bool) -> None:
        """Called by the loader before it yields a batch: open no_sync unless this micro-step syncs."""
        self.end_micro_step()
        boundary = (self.micro_step + 1) % self.grad_accum == 0 or last_of_epoch
        self._boundary_next = boundary
        self._from_loader = True
        if not boundary and self._model is not None:
            # The decision must precede the forward pass: DDP prepares its
            # reducer during forward, so no_sync() opens before the batch is used.
            self._sync_ctx = contextlib.ExitStack()
            self._sync_ctx.enter_context(self.strategy.no_sync(self._model))

    def end_micro_step(self) -> None:
        """Close the micro-step's no_sync context, if one is open."""
        if self._sync_ctx is not None:
            self._sync_ctx.close()
            self._sync_ctx = None

    def step(
        self,
        loss: torch.Tensor | None = None,
        *,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        inputs: Any = None,
        target: Any = None,
    ) -> torch.Tensor:
        """Backward one micro-step; on an accumulation boundary sync, clip, step, zero and checkpoint.

        Either `job.step(loss)` with a loss computed by the user, or
        `job.step(loss_fn=F.cross_entropy, inputs=x, target=y)`, which runs the
        forward too: the form every strategy takes (a pipeline runs its
        schedule over the stages). Returns the micro-step's loss, detached, on
        every rank.
        """
        if self._optimizer is None or self._model is None:
            raise UserError("call job.prepare(model, optimizer, dataset, ...) before job.step(...)")
        if (loss is None) == (loss_fn is None):
            raise UserError("job.step takes a loss, or loss_fn= with inputs= and target=, not both")
        # Without our loader there is no look-ahead: every grad_accum-th call syncs.
        boundary = self._boundary_next if self._from_loader else (self.micro_step + 1) % self.grad_accum == 0
        out = self.strategy.forward_backward(self._model, MicroStep(loss, loss_fn, inputs, target), self._backward)
        self.end_micro_step()
        if self._from_loader and self.loader is not None:
            self.stats.samples += self.loader.batch_size * self.dp_size
            self._step_samples += self.loader.batch_size * self.dp_size
        self._from_loader = False
        self.micro_step += 1
        if boundary:
            self._optimizer_step()
        return out

    def predict(self, inputs: Any) -> Any:
        """The model's output for `inputs`, without gradients, on every rank (a pipeline runs every stage)."""
        if self._model is None:
            raise UserError("call job.prepare(model, optimizer, dataset, ...) before job.predict(inputs)")
        return self.strategy.predict(self._model, inputs)

    def _backward(self, loss: torch.Tensor) -> None:
        scaled = loss / self.grad_accum if self.grad_accum > 1 else loss
        (self._scaler.scale(scaled) if self._scaler else scaled).backward()

    def _flush_accumulation(self) -> None:
        """An epoch ended mid-accumulation (the user skipped batches): apply what was accumulated."""
        self.end_micro_step()
        if self.micro_step == 0 or self._optimizer is None or self._model is None:
            return
        self.strategy.reduce_accumulated(self._model)
        self._optimizer_step()

    def _optimizer_step(self) -> None:
        assert self._optimizer is not None and self._model is not None
        opt = self._optimizer
        if self._scaler is not None:
            self._scaler.unscale_(opt)
        if self.max_grad_norm is not None:
            self.strategy.clip_grad_norm(self._model, self.max_grad_norm)
        with _scaled_lr(opt, self.adaptive.lr_factor() if self.adaptive is not None else 1.0):
            if self._scaler is not None:
                self._scaler.step(opt)
                self._scaler.update()
            else:
                self.strategy.optimizer_step(opt)
        opt.zero_grad(set_to_none=True)
        full = self.micro_step == self.grad_accum
        self.micro_step = 0
        self.step_count += 1
        if self.loader is not None:
            # Everything yielded so far is now inside the model's weights.
            self.loader.batches_done = self.loader.yielded
        own_s = self._straggler_delay()
        if self.adaptive is not None:
            self.adaptive.count(self._step_samples)
            if full and self.adaptive.choice is not None:
                self.adaptive.observe(env.num_nodes(), self.adaptive.choice, own_s)
        self._step_samples = 0
        if self._reporter is not None and self._last_boundary >= self._window.due:
            self._report_throughput()
        if not self.strategy.lockstep:
            return  # asynchronous workers checkpoint and stop together where their loader syncs them
        if self.checkpoint_every and self.step_count % self.checkpoint_every == 0 and self.checkpoint_dir:
            self.save()
        if self._vote.should_stop(self.step_count, self.stats.last_step_s):
            self.exit_preempted()

    def _straggler_delay(self) -> float:
        """Slow a simulated straggler down; returns this step's own time (without what ran between epochs)."""
        now = time.perf_counter()
        self.stats.last_step_s = now - self._last_boundary
        own = now - max(self._last_boundary, self._straggle_from)
        if self._straggle > 1.0:
            # Slower by this step's own time, not by set-up or what ran between epochs (e.g. the
            # wait for parameter servers to start, which would stall a straggler for seconds).
            time.sleep((self._straggle - 1.0) * own)
            now = time.perf_counter()
        self._last_boundary = now
        return own

    # -- preemption ---------------------------------------------------------

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._vote.requested = True

    def exit_preempted(self) -> None:
        """Save a checkpoint and leave with the preempted exit code (75); every rank calls it at the same step."""
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
        mine = {"rng": rng_state(), "strategy": self.strategy.rank_state(self._model, self._optimizer)}
        if self.distributed:
            per_rank: list[Any] = [None] * self.world_size
            dist.all_gather_object(per_rank, mine)
        else:
            per_rank = [mine]
        gathered = self.strategy.gather_state(self._model, self._optimizer)
        if self.is_main:
            assert gathered is not None, "the strategy's gather_state returns the state on rank 0"
            model_state, optim = gathered
            history = self.history
            if self.loader is not None and self.loader.batches_done:
                history = history + (self.loader.segment(),)
            payload = {
                "step": self.step_count,
                "epoch": self.epoch,
                "model": model_state,
                "optimizer": optim,
                "sampler": {"history": history_to_state(history)},
                "rng": [r["rng"] for r in per_rank],
                "strategy_ranks": [r["strategy"] for r in per_rank],
                "state": self.state,
                "world_size": self.world_size,
                "strategy": self.strategy.name,
                "saved_at": time.time(),
            }
            if self._scaler is not None:
                payload["scaler"] = self._scaler.state_dict()
            if self.adaptive is not None:
                gns = self.strategy.gns  # type: ignore[attr-defined]
                payload["adaptive"] = {
                    **self.adaptive.state_dict(self.strategy.gradient_stats().get("noise_scale")),
                    "gns": gns.state_dict(),
                }
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
            self._vote.wait()
            dist.barrier()
        self._teardown()

    # -- reporting to the service (rank 0 under the service only) ------------

    def _report_throughput(self) -> None:
        """Queue step_time, samples_per_s (all ranks) and progress since the last report."""
        assert self._reporter is not None
        # Up to the last optimizer step: the final report leaves out what finish() costs.
        values = self._window.rates(self.step_count, self.stats.samples, self._last_boundary)
        if values and self.loader is not None:
            # The configuration the step time belongs to: the service fits each job's
            # throughput model (corral.goodput) keyed by nodes, replicas and local batch.
            values["replicas"] = float(self.dp_size)
            values["local_batch"] = float(self.loader.batch_size)
            values["nodes"] = float(env.num_nodes())
            values["accum_steps"] = float(self.grad_accum)
            values.update(self.strategy.gradient_stats())
            if self.adaptive is not None:
                # The bounds the scheduler may choose the batch in (its goodput model, corral.goodput).
                values["init_batch"] = float(self.adaptive.initial_batch)
                values["max_batch"] = float(self.adaptive.max_batch)
                if self.adaptive.max_local_batch is not None:
                    values["max_local_batch"] = float(self.adaptive.max_local_batch)
                if self.adaptive.choice is not None:
                    values["global_batch"] = float(self.adaptive.choice.global_batch)
            sent = self.strategy.comm_bytes_per_step()
            if sent is not None:
                values["comm_bytes_per_step"] = sent
        progress = self._progress()
        if progress is not None and progress != self._reported_progress:
            values["progress"] = self._reported_progress = progress
        if values:
            self._reporter.report(self.step_count, values)
        self._window.reset(self.step_count, self.stats.samples)

    def _progress(self) -> float | None:
        """Fraction of job.epochs(n) done, within the epoch by the loader's position; None before epochs()."""
        n = self._epochs_total
        if n is None:
            return None
        if self.adaptive is not None and self.loader is not None:
            wanted = n * len(self.loader.dataset)
            return 1.0 if wanted <= 0 else min(1.0, self.adaptive.progress / wanted)
        if n == 0 or self.epoch >= n:
            return 1.0
        within = self.loader.fraction_done(self.epoch) if self.loader is not None else 0.0
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
        self._vote.release()
        ddp = self._model
        if isinstance(ddp, nn.parallel.DistributedDataParallel):
            release_ddp(ddp)

    def _teardown(self) -> None:
        self.end_micro_step()
        self._vote.wait()
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


def release_ddp(ddp: nn.parallel.DistributedDataParallel) -> None:
    """Free a DDP wrapper's hold on its process group; the module inside stays usable without communication."""
    # DDP's internals, on purpose: torch has no API to release them (hence the type: ignores).
    ddp.forward = ddp.module.__call__  # type: ignore[method-assign]
    ddp.reducer = ddp.logger = None  # type: ignore[assignment]  # the reducer holds the group
    ddp._comm_hooks = []  # a hook's state may hold it too
    ddp.process_group = None  # type: ignore[assignment]  # last: dropping the handle joins the threads


def init(
    strategy: str = "ddp",
    precision: str = "fp32",
    grad_accum: int = 1,
    max_grad_norm: float | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    seed: int = 0,
    batch_size: int | str | None = None,
    initial_batch: int | None = None,
    max_batch: int | None = None,
    lr_scaling: str = "adascale",
    max_local_batch: int | None = None,
    **strategy_options: Any,
) -> Job:
    """Join the job: read the launcher's environment, start the process group, resume a checkpoint.

    `batch_size="adaptive"` with `initial_batch` and `max_batch` (and optionally `lr_scaling`,
    "adascale", "linear" or "sqrt", and `max_local_batch`) lets the job choose its batch by
    goodput (corral.runtime.adaptive); an integer is prepare()'s default local batch.
    """
    return Job(
        strategy=strategy,
        precision=precision,
        grad_accum=grad_accum,
        max_grad_norm=max_grad_norm,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        seed=seed,
        batch_size=batch_size,
        initial_batch=initial_batch,
        max_batch=max_batch,
        lr_scaling=lr_scaling,
        max_local_batch=max_local_batch,
        **strategy_options,
    )


def _adaptive_batch(
    strategy: str,
    grad_accum: int,
    batch_size: Any,
    initial_batch: Any,
    max_batch: Any,
    lr_scaling: Any,
    max_local_batch: Any,
) -> AdaptiveBatch | None:
    """The adaptive-batch state init()'s options ask for (None for a fixed batch), or one UserError."""
    if batch_size != "adaptive":
        if isinstance(batch_size, str) or isinstance(batch_size, bool):
            raise UserError(f"batch_size must be an integer >= 1 or 'adaptive', got {batch_size!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise UserError(f"batch_size must be an integer >= 1 or 'adaptive', got {batch_size!r}")
        given = [
            k
            for k, v in (
                ("initial_batch", initial_batch),
                ("max_batch", max_batch),
                ("max_local_batch", max_local_batch),
            )
            if v is not None
        ]
        if given or lr_scaling != "adascale":
            names = ", ".join(given + (["lr_scaling"] if lr_scaling != "adascale" else []))
            raise UserError(f"{names} only apply with batch_size='adaptive'")
        return None
    if strategy != "ddp":
        raise UserError(
            f"batch_size='adaptive' needs strategy 'ddp' (it measures the gradient noise scale), not {strategy!r}"
        )
    if grad_accum != 1:
        raise UserError("under batch_size='adaptive' the job chooses its accumulation steps: leave grad_accum out")
    if initial_batch is None or max_batch is None:
        raise UserError("batch_size='adaptive' needs initial_batch= and max_batch= (global batch sizes, samples)")
    return AdaptiveBatch(
        initial_batch=initial_batch, max_batch=max_batch, lr_scaling=lr_scaling, max_local_batch=max_local_batch
    )


@contextlib.contextmanager
def _scaled_lr(optimizer: torch.optim.Optimizer, factor: float) -> Iterator[None]:
    """Every group's learning rate times `factor` for one step; the user's own schedule is left as it was."""
    if factor == 1.0:
        yield
        return
    saved = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, saved):
            group["lr"] = lr


_CONSOLE = None


def _console() -> Any:
    global _CONSOLE
    if _CONSOLE is None:
        from rich.console import Console

        _CONSOLE = Console(highlight=False, soft_wrap=True)
    return _CONSOLE
