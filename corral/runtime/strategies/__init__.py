"""Distribution strategies behind one interface (`base.Strategy`), chosen by name.

One module per strategy (`ddp` and `pipeline` here, `ps` in corral.runtime.ps)
and one registry line each below; a strategy module imports `base`, never this
registry, so the registry can import them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from corral.errors import UserError
from corral.runtime.strategies.base import Context, MicroStep, Strategy
from corral.runtime.strategies.ddp import DDPStrategy

__all__ = ["STRATEGIES", "Context", "DDPStrategy", "MicroStep", "Strategy", "get_strategy"]


def _ps(ctx: Context, **options: Any) -> Strategy:
    # Imported on use: the parameter-server package is large and most jobs use ddp.
    from corral.runtime.ps.strategy import PSStrategy

    return PSStrategy(ctx, **options)


def _pipeline(ctx: Context, **options: Any) -> Strategy:
    # Imported on use: torch.distributed.pipelining takes a while to import.
    from corral.runtime.strategies.pipeline import PipelineStrategy

    return PipelineStrategy(ctx, **options)


STRATEGIES: dict[str, Callable[..., Strategy]] = {"ddp": DDPStrategy, "ps": _ps, "pipeline": _pipeline}


def get_strategy(name: str, ctx: Context, **options: Any) -> Strategy:
    """The strategy registered as `name`, checking its options; a UserError lists the known ones otherwise."""
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise UserError(f"unknown strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}") from None
    return factory(ctx, **options)
