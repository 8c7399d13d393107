"""The command line: a thin layer over the ladder, the report and the experiments."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from workbench import __version__
from workbench.config import RunConfig, for_machine
from workbench.environment_check import install_hint
from workbench.errors import ResultFileError, StageSkipped, UsageError
from workbench.machine_lock import MachineLock
from workbench.results import STAGES_DIR, experiments_dir


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit status 2."""

    def error(self, message: str) -> None:
        print(f"workbench: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _option(field: dataclasses.Field) -> tuple[str, dict]:
    name = "--" + field.name.replace("_", "-")
    help_text = field.metadata.get("help", "")
    if field.type in ("bool", bool):
        return name, {"action": argparse.BooleanOptionalAction, "default": None, "help": help_text}
    kind = {"int": int, "float": float}.get(str(field.type), str)
    return name, {"type": kind, "default": None, "help": f"{help_text} (default: {field.default!r})"}


def add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run configuration (every RunConfig field)")
    for field in dataclasses.fields(RunConfig):
        name, kwargs = _option(field)
        group.add_argument(name, dest=f"cfg_{field.name}", **kwargs)


def overrides_from(args: argparse.Namespace) -> dict:
    return {key[4:]: value for key, value in vars(args).items() if key.startswith("cfg_") and value is not None}


def config_from(args: argparse.Namespace, base: dict | None = None) -> RunConfig:
    """RunConfig from machine defaults, then a resumed run's settings, then the command line."""
    cfg, line = for_machine(**{**(base or {}), **overrides_from(args)})
    if line:
        print(line, file=sys.stderr)
    return cfg


def cmd_stages(args: argparse.Namespace) -> int:
    from workbench.run.stages import STAGES

    width = max(len(s.name) for s in STAGES)
    for stage in STAGES:
        print(f"{stage.name:<{width}}  [{stage.kind}]  {stage.summary}")
    return 0


def _resumed(args: argparse.Namespace) -> dict | None:
    """What run.json recorded (config, stages, mode, processes): a resumed run measures exactly that."""
    if not args.resume:
        return None
    from workbench.names import check_run_name
    from workbench.results import RUN_FILE, read_run_file

    given = overrides_from(args)
    reports = given.pop("reports_dir", "reports")
    check_run_name(args.resume)
    if given:
        first = next(iter(given))
        raise UsageError(f"--resume {args.resume!r} measures with the run's own settings; drop "
                         f"--{first.replace('_', '-')} (or start a new run)")
    run_dir = Path(reports) / args.resume
    if run_dir.is_symlink() or not (run_dir / RUN_FILE).is_file():
        raise UsageError(f"--resume {args.resume!r}: no run found at {run_dir}; "
                         f"allowed: a folder name under {reports}/ holding {RUN_FILE}")
    run = read_run_file(run_dir)
    recorded = {"stages": run.get("stages") or None, "mode": run.get("mode", "ladder"), "nproc": run.get("nproc", 1)}
    _refuse_contradictions(args, recorded)
    return {"config": {**run["config"], "run_name": args.resume, "reports_dir": reports}, **recorded}


def _refuse_contradictions(args: argparse.Namespace, recorded: dict) -> None:
    from workbench.run.stages import select

    stages = recorded["stages"]
    if args.stages is not None and stages and [s.name for s in select(args.stages)] != stages:
        raise UsageError(f"--stages {args.stages!r} contradicts the run being resumed ({','.join(stages)}); "
                         "drop --stages to resume it as recorded")
    if args.ablation and recorded["mode"] != "ablation":
        raise UsageError(f"--ablation contradicts the run being resumed (a {recorded['mode']}); drop --ablation")
    if args.nproc is not None and args.nproc != recorded["nproc"]:
        raise UsageError(f"--nproc {args.nproc} contradicts the run being resumed (nproc={recorded['nproc']}); drop --nproc")


def cmd_run(args: argparse.Namespace) -> int:
    from workbench.launch import launchers, procs
    from workbench.launch.nodes import check as check_nodes
    from workbench.names import check_run_name
    from workbench.run import session as sessions
    from workbench.run.stages import select

    procs.stage_timeout_s()  # a bad WORKBENCH_STAGE_TIMEOUT_S is refused now, not after the baseline
    launchers.fork_server_wanted()  # so is a bad WORKBENCH_FORK_SERVER
    nodes = check_nodes(args.nnodes, args.node_rank, args.rdzv_endpoint, args.rdzv_timeout, args.torchrun_args)
    if not nodes.leader:
        return _follow(args, nodes)
    resumed = _resumed(args) or {}
    if args.overwrite and args.resume:
        raise UsageError("--overwrite and --resume contradict each other; choose one")
    cfg = _settled_across_nodes(config_from(args, resumed.get("config")), nodes)
    if cfg.run_name:
        check_run_name(cfg.run_name)
    stage_names = ",".join(resumed["stages"]) if resumed.get("stages") else args.stages
    stages = select(stage_names)
    mode = resumed.get("mode") or ("ablation" if args.ablation else "ladder")
    nproc = resumed.get("nproc") or (1 if args.nproc is None else args.nproc)
    budget = args.time_budget if args.time_budget is not None else resumed.get("time_budget_s", sessions.DEFAULT_TIME_BUDGET_S)
    sessions.check_time_budget(budget)  # refused now, not after waiting for the machine
    with MachineLock(f"workbench run {cfg.run_name or ''}".strip(), wait=not args.no_wait):
        link = _meet_the_other_nodes(cfg, nproc, nodes)
        try:
            session = sessions.start(cfg, mode, resume=bool(args.resume), sweep_workers=any(s.name == "dataloader" for s in stages),
                                     stages=[s.name for s in stages], nproc=nproc, overwrite=args.overwrite,
                                     time_budget_s=budget, nodes=nodes, link=link)
            code = _run_session(session, stage_names)
            if link is not None and code != 0:  # interrupted (130) or no baseline: the followers say so too
                link.finish(f"node 0 ended with exit status {code}"
                            + (" (interrupted; its finished stages are saved, resume there)" if code == 130 else ""))
            return code
        except BaseException as error:  # the other nodes hear why node 0 stopped, then leave
            if link is not None:
                link.finish(f"{type(error).__name__}: {error}"[:300])
            raise
        finally:
            if link is not None:
                link.finish()


def _meet_the_other_nodes(cfg: RunConfig, nproc: int, nodes):
    """Node 0 of several: the control store hosted, every node's settings checked (run/nodes.py)."""
    if not nodes.multi:
        return None
    from workbench.run import nodes as links

    _check_processes(cfg, nproc)  # before the others are waited for: a refusal here is ours alone
    link = links.host(nodes)
    print(f"node 0 of {nodes.nnodes}: waiting up to {nodes.timeout_s:g} s for the other nodes at {nodes.endpoint}",
          file=sys.stderr)
    links.check_in_leader(link, links.settings(cfg, nproc, nodes))
    return link


def _settled_across_nodes(cfg: RunConfig, nodes) -> RunConfig:
    """With several nodes, data=auto is settled on each node before the settings are compared, so
    nodes that would read different data are refused at the rendezvous instead of mixing it."""
    if not nodes.multi or cfg.data != "auto":
        return cfg
    from workbench.training.data import settled_without_download

    return cfg.with_overrides(data=settled_without_download(cfg.data, cfg.data_dir))


def _check_processes(cfg: RunConfig, nproc: int) -> None:
    from workbench.device import resolve_device_type
    from workbench.run.session import check_nproc

    check_nproc(nproc, resolve_device_type(cfg.device), can_launch=True)


def _follow(args: argparse.Namespace, nodes) -> int:
    """A node other than node 0: it follows node 0's rounds (run/follow.py) and writes no run folder."""
    from workbench.run.follow import follow
    from workbench.run.stages import select

    if args.resume:
        raise UsageError(f"--resume is node 0's; start node {nodes.node_rank} without it (it follows node 0's rounds)")
    select(args.stages)
    cfg = _settled_across_nodes(config_from(args), nodes)
    nproc = 1 if args.nproc is None else args.nproc
    _check_processes(cfg, nproc)
    if nodes.leader_here:  # node 0 on this machine holds its lock for both: waiting on it would never end
        print(f"node {nodes.node_rank}: node 0 is this machine ({nodes.host}) and holds its measuring lock; "
              "following under it", file=sys.stderr)
        return follow(cfg, nproc, nodes)
    with MachineLock(f"workbench run --node-rank {nodes.node_rank}", wait=not args.no_wait):
        return follow(cfg, nproc, nodes)


def _run_session(session, stage_names: str | None) -> int:
    from workbench.run import ladder
    from workbench.errors import SaveError

    try:
        finished = ladder.run_ladder(session, stage_names)
    except KeyboardInterrupt as stop:
        print(f"\ninterrupted: every finished stage is saved in {session.run_dir / STAGES_DIR}; "
              f"continue with: workbench run --resume {session.run_dir.name}", file=sys.stderr)
        return getattr(stop, "exit_code", 130)
    except SaveError as error:  # the measurement is not lost: it goes to stdout, the reason to stderr
        print(json.dumps(error.result, default=str, sort_keys=True))
        raise
    _print_summary(finished, session.run_dir)
    baseline = next((r for r in finished if r["stage"] == "baseline"), None)
    if baseline is not None and baseline["status"] != "baseline":
        print(f"workbench: the baseline did not run: {baseline['reason']}", file=sys.stderr)
        return 1
    return 0


def _print_summary(finished: list[dict], run_dir: Path) -> None:
    from workbench.report.summary import final_summary

    print(final_summary(finished))
    traces = [r["trace_file"] for r in finished if r.get("trace_file")]
    for trace in traces:
        print(f"trace: {trace}")
    if traces:
        print("open a trace: drag it into https://ui.perfetto.dev or chrome://tracing (gzip is fine), "
              "or run `make tensorboard` and open http://localhost:6006 -> PYTORCH_PROFILER")
    snapshots = [(r.get("metrics") or {}).get("memory_timeline", {}) or {} for r in finished]
    for path in [s["cuda_snapshot"] for s in snapshots if s.get("cuda_snapshot")]:
        print(f"memory snapshot: {path} (drag it into https://pytorch.org/memory_viz)")
    print(f"results: {run_dir / STAGES_DIR}/   report: workbench report {run_dir.name}")


def cmd_report(args: argparse.Namespace) -> int:
    from workbench.report.build import build_report

    run_dir = _run_dir(args.run, args.reports_dir)
    try:
        written = build_report(run_dir)
    except OSError as error:  # a read-only run folder, a full disk: no traceback, nothing half-written
        where = error.filename or run_dir
        raise UsageError(f"cannot write the report for {run_dir.name!r} to {where} ({error.strerror or error}); "
                         "allowed: a run folder you can write to") from None
    for path in written:
        print(path)
    return 0


def newest_run(reports_dir: str) -> Path | None:
    """The most recently written run folder (reports/latest, a link, is not a run of its own)."""
    from workbench.results import RUN_FILE

    runs = sorted((p for p in Path(reports_dir).glob(f"*/{RUN_FILE}") if not p.parent.is_symlink()),
                  key=lambda p: p.stat().st_mtime)
    return runs[-1].parent if runs else None


def _run_dir(run: str | None, reports_dir: str) -> Path:
    root = Path(reports_dir)
    if run is None:
        newest = newest_run(reports_dir)
        if newest is None:
            raise UsageError(f"no runs in {reports_dir}/; run `workbench run` (or make ladder) first")
        return newest
    from workbench.names import is_run_name
    from workbench.results import LATEST_LINK, RUN_FILE

    # A plain name (or `latest`, read through, never written through) is always a run under the
    # reports folder, never a same-named folder here.
    path = root / run if is_run_name(run) or run == LATEST_LINK else Path(run)
    if not (path / RUN_FILE).is_file():
        raise UsageError(f"run {run!r} not found (looked for {path}/{RUN_FILE}); allowed: a run folder under {reports_dir}/")
    return path


# `workbench compare` exit statuses, for CI: a regression is not the same thing as a broken file.
COMPARE_OK, COMPARE_REGRESSION, COMPARE_BAD_INPUT, COMPARE_INTERNAL_ERROR = 0, 1, 2, 3


def cmd_compare(args: argparse.Namespace) -> int:
    from workbench.report.compare import compare_runs, family_text, format_table, machine_differences

    if not 0 <= args.threshold < 1:
        raise UsageError(f"--threshold {args.threshold} is out of range; allowed: 0 <= threshold < 1 (0.03 is 3%)")
    run_a, run_b = _run_dir(args.run_a, args.reports_dir), _run_dir(args.run_b, args.reports_dir)
    if args.remeasure:
        return _remeasure(run_a, run_b, args)
    try:
        rows, regressed = compare_runs(run_a, run_b, metric=args.metric, threshold=args.threshold)
    except (ResultFileError, ValueError, KeyError, TypeError, AttributeError, OSError, ZeroDivisionError) as error:
        # A corrupt or truncated result file: say which error it was, with an exit status CI can tell apart.
        print(f"workbench: error: cannot compare {run_a} and {run_b}: a result file is unreadable or corrupt "
              f"({type(error).__name__}: {str(error)[:200]})", file=sys.stderr)
        return COMPARE_INTERNAL_ERROR
    differences = machine_differences(run_a, run_b)
    if args.json:
        print(json.dumps({"run_a": str(run_a), "run_b": str(run_b), "metric": args.metric,
                          "threshold": args.threshold, "regressed": regressed, "machine_differences": differences,
                          "rows": rows}, indent=2, default=str))
    else:
        if differences:
            print("note: the two runs did not run on the same machine and software, so a change below may be "
                  "the machine's, not the code's: " + "; ".join(differences))
        print(format_table(rows))
        family = max((row["speedup"].get("family", 1) for row in rows if row.get("speedup")), default=0)
        if family:
            print(f"speed rows: {family_text(family)}")
    if regressed:
        print(f"REGRESSION: {args.metric} got significantly worse (interval beyond {args.threshold:.0%})", file=sys.stderr)
    return COMPARE_REGRESSION if regressed else COMPARE_OK


def _remeasure(run_a: Path, run_b: Path, args: argparse.Namespace) -> int:
    """Both runs' final configurations measured again in paired rounds, here and now."""
    from workbench.run.remeasure import remeasure

    if args.rounds < 2:
        raise UsageError(f"--rounds {args.rounds} is too few; allowed: at least 2 (an interval needs two rounds)")
    with MachineLock(f"workbench compare --remeasure {run_a.name} {run_b.name}", wait=not args.no_wait):
        outcome = remeasure(run_a, run_b, args.rounds, args.threshold)
    if args.json:
        print(json.dumps({"run_a": str(run_a), "run_b": str(run_b), **outcome}, indent=2, default=str))
    else:
        print(outcome.get("text") or f"failed: {outcome.get('error')}")
    if outcome["regressed"]:
        print(f"REGRESSION: B's configuration is slower than A's beyond {args.threshold:.0%} "
              "(paired, same time window)", file=sys.stderr)
    return COMPARE_REGRESSION if outcome["regressed"] else COMPARE_OK


def _lines_target(args: argparse.Namespace, cfg_reports: str) -> str:
    """The run whose trace folders get the Python-level views: the named one, else the newest."""
    if args.cfg_run_name:
        from workbench.names import check_run_name

        return check_run_name(args.cfg_run_name)
    from workbench.run.session import default_run_name

    newest = newest_run(cfg_reports)
    return newest.name if newest else default_run_name()


def cmd_profile_lines(args: argparse.Namespace) -> int:
    try:
        from workbench.measure import pyprofile
    except ImportError as error:
        raise UsageError(f"profile-lines needs the profiler extras ({error}); "
                         f"install them: {install_hint('profilers')}") from None
    from workbench.device import decide, probe, resolve_device_type
    from workbench.measure.executor import build, warm_up
    from workbench.progress import Progress
    from workbench.results import stage_trace_dir
    from workbench.run.stages import StageContext, select
    from workbench.training import host_memory

    stage = select(args.stage)[-1]
    cfg = config_from(args)
    device_type = resolve_device_type(cfg.device)
    context = StageContext(device_type, decide(probe(device_type)), cfg.num_workers)
    cfg = stage.apply(cfg, context)
    out_dir = stage_trace_dir(Path(cfg.profiles_dir) / _lines_target(args, cfg.reports_dir), stage.name)
    try:
        host_memory.use(cfg.host_allocator)  # this command's own process is the measured one
    except RuntimeError as error:
        raise UsageError(f"host_allocator={cfg.host_allocator} cannot be set here ({error}); allowed: system") from None
    built = build(cfg)
    warm_up(built, Progress(stage.name))
    print(pyprofile.profile_lines(built, out_dir, args.steps).read_text())
    print(f"function profile (cProfile): {pyprofile.profile_functions(built, out_dir, args.steps)}")
    csv_path, png = pyprofile.profile_memory(built, out_dir, args.steps)
    print(f"line profile: {out_dir / 'line_profile.txt'}\nhost memory: {csv_path} and {png}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from workbench.experiments import run_experiment

    from workbench.names import run_folder

    cfg = config_from(args)
    cfg = cfg.with_overrides(run_name=_lines_target(args, cfg.reports_dir))
    out_dir = run_folder(cfg.reports_dir, cfg.run_name)
    print(f"experiment {args.name}: results in {experiments_dir(out_dir)}/, plots in {out_dir}/", file=sys.stderr)
    try:
        with MachineLock(f"workbench experiment {args.name}", wait=not args.no_wait):
            run_experiment(args.name, cfg, out_dir)
    except KeyboardInterrupt as stop:
        print(f"\ninterrupted: finished configurations are saved in {experiments_dir(out_dir)}/", file=sys.stderr)
        return getattr(stop, "exit_code", 130)  # 143 for SIGTERM
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from workbench.trace.explain import print_analysis  # reads files only: no torch import on this path

    print_analysis(args.paths, args.json)
    return 0


def _add_analyze(commands) -> None:
    analyze = commands.add_parser("analyze", help="breakdown and findings of any torch.profiler trace (or folder of them)")
    analyze.add_argument("paths", nargs="+", metavar="PATH", help="a .json/.json.gz trace, or a folder (one trace per rank)")
    analyze.add_argument("--json", action="store_true", help="print one JSON document (trace_summary.json + findings)")
    analyze.set_defaults(handler=cmd_analyze)


def _add_node_options(run: argparse.ArgumentParser) -> None:
    nodes = run.add_argument_group("several nodes (one `workbench run` per node; node 0 runs the ladder and "
                                   "holds the results)")
    nodes.add_argument("--nnodes", type=int, default=None, help="nodes in the run (default 1)")
    nodes.add_argument("--node-rank", type=int, default=None, help="this node: 0 runs the ladder, 1..nnodes-1 follow")
    nodes.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="node 0's address, the same on every node; "
                       "PORT and PORT+1 must be free there")
    nodes.add_argument("--rdzv-timeout", type=float, default=None, metavar="SECONDS", help="how long the nodes wait "
                       "for each other at the rendezvous and at each round (default 60)")
    nodes.add_argument("--torchrun-args", metavar="'FLAGS'", help="torchrun's own flags passed through, quoted "
                       "(e.g. '--local-addr 10.0.0.5'); not the ones the workbench sets")


def _add_no_wait(command: argparse.ArgumentParser) -> None:
    command.add_argument("--no-wait", action="store_true", help="refuse (exit 75) instead of waiting when another "
                         "measuring run holds this machine (two at once wreck each other's timings)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="workbench", description="Profiling-driven optimization workbench for PyTorch training loops.")
    parser.add_argument("--version", action="version", version=f"workbench {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    run = commands.add_parser("run", help="run the optimization ladder (or --ablation), one JSON per stage")
    run.add_argument("--stages", help="comma-separated stages to run (the baseline always runs first)")
    run.add_argument("--ablation", action="store_true", help="apply each stage alone to the baseline")
    run.add_argument("--resume", metavar="RUN", help="continue an interrupted run, keeping its finished stages")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run of the same name "
                     "(without it, an existing run is never overwritten)")
    run.add_argument("--nproc", type=int, default=None, help="processes per stage under torchrun with DDP "
                     "(gloo on CPU, NCCL on GPU); adds scaling efficiency and communication share")
    _add_node_options(run)
    run.add_argument("--time-budget", type=float, default=None, metavar="SECONDS", help="extra rounds for open "
                     "answers are spent only within this many seconds from the run's start, first where an interval "
                     "reaches the largest gain (default 480)")
    _add_no_wait(run)
    add_config_options(run)
    run.set_defaults(handler=cmd_run)
    commands.add_parser("stages", help="list the stages").set_defaults(handler=cmd_stages)
    lines = commands.add_parser("profile-lines", help="line_profiler and memory_profiler views of a stage")
    lines.add_argument("--stage", default="baseline", help="the stage to profile, applied alone to the baseline")
    lines.add_argument("--steps", type=int, default=10, help="training steps to profile")
    add_config_options(lines)
    lines.set_defaults(handler=cmd_profile_lines)
    experiment = commands.add_parser("experiment", help="one of the lab's experiments (or all), into a run folder")
    experiment.add_argument("name", help="workers, pipeline, precision, memory, matrix, compile, clipping, "
                            "memory_breakdown or all")
    _add_no_wait(experiment)
    add_config_options(experiment)
    experiment.set_defaults(handler=cmd_experiment)
    report = commands.add_parser("report", help="CSV, plots and optimization_report.md for a run")
    report.add_argument("run", nargs="?", help="run name or folder (default: the newest run)")
    report.add_argument("--reports-dir", default="reports")
    report.set_defaults(handler=cmd_report)
    compare = commands.add_parser("compare", help="per-stage verdicts between two runs, judged on each run's paired "
                                  "speedups; exit 0 no regression, 1 a significant regression, 2 bad input, "
                                  "3 a corrupt result file")
    compare.add_argument("run_a")
    compare.add_argument("run_b")
    compare.add_argument("--metric", default="throughput", choices=("throughput", "step_time", "peak_memory", "mfu"))
    compare.add_argument("--threshold", type=float, default=0.03, help="smallest relative slowdown counted as a "
                         "regression: speed regresses when its whole 95%% interval lies beyond it")
    compare.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    compare.add_argument("--remeasure", action="store_true", help="measure both runs' final configurations again, "
                         "here and now, in paired rounds (absolute figures in one time window)")
    compare.add_argument("--rounds", type=int, default=4, help="paired rounds for --remeasure")
    _add_no_wait(compare)
    compare.add_argument("--reports-dir", default="reports")
    compare.set_defaults(handler=cmd_compare)
    _add_analyze(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 1 baseline failed or regression, 2 bad input (one line), 74 a result
    could not be written, 130 Ctrl-C, 143 SIGTERM."""
    from workbench.launch import procs

    previous = procs.install_signal_handlers()
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except (UsageError, StageSkipped) as error:
        print(f"workbench: error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 2)
    except KeyboardInterrupt as stop:  # setup, report, anywhere: one line, no traceback
        code = getattr(stop, "exit_code", 130)
        print(f"\nworkbench: interrupted ({'SIGTERM' if code == 143 else 'Ctrl-C'}); nothing half-written was left",
              file=sys.stderr)
        return code
    finally:
        procs.restore_signal_handlers(previous)


if __name__ == "__main__":
    sys.exit(main())
