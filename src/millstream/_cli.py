"""``millstream run | plan | demo | nexmark``: run a job file, show its plan, run the demo or the Nexmark benchmark.

Where things go: result rows and the final summary on stdout (the summary on stderr when the job's
own results go to stdout), diagnostics on stderr (progress, warnings, errors). The exit status is
in :data:`EXIT_STATUS`.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from millstream._api import Flow
from millstream._control import JobControl
from millstream._guarantee import GUARANTEES
from millstream._progress import LOG_INTERVAL_S, LiveProgress, LogProgress, print_summary, resume_hint
from millstream._run import ENGINES, MODES, JobStatus, RunConfig, RunResult, default_mode
from millstream.errors import ConfigError, FlowDefinitionError, MillstreamError, StepError


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_sets(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes key=value, got {item!r}")
        params[key.strip()] = _parse_value(value)
    return params


#: run options a job file gives as a module-level ``RUN = ms.RunConfig(...)``, by id of its flow
_JOB_DEFAULTS: dict[int, RunConfig] = {}


def load_flow(path: str, params: dict[str, Any], flow_name: str | None = None) -> Flow:
    """Import a job file and get its flow: ``build(params)`` if defined, else the module's Flow.

    A module-level ``RUN = ms.RunConfig(...)`` gives the job's run options (mode, guarantee,
    checkpoint directory...); options on the command line override them.
    """
    flow = _load_flow(path, params, flow_name)
    defaults = _JOB_DEFAULTS_PENDING.pop("RUN", None)
    if defaults is not None:
        if not isinstance(defaults, RunConfig):
            raise ConfigError(f"{path}: RUN must be a millstream.RunConfig, not {type(defaults).__name__}")
        _JOB_DEFAULTS[id(flow)] = defaults
    return flow


_JOB_DEFAULTS_PENDING: dict[str, Any] = {}


def _job_file_error(file: Path, exc: BaseException) -> FlowDefinitionError:
    """An error raised while a job file was loaded, at the user's own line (the deepest frame in the
    job file), without the CLI's internals; ``--debug`` shows the whole traceback."""
    where, code = str(file), None
    if isinstance(exc, SyntaxError):
        where = f"{file}:{exc.lineno}" if exc.lineno else str(file)
        code = (exc.text or "").rstrip() or None
        what = f"SyntaxError: {exc.msg}"
    else:
        mine = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == file.resolve()]
        if mine:
            where, code = f"{file}:{mine[-1].lineno}", mine[-1].line
        what = f"{type(exc).__name__}: {exc}"
        name, obj = getattr(exc, "name", None), getattr(exc, "obj", None)
        if isinstance(exc, AttributeError) and isinstance(name, str) and obj is not None:
            import difflib

            close = difflib.get_close_matches(name, [n for n in dir(obj) if not n.startswith("_")], n=1)
            if close:
                what += f"; did you mean {close[0]!r}?"
    problem = what + (f"\n    {code.strip()}" if code else "")
    return FlowDefinitionError(f"the job file failed to load: {problem}", location=where,
                               fix="correct the line above (run with --debug for the whole traceback)")


def _load_flow(path: str, params: dict[str, Any], flow_name: str | None = None) -> Flow:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"job file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location("__millstream_job__", file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load {path!r} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(file.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except MillstreamError:
        raise
    except Exception as exc:
        raise _job_file_error(file, exc) from exc
    finally:
        sys.path.pop(0)
    if hasattr(module, "RUN"):
        _JOB_DEFAULTS_PENDING["RUN"] = module.RUN
    build = getattr(module, "build", None)
    if callable(build):
        takes = len(inspect.signature(build).parameters)
        try:
            flow = build(params) if takes else build()
        except MillstreamError:
            raise
        except Exception as exc:
            raise _job_file_error(file, exc) from exc
        if not isinstance(flow, Flow):
            raise ConfigError(f"{path}: build() returned {type(flow).__name__}, not a millstream Flow")
        if params and not takes:
            raise ConfigError(f"{path}: build() takes no parameters, so --set {', '.join(params)} has no effect")
        return flow
    flows = {name: v for name, v in vars(module).items() if isinstance(v, Flow)}
    if params:
        raise ConfigError(
            f"{path} defines no build(params) function, so --set {', '.join(params)} cannot reach it; "
            "define `def build(params): ...` returning the Flow"
        )
    if flow_name is not None:
        for v in flows.values():
            if v.name == flow_name:
                return v
        names = ", ".join(f.name for f in flows.values())
        raise ConfigError(f"{path} has no flow named {flow_name!r}; it has: {names}")
    if len(flows) == 1:
        return next(iter(flows.values()))
    if not flows:
        raise ConfigError(f"{path} defines no millstream Flow at module level (nor a build() function)")
    names = ", ".join(f.name for f in flows.values())
    raise ConfigError(f"{path} defines several flows ({names}); pick one with --flow")


