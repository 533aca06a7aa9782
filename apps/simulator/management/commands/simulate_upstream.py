"""``manage.py simulate_upstream --port 8001``: run the simulated OpenAI-compatible upstream."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand

from apps.simulator.control import SimulatorConfig
from apps.simulator.outcomes import outcomes_load
from apps.simulator.server import run


class Command(BaseCommand):
    help = "Run the SIMULATED OpenAI-compatible upstream (deterministic answers; not a real provider)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001)
        parser.add_argument("--ttft-ms", type=float, default=SimulatorConfig.ttft_ms,
                            help="delay before the first byte of a chat answer")
        parser.add_argument("--chunk-delay-ms", type=float, default=SimulatorConfig.chunk_delay_ms,
                            help="delay between two content chunks of a stream")
        parser.add_argument("--chunks", type=int, default=SimulatorConfig.chunks,
                            help="words (completion tokens) in a chat answer")
        parser.add_argument("--embedding-dims", type=int, default=SimulatorConfig.embedding_dims,
                            help="embedding length unless a request sends 'dimensions'")
        parser.add_argument("--outcomes", type=Path, nargs="*", default=[],
                            help="CSV files of known outcomes (prompt, then one True/False column per model)")
        parser.add_argument("--outcome-model", action="append", default=[], metavar="NAME=COLUMN",
                            help="answer as NAME the way COLUMN of the outcomes says (repeatable)")

    def handle(self, *args, host: str, port: int, ttft_ms: float, chunk_delay_ms: float, chunks: int,
               embedding_dims: int, outcomes: list, outcome_model: list, **options) -> None:
        run(host, port, SimulatorConfig(ttft_ms=ttft_ms, chunk_delay_ms=chunk_delay_ms, chunks=chunks,
                                        embedding_dims=embedding_dims,
                                        outcomes=outcomes_load(outcomes, outcome_model)))
