"""The ``moa-search`` command. Thin: it parses options and calls the library.

Any ``MoASearchError`` becomes one line on stderr and exit status 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .backends import make_provider
from .catalog import Catalog
from .config import MoAConfig, builtin_preset, load_config_file
from .errors import ConfigError, MoASearchError
from .prompts import user_prompt
from .runner import ItemTrace, Runner

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Search Mixture-of-Agents LLM configurations for quality, cost and latency.")
out = Console()
err = Console(stderr=True)

DEFAULT_STORE = Path("runs/calls.db")

CatalogOpt = Annotated[Optional[Path], typer.Option("--catalog", help="Model catalog TOML (default: built-in).")]
StoreOpt = Annotated[Path, typer.Option("--store", help="SQLite call store (cache and log of every call).")]
BackendOpt = Annotated[str, typer.Option("--backend", help="'sim' (offline simulated world) or 'http'.")]
BaseUrlOpt = Annotated[Optional[str], typer.Option("--base-url", help="Send every model to this endpoint.")]


def load_catalog(path: Path | None) -> Catalog:
    return Catalog.load(path) if path else Catalog.default()


def resolve_config(preset: str | None, config_file: Path | None) -> MoAConfig:
    if bool(preset) == bool(config_file):
        raise ConfigError("give exactly one of --preset NAME or --config FILE")
    return builtin_preset(preset).config if preset else load_config_file(config_file)  # type: ignore[arg-type]


def open_store(path: Path, no_store: bool = False) -> "object | None":
    if no_store:
        return None
    from .store import CallStore
    return CallStore(path)


def trace_summary(trace: ItemTrace) -> dict[str, object]:
    return {
        "item_id": trace.item_id,
        "simulated": trace.simulated,
        "calls": trace.n_calls,
        "cached_calls": trace.n_cached,
        "failed_calls": trace.n_failed_calls,
        "prompt_tokens": trace.prompt_tokens,
        "completion_tokens": trace.completion_tokens,
        "cost_usd": round(trace.cost_usd, 6),
        "paid_usd": round(trace.paid_usd, 6),
        "latency_s": round(trace.latency_s, 3),
        "cost_by_role": {k: round(v, 6) for k, v in trace.cost_by_role().items()},
    }


@app.command()
def run(
    prompt: Annotated[str, typer.Option("--prompt", help="The user prompt.")],
    preset: Annotated[Optional[str], typer.Option("--preset", help="moa | moa-gpt4o | moa-lite")] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="Config file (JSON or TOML).")] = None,
    catalog: CatalogOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    no_store: Annotated[bool, typer.Option("--no-store", help="Do not cache or log calls.")] = False,
    backend: BackendOpt = "sim",
    base_url: BaseUrlOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run one MoA config on one prompt; print the answer and its cost and latency."""
    cfg = resolve_config(preset, config_file)
    cat = load_catalog(catalog)
    cat.check_config(cfg)
    messages = user_prompt(prompt)
    call_store = open_store(store, no_store)

    async def go() -> ItemTrace:
        provider = make_provider(backend, cat, base_url=base_url)
        try:
            return await Runner(provider, call_store).run_item(cfg, messages)  # type: ignore[arg-type]
        finally:
            await provider.aclose()

    trace = asyncio.run(go())
    summary = trace_summary(trace)
    if as_json:
        out.print_json(json.dumps({"answer": trace.answer, "error": trace.error,
                                   "config_hash": cfg.config_hash, **summary}))
    else:
        label = " (simulated)" if trace.simulated else ""
        if trace.failed:
            err.print(f"[red]item failed[/red]: {trace.error}")
        else:
            out.print(trace.answer, markup=False, highlight=False)
        out.rule()
        out.print(f"config {cfg.summary()} [{cfg.config_hash}]", markup=False)
        out.print(f"calls {trace.n_calls} ({trace.n_cached} from store, {trace.n_failed_calls} failed) · "
                  f"tokens {trace.prompt_tokens} in / {trace.completion_tokens} out", markup=False)
        out.print(f"cost ${trace.cost_usd:.6f}{label} (paid now ${trace.paid_usd:.6f}) · "
                  f"latency {trace.latency_s:.2f} s critical path{label}", markup=False)
    if trace.failed:
        raise typer.Exit(1)


@app.command("sim-server")
def sim_server(
    port: Annotated[int, typer.Option("--port", help="TCP port on 127.0.0.1 (0 = any free port).")] = 8000,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    catalog: CatalogOpt = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    sleep: Annotated[bool, typer.Option("--sleep/--no-sleep", help="Really wait the simulated latency.")] = False,
    latency_ms: Annotated[Optional[float], typer.Option("--latency-ms", help="Fixed latency per call.")] = None,
    rate_429: Annotated[float, typer.Option("--fault-429")] = 0.0,
    rate_500: Annotated[float, typer.Option("--fault-500")] = 0.0,
    rate_timeout: Annotated[float, typer.Option("--fault-timeout")] = 0.0,
    rate_malformed: Annotated[float, typer.Option("--fault-malformed")] = 0.0,
    answer_key: Annotated[Optional[list[Path]], typer.Option("--answer-key", help="Validation set(s) whose references the simulated world knows.")] = None,
) -> None:
    """Serve the simulated model world over an OpenAI-compatible HTTP API."""
    from .providers.simulated import SimulatedProvider
    from .sim_server import FaultConfig, serve_forever

    key = _answer_key(answer_key or [])
    provider = SimulatedProvider(load_catalog(catalog), answer_key=key, seed=seed)
    faults = FaultConfig(rate_429=rate_429, rate_500=rate_500, rate_timeout=rate_timeout,
                         rate_malformed=rate_malformed, seed=seed)
    err.print(f"simulated model world on http://{host}:{port}/v1 (simulated answers, not real LLMs)")
    serve_forever(provider, host, port, faults=faults, sleep_latency=sleep or latency_ms is not None,
                  latency_override_s=None if latency_ms is None else latency_ms / 1000)


def _answer_key(paths: list[Path]) -> "object | None":
    if not paths:
        return None
    from .datasets import answer_key_pairs, load_dataset
    from .providers.simulated import AnswerKey
    pairs = [p for path in paths for p in answer_key_pairs(load_dataset(path))]
    return AnswerKey.from_pairs(pairs)


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, standalone_mode=False)
    except MoASearchError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err.print("aborted")
        return 130
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click
        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