@contextmanager
def progress_for(args: argparse.Namespace, console: Console) -> Iterator[dict[str, Any]]:
    """The run options that show progress as ``--progress`` and ``--progress-interval`` ask: a live
    table when stderr is a terminal, else a plain line every interval (a job under nohup, systemd or
    CI still shows it is alive); ``auto`` shows nothing under ``-q``. Yields ``on_progress`` and
    ``progress_interval_s`` (empty for none), and stops the live table at the end."""
    interval = args.progress_interval
    if interval is not None and interval <= 0:
        raise ConfigError(f"--progress-interval must be > 0 seconds, got {interval}")
    if args.progress == "off" or (args.progress == "auto" and args.quiet):
        yield {}
        return
    if console.is_terminal:
        live = LiveProgress(console)
        try:
            yield {"on_progress": live, "progress_interval_s": min(0.5, interval or 0.5)}
        finally:
            live.stop()
        return
    interval = interval or LOG_INTERVAL_S
    callback: Callable[[JobStatus], None] = LogProgress(sys.stderr, interval)
    yield {"on_progress": callback, "progress_interval_s": min(0.5, interval)}


def _run_flow(flow: Flow, args: argparse.Namespace, console: Console) -> RunResult:
    # the job file's own defaults (a module-level ``RUN = ms.RunConfig(...)``), then the options given
    base = _JOB_DEFAULTS.get(id(flow)) or RunConfig(mode=default_mode())
    given = {"mode": args.mode, "max_chunk": args.max_chunk, "guarantee": args.guarantee,
             "checkpoint_dir": args.checkpoint_dir, "checkpoint_interval": args.checkpoint_interval,
             "restarts": args.restarts, "state": args.state, "checkpoint_key": _checkpoint_key(),
             "metrics": getattr(args, "metrics", None), "metrics_token": _metrics_token(),
             "from_savepoint": args.from_savepoint, "parallelism": getattr(args, "parallelism", None),
             **_engine_options(args), **_dashboard_options(args)}
    with progress_for(args, console) as shown:
        cfg = base.replace(**shown, **{k: v for k, v in given.items() if v is not None})
        control = JobControl()
        args.checkpoint_dir = cfg.checkpoint_dir  # the hint names it, also when the job file gave it
        with _stop_on_signals(control, args.signals, savepoint=cfg.checkpoint_dir is not None):
            return flow.run(config=cfg.replace(control=control))


def _add_engine_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--engine", choices=ENGINES, default=None,
                    help="where workers 1..N-1 of --parallelism N run: local processes (default) or Ray "
                         "actors (needs millstream[ray]; see docs/scaling.md)")
    sp.add_argument("--ray-address", default=None, metavar="ADDRESS",
                    help="the Ray cluster to join with --engine ray (default: $RAY_ADDRESS, else a local "
                         "Ray is started)")


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """``engine`` and ``ray_address`` from ``--engine`` and ``--ray-address`` (or ``$RAY_ADDRESS`` with
    ``--engine ray``); nothing when not given (the job file's own, or the defaults)."""
    engine = getattr(args, "engine", None)
    address = getattr(args, "ray_address", None)
    if address is not None and engine != "ray":
        raise ConfigError("--ray-address goes with --engine ray")
    if engine == "ray" and address is None:
        address = os.environ.get("RAY_ADDRESS") or None
    return {"engine": engine, "ray_address": address}


