"""The HTTP API moved to `corral.control.api` (one router per resource); this name stays for old imports."""

from corral.control.api import create_app

__all__ = ["create_app"]
