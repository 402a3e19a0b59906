"""The `--metrics-port` option of the commands that run a worker (docs/metrics.md)."""

from __future__ import annotations

from typing import Annotated

import typer

MetricsPort = Annotated[
    int | None,
    typer.Option(
        min=0,
        max=65535,
        help="Serve Prometheus metrics on this port at HEADEND_METRICS_HOST (default HEADEND_METRICS_PORT; 0: none).",
    ),
]
