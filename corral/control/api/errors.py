"""Errors a client causes come back as a 4xx with one line in `detail` (`field: message`)."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from corral.control.spec import field_path
from corral.errors import UserError, one_line


def one_line_validation(exc: RequestValidationError) -> str:
    """`field.path: message` for the first error, with a count of the others."""
    errors = exc.errors()
    err = errors[0]
    where = field_path([p for p in err.get("loc", ()) if p != "body"]) or "body"
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown field"
    more = len(errors) - 1
    return one_line(f"{where}: {msg}" + (f" (and {more} more)" if more else ""))


async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": one_line_validation(exc)}, status_code=422)


async def _user_error(_: Request, exc: UserError) -> JSONResponse:
    # A UserError may carry its own status (403 for a limit, 404 for an unknown user or group, 409 taken).
    return JSONResponse({"detail": one_line(str(exc))}, status_code=getattr(exc, "status", 422))


def register(app: FastAPI) -> None:
    """Install the handlers that turn validation and user errors into one-line 422s."""
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(UserError, _user_error)  # type: ignore[arg-type]
