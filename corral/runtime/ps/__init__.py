"""Parameter-server strategy: sharded parameters and optimizer on S server processes.

    corral run --nproc 4 --servers 2 train.py
    job = corral.init(strategy="ps", servers=2, consistency="bsp" | "asp" | "ssp:2", sharding="range" | "hash")

Behaviour a user sees:

- Process layout: N workers (RANK 0..N-1, WORLD_SIZE=N as usual) and S
  servers (`python -m corral.runtime.ps.server`, output `[server k]`), all one
  gang: any of them failing stops and restarts all of them.
- Each parameter of the optimizer lives on exactly one server (`range`:
  contiguous blocks within one tensor's size of total/S; `hash`: blake2b of
  its name). A server runs the user's optimizer class with the user's
  param-group hyperparameters over its shard; hyperparameter changes (an LR
  scheduler) reach the servers with the next step.
- bsp: the servers average the N gradients of step t and step once: the same
  result as DDP. asp: every push is one optimizer step and is answered at
  once; workers claim the epoch's steps from a shared counter, so a fast
  worker takes more of them and nobody waits for a straggler (job.step_count
  is then the global step). ssp:<s>: pushes are applied on arrival, and a
  worker more than s steps ahead of the slowest waits for its reply.
  Under asp and ssp there are N optimizer steps where bsp takes one: scale
  the learning rate by about 1/N when switching from bsp.
- Checkpoints hold the full model and the full optimizer state (every
  server's shard, in torch's own state_dict format), so they resume under ps
  at any N or S, and under ddp too. A lost worker or server, under any
  consistency, restarts the gang from the last checkpoint. Under asp the
  workers checkpoint, and stop on preemption, together at the end of a
  round (the epoch, or every checkpoint_every global steps), so the
  checkpoint records exactly which samples are in the servers' weights.
- Under asp, call collectives (job.log, job.save) between epochs, not inside
  the loader loop: workers take different numbers of steps.
- Clipping (max_grad_norm) clips each worker's gradient before the push;
  precision "fp16" (a local GradScaler) is not supported.

Modules: `sharding` (which server owns which parameter; pure), `consistency`
(parsing and the server's clock gate; pure), `protocol` (message framing over
gloo point-to-point), `server` (the server process), `strategy` (the worker
side, registered as "ps") and `loader` (claimed steps under asp).
"""
