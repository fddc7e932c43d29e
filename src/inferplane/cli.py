"""``inferplane``: one command, many verbs. Errors are one readable line, never a traceback."""

from __future__ import annotations

import contextlib
import math
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from inferplane import __version__

if TYPE_CHECKING:  # the CLI imports heavy modules lazily, per verb, to start fast
    from inferplane.config import Config
    from inferplane.launcher import Child
    from inferplane.ledger import Connection, Database

app = typer.Typer(
    name="inferplane",
    help="Execution control for LLM inference fleets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
engine_app = typer.Typer(help="Model-server replicas.", no_args_is_help=True)
config_app = typer.Typer(help="Check and show configuration.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (stored as SHA-256 digests).", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: tables on screen, JSON on disk.", no_args_is_help=True)
app.add_typer(engine_app, name="engine")
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")
app.add_typer(bench_app, name="bench")

console = Console()
err = Console(stderr=True)

T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file; the embedded default if omitted."),
]


def fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _guard(fn: Callable[[], T]) -> T:
    """Turn the errors users cause (bad config, unknown GPU...) into one line each."""
    from pydantic import ValidationError

    from inferplane.config import ConfigError
    from inferplane.launcher import LaunchError
    from inferplane.ledger import DatabaseError

    try:
        return fn()
    except ValidationError as exc:  # a model built from options: one line, not pydantic's
        fail(
            "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'value'}: "
                + e["msg"].removeprefix("Value error, ")
                for e in exc.errors()
            )
        )
    except (ConfigError, LaunchError, DatabaseError, ValueError, OSError) as exc:
        fail(str(exc))


def _folder_problem(folder: Path) -> str | None:
    """Create ``folder`` and its parents; None when done, else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        # The first path upwards that exists: a file there is what stops it.
        there = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if there is not None and not there.is_dir():
            return f"{there} is a file, not a folder"
        return f"cannot create {folder}: {exc.strerror or exc}"
    return None


def _make_folder(folder: Path, what: str) -> None:
    """Create ``folder`` before any work is done, or fail with one line naming it as
    ``what`` (``--out``, or the default result folder)."""
    if (problem := _folder_problem(folder)) is not None:
        fail(f"{what} {folder}: {problem}")


def _out_file(out: Path) -> None:
    """A report file's folder made up front, so a bad ``--out`` fails before a benchmark."""
    if out.is_dir():
        fail(f"--out {out}: is a folder; give the path of a file")
    if (problem := _folder_problem(out.parent)) is not None:
        fail(f"--out {out}: {problem}")


def _num(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _at_least(value: float, least: float, option: str) -> None:
    if value < least:
        fail(f"{option} must be at least {_num(least)}, got {_num(value)}")


def _positive(value: float, option: str) -> None:
    if not 0 < value < math.inf:  # NaN and inf too
        fail(f"{option} must be a number above 0, got {_num(value)}")


def _at_most(value: float, most: float, option: str) -> None:
    if value > most:
        fail(f"{option} must be at most {_num(most)}, got {_num(value)}")


_N = TypeVar("_N", int, float)


def _numbers(text: str, kind: type[_N], option: str, what: str) -> list[_N]:
    """A comma-separated list of numbers given to ``option``, at least one."""
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"{option} takes {what} separated by commas, got {text!r}")
    if not values:
        fail(f"{option} takes {what} separated by commas, got none")
    return values