def _dashboard_options(args: argparse.Namespace) -> dict[str, Any]:
    """The dashboard's run options from ``--dashboard``, ``--dashboard-token`` (or
    ``$MILLSTREAM_DASHBOARD_TOKEN``) and ``--dashboard-control``; none without ``--dashboard``."""
    address = getattr(args, "dashboard", None)
    if address is None:
        if getattr(args, "dashboard_control", False) or getattr(args, "dashboard_token", None):
            raise ConfigError("--dashboard-control and --dashboard-token go with --dashboard [HOST:]PORT")
        return {}
    return {"dashboard": address, "dashboard_token": args.dashboard_token or os.environ.get(DASHBOARD_TOKEN_ENV)
            or None, "dashboard_control": args.dashboard_control}


@contextmanager
def _stop_on_signals(control: JobControl, received: list[int], *, savepoint: bool) -> Iterator[None]:
    """While a job runs, the first Ctrl-C (SIGINT) or SIGTERM asks it to stop at its next chunk
    boundary, with a savepoint when it has a checkpoint directory (the run then ends as interrupted:
    exit status 130 or 143); a second one aborts at once, as Ctrl-C always did."""
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if control.stop_requested or control.ended:
            raise _Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        control.request_stop(savepoint=savepoint)
        what = "taking a savepoint and stopping" if savepoint else "stopping"
        # os.write: a signal handler must not go through sys.stderr's buffer, which it may have interrupted
        again = "Ctrl-C again" if signum == signal.SIGINT else "a second SIGTERM or Ctrl-C"
        os.write(2, f"\nmillstream: {signal.Signals(signum).name}: {what} at the next chunk boundary "
                    f"({again} aborts at once)\n".encode())

    try:
        previous = {s: signal.signal(s, on_signal) for s in signals}
    except ValueError:  # not the main thread: leave the signals alone
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def summary_console(writes_stdout: bool) -> Console:
    """Where the final summary goes: standard output, where a user redirects results, unless the
    job's own results go there (then standard error, so that the results stay clean)."""
    return Console(stderr=True) if writes_stdout else Console(file=sys.stdout)


def _writes_stdout(flow: Flow) -> bool:
    from millstream.connectors.stdio import StdoutSink

    return any(isinstance(n.op.connector, StdoutSink) and n.op.connector.stream is None  # type: ignore[attr-defined]
               for n in flow.plan().sinks)


#: exit status of a run stopped by a signal: 128 + the signal's number, as a shell reports it
#: (130 for Ctrl-C / SIGINT, 143 for SIGTERM)
INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}

