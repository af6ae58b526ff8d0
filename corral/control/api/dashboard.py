"""The dashboard: one static page that talks to the API with the token the user gives it."""

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def dashboard() -> HTMLResponse:
    """The page itself (no token needed; every call it makes sends one)."""
    return HTMLResponse(resources.files("corral.control").joinpath("static/dashboard.html").read_text())
