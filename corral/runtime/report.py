"""Reporting a job's metrics to the corral service from a background thread (rank 0 only).

The training loop only appends to a bounded queue; a daemon thread posts what
accumulated to POST {CORRAL_SERVER}/api/v1/jobs/{CORRAL_JOB_ID}/metrics at most
every PERIOD_S. The service being slow, down or refusing the token never raises
into, nor blocks, the loop: records are dropped and one line goes to stderr.

Standard library only (urllib, json): every worker process imports the runtime,
httpx would add its import time and dependencies to each of them for two small
requests a second, and the runtime depends on nothing else in corral.
"""

from __future__ import annotations

import atexit
import collections
import json
import math
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from corral.runtime import env

PERIOD_S = 0.5  # at most one request this often
TIMEOUT_S = 2.0  # per request, and for a flush
MAX_QUEUE = 10_000  # records waiting; beyond this the oldest are dropped
MAX_BATCH = 1000  # records per request (the API's limit)
MAX_VALUES = 64  # values per record (the API's limit)
MAX_BACKOFF_S = 10.0  # between retries while the service is unreachable


class Reporter:
    """Sends (step, values, time) records of one job to the service, batched, from a daemon thread."""

    def __init__(
        self,
        server: str,
        job_id: str,
        token: str,
        *,
        period: float = PERIOD_S,
        timeout: float = TIMEOUT_S,
        max_queue: int = MAX_QUEUE,
        ca_cert: str | None = None,
    ) -> None:
        self.url = f"{server.rstrip('/')}/api/v1/jobs/{job_id}/metrics"
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.period = period
        self.timeout = timeout
        self.max_queue = max_queue
        self.sent = 0  # records the service accepted
        self.dropped = 0  # records given up on (queue full, refused, unreachable at the end)
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._inflight = 0  # records taken by the thread and not yet settled
        self._cond = threading.Condition()
        self._flushing = False
        self._closed = False
        self._disabled = False  # the service refused us for good (401, 403, 404)
        self._warned = False
        # Direct connection: the service is on the cluster's own network, and a
        # proxy from the user's environment (http_proxy) would not know 127.0.0.1.
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if self.url.startswith("https://"):  # the service's certificate is verified: against ca_cert, else the system
            handlers.append(urllib.request.HTTPSHandler(context=self._tls_context(ca_cert)))
        self._opener = urllib.request.build_opener(*handlers)
        self._thread = threading.Thread(target=self._run, name="corral-report", daemon=True)
        self._thread.start()
        # A script that exits without job.finish() (sys.exit after a failure)
        # still sends what it logged last: those records explain the failure.
        atexit.register(self.close, 1.0)

    @classmethod
    def from_env(cls) -> Reporter | None:
        """A reporter when the service started this run (CORRAL_SERVER, _JOB_ID, _JOB_TOKEN set), else None."""
        server, job_id, token = env.server(), env.job_id(), env.job_token()
        if not (server and job_id and token):
            return None
        return cls(server, job_id, token, ca_cert=env.ca_cert())

    def _tls_context(self, ca_cert: str | None) -> ssl.SSLContext:
        """Verifies the service against `ca_cert` (a PEM file), else the system store; an unusable file is one
        warning, and the system store is used (the service's certificate is then likely refused: reporting stops)."""
        if ca_cert:
            try:
                return ssl.create_default_context(cafile=ca_cert)
            except (OSError, ssl.SSLError) as e:
                self._warn(f"{env.CA_CERT}={ca_cert}: not a readable PEM certificate file ({e}); using the system CAs")
        return ssl.create_default_context()

    # -- called from the training loop: never blocks, never raises ------------------

    def report(self, step: int, values: Mapping[str, float], at: float | None = None) -> None:
        """Queue one record; finite values only (JSON has no NaN), at most MAX_VALUES of them."""
        clean: dict[str, float] = {}
        for k, v in values.items():
            try:
                f = float(v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(f) and len(clean) < MAX_VALUES:
                clean[str(k)] = f
        if not clean:
            return
        record = {"step": max(0, int(step)), "values": clean, "time": time.time() if at is None else at}
        with self._cond:
            if self._disabled or self._closed:
                return
            if len(self._queue) >= self.max_queue:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(record)
            self._cond.notify()  # wakes the thread only when it idles on an empty queue

    def flush(self, timeout: float = TIMEOUT_S) -> bool:
        """Send what is queued now, waiting at most `timeout` seconds; True when nothing is left (sent or given up)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flushing = True
            self._cond.notify_all()
            while (self._queue or self._inflight) and not self._disabled and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._flushing = False
            return not (self._queue or self._inflight)

    def close(self, timeout: float = TIMEOUT_S) -> None:
        """Flush (bounded by `timeout`) and stop the thread; later reports are ignored."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self.dropped += len(self._queue)
            self._queue.clear()
            self._cond.notify_all()

    # -- the thread ----------------------------------------------------------------

    def _run(self) -> None:
        backoff = self.period
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                self._inflight = len(batch)
            outcome = self._post(batch)
            with self._cond:
                self._inflight = 0
                if outcome == "ok":
                    self.sent += len(batch)
                    backoff = self.period
                elif outcome == "retry" and not self._flushing:
                    # Unreachable or overloaded: keep the records (oldest first), try again later.
                    self._queue.extendleft(reversed(batch))
                    while len(self._queue) > self.max_queue:
                        self._queue.popleft()
                        self.dropped += 1
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                else:  # refused, or unreachable while the job is leaving: give these up
                    self.dropped += len(batch)
                    if outcome == "disable":
                        self._disabled = True
                        self.dropped += len(self._queue)
                        self._queue.clear()
                self._cond.notify_all()
                if self._disabled:
                    return
                # At most one request per period (longer while unreachable); a flush or close cuts the pause.
                self._cond.wait_for(lambda: self._closed or self._flushing, self.period if outcome == "ok" else backoff)

    def _post(self, batch: list[dict[str, Any]]) -> str:
        """'ok', 'retry' (unreachable, 5xx, 429), 'drop' (this batch was refused) or 'disable' (never let in)."""
        data = json.dumps({"records": batch}).encode()
        request = urllib.request.Request(self.url, data=data, headers=self._headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read()
            return "ok"
        except urllib.error.HTTPError as e:
            detail = _detail(e)
            if e.code == 429 or e.code >= 500:
                self._warn(f"the service answered {e.code} ({detail}); retrying")
                return "retry"
            self._warn(
                f"the service refused metrics with {e.code} ({detail}); "
                + ("reporting stops" if e.code in (401, 403, 404) else "dropping them")
            )
            return "disable" if e.code in (401, 403, 404) else "drop"
        except urllib.error.URLError as e:
            if not isinstance(e.reason, ssl.SSLCertVerificationError):
                self._warn(f"cannot reach {self.url} ({e.reason}); retrying in the background")
                return "retry"
            self._warn(
                f"cannot verify the service's certificate at {self.url} ({e.reason.verify_message}); "
                f"set {env.CA_CERT} to the CA file that signed it; reporting stops"
            )
            return "disable"
        except Exception as e:  # unreachable, timed out, reset: anything but the job's own concern
            self._warn(f"cannot reach {self.url} ({getattr(e, 'reason', None) or e}); retrying in the background")
            return "retry"

    def _warn(self, message: str) -> None:
        # One line per job at most: a down service must not flood the job's log.
        if not self._warned:
            self._warned = True
            print(f"[corral] metrics: {message}", file=sys.stderr, flush=True)


def _detail(error: urllib.error.HTTPError) -> str:
    """The API's one-line `detail`, else the HTTP reason."""
    try:
        body = json.loads(error.read() or b"{}")
        detail = body.get("detail") if isinstance(body, dict) else None
        if isinstance(detail, str):
            return detail
    except Exception:
        pass
    return str(error.reason)
