"""Liveness: the one API route that needs no token."""

from fastapi import APIRouter

from corral.control.api.deps import API
from corral.control.api.models import Health

router = APIRouter(prefix=API, tags=["service"])


@router.get("/health", response_model=Health)
def health() -> Health:
    """Liveness (no token needed)."""
    from corral import __version__

    return Health(status="ok", version=__version__)