def _version(value: bool) -> None:
    if value:
        console.print(f"inferplane {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """Execution control for LLM inference fleets: gateway, emulated engines, twin, planner."""


# -- gateway ---------------------------------------------------------------


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Override gateway.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override gateway.port.")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Run the gateway in front of the backends named in the config."""
    from inferplane.config import load_config
    from inferplane.gateway import create_gateway_app
    from inferplane.server import serve as run

    cfg = _guard(lambda: load_config(config))
    # Into the config, not only the socket: the gateway names its budget leases after its
    # port, and a second process of the same config on another port must not share them.
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    settings = cfg.gateway.model_copy(update=overrides)
    cfg = cfg.model_copy(update={"gateway": settings})
    run(create_gateway_app(cfg), settings.host, settings.port, log_level=log_level)


@app.command()
def up(
    config: ConfigOption = None,
    time_scale: Annotated[
        float | None,
        typer.Option(help="Run emulated replicas this many times faster than real time."),
    ] = None,
) -> None:
    """Start the whole fleet of the config: emulated replicas plus the gateway. Ctrl-C stops all."""
    from inferplane import launcher
    from inferplane.config import load_config
    from inferplane.gateway import create_gateway_app
    from inferplane.server import serve as run

    cfg = _guard(lambda: load_config(config))
    _guard(lambda: launcher.ensure_ports_free(cfg))
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    log_dir = cfg.data_dir / "logs"
    children = []
    try:
        for backend, catalogue_model in launcher.emulated_backends(cfg):
            if time_scale is not None:
                backend = backend.model_copy(update={"time_scale": time_scale})
            argv = launcher.emulator_command(backend, catalogue_model)
            children.append(
                launcher.start(
                    f"engine-{backend.label.replace(':', '-')}", backend.url, argv, log_dir=log_dir
                )
            )
        _guard(lambda: launcher.wait_healthy(children))
        _print_fleet(cfg, children, log_dir)
        run(create_gateway_app(cfg), cfg.gateway.host, cfg.gateway.port)
    finally:
        launcher.stop_all(children)
        console.print("stopped.")


def _print_fleet(cfg: Config, children: Sequence[Child], log_dir: Path) -> None:
    table = _table("inferplane up", "process", "url", "pid", text_columns=2)
    for child in children:
        table.add_row(child.name, child.url, str(child.process.pid))
    base = f"http://{cfg.gateway.host}:{cfg.gateway.port}"
    table.add_row("gateway", base, "this")
    console.print(table)
    model = next(iter(cfg.models))
    console.print(f"logs: {log_dir}   metrics: {base}/metrics   Ctrl-C stops everything.\n")
    console.print("Try it:", style="bold")
    console.print(
        f"curl -s {base}/v1/chat/completions -H 'Authorization: Bearer sk-inferplane-demo' "
        f"-H 'Content-Type: application/json' "
        f"""-d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}], """
        f""""max_tokens": 32}}'""",
        highlight=False,
        soft_wrap=True,
    )


# -- engines ---------------------------------------------------------------


@engine_app.command("emulate")
def engine_emulate(
    gpu: Annotated[str, typer.Option(help="GPU from the catalogue, e.g. H100, A100, L4.")] = "H100",
    model: Annotated[str, typer.Option(help="Model from the catalogue.")] = "llama-3.1-8b",
    tp: Annotated[int, typer.Option(help="Tensor-parallel degree.")] = 1,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    time_scale: Annotated[
        float, typer.Option(help="Engine seconds per wall second (10 = ten times faster).")
    ] = 1.0,
    served_model_name: Annotated[str | None, typer.Option(help="Name clients use.")] = None,
    max_num_seqs: Annotated[int, typer.Option(help="Max running sequences.")] = 256,
    max_num_batched_tokens: Annotated[int, typer.Option(help="Token budget per step.")] = 8192,
    kv_capacity_tokens: Annotated[
        int | None, typer.Option(help="Override the KV cache size derived from memory.")
    ] = None,
    chunked_prefill: Annotated[
        bool,
        typer.Option(help="Split long prompts across steps (vLLM v1) or prefill them whole."),
    ] = True,
    prefix_caching: Annotated[
        bool, typer.Option(help="Reuse the KV of shared prompt prefixes (vLLM v1's default).")
    ] = True,
    error_rate: Annotated[
        float, typer.Option(help="Fault injection: fraction of requests answered with HTTP 500.")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the fault injection.")] = 0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve an emulated vLLM-like replica whose timing follows the performance model."""
    from inferplane.engines import EmulatorSettings, EngineLimits, create_emulator_app
    from inferplane.server import serve as run

    def build() -> object:
        limits = EngineLimits(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            kv_capacity_tokens=kv_capacity_tokens,
            enable_chunked_prefill=chunked_prefill,
            enable_prefix_caching=prefix_caching,
        )
        settings = EmulatorSettings(
            gpu=gpu,
            model=model,
            tp=tp,
            time_scale=time_scale,
            served_model_name=served_model_name,
            limits=limits,
            error_rate=error_rate,
            seed=seed,
        )
        return create_emulator_app(settings)

    emulator = _guard(build)
    run(emulator, host, port, log_level=log_level)  # type: ignore[arg-type]


def _table(title: str, *columns: str, text_columns: int = 1) -> Table:
    """A table whose first ``text_columns`` columns are text, the rest right-aligned figures."""
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i < text_columns else "right")
    return table


@app.command()
def catalogue() -> None:
    """List the GPUs and models the performance model knows."""
    from inferplane.perf import GPUS, MODELS

    gpus = _table("GPUs", "name", "BF16 TFLOP/s", "HBM TB/s", "memory GiB", "link GB/s", "$/GPU-h")
    for g in GPUS.values():
        gpus.add_row(
            g.name,
            f"{g.bf16_flops / 1e12:.0f}",
            f"{g.hbm_bandwidth / 1e12:.2f}",
            f"{g.memory_bytes / 2**30:.0f}",
            f"{g.link_name} {g.interconnect_bandwidth / 1e9:.0f}",
            f"{g.price_per_hour:.2f}",
        )
    models = _table(
        "Models", "name", "params B", "active B", "layers", "kv heads", "KV KiB/token", "context"
    )
    for m in MODELS.values():
        models.add_row(
            m.name,
            f"{m.num_params / 1e9:.1f}",
            f"{m.num_active_params / 1e9:.1f}",
            str(m.num_layers),
            str(m.num_kv_heads),
            f"{m.kv_bytes_per_token / 1024:.0f}",
            str(m.max_context),
        )
    console.print(gpus)
    console.print(models)


# -- the twin --------------------------------------------------------------------


@app.command()
def simulate(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML: fleet, policies, workload.")],
    out: Annotated[
        Path | None, typer.Option(help="Result folder; twin-results/<scenario name> if omitted.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run a scenario on the digital twin: the gateway's policies on a simulated clock."""
    from rich.progress import Progress

    from inferplane.twin import load_scenario, simulate_to

    spec = _guard(lambda: load_scenario(scenario))
    folder = out or Path("twin-results") / scenario.stem
    _make_folder(folder, "--out" if out else "result folder")
    with Progress(console=err, transient=True, disable=quiet) as bar:
        task = bar.add_task("simulating", total=None)

        def progress(now: float, horizon: float | None) -> None:
            bar.update(task, completed=now, total=horizon, description=f"t={now:,.0f} s")

        summary = _guard(
            lambda: simulate_to(spec, folder, base_dir=scenario.parent, progress=progress)
        )
    _print_summary(summary)
    console.print(f"results: {folder}/ (summary.json, timeseries.csv, requests.csv)")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f}"


def _print_summary(summary: dict[str, Any]) -> None:
    table = _table(
        f"{summary['requests']:,} requests over {summary['arrival_window_s']:,.0f} s "
        "(latencies in ms)",
        "",
        "arrived",
        "refused",
        "SLO met",
        "goodput/s",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "e2e p99",
    )
    for view in (summary["by_class"], summary["by_tenant"]):
        for name, v in view.items():
            attainment = v["slo_attainment"]
            table.add_row(
                name,
                f"{v['arrived']:,}",
                f"{sum(v['rejected'].values()):,}",
                "-" if attainment is None else f"{attainment:.1%}",
                f"{v['goodput_rps']:,.1f}",
                _ms(v["ttft_s"]["p50"]),
                _ms(v["ttft_s"]["p99"]),
                _ms(v["tpot_s"]["p50"]),
                _ms(v["e2e_s"]["p99"]),
            )
        table.add_section()
    console.print(table)
    refused = summary["total"]["rejected"] if summary["total"] else {}
    if refused:
        console.print("refused: " + ", ".join(f"{n:,} {why}" for why, n in refused.items()))
    cost = summary["cost"]
    per_1m = cost["per_1m_tokens_usd"]
    console.print(
        f"fleet cost ${cost['fleet_usd']:,.2f}"
        + ("" if per_1m is None else f", ${per_1m:,.3f} per 1M tokens")
    )


@app.command()
def plan(
    plan_file: Annotated[Path, typer.Argument(help="Plan YAML: model, workload, SLOs, GPUs.")],
    out: Annotated[
        Path | None, typer.Option(help="Result folder; plan-results/<plan name> if omitted.")
    ] = None,
    format: Annotated[
        str, typer.Option(help="Report besides plan.json: html (self-contained) or md.")
    ] = "html",
    workers: Annotated[
        int | None, typer.Option(help="Processes for the twin runs (default: every core).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """The cheapest fleet that meets every SLO at the peak, with the evidence."""
    import json
    import time

    from inferplane.plan import load_plan, render_html, render_markdown, search

    if format not in ("html", "md"):
        fail(f"unknown format {format!r}; supported: html, md")
    if workers is not None:
        _at_least(workers, 1, "--workers")
    spec = _guard(lambda: load_plan(plan_file))
    folder = out or Path("plan-results") / plan_file.stem
    _make_folder(folder, "--out" if out else "result folder")  # before the search, not after
    from rich.progress import Progress

    start = time.perf_counter()
    with Progress(console=err, transient=True, disable=quiet) as bar:
        task = bar.add_task("planning", total=None)

        def progress(message: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=message)

        result = _guard(lambda: search(spec, workers=workers, progress=progress))
    result["elapsed_s"] = time.perf_counter() - start

    def write() -> None:
        (folder / "plan.json").write_text(json.dumps(result, indent=2) + "\n")
        if format == "html":
            (folder / "report.html").write_text(render_html(result))
        (folder / "report.md").write_text(render_markdown(result))

    _guard(write)
    _print_plan(result)
    console.print(f"results: {folder}/ ({result['elapsed_s']:.0f} s)")


def _print_plan(result: dict[str, Any]) -> None:
    table = _table(
        "best fleet per GPU type (meets every SLO at the peak)",
        "fleet",
        "GPUs",
        "$/h",
        "$/1M tokens",
        "utilisation",
        "bottleneck",
        text_columns=1,
    )
    for c in result["runner_up_by_gpu"].values():
        mark = " *" if result["best"] and c["key"] == result["best"]["key"] else ""
        table.add_row(
            c["key"] + mark,
            str(c["gpus"]),
            f"{c['usd_per_hour']['on_demand']:,.2f}",
            "-" if c["usd_per_1m_tokens"] is None else f"{c['usd_per_1m_tokens']:.3f}",
            f"{c['utilisation']:.0%}",
            c["bottleneck"],
        )
    console.print(table)
    if result["best"] is None:
        closest = ", ".join(c["key"] for c in result["closest"]) or "none"
        console.print(f"no configuration meets the SLOs; closest: {closest}")
    for skipped in result["skipped"]:
        console.print(f"skipped {skipped['gpu']} TP{skipped['tp']}: {skipped['reason']}")


# -- config and keys -----------------------------------------------------------


@config_app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="YAML config file.")]) -> None:
    """Validate a config file; print every problem with its line."""
    from inferplane.config import load_config

    cfg = _guard(lambda: load_config(path))
    backends = sum(len(m.backends) for m in cfg.models.values())
    console.print(
        f"{path}: ok ({len(cfg.models)} models, {backends} backends, {len(cfg.tenants)} tenants)"
    )


@config_app.command("default")
def config_default() -> None:
    """Print the embedded default config (a starting point for your own)."""
    from inferplane.config import default_config_text

    sys.stdout.write(default_config_text())


@keys_app.command("new")
def keys_new(
    name: Annotated[str, typer.Argument(help="A name for the key, e.g. ci-bot.")],
) -> None:
    """Make a new random API key; print it once and the digest to put in the config."""
    from inferplane.gateway import hash_key

    key = "sk-ip-" + secrets.token_urlsafe(32)
    console.print(f"key (shown once): {key}", highlight=False)
    console.print("config entry:", highlight=False)
    console.print(f"  - name: {name}\n    sha256: {hash_key(key)}", highlight=False)


@keys_app.command("hash")
def keys_hash(key: Annotated[str, typer.Argument(help="The key to digest.")]) -> None:
    """Print the SHA-256 digest of an existing key, for the config."""
    from inferplane.gateway import hash_key

    console.print(hash_key(key), highlight=False)


# -- benchmarks ----------------------------------------------------------------


@bench_app.command("overhead")
def bench_overhead(
    concurrency: Annotated[
        list[int] | None, typer.Option("--concurrency", "-n", help="Repeat for several levels.")
    ] = None,
    scenario: Annotated[
        list[str] | None,
        typer.Option(help="whole (non-streaming, fast replica) and/or stream (real time)."),
    ] = None,
    duration: Annotated[float, typer.Option(help="Seconds of load per level and target.")] = 4.0,
    out: Annotated[Path, typer.Option(help="JSON report path.")] = Path(
        "bench-results/overhead.json"
    ),
) -> None:
    """Gateway vs direct to the same replica, side by side: added latency, req/s, CPU."""
    from inferplane.bench.overhead import SCENARIOS, run_overhead

    known = {s.name: s for s in SCENARIOS}
    unknown = sorted(set(scenario or ()) - set(known))
    if unknown:
        fail(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(known)}")
    chosen = tuple(known[name] for name in scenario) if scenario else SCENARIOS
    levels = tuple(concurrency or (1, 16, 64, 200))
    for level in levels:
        _at_least(level, 1, "--concurrency")
    _positive(duration, "--duration")
    _out_file(out)
    _guard(
        lambda: run_overhead(concurrencies=levels, duration_s=duration, scenarios=chosen, out=out)
    )
    console.print(f"JSON: {out}")


# -- usage ----------------------------------------------------------------------

usage_app = typer.Typer(help="Usage and cost from the ledger.", no_args_is_help=True)
app.add_typer(usage_app, name="usage")


def _ledger_db(config: Path | None) -> tuple[Connection, Database]:
    from inferplane.config import load_config
    from inferplane.gateway import ledger_database

    cfg = _guard(lambda: load_config(config))
    database = ledger_database(cfg)
    if not database.is_postgres and not Path(database.url).exists():
        fail(
            f"no ledger at {database.url}: the gateway of this config has not recorded anything yet"
        )
    return _guard(lambda: database.connect(read_only=True)), database


def _read_ledger(database: Database, read: Callable[[], T]) -> T:
    """``read()``, its database errors one line each (a ledger not migrated yet, say)."""
    try:
        return read()
    except database.errors as exc:
        fail(
            f"cannot read the usage ledger at {database.describe()}: {exc}".splitlines()[0]
            + " (a gateway of this version migrates it when it starts)"
        )


@usage_app.command("summary")
def usage_summary_cmd(
    config: ConfigOption = None,
    group_by: Annotated[
        str, typer.Option(help="Comma list: tenant,key,workflow,run,model,backend,day.")
    ] = "tenant,model,day",
) -> None:
    """Requests, tokens and cost per group, with cost-per-request percentiles."""
    from inferplane.ledger import usage_summary

    groups = [g for g in group_by.split(",") if g]
    db, database = _ledger_db(config)
    with contextlib.closing(db):
        rows = _read_ledger(database, lambda: _guard(lambda: usage_summary(db, database, groups)))
    table = _table(
        "usage",
        *groups,
        "requests",
        "errors",
        "input tok",
        "output tok",
        "cost $",
        "p50 $/req",
        "p99 $/req",
        text_columns=len(groups),
    )
    for r in rows:
        pct = r["cost_per_request_usd"]
        table.add_row(
            *(str(r[g]) for g in groups),
            str(r["requests"]),
            str(r["errors"]),
            str(r["input_tokens"]),
            str(r["output_tokens"]),
            r["cost_usd"],
            pct["p50"],
            pct["p99"],
        )
    console.print(table)


@usage_app.command("export")
def usage_export(
    config: ConfigOption = None,
    format: Annotated[
        str,
        typer.Option(
            help="focus: FinOps FOCUS cost rows, hourly. events: one row per request "
            "(a trace `inferplane simulate` replays)."
        ),
    ] = "focus",
    out: Annotated[
        Path | None,
        typer.Option(
            help="File to write (.parquet: Parquet, focus only; else CSV); stdout if omitted."
        ),
    ] = None,
) -> None:
    """Export cost rows (hourly, per tenant/key/workflow/run/model/backend) or usage events."""
    if format not in ("focus", "events"):
        fail(f"unknown format {format!r}; supported: focus, events")
    parquet = out is not None and out.suffix == ".parquet"
    if parquet and format == "events":
        fail("events are written as CSV; name the file .csv")
    db, database = _ledger_db(config)
    count = _read_ledger(database, lambda: _export(db, database, format, out, parquet))
    if out:
        console.print(f"{count} rows -> {out}")


def _export(
    db: Connection, database: Database, format: str, out: Path | None, parquet: bool
) -> int:
    """Write the ledger's rows in ``format``; returns how many."""
    import csv

    from inferplane.ledger import FOCUS_COLUMNS, event_rows, focus_rows, write_focus_parquet

    count = 0
    with contextlib.closing(db), contextlib.ExitStack() as stack:
        if format == "events":
            handle = stack.enter_context(out.open("w", newline="")) if out else sys.stdout
            writer = None
            for row in event_rows(db, database):  # streamed: a ledger can be large
                if writer is None:
                    writer = csv.DictWriter(handle, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
                count += 1
        else:
            rows = focus_rows(db, database)
            count = len(rows)
            if parquet:
                assert out is not None
                try:
                    write_focus_parquet(rows, str(out))
                except ModuleNotFoundError:
                    fail("Parquet needs pyarrow: pip install 'inferplane[parquet]'")
            else:
                handle = stack.enter_context(out.open("w", newline="")) if out else sys.stdout
                writer = csv.DictWriter(handle, fieldnames=FOCUS_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
    return count


@bench_app.command("slo")
def bench_slo(
    replicas: Annotated[int, typer.Option(help="Emulated replicas.")] = 1,
    slots: Annotated[int, typer.Option(help="max_concurrency per replica.")] = 16,
    time_scale: Annotated[float, typer.Option(help="Engine seconds per wall second.")] = 1.0,
    loads: Annotated[str, typer.Option(help="Offered load, x capacity.")] = "0.5,1,2,3",
    duration: Annotated[float, typer.Option(help="Seconds of arrivals per load.")] = 20.0,
    seed: int = 7,
    prefix_replicas: Annotated[
        int, typer.Option(help="Replicas of the prefix-affinity run (0: skip it).")
    ] = 3,
    out: Annotated[Path, typer.Option(help="JSON report path.")] = Path("bench-results/slo.json"),
) -> None:
    """SLO attainment, goodput and fairness under 0.5-3x load: inferplane vs FIFO."""
    from inferplane.bench.slo import run_slo

    _at_least(replicas, 1, "--replicas")
    _at_least(slots, 1, "--slots")
    _positive(time_scale, "--time-scale")
    _positive(duration, "--duration")
    _at_least(prefix_replicas, 0, "--prefix-replicas")
    levels = tuple(_numbers(loads, float, "--loads", "loads"))
    for level in levels:
        _positive(level, "--loads: each load")
    _out_file(out)
    _guard(
        lambda: run_slo(
            replicas=replicas,
            slots=slots,
            time_scale=time_scale,
            loads=levels,
            duration_s=duration,
            seed=seed,
            out=out,
            echo=console.print,
            prefix_replicas=prefix_replicas,
        )
    )
    console.print(f"JSON: {out}")


@bench_app.command("twin")
def bench_twin(
    fleets: Annotated[str, typer.Option(help="Fleet sizes (replicas), comma-separated.")] = (
        "8,16,32,64"
    ),
    requests: Annotated[int, typer.Option(help="Requests per run.")] = 20_000,
    load: Annotated[float, typer.Option(help="Offered load, x the fleet's capacity.")] = 0.9,
    seed: int = 7,
    out: Annotated[Path, typer.Option(help="JSON report path.")] = Path("bench-results/twin.json"),
) -> None:
    """Simulated requests per wall-clock second of the twin, by fleet size and length."""
    from inferplane.bench.twin import MAX_LOAD, MAX_REPLICAS, MAX_REQUESTS, run_twin_bench

    sizes = tuple(_numbers(fleets, int, "--fleets", "replica counts"))
    for size in sizes:
        _at_least(size, 1, "--fleets: each fleet size")
        _at_most(size, MAX_REPLICAS, "--fleets: each fleet size")
    _at_least(requests, 100, "--requests")
    _at_most(requests, MAX_REQUESTS, "--requests")
    _positive(load, "--load")
    _at_most(load, MAX_LOAD, "--load")
    _out_file(out)
    _guard(
        lambda: run_twin_bench(
            fleets=sizes, requests=requests, load=load, seed=seed, out=out, echo=console.print
        )
    )
    console.print(f"JSON: {out}")


@bench_app.command("plan")
def bench_plan(
    workers: Annotated[int | None, typer.Option(help="Processes (default: every core).")] = None,
    out: Annotated[Path, typer.Option(help="JSON report path.")] = Path("bench-results/plan.json"),
) -> None:
    """Time to a plan over 4 GPU types x 3 TP degrees x 1-64 replicas."""
    from inferplane.bench.plan import run_plan_bench

    if workers is not None:
        _at_least(workers, 1, "--workers")
    _out_file(out)
    _guard(lambda: run_plan_bench(workers=workers, out=out, echo=console.print))
    console.print(f"JSON: {out}")


@bench_app.command("budgets")
def bench_budgets(
    concurrency: Annotated[int, typer.Option("--concurrency", "-n")] = 64,
    duration: Annotated[float, typer.Option(help="Seconds of load per round and gateway.")] = 4.0,
    rounds: Annotated[int, typer.Option(help="Alternating rounds.")] = 3,
    postgres: Annotated[
        str | None,
        typer.Option(help="Also measure a gateway whose ledger is this postgresql:// URL."),
    ] = None,
    out: Annotated[Path, typer.Option(help="JSON report path.")] = Path(
        "bench-results/budgets.json"
    ),
) -> None:
    """Gateway throughput with budgets + ledger on vs off, side by side (SQLite, and
    PostgreSQL when given)."""
    from inferplane.bench.budgets import run_budgets

    _at_least(concurrency, 1, "--concurrency")
    _positive(duration, "--duration")
    _at_least(rounds, 1, "--rounds")
    _out_file(out)
    _guard(
        lambda: run_budgets(
            concurrency=concurrency,
            duration_s=duration,
            rounds=rounds,
            postgres_url=postgres,
            out=out,
        )
    )
    console.print(f"JSON: {out}")


# -- admin ----------------------------------------------------------------------

admin_app = typer.Typer(
    help="Tenants, keys and budgets of a running gateway (needs its admin key).",
    no_args_is_help=True,
)
app.add_typer(admin_app, name="admin")

UrlOption = Annotated[str, typer.Option("--url", help="The gateway.")]
AdminKeyOption = Annotated[
    str | None,
    typer.Option(
        "--admin-key",
        envvar="INFERPLANE_ADMIN_KEY",
        help="Admin API key (or INFERPLANE_ADMIN_KEY).",
    ),
]
BudgetOption = Annotated[
    str | None, typer.Option(help='A budget as JSON, e.g. \'{"cost_usd": 50, "window": "month"}\'.')
]


def _admin_call(url: str, admin_key: str | None, path: str, body: object | None = None) -> Any:
    """One admin API call; an error answer becomes one line and exit 2."""
    import json
    import urllib.error
    import urllib.request

    if not admin_key:
        fail("no admin key: pass --admin-key or set INFERPLANE_ADMIN_KEY")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url.rstrip("/") + path,
        data=data,
        method="GET" if body is None else "POST",
        headers={"authorization": f"Bearer {admin_key}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        fail(f"{exc.code}: {message}")
    except urllib.error.URLError as exc:
        fail(f"cannot reach the gateway at {url}: {exc.reason}")


def _json_option(value: str | None, name: str) -> Any:
    import json

    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as exc:
        fail(f"--{name} is not valid JSON: {exc}")


def _budget_fields(**options: str | None) -> dict[str, Any]:
    """The budget options given on the command line, parsed, by API field name."""
    return {
        field: _json_option(value, field.replace("_", "-"))
        for field, value in options.items()
        if value is not None
    }


@admin_app.command("tenants")
def admin_tenants(
    url: UrlOption = "http://127.0.0.1:8080", admin_key: AdminKeyOption = None
) -> None:
    """List tenants, where each is defined, and their keys."""
    rows = _admin_call(url, admin_key, "/v1/admin/tenants")["data"]
    table = _table("tenants", "tenant", "source", "disabled", "budgets", "keys", text_columns=5)
    for t in rows:
        budgets = ", ".join(
            f"{k}={t[k]}" for k in ("budget", "workflow_budget", "run_budget") if t[k]
        )
        keys = ", ".join(k["name"] + (" (disabled)" if k["disabled"] else "") for k in t["keys"])
        table.add_row(t["name"], t["source"], str(t["disabled"]), budgets, keys)
    console.print(table)


@admin_app.command("create-tenant")
def admin_create_tenant(
    name: Annotated[str, typer.Argument()],
    models: Annotated[str | None, typer.Option(help="Comma list of allowed models.")] = None,
    budget: BudgetOption = None,
    workflow_budget: BudgetOption = None,
    run_budget: BudgetOption = None,
    url: UrlOption = "http://127.0.0.1:8080",
    admin_key: AdminKeyOption = None,
) -> None:
    """Create a tenant."""
    body: dict[str, Any] = {"name": name}
    if models is not None:
        body["models"] = [m for m in models.split(",") if m]
    body.update(
        _budget_fields(budget=budget, workflow_budget=workflow_budget, run_budget=run_budget)
    )
    _admin_call(url, admin_key, "/v1/admin/tenants", body)
    console.print(f"tenant {name} created")


@admin_app.command("create-key")
def admin_create_key(
    tenant: Annotated[str, typer.Argument()],
    name: Annotated[str, typer.Argument()],
    budget: BudgetOption = None,
    workflow: Annotated[
        str | None, typer.Option(help="Workflow charged when a request names none.")
    ] = None,
    run: Annotated[str | None, typer.Option(help="Run charged when a request names none.")] = None,
    url: UrlOption = "http://127.0.0.1:8080",
    admin_key: AdminKeyOption = None,
) -> None:
    """Make an API key for a tenant; it is printed once and never stored."""
    body: dict[str, Any] = {"tenant": tenant, "name": name, **_budget_fields(budget=budget)}
    body.update({k: v for k, v in {"workflow": workflow, "run": run}.items() if v is not None})
    made = _admin_call(url, admin_key, "/v1/admin/keys", body)
    console.print(f"key (shown once): {made['key']}", highlight=False)


@admin_app.command("set")
def admin_set(
    tenant: Annotated[str, typer.Argument()],
    key: Annotated[str | None, typer.Option(help="Change this key instead of the tenant.")] = None,
    disabled: Annotated[bool | None, typer.Option("--disabled/--enabled")] = None,
    budget: BudgetOption = None,
    workflow_budget: BudgetOption = None,
    run_budget: BudgetOption = None,
    url: UrlOption = "http://127.0.0.1:8080",
    admin_key: AdminKeyOption = None,
) -> None:
    """Disable/enable a tenant or key, or change its budgets ('null' removes one)."""
    body: dict[str, Any] = {"tenant": tenant, "name": key} if key else {"name": tenant}
    if disabled is not None:
        body["disabled"] = disabled
    body.update(
        _budget_fields(budget=budget, workflow_budget=workflow_budget, run_budget=run_budget)
    )
    path = "/v1/admin/keys/update" if key else "/v1/admin/tenants/update"
    changed = _admin_call(url, admin_key, path, body)
    console.print(f"updated {', '.join(changed['updated']) or 'nothing'}")
