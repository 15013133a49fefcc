"""The ``flywheel`` command line: the verbs that need no Dagster.

flywheel init DIR [--force] [--agent]                    scaffold a project to start from
flywheel check [SPEC] [key.path=value ...] [--explain]   validate a spec and preflight it
flywheel run [--spec SPEC] [--set key=value ...]         the graph, then the flywheel
flywheel ui [--spec SPEC] [--port 3000]                  the Dagster UI on the same instance
flywheel summary [--spec SPEC] [--json]                  what the data plane holds now
flywheel lineage KEY [--spec SPEC] [--json]              a checkpoint, cycle, id, version or path
flywheel report [--spec SPEC] [--json] [--history]       the per-cycle table; why it is stuck
flywheel dedup INPUT --output DIR [--threshold T] [--strict]  dedup any JSONL/Parquet
flywheel dedup-repartition INDEX --partitions N          a dedup index's partitions, N ways
flywheel train STAGE [--spec SPEC] [--set key=value ...]  tokenizer|pack|pretrain|sft|eval
flywheel checkpoint VERSION [--spec SPEC] [--json]       what a checkpoint was trained from
flywheel postgres start|stop|status|url [--dir D] [--port P]  a PostgreSQL for Dagster's storage
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flywheel.core.spec import (
    SpecError,
    add_spec_arguments,
    env_overrides,
    load_spec,
    spec_path,
)


def _overrides(args: argparse.Namespace) -> list[str]:
    """``$FLYWHEEL_SET``'s overrides, then the command line's (a later one wins): so that
    ``FLYWHEEL_SET='["agent.seed=1"]' make demo`` runs what ``flywheel run --set`` would."""
    return [*env_overrides(), *args.overrides]


def _check(args: argparse.Namespace) -> int:
    if args.explain:
        from flywheel.core.explain import explain

        print("\n".join(explain()))
        return 0
    from flywheel.preflight import errors, preflight

    spec = load_spec(args.spec, _overrides(args))
    problems = preflight(spec)
    for problem in problems:
        print(problem)
    if errors(problems):
        n, where = len(errors(problems)), spec_path(args.spec)
        print(f"spec {spec.name!r} ({where}): {n} error(s) that would stop a run")
        return 1
    sources = ", ".join(f"{s.name} ({s.kind})" for s in spec.sources)
    warned = f" ({len(problems)} warning(s))" if problems else ""
    print(f"spec {spec.name!r} is valid{warned}: sources {sources}; data in {spec.data_dir}")
    return 0


def _init(args: argparse.Namespace) -> int:
    from flywheel.project.scaffold import SPEC, ScaffoldError, init_project

    try:
        written = init_project(Path(args.directory), force=args.force, agent=args.agent)
    except ScaffoldError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    root = Path(args.directory)
    print(f"flywheel init: wrote {len(written)} files into {root.resolve()}:")
    for path in written:
        print(f"  {path.relative_to(root)}")
    edit = "calculator.py" if args.agent else "data/"
    print(f"next: cd {root} && flywheel check && flywheel run   (edit {SPEC} and {edit} first)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from flywheel.project.runner import run

    spec_file = spec_path(args.spec)
    overrides = _overrides(args)
    load_spec(spec_file, overrides)  # a spec error stops here, before any process starts
    return run(spec_file, overrides, timeout_s=args.timeout, skip_base=args.skip_base)


def _ui(args: argparse.Namespace) -> int:
    from flywheel.project.runner import ui

    spec_file = spec_path(args.spec)
    overrides = _overrides(args)
    load_spec(spec_file, overrides)
    return ui(spec_file, overrides, host=args.host, port=args.port)


def _read_spec(args: argparse.Namespace) -> Any:
    """The spec the read-only verbs look at: with ``$FLYWHEEL_SET``'s overrides, so that
    ``flywheel run --set data_dir=...`` prints the summary and report of what it ran."""
    return load_spec(args.spec, env_overrides())


def _summary(args: argparse.Namespace) -> int:
    from flywheel.data.summary import summary

    rows = summary(_read_spec(args))
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print(_table(rows, ["product", "rows", "detail", "version"]))
    return 0


def _facts(
    args: argparse.Namespace,
    lookup: Callable[[Any], dict[str, Any]],
    render: Callable[[dict[str, Any]], list[str]],
) -> int:
    """Look something up in the catalog and print it (``--json`` or lines); unknown: exit 2."""
    from flywheel.core.catalog import Catalog

    spec = _read_spec(args)
    try:
        facts = lookup(Catalog.open(spec.catalog))
    except KeyError as exc:
        print(f"flywheel {args.command}: {exc.args[0]}", file=sys.stderr)
        return 2
    print(json.dumps(facts, indent=2, default=str) if args.json else "\n".join(render(facts)))
    return 0


def _lineage(args: argparse.Namespace) -> int:
    from flywheel.loop.report import lineage, lineage_lines

    spec = _read_spec(args)
    return _facts(args, lambda catalog: lineage(spec, args.key), lineage_lines)


def _report(args: argparse.Namespace) -> int:
    from flywheel.loop import report

    spec = _read_spec(args)
    if args.json:
        print(json.dumps(report.report_json(spec, args.history), indent=2, default=str))
        return 0
    rows = report.report_rows(spec)
    shown = [{k: _cell(v) for k, v in r.items()} for r in rows]
    columns = [*report.REPORT_COLUMNS, "accept_rate", *report.metric_columns(rows), "promoted"]
    print(_table(shown, columns) if rows else "no flywheel cycle has run yet")
    print("\n".join(report.report_footer(spec, args.history)))
    return 0


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)


def _train(args: argparse.Namespace) -> int:
    """Run one training-plane stage by hand, exactly as its Dagster asset does."""
    from flywheel.core import products as P

    spec = load_spec(args.spec, _overrides(args))
    if args.stage == "tokenizer":
        from flywheel.train.tokenizer import build_tokenizer

        artifact = build_tokenizer(spec, P.resolve_inputs(spec, P.TOKENIZER))
        print(f"tokenizer {artifact.version} at {artifact.path}")
        return 0
    if args.stage == "pack":
        from flywheel.train.packing import build_tokenized_dataset

        shards = build_tokenized_dataset(spec, P.resolve_inputs(spec, P.TOKENIZED))
        print(f"tokenized_dataset {shards.version}: {shards.num_rows} sequences at {shards.path}")
        return 0
    from flywheel.train.launch import run_stage

    return run_stage(args.stage, spec)


def _checkpoint(args: argparse.Namespace) -> int:
    return _facts(args, lambda catalog: catalog.checkpoint_lineage(args.version), _chain_lines)


def _chain_lines(facts: dict[str, Any]) -> list[str]:
    lines = []
    for row in facts["chain"]:
        inputs = ", ".join(f"{k}={v}" for k, v in row["inputs"].items())
        lines.append(f"{row['stage']:>8} {row['checkpoint']}  <- {inputs}")
    for version, n in facts["training_documents"].items():
        lines.append(f"{'':>8} {n} training documents in tokenized_dataset {version}")
    return lines


def _postgres(args: argparse.Namespace) -> int:
    """The URL goes to stdout alone (``export FLYWHEEL_POSTGRES_URL=$(flywheel postgres url)``);
    what happened goes to stderr."""
    from flywheel.project import postgres

    directory = Path(args.dir or spec_path().parent / ".flywheel" / "postgres")
    try:
        if args.action == "start":
            server = postgres.start(directory, args.port)
            print(f"flywheel postgres: running from {server.directory}", file=sys.stderr)
            print(server.libpq_url if args.libpq else server.url)
            return 0
        if args.action == "stop":
            stopped = postgres.stop(directory)
            print(f"flywheel postgres: {'stopped' if stopped else 'not running'}", file=sys.stderr)
            return 0
        server = postgres.status(directory)
    except postgres.PostgresError as exc:
        print(f"flywheel postgres: {exc}", file=sys.stderr)
        return 2
    if server is None:
        print(f"flywheel postgres: no server running from {directory.resolve()}", file=sys.stderr)
        return 1
    url = server.libpq_url if args.libpq else server.url
    print(url if args.action == "url" else f"running: {url} ({server.directory})")
    return 0


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, "-" * len(line), *body])


def build_parser() -> argparse.ArgumentParser:
    from flywheel.data.dedup.cli import register as register_dedup
    from flywheel.data.dedup.compact import register as register_dedup_compact
    from flywheel.data.dedup.repartition import register as register_dedup_repartition

    parser = argparse.ArgumentParser(prog="flywheel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init", help="scaffold a working flywheel project in a directory")
    init.add_argument("directory", help="where to write it (created if missing)")
    init.add_argument("--force", action="store_true", help="overwrite files that exist")
    init.add_argument(
        "--agent",
        action="store_true",
        help="an agent project: an environment with a tool (calculator.py) instead of data",
    )
    init.set_defaults(func=_init)

    run = sub.add_parser("run", help="materialize the graph, then turn the flywheel until it stops")
    add_spec_arguments(run, required=False)
    run.add_argument("--timeout", type=float, help="give up on the cycles after this many seconds")
    run.add_argument("--skip-base", action="store_true", help="start at the cycles")
    run.set_defaults(func=_run)

    ui = sub.add_parser("ui", help="the Dagster UI on the instance flywheel run writes to")
    add_spec_arguments(ui, required=False)
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=_ui)

    check = sub.add_parser(
        "check",
        help="validate a spec, then preflight it: paths, imports, references, data samples",
    )
    check.add_argument(
        "spec", nargs="?", help="spec file (default $FLYWHEEL_SPEC or flywheel.yaml)"
    )
    check.add_argument("overrides", nargs="*", help="typed overrides, e.g. dedup.threshold=0.9")
    check.add_argument("--explain", action="store_true", help="list every field and its default")
    check.set_defaults(func=_check)

    for name, func, helptext in [
        ("summary", _summary, "row counts, keep and dedup rates of the data products"),
        ("lineage", _lineage, "what fed a checkpoint or cycle; where a document came from"),
        ("report", _report, "the flywheel's per-cycle table: data, eval metrics, promotion"),
    ]:
        p = sub.add_parser(name, help=helptext)
        if name == "lineage":
            p.add_argument(
                "key",
                help="a cycle number, a checkpoint or artifact version, a generation or doc "
                "id, a source record's own id (or SOURCE:ID), a source file or an artifact "
                "directory",
            )
        if name == "report":
            p.add_argument(
                "--history", action="store_true", help="also every failure a rerun resolved"
            )
        p.add_argument("--spec", help="spec file (default $FLYWHEEL_SPEC or flywheel.yaml)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)

    train = sub.add_parser("train", help="run a training-plane stage without Dagster")
    train.add_argument("stage", choices=["tokenizer", "pack", "pretrain", "sft", "eval"])
    add_spec_arguments(train, required=False)
    train.set_defaults(func=_train)

    ckpt = sub.add_parser("checkpoint", help="a checkpoint's parents, inputs and documents")
    ckpt.add_argument("version")
    ckpt.add_argument("--spec", help="spec file (default $FLYWHEEL_SPEC or flywheel.yaml)")
    ckpt.add_argument("--json", action="store_true", help="machine-readable output")
    ckpt.set_defaults(func=_checkpoint)

    pg = sub.add_parser("postgres", help="a PostgreSQL server for Dagster's storage, on loopback")
    pg.add_argument("action", choices=["start", "stop", "status", "url"])
    pg.add_argument("--dir", help="its directory (default: .flywheel/postgres by the spec)")
    pg.add_argument("--port", type=int, help="start: this port (default: the last, else free)")
    pg.add_argument("--libpq", action="store_true", help="the URL for psql (no SQLAlchemy driver)")
    pg.set_defaults(func=_postgres)

    register_dedup(sub)
    register_dedup_compact(sub)
    register_dedup_repartition(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SpecError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"flywheel {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