EXIT_STATUS = """exit status:
  0    the job finished (or had already finished)
  1    the job failed
  2    the flow or the options are wrong
  130  interrupted by Ctrl-C (SIGINT); 143 by SIGTERM. With --checkpoint-dir the job first
       stops at a chunk boundary and takes a savepoint (a second Ctrl-C aborts at once); run
       the same command again to resume from it"""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an interruption so that the run stops as it does on Ctrl-C."""


@contextmanager
def _sigterm_interrupts() -> Iterator[list[int]]:
    """While the command runs, SIGTERM interrupts it as Ctrl-C does; yields the signals received."""
    received: list[int] = []

    def on_term(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: leave SIGTERM alone
        yield received
        return
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted_status(received: list[int]) -> int:
    return INTERRUPTED[signal.SIGTERM] if signal.SIGTERM in received else INTERRUPTED[signal.SIGINT]


def _report_interruption(console: Console, result: RunResult, checkpoint_dir: str | None) -> None:
    last = result.checkpoints.last_id if result.checkpoints is not None else None
    hint = resume_hint(result.interrupted, checkpoint_dir, last)
    if hint is not None:
        console.print(hint, highlight=False, markup=False)
    if result.savepoint is not None:
        console.print(f"  savepoint {result.savepoint}: everything before it is committed; to start another run "
                      f"from it: --from-savepoint {result.savepoint} with a new --checkpoint-dir",
                      highlight=False, markup=False, soft_wrap=True)


def _metrics_token() -> str | None:
    """``$MILLSTREAM_METRICS_TOKEN``: the token ``/metrics`` asks for (never printed; off loopback,
    one is generated and printed once when this is unset)."""
    return os.environ.get(METRICS_TOKEN_ENV) or None


def _checkpoint_key() -> str | None:
    """``$MILLSTREAM_CHECKPOINT_KEY``: checkpoints are signed and verified with it (never printed)."""
    return os.environ.get(CHECKPOINT_KEY_ENV) or None


LOG_LEVELS = ("debug", "info", "warning", "error")
CHECKPOINT_KEY_ENV = "MILLSTREAM_CHECKPOINT_KEY"
METRICS_TOKEN_ENV = "MILLSTREAM_METRICS_TOKEN"  # noqa: S105 - the variable's name, not a token
DASHBOARD_TOKEN_ENV = "MILLSTREAM_DASHBOARD_TOKEN"  # noqa: S105 - the variable's name, not a token


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when a record comes: the live table swaps it for a while so
    that lines print above the table instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _show_logs(level: str) -> logging.Handler:
    """Show millstream's log records (warnings by default: e.g. a fallback to an older checkpoint) on stderr.

    Only the CLI does this; the library itself logs to a NullHandler.
    """
    handler = _StderrHandler()
    # in a log (stderr not a terminal) each line says when, as the progress lines do
    stamp = "" if sys.stderr.isatty() else "%(asctime)s "
    formatter = logging.Formatter(stamp + "millstream %(levelname)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    logger = logging.getLogger("millstream")
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level.upper()))
    return handler


def _report_error(console: Console, exc: BaseException) -> int:
    if isinstance(exc, StepError):
        console.print("[bold red]job failed[/]")
        console.print(str(exc), highlight=False, markup=False)
        cause = exc.__cause__
        if cause is not None:
            tb = traceback.extract_tb(cause.__traceback__)
            user = [f for f in tb if "millstream" not in f.filename.replace(os.sep, "/").split("/site-packages/")[-1]
                    and not f.filename.startswith("<millstream")]
            if user:
                console.print("  where:", highlight=False)
                for f in user[-3:]:
                    console.print(f"    {f.filename}:{f.lineno} in {f.name}: {f.line}", highlight=False, markup=False)
        return 1
    if isinstance(exc, FlowDefinitionError):
        console.print("[bold red]the flow is built wrong[/]")
        console.print(str(exc), highlight=False, markup=False)
        return 2
    if isinstance(exc, ConfigError):
        console.print(f"[bold red]error[/]: {exc}", highlight=False)
        return 2
    console.print("[bold red]job failed[/]")
    console.print(str(exc), highlight=False, markup=False)
    return 1


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    flow = load_flow(args.job, _parse_sets(args.set), args.flow)
    result = _run_flow(flow, args, console)
    if not args.quiet:
        out = summary_console(_writes_stdout(flow))
        if result.already_finished:
            out.print(f"the job had already finished (checkpoints in {args.checkpoint_dir}); nothing to do")
        print_summary(out, result)
    _report_interruption(console, result, args.checkpoint_dir)
    return _interrupted_status(args.signals) if result.interrupted else 0


def _cmd_plan(args: argparse.Namespace, console: Console) -> int:
    flow = load_flow(args.job, _parse_sets(args.set), args.flow)
    plan = flow.plan()
    if args.parallelism is not None:  # the physical plan: operator instances per worker, exchanges
        from millstream._physical import compile as compile_physical

        physical = compile_physical(plan, args.mode, args.parallelism, args.max_parallelism)
        print(json.dumps(physical.to_dict(), indent=2) if args.format == "json" else physical.explain())
        return 0
    if args.format == "mermaid":
        print(plan.to_mermaid())
    elif args.format == "json":
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        print(plan.render())
    return 0


def _cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from millstream import _demo

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.jsonl"):
        old.unlink()
    flow = _demo.build({"events": args.events, "rate": args.rate, "out": str(out)})
    if not args.quiet:
        console.print(f"[bold]millstream demo[/]: card fraud detection over {args.events:,} synthetic transactions")
        console.print("  sliding 10 min spend per card (alert over 3,000), per-card anomaly score (EWMA z-score"
                      " of log amount), impossible travel between ATMs; a few cards get stolen along the way")
    result = _run_flow(flow, args, console)
    _report_interruption(console, result, args.checkpoint_dir)
    code = _interrupted_status(args.signals) if result.interrupted else 0
    if args.quiet:
        return code
    print_summary(console, result)
    console.print(f"[bold]output[/] in {out.resolve()}:")
    for f in sorted(out.glob("*.jsonl")):
        n = sum(1 for _ in f.open("rb"))
        console.print(f"  {f.name}: {n:,} records")
    sample = out / "travel_alerts.jsonl"
    if sample.exists() and sample.stat().st_size:
        console.print("  e.g. " + sample.read_text().splitlines()[0], highlight=False, markup=False, soft_wrap=True)
    return code


def metrics_option(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--metrics", default=None, metavar="[HOST:]PORT",
                    help="serve Prometheus metrics at http://HOST:PORT/metrics while the job runs (host "
                         f"127.0.0.1 unless given; any other host needs ${METRICS_TOKEN_ENV}, or prints a new token)")


def dashboard_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--dashboard", default=None, metavar="[HOST:]PORT",
                    help="serve the web dashboard at http://HOST:PORT/ while the job runs (host 127.0.0.1 "
                         "unless given; needs millstream[dashboard])")
    sp.add_argument("--dashboard-token", default=None, metavar="TOKEN",
                    help="the token the dashboard asks for (default: $" + DASHBOARD_TOKEN_ENV + "; off loopback, "
                         "without one a token is generated and printed once). A command line is visible to "
                         "every user of the machine (ps): prefer $" + DASHBOARD_TOKEN_ENV)
    sp.add_argument("--dashboard-control", action="store_true",
                    help="let the dashboard stop the job (with a savepoint); off by default")


def savepoint_option(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--from-savepoint", default=None, metavar="PATH",
                    help="start from a savepoint (the chk-* directory a stop printed, or a checkpoint directory: "
                         "its newest savepoint) in a new --checkpoint-dir; the same command again resumes")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="millstream", description="Stream processing for Python.", epilog=EXIT_STATUS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")

    def debug(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--debug", action="store_true",
                        help="on an error, print the whole Python traceback too (default: the error at your line)")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--mode", choices=MODES, default=None,
                        help="execution mode: native (record at a time), microbatch (columnar epochs) or batch "
                             "(bounded input, largest batches); default: $MILLSTREAM_MODE or native")
        sp.add_argument("--max-chunk", type=int, default=None,
                        help="most records read from a source at once (the epoch size in micro-batch mode; "
                             "default 2048 native, 100000 microbatch)")
        progress(sp)
        sp.add_argument("-q", "--quiet", action="store_true", help="print no summary")
        sp.add_argument("--guarantee", choices=GUARANTEES, default=None,
                        help="delivery guarantee across crashes (needs --checkpoint-dir; default with one: "
                        "at-least-once)")
        sp.add_argument("--checkpoint-dir", default=None,
                        help="take checkpoints here; running again with the same directory resumes")
        sp.add_argument("--checkpoint-interval", type=int, default=None, metavar="MS",
                        help="milliseconds between checkpoints (default 1000)")
        sp.add_argument("--restarts", type=int, default=None,
                        help="restart a failed job from its latest checkpoint up to this many times")
        sp.add_argument("--state", default=None, metavar="URL",
                        help="keyed-state backend: memory (default) or lmdb:///path (on disk)")
        savepoint_option(sp)
        log_level(sp)

    def progress(sp: argparse.ArgumentParser) -> None:
        progress_options(sp)

    def log_level(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--log-level", choices=LOG_LEVELS, default="warning",
                        help="show millstream's messages of this level and above on stderr (default: warning)")

    run = sub.add_parser("run", help="run the flow defined in a job file", epilog=EXIT_STATUS,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("job", help="a Python file defining a Flow (or build(params) returning one)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="a job parameter, passed to build(params); values are JSON or text")
    run.add_argument("--flow", help="which flow, when the file defines several")
    common(run)
    run.add_argument("--parallelism", type=int, default=None, metavar="N",
                     help="workers (default 1); above 1: keyed steps spread over the workers by key group, "
                          "sources read by their splits, in every mode, with checkpoints that resume at any "
                          "parallelism (see docs/scaling.md)")
    _add_engine_options(run)
    debug(run)
    metrics_option(run)
    dashboard_options(run)

    plan = sub.add_parser("plan", help="print the logical plan of a job file")
    plan.add_argument("job")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    plan.add_argument("--flow")
    plan.add_argument("--format", choices=["text", "mermaid", "json"], default="text")
    plan.add_argument("--parallelism", type=int, metavar="N",
                      help="print the physical plan for N workers: operator instances, exchanges by key group")
    plan.add_argument("--max-parallelism", type=int, default=128, metavar="M",
                      help="key groups (the most workers the job's state can be split over; default 128)")
    plan.add_argument("--mode", choices=MODES, default="native", help="execution mode of the physical plan")
    debug(plan)

    demo = sub.add_parser("demo", help="run the built-in fraud-detection demo (no server needed)")
    demo.add_argument("--events", type=int, default=200_000, help="number of transactions (default 200,000)")
    demo.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
    demo.add_argument("--out", default="millstream-demo-output", help="output directory")
    common(demo)
    _nexmark_parser(sub)
    return p


def progress_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                    help="progress on stderr while the job runs: a live table on a terminal, else a plain line "
                    "every --progress-interval seconds (for a log: nohup, systemd, CI); auto (default): "
                    "shown unless -q")
    sp.add_argument("--progress-interval", type=float, default=None, metavar="SECONDS",
                    help=f"seconds between two progress lines when stderr is not a terminal (default "
                    f"{LOG_INTERVAL_S:g})")


# -- millstream nexmark ------------------------------------------------------------------------------


def _nexmark_parser(sub: Any) -> None:
    from millstream.nexmark import QUERIES

    nx = sub.add_parser("nexmark", help="the Nexmark benchmark: generate events, run a query, measure")
    nsub = nx.add_subparsers(dest="nexmark_command", required=True)

    def config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--events", type=int, default=100_000, help="number of events (default 100,000)")
        sp.add_argument("--out-of-order", type=int, default=1, metavar="G",
                        help="permute the events inside groups of G (default 1: in event-time order)")

    # Two different rates (issue 10 §6): --event-rate is the generator's events per second of *event
    # time* (what the data says), --pace how fast a run releases its input in *wall-clock* time.
    # `generate --rate` and `run --rate` are their older names, kept as aliases.
    gen = nsub.add_parser("generate", help="write the generator's events as JSON lines, or into a topic")
    config(gen)
    gen.add_argument("--event-rate", "--rate", dest="event_rate", type=float, default=None, metavar="N",
                     help="events per second of EVENT time: the data set spans events / N seconds of event "
                     "time, however fast it is written (default 10,000; --rate is the older name)")
    gen.add_argument("--out", default=None, metavar="PATH|URL",
                     help="output file, or kafka://HOST:PORT/TOPIC?partitions=N (creates the topic with N "
                     "partitions if missing); default: standard output")

    run = nsub.add_parser("run", help="run one query over the generator, a JSON-lines file or a topic",
                          epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--query", required=True, choices=list(QUERIES))
    run.add_argument("--mode", choices=MODES, default="native", help="execution mode (default: native)")
    config(run)
    run.add_argument("--pace", "--rate", dest="pace", type=float, default=None, metavar="N",
                     help="release the input (the generator, a file or a topic) at most N events per second "
                     "of WALL-CLOCK time; event times are unchanged (default: as fast as possible; --rate is "
                     "the older name)")
    run.add_argument("--event-rate", type=int, default=10_000,
                     help="the generator's events per second of EVENT time (default 10,000); as generate's "
                     "--event-rate")
    run.add_argument("--input", default=None, metavar="PATH|URL",
                     help="read tagged events (from `nexmark generate`) from this JSON-lines file or "
                     "kafka://HOST:PORT/TOPIC (from the earliest offsets to the end at the start; options: "
                     "group=, start=, bounded=false) instead of the generator")
    run.add_argument("--out", default=None, metavar="PATH|URL",
                     help="write the result rows here as JSON lines (a directory of committed part files with "
                     "--guarantee exactly-once), or to kafka://HOST:PORT/TOPIC (transactional under "
                     "exactly-once) or postgresql://USER@HOST:PORT/DB?table=T[&mode=upsert&key=COLS]; "
                     "default: standard output")
    run.add_argument("--max-chunk", type=int, default=None,
                     help="most records read from a source at once (default: the mode's, 2,048 in native "
                     "mode, 100,000 in micro-batch, 1,000,000 in batch)")
    run.add_argument("--parallelism", type=int, default=1, metavar="N",
                     help="worker processes on this machine (default 1); see docs/scaling.md")
    _add_engine_options(run)
    run.add_argument("--splits", type=int, default=None, metavar="N",
                     help="logical splits of the generator or the --input file, read by the workers (each its "
                     "range of them); fixed for the life of a checkpoint directory (default: --parallelism)")
    run.add_argument("--guarantee", choices=GUARANTEES, default=None,
                     help="delivery guarantee across crashes (needs --checkpoint-dir)")
    run.add_argument("--checkpoint-dir", default=None,
                     help="take checkpoints here; running the same command again resumes")
    run.add_argument("--checkpoint-interval", type=int, default=1000, metavar="MS",
                     help="milliseconds between checkpoints (default 1000)")
    run.add_argument("--state", default="memory", metavar="URL",
                     help="keyed-state backend: memory (default) or lmdb:///path")
    run.add_argument("-q", "--quiet", action="store_true", help="print no summary")
    savepoint_option(run)
    progress_options(run)
    metrics_option(run)
    dashboard_options(run)
    run.add_argument("--log-level", choices=LOG_LEVELS, default="warning",
                     help="show millstream's messages of this level and above on stderr (default: warning)")

    bench = nsub.add_parser("bench", help="events per second of each query in each mode")
    bench.add_argument("--events", type=int, default=1_000_000, help="number of events (default 1,000,000)")
    bench.add_argument("--event-rate", type=int, default=10_000,
                       help="the generator's events per second of event time (default 10,000)")
    bench.add_argument("--queries", default=",".join(QUERIES), help="comma-separated queries (default: all)")
    bench.add_argument("--modes", default=",".join(MODES), help="comma-separated modes (default: all)")
    bench.add_argument("--inputs", default="generator,jsonl",
                       help="comma-separated, among generator (in-process), memory (made beforehand into a polars "
                       "DataFrame; dict rows for native), jsonl and parquet (files made beforehand); "
                       "default: generator,jsonl")
    bench.add_argument("--input", default=None, metavar="FILE",
                       help="the JSON-lines file of events to read (default: generated in a temporary directory)")
    bench.add_argument("--repeat", type=int, default=1, help="runs per figure; the best is kept (default 1)")
    bench.add_argument("--one-core", action="store_true",
                       help="one-core figures: pin this process to one CPU and set POLARS_MAX_THREADS=1")
    bench.add_argument("--cpu", type=int, default=None, metavar="N",
                       help="with --one-core, the CPU to pin to (default: the last one allowed)")
    bench.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON here")


def _cmd_nexmark(args: argparse.Namespace, console: Console) -> int:
    from millstream.nexmark import NexmarkConfig
    from millstream.nexmark import _cli as nx

    def split(text: str) -> list[str]:
        return [x.strip() for x in text.split(",") if x.strip()]

    if args.nexmark_command == "generate":
        rate = 10_000 if args.event_rate is None else int(args.event_rate)
        cfg = NexmarkConfig(events=args.events, rate=rate, out_of_order_group_size=args.out_of_order)
        n = nx.generate(cfg, args.out)
        if args.out is not None:
            from millstream.connectors import redact_url

            console.print(f"{n:,} events written to {redact_url(args.out)}", highlight=False)
        return 0
    if args.nexmark_command == "run":
        cfg = NexmarkConfig(events=args.events, rate=args.event_rate, out_of_order_group_size=args.out_of_order)
        control = JobControl()
        with progress_for(args, console) as shown, \
                _stop_on_signals(control, args.signals, savepoint=args.checkpoint_dir is not None):
            summary = nx.run(args.query, mode=args.mode, config=cfg, input=args.input, rate=args.pace,
                             out=args.out, guarantee=args.guarantee, checkpoint_dir=args.checkpoint_dir,
                             checkpoint_interval=args.checkpoint_interval, max_chunk=args.max_chunk,
                             state=args.state, checkpoint_key=_checkpoint_key(), metrics=args.metrics,
                             metrics_token=_metrics_token(), control=control, from_savepoint=args.from_savepoint,
                             parallelism=args.parallelism, splits=args.splits, **_engine_options(args),
                             **_dashboard_options(args), **shown)
        if not args.quiet:
            # the result rows go to stdout when there is no --out: the summary then goes to stderr
            summary_console(args.out is None).print(summary.describe(), highlight=False, soft_wrap=True)
        assert summary.result is not None
        _report_interruption(console, summary.result, args.checkpoint_dir)
        return _interrupted_status(args.signals) if summary.interrupted else 0
    events, rate = args.events, args.event_rate
    command = (f"millstream nexmark bench --events {events} --event-rate {rate} --queries {args.queries} "
               f"--modes {args.modes} --inputs {args.inputs} --repeat {args.repeat}"
               + (" --one-core" if args.one_core else "") + (f" --cpu {args.cpu}" if args.cpu is not None else ""))
    extra: dict[str, Any] = {"command": command, "repeat": args.repeat, "load_before": _loadavg()}
    if args.cpu is not None and not args.one_core:
        raise ConfigError("--cpu goes with --one-core")
    if args.one_core:
        info = nx.one_core(args.cpu)
        extra["one_core"] = info
        console.print(f"one core: pinned to CPU {info['cpu']}, POLARS_MAX_THREADS=1 (polars threads: "
                      f"{info['polars_threads']})", highlight=False)
    threads = "one core" if args.one_core else f"{os.cpu_count()} CPUs, polars default threads"
    title = f"Nexmark: {events:,} events ({rate:,} events/s of event time; {threads}; best of {args.repeat})"

    def progress(row: nx.BenchRow) -> None:
        console.print(f"  {row.query} {row.input} {row.mode}: {row.events_per_s:,.0f} events/s", highlight=False)

    def note(text: str) -> None:
        console.print(f"  ({text})", highlight=False)

    inputs = split(args.inputs)
    rows = nx.bench(events=events, event_rate=rate, queries=split(args.queries), modes=split(args.modes),
                    input=args.input, inputs=inputs, repeat=args.repeat, on_row=progress, on_note=note)
    extra["load_after"] = _loadavg()
    Console().print(nx.bench_table(rows, title=title))
    out = Console()
    for i in dict.fromkeys(inputs):
        out.print(f"{i}: {nx.INPUTS[i]}", highlight=False)
    out.print("(source only): the input read into a sink that counts, through the engine; "
              "(generator, no engine): the generator polled in a plain loop", highlight=False)
    out.print(f"load average (1, 5, 15 min): before {extra['load_before']}, after {extra['load_after']}",
              highlight=False)
    if args.json:
        nx.write_bench_json(args.json, rows, events=events, event_rate=rate, extra=extra)
    return 0


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    if args.version:
        from millstream import __version__

        print(f"millstream {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    level = logging.getLogger("millstream").level
    handler = _show_logs(getattr(args, "log_level", "warning"))
    try:
        with _sigterm_interrupts() as args.signals:
            if args.command == "run":
                return _cmd_run(args, console)
            if args.command == "plan":
                return _cmd_plan(args, console)
            if args.command == "nexmark":
                return _cmd_nexmark(args, console)
            return _cmd_demo(args, console)
    except KeyboardInterrupt as exc:  # before or after the run itself (loading the job, the summary)
        return INTERRUPTED[signal.SIGTERM] if isinstance(exc, _Terminated) else INTERRUPTED[signal.SIGINT]
    except MillstreamError as exc:
        if getattr(args, "debug", False) and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__)
        return _report_error(console, exc)
    finally:
        logging.getLogger("millstream").removeHandler(handler)
        logging.getLogger("millstream").setLevel(level)
