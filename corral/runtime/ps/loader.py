"""The loader of the asynchronous PS modes.

asp: workers do not split the epoch in advance. The epoch is one sequence of
steps (grad_accum batches each) and every worker claims the next unclaimed step
from a counter in the launcher's store, so a fast worker simply takes more
steps and nobody waits for a straggler. Workers meet only at the end of a
*round*: the epoch, or the next multiple of checkpoint_every global steps, or
a preemption (the SIGTERMed worker ends the round for all by pushing the
counter past its end). There they agree how many steps the round consumed (a
prefix of the epoch, since claims are handed out in order), pull the final
values, and checkpoint or stop together; a checkpoint therefore records
exactly which samples are inside the servers' parameters.

ssp: each worker keeps its own shard of the data (steps stay within s of each
other anyway); at the end of an epoch the workers wait for each other and pull,
so every replica holds the servers' final values when the user evaluates.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from corral.runtime.loader import ShardedLoader, to_device
from corral.runtime.partition import EpochPlan

if TYPE_CHECKING:  # pragma: no cover
    from corral.runtime.ps.strategy import PSStrategy

# Added to a round's counter by a worker asked to stop: every later claim is past the end.
STOP = 1 << 40


class PSLoader(ShardedLoader):
    """This worker's batches under asp (claimed step by step) or ssp (its shard, then a sync)."""

    _iterations = 0

    @property
    def _strategy(self) -> PSStrategy:
        """The job's strategy: this loader is the `ps` strategy's `loader_class`, built for it alone."""
        return cast("PSStrategy", self.job.strategy)

    @property
    def _dynamic(self) -> bool:
        return self._strategy.consistency.mode == "asp"

    def plan(self) -> EpochPlan:
        """asp: the plan of the whole (rest of the) epoch as one sequence; otherwise this rank's shard."""
        if not self._dynamic:
            return super().plan()
        job = self.job
        if self._plan is None or self._plan.epoch != job.epoch or self._plan.history != job.history:
            # One rank of world size 1 sees the whole pool in epoch order; its segment (1, (consumed,))
            # marks a prefix as consumed and resumes at any world size and strategy.
            self._plan = EpochPlan(
                n=len(self.dataset),
                epoch=job.epoch,
                rank=0,
                world_size=1,
                batch_size=self.batch_size,
                kind=self.partition,
                seed=job.seed,
                shuffle=self.shuffle,
                drop_last=self.drop_last,
                history=job.history,
                costs=self.costs,
                key=self.key,
            )
            self.batches_done = self.yielded = 0
        return self._plan

    def __len__(self) -> int:
        if not self._dynamic:
            return super().__len__()
        return -(-self.plan().num_batches // self.job.world_size)  # an even share; the real count varies

    def __iter__(self) -> Iterator[Any]:
        if self._dynamic:
            yield from self._claimed()
            return
        yield from super().__iter__()
        self._strategy.sync_replicas()  # reached only when the epoch ran to its end on this worker

    def _claimed(self) -> Iterator[Any]:
        job = self.job
        strategy = self._strategy
        plan = self.plan()
        job.use_loader(self)
        ga = job.grad_accum
        start = self.batches_done
        steps = -(-(plan.num_batches - start) // ga)  # steps left in this epoch
        self._iterations += 1
        done = 0
        while done < steps:
            length = steps - done
            if job.checkpoint_every and job.checkpoint_dir is not None:
                length = min(length, job.checkpoint_every - job.step_count % job.checkpoint_every)
            key = f"claim/{job.epoch}/{self._iterations}/{start}/{done}"
            base = job.step_count
            mine, stop = 0, False
            while True:
                if job.stop_requested:
                    strategy.claim(key, STOP)
                    stop = True
                    break
                j = strategy.claim(key) - 1
                if j >= length:
                    break
                mine += 1
                first = start + (done + j) * ga
                last = min(first + ga, plan.num_batches)
                for b in range(first, last):
                    batch = to_device(self._fetch(plan.batch(b)), job.device)
                    job.begin_micro_step(last_of_epoch=b == last - 1)  # a claimed step ends a window
                    yield batch
                job.end_micro_step()
            # The round is over for everyone: claims went out in order, so the steps taken are
            # exactly the first `taken` of the round, and all of them have been pushed.
            taken, stops = strategy.agree([mine, int(stop)])
            done += taken
            job.step_count = base + taken
            self.batches_done = self.yielded = min(start + done * ga, plan.num_batches)
            strategy.pull()
            if stops:
                job.exit_preempted()
            if (
                taken
                and job.checkpoint_every
                and job.checkpoint_dir is not None
                and job.step_count % job.checkpoint_every == 0
            ):
                job.save()
