"""``GET /metrics``: the server's counters in Prometheus' text exposition format (version 0.0.4).

Written by hand rather than with ``prometheus_client``: a handful of series, no new dependency, and no
process-global registry (each app, including the many a test suite creates, keeps its own counters).

Series (prefix ``lmforge_``): ``requests_total{route,status}``, ``prompt_tokens_total``,
``generation_tokens_total``, ``queue_depth`` and ``active_sequences`` (gauges read from the engine), and the
``time_to_first_token_seconds`` histogram.
"""

from __future__ import annotations

import threading
from typing import Callable

__all__ = ["Metrics", "MetricsMiddleware", "TTFT_BUCKETS"]

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Thread-safe counters of one server.

    Args:
        gauges: name -> (help text, function returning the current value), read at each scrape.
    """

    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]]) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.ttft_counts = [0] * len(TTFT_BUCKETS)
        self.ttft_sum = 0.0
        self.ttft_n = 0
        self.gauges = gauges

    def request(self, route: str, status: int) -> None:
        with self._lock:
            key = (route, status)
            self.requests[key] = self.requests.get(key, 0) + 1

    def tokens(self, prompt: int, generated: int) -> None:
        with self._lock:
            self.prompt_tokens += int(prompt)
            self.generation_tokens += int(generated)

    def first_token(self, seconds: float) -> None:
        with self._lock:
            for i, bound in enumerate(TTFT_BUCKETS):
                if seconds <= bound:
                    self.ttft_counts[i] += 1
            self.ttft_sum += seconds
            self.ttft_n += 1

    def render(self) -> str:
        """The exposition text."""
        out: list[str] = []

        def head(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP lmforge_{name} {text}")
            out.append(f"# TYPE lmforge_{name} {kind}")

        with self._lock:
            head("requests_total", "counter", "HTTP requests answered, by route and status code.")
            for (route, status), n in sorted(self.requests.items()):
                out.append(f'lmforge_requests_total{{route="{_label(route)}",status="{status}"}} {n}')
            head("prompt_tokens_total", "counter", "Prompt tokens read by generation requests.")
            out.append(f"lmforge_prompt_tokens_total {self.prompt_tokens}")
            head("generation_tokens_total", "counter", "Tokens generated.")
            out.append(f"lmforge_generation_tokens_total {self.generation_tokens}")
            head("time_to_first_token_seconds", "histogram", "Seconds from a request's arrival to its first token.")
            for bound, n in zip(TTFT_BUCKETS, self.ttft_counts):
                out.append(f'lmforge_time_to_first_token_seconds_bucket{{le="{bound}"}} {n}')
            out.append(f'lmforge_time_to_first_token_seconds_bucket{{le="+Inf"}} {self.ttft_n}')
            out.append(f"lmforge_time_to_first_token_seconds_sum {self.ttft_sum}")
            out.append(f"lmforge_time_to_first_token_seconds_count {self.ttft_n}")
        for name, (text, read) in self.gauges.items():
            head(name, "gauge", text)
            out.append(f"lmforge_{name} {float(read())}")
        return "\n".join(out) + "\n"


class MetricsMiddleware:
    """Counts every HTTP response by route template (``/v1/models/{model_id}``) and status code."""

    def __init__(self, app: Callable, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            self.metrics.request(getattr(route, "path", None) or "unmatched", status[0])
