"""The ``searchmerge`` command: thin subcommands over the Python API.

Each subcommand parses its flags and calls one library function; everything here
can be done from Python too. Problems with the user's input are printed as one
``searchmerge: error: ...`` line with a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from searchmerge.cli.progress import TerminalProgress, log_to_stderr
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.redact import redact

#: Exit status of ``drift-check`` when a model of the deployed plan misses its target
#: (0: the plan still holds; 2 stays "bad input"), so that a script or cron job can act on it.
EXIT_DRIFT_MISSES = 3
#: Exit status of ``confirm`` when full retraining from the originals does not confirm the plan.
EXIT_NOT_CONFIRMED = 3


def _is_study_file(argument: str) -> bool:
    return argument.endswith((".yaml", ".yml")) or Path(argument).is_file()


def load_workload_argument(arguments: Sequence[str]):  # type: ignore[no-untyped-def]
    """A study file, or a list of architecture names / factory paths."""
    from searchmerge.config.study import read_study_file
    from searchmerge.config.workload import from_models

    if len(arguments) == 1 and _is_study_file(arguments[0]):
        return read_study_file(arguments[0]).workload
    study_files = [a for a in arguments if _is_study_file(a)]
    if study_files:
        raise SearchmergeError(f"give either one study file or model names, not both ({study_files[0]!r})")
    return from_models(arguments)


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return sizes


def cmd_analyze(args: argparse.Namespace) -> int:
    workload = load_workload_argument(args.models)  # validated before torch is imported

    from searchmerge.analysis import analyze
    from searchmerge.cli.report import format_analysis

    batch_sizes = args.batch_sizes if args.activations else []
    if batch_sizes and not args.json:
        print(f"measuring activation memory at batch sizes {batch_sizes} ...", file=sys.stderr, flush=True)
    result = analyze(workload, share_norm=args.share_norm, batch_sizes=batch_sizes, device=args.device)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_analysis(result, max_groups=args.max_groups))
    return 0


#: Progress lines to stderr; on a terminal, counted work (prepare's training, search's trials) draws a bar too.
_say = TerminalProgress()


def _open_study(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from searchmerge.config.study import open_study_file

    return open_study_file(args.study, storage=args.storage, blob_dir=args.blob_dir, target=getattr(args, "target", None))


def cmd_prepare(args: argparse.Namespace) -> int:
    from searchmerge.training.prepare import prepare_study

    study = _open_study(args)
    prepared = prepare_study(study, force=args.force, progress=_say)
    for name, baseline in prepared.baselines.items():
        print(f"{name}: val {baseline.val_accuracy:.3f}, test {baseline.test_accuracy:.3f}"
              f" {prepared.kinds[name].metric_name}"
              f" (checkpoint {baseline.checkpoint_id})")
    print(f"originals stored in {study.storage}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from searchmerge.training.evaluate import evaluate_plan

    study = _open_study(args)
    evaluation, checkpoint = evaluate_plan(study, args.share, seed=args.seed, progress=None if args.json else _say)
    if args.json:
        print(json.dumps({**evaluation.to_dict(), "checkpoint": checkpoint}, indent=2))
    else:
        from searchmerge.cli.report import format_evaluation

        saved_bound = evaluation.saved_bytes if args.share == "all" else None
        print(format_evaluation(evaluation, bound_saved_bytes=saved_bound, checkpoint=checkpoint))
    return 0


def _search_for(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from searchmerge.search.merge_search import open_search

    study = _open_study(args)
    return open_search(
        study,
        strategy=args.strategy,
        study_name=args.study_name,
        seed=args.seed,
        heartbeat_interval=args.heartbeat,
        progress=_say,
    )


def cmd_search(args: argparse.Namespace) -> int:
    from searchmerge.cli.report import format_search

    if getattr(args, "jobs", False):
        return cmd_job_worker(args)
    search = _search_for(args)
    search.run(args.n_trials)
    print(format_search(search, max_rows=10))
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from searchmerge.training.labelling import label

    run = label(Path(args.source), Path(args.teacher), Path(args.out), stride=args.stride, threshold=args.threshold,
                progress=_say)
    print(f"{run.path}: {run.frames} frames labelled, {run.boxes} boxes ({run.labelled} frames now, at"
          f" {run.frames_per_second:.1f} frames/s)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from searchmerge.cli.report import format_search, plot_searches
    from searchmerge.search.merge_search import load_search, searchmerge_studies

    study = _open_study(args)
    names = [args.study_name] if args.study_name else searchmerge_studies(study)
    if not names:
        raise SearchmergeError(f"no searchmerge study for {study.workload.name!r} in {study.storage}; run 'search' first")
    searches = [load_search(study, study_name=name) for name in names]
    for search in searches:
        print(format_search(search))
        print()
    for path in plot_searches(searches, args.out):
        print(f"wrote {path}")
    if args.export:
        from searchmerge.search.selection import select_search

        chosen = select_search(study, args.study_name, progress=_say)
        print(f"exported the best plan of {chosen.study_name!r} to {chosen.export_best(args.export)}")
    return 0


def cmd_drift_check(args: argparse.Namespace) -> int:
    from searchmerge.cli.report import format_drift_check
    from searchmerge.search.drift_check import drift_check

    study = _open_study(args)
    check = drift_check(study, args.data, study_name=args.study_name, progress=None if args.json else _say)
    if args.json:
        print(json.dumps(check.to_dict(), indent=2))
    else:
        storage = [f"--{flag.replace('_', '-')}={value}" for flag in ("storage", "blob_dir")
                   if (value := getattr(args, flag)) is not None]
        print(format_drift_check(check, study.path, options=storage))
    return EXIT_DRIFT_MISSES if check.missing else 0


def cmd_research(args: argparse.Namespace) -> int:
    from searchmerge.cli.report import format_search
    from searchmerge.config.study import open_study_file
    from searchmerge.search.research import research
    from searchmerge.search.selection import select_search

    parent_file = None
    storage, blob_dir = args.storage, args.blob_dir
    if args.parent_study_file:
        # The re-search lives with its parent: the parent's storage, unless --storage says otherwise.
        parent_file = open_study_file(args.parent_study_file, storage=storage, blob_dir=blob_dir)
        storage, blob_dir = parent_file.storage, blob_dir or parent_file.store.blob_location
    study = open_study_file(args.study, storage=storage, blob_dir=blob_dir)
    parent_study = args.from_study or select_search(parent_file or study, progress=_say).study_name
    search = research(
        study, scenario=args.data, parent_file=parent_file, parent_study=parent_study, strategy=args.strategy,
        n_trials=args.n_trials, study_name=args.study_name, seed=args.seed, heartbeat_interval=args.heartbeat,
        progress=_say,
    )
    print(format_search(search, max_rows=10))
    return 0


def cmd_confirm(args: argparse.Namespace) -> int:
    from searchmerge.search.confirmation import confirm
    from searchmerge.search.selection import select_search

    study = _open_study(args)
    search = select_search(study, args.study_name, progress=_say)
    trial = search.trial(args.trial) if args.trial is not None else None
    done = confirm(search, trial, progress=None if args.json else _say)
    if args.json:
        print(json.dumps({"study": done.study_name, "trial": done.trial, "confirmed": done.confirmed,
                          "checkpoint": done.checkpoint, "from_store": done.from_store,
                          "evaluation": done.evaluation.to_dict()}, indent=2))
    else:
        print(done.describe())
    return 0 if done.confirmed else EXIT_NOT_CONFIRMED


def cmd_export(args: argparse.Namespace) -> int:
    from searchmerge.search.confirmation import confirm
    from searchmerge.search.merge_search import CONFIRMED_ATTR
    from searchmerge.search.selection import select_search

    study = _open_study(args)
    if args.plan is not None:
        return _export_plan(args, study)
    search = select_search(study, args.study_name, progress=_say)
    trial = search.trial(args.trial) if args.trial is not None else None
    chosen = trial or search.best()
    if args.confirm and chosen is not None:
        done = confirm(search, chosen, progress=_say)
        _say(done.describe())
        if not done.confirmed:
            raise SearchmergeError(
                f"trial {chosen.number} of {search.study_name!r} failed confirmation by full retraining from the"
                " originals; nothing exported (export it without --confirm to have it anyway, or pick another --trial)"
            )
    directory = search.export(args.out, trial)
    assert chosen is not None  # export refused a search without a feasible plan
    confirmed = search.trial_attributes(chosen.number).get(CONFIRMED_ATTR)
    verdict = {True: "confirmed by full retraining", False: "FAILED confirmation by full retraining",
               None: f"not confirmed: searchmerge confirm {study.path} --study-name {search.study_name}"
                     f" --trial {chosen.number}"}[confirmed]
    print(f"exported trial {chosen.number} of {search.study_name!r} ({'feasible' if chosen.feasible else 'INFEASIBLE'},"
          f" {len(chosen.plan)} shared group(s), saves {chosen.saved_bytes / 1e6:.3f} MB; {verdict}) to {directory}")
    return 0


def cmd_store_gc(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from searchmerge.search.merge_search import referenced_checkpoints
    from searchmerge.service.cloud.versions import (
        artifact_store,
        collect_deployment_garbage,
    )

    study = _open_study(args)
    keep = referenced_checkpoints(study.storage) if args.records else None
    min_age = timedelta(hours=args.min_age_hours)
    done = study.store.collect_garbage(keep=keep, min_age=min_age, dry_run=args.dry_run)
    verb = "would remove" if done.dry_run else "removed"
    print(f"{verb} {len(done.records)} unreferenced record(s) and {len(done.blobs)} unused blob(s)"
          f" ({done.bytes_freed / 1e6:.3f} MB) from {study.store.blob_location}")
    # The published versions' blobs: those no version names (a publish killed before its row).
    deployments = collect_deployment_garbage(study, min_age=min_age, dry_run=args.dry_run)
    print(f"{verb} {len(deployments)} deployment blob(s) that no published version names from"
          f" {artifact_store(study).location}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from searchmerge.cli.edgebox import profile_study

    profile = profile_study(args.study, args.plan, storage=args.storage, blob_dir=args.blob_dir,
                            study_name=args.study_name, device=args.device, link_bytes_per_s=args.link_bandwidth,
                            repeats=args.repeats, progress=_say)
    path = profile.save(args.out)
    plans = ", ".join(f"{p.name} ({p.layout.resident_bytes / 1e6:.1f} MB)" for p in profile.plans)
    print(f"wrote {path}: {len(profile.models)} models measured on {profile.device}; plans {plans}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from searchmerge.cli.edgebox import (
        deploy_settings,
        format_simulation,
        simulate_study,
        write_figures,
    )

    settings = deploy_settings(args.study, gpu_memory=args.gpu_memory, fps=args.fps, sla_ms=args.sla_ms,
                               seconds=args.seconds, policy=args.policy, swap=args.swap)
    report = simulate_study(args.study, settings, plans=args.plan, profile=args.profile, storage=args.storage,
                            blob_dir=args.blob_dir, study_name=args.study_name, progress=_say)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_simulation(report))
    for path in write_figures(report, args.out):
        _say(f"wrote {path}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import optuna_dashboard

    from searchmerge.storage.store import CheckpointStore

    if args.study:  # the file's storage: unless --storage overrides it, as for every command
        from searchmerge.config.study import read_study_file

        storage = read_study_file(args.study, storage=args.storage).storage
    elif args.storage is None:
        raise SearchmergeError("give a study file or --storage URL")
    else:
        storage = args.storage
    # The trials' artifacts (per-model tables, deployment manifests) live beside the checkpoint blobs.
    is_sqlite_file = storage.startswith("sqlite:///") and storage != "sqlite:///:memory:"
    artifacts = CheckpointStore.for_storage(storage, args.blob_dir).artifacts if is_sqlite_file or args.blob_dir else None
    print(f"optuna-dashboard for {storage} on http://{args.host}:{args.port}/ (Ctrl-C stops it)"
          + ("" if artifacts is not None else "; give --blob-dir to see the trials' artifacts"), flush=True)
    optuna_dashboard.run_server(storage, host=args.host, port=args.port, artifact_store=artifacts)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from searchmerge.service.cloud.server import serve
    from searchmerge.service.cloud.service import ServiceSettings

    signing_key = args.signing_key or os.environ.get("SEARCHMERGE_SIGNING_KEY")
    settings = ServiceSettings(parent_study=args.study_name, research_trials=args.research_trials, window=args.window,
                               min_samples=args.min_samples, max_upload_bytes=args.max_upload_bytes,
                               max_sample_bytes=args.max_sample_bytes, research_samples=args.research_samples,
                               heartbeat_interval=args.heartbeat, job_attempts=args.job_attempts,
                               samples_per_minute=args.samples_per_minute,
                               drift_min_edges=args.drift_min_edges, drift_edge_share=args.drift_edge_share,
                               max_jobs_per_hour=args.max_jobs_per_hour, run_jobs=not args.no_jobs,
                               signing_key=Path(signing_key) if signing_key else None)
    log_to_stderr()  # the service logs through logging: time, level, message
    serve(_open_study(args), settings, host=args.host, port=args.port,
          tls_cert=Path(args.tls_cert) if args.tls_cert else None, tls_key=Path(args.tls_key) if args.tls_key else None)
    return 0


def cmd_job_worker(args: argparse.Namespace) -> int:
    import os

    from searchmerge.service.cloud.worker import run_worker
    from searchmerge.service.signing import Signer

    signing_key = args.signing_key or os.environ.get("SEARCHMERGE_SIGNING_KEY")
    signer = Signer.load(Path(signing_key)) if signing_key else None
    log_to_stderr()  # like serve: time, level, message
    run_worker(_open_study(args), heartbeat_interval=args.heartbeat, job_attempts=args.job_attempts, signer=signer,
               poll=args.poll)
    return 0


def cmd_keys_init(args: argparse.Namespace) -> int:
    from searchmerge.service.signing import Signer, init_keys

    private, public = init_keys(Path(args.dir), overwrite=args.overwrite)
    print(f"made signing key {Signer.load(private).key_id}: {private} (private: give it to 'searchmerge serve"
          f" --signing-key' only) and {public} (public: give it to every edge as 'searchmerge edge --trust')")
    return 0


def cmd_keys_sign(args: argparse.Namespace) -> int:
    from searchmerge.service.cloud.db import open_engine
    from searchmerge.service.cloud.versions import sign_versions
    from searchmerge.service.signing import Signer

    study = _open_study(args)
    signer = Signer.load(Path(args.signing_key))
    signed = sign_versions(open_engine(study.storage), study, signer, numbers=args.version or None)
    for info in signed:
        print(f"signed version {info.version} (trial {info.trial} of {info.source_study!r}, manifest"
              f" {info.manifest_sha256[:16]}...) with key {signer.key_id}")
    if not signed:
        print(f"every version was signed by key {signer.key_id} already")
    return 0


def cmd_edge_token(args: argparse.Namespace) -> int:
    from searchmerge.service.cloud.tokens import create_edge_token

    study = _open_study(args)
    token = create_edge_token(study.storage, study.workload.name, args.name)
    _say(f"token of edge {args.name!r} for deployment {study.workload.name!r} (shown once; only its hash is stored):")
    print(token)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from searchmerge.service.cloud.db import open_engine
    from searchmerge.service.cloud.versions import rollback

    study = _open_study(args)
    version = rollback(open_engine(study.storage), study.workload.name, args.version)
    print(f"version {version.version} (trial {version.trial} of {version.source_study!r}) is current again and"
          f" pinned (versions published later wait for 'searchmerge unpin {study.path}'); the edges switch back at"
          " their next poll")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from searchmerge.service.cloud.db import open_engine
    from searchmerge.service.cloud.jobs import list_jobs, requeue_job

    if args.n_trials is not None and args.requeue is None:
        raise SearchmergeError("--n-trials goes with --requeue J (the job whose re-search runs more trials)")
    study = _open_study(args)
    engine = open_engine(study.storage)
    if args.requeue is not None:
        job = requeue_job(engine, study.workload.name, args.requeue, n_trials=args.n_trials)
        print(f"job {job.id} ({job.study_name!r}, up to {job.n_trials} trials) is queued again; the service or a"
              " worker resumes its re-search and puts its best plan to the publish gate once more")
        return 0
    found = list_jobs(engine, study.workload.name)
    if args.json:
        print(json.dumps([job.model_dump(mode="json") for job in found], indent=2))
        return 0
    if not found:
        print(f"deployment {study.workload.name!r} has no re-search jobs")
    for job in found:
        version = f", version {job.version}" if job.version is not None else ""
        print(f"job {job.id}: {job.state}{version}, {job.study_name!r} on {job.scenario}, {job.n_trials} trials,"
              f" {job.attempts} attempts, detected {job.detected_at:%Y-%m-%d %H:%M:%S} UTC"
              + (f": {job.message}" if job.message else ""))
    return 0


def cmd_unpin(args: argparse.Namespace) -> int:
    from searchmerge.service.cloud.db import open_engine
    from searchmerge.service.cloud.versions import pinned_version, unpin

    study = _open_study(args)
    engine = open_engine(study.storage)
    pinned = pinned_version(engine, study.workload.name)
    current = unpin(engine, study.workload.name)
    if pinned is None:
        print("no version was pinned")
    print(f"current version: {current.version if current else 'none'} (the newest not rolled back); the edges switch"
          " at their next poll")
    return 0


def cmd_edge(args: argparse.Namespace) -> int:
    from searchmerge.config.deploy import parse_bytes
    from searchmerge.service.edge.agent import EdgeAgent, EdgeSettings

    token = _edge_token(args)
    settings = EdgeSettings(
        state_dir=Path(args.state_dir), streams=tuple(args.streams or ()), fps=args.fps, sample_every=args.sample_every,
        poll_seconds=args.poll, gpu_memory=args.gpu_memory, device=args.device, drift=args.drift,
        drift_after=args.drift_after, duration=args.duration,
        predictions=Path(args.predictions) if args.predictions else None,
        metrics_host=args.metrics_host, metrics_port=args.metrics_port, threads=args.threads,
        keep_versions=args.keep_versions, predictions_backups=args.predictions_backups, stale_after=args.stale_after,
        predictions_max_bytes=parse_bytes(args.predictions_max_size, "--predictions-max-size"),
        trust=Path(args.trust) if args.trust else None, allow_unsigned=args.allow_unsigned,
        allow_factories=tuple(args.allow_factory or ()), ca_file=Path(args.ca_file) if args.ca_file else None,
        allow_insecure=args.allow_insecure,
    )
    log_to_stderr()  # the edge logs through logging: time, level, message
    agent = EdgeAgent(args.server, token, settings)
    try:
        agent.run()
    finally:
        agent.stop()
    return 0


def _edge_token(args: argparse.Namespace) -> str:
    """The edge's token: from --token-file, $SEARCHMERGE_EDGE_TOKEN, or (with a warning) --token."""
    import os

    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise SearchmergeError(f"cannot read the token file {args.token_file!r}: {exc.strerror or exc}") from None
        if not token:
            raise SearchmergeError(f"the token file {args.token_file!r} is empty")
        return token
    if args.token:
        _say("warning: --token is visible to every user of this machine (ps, /proc); use --token-file or"
             " $SEARCHMERGE_EDGE_TOKEN")
        return str(args.token)
    token = os.environ.get("SEARCHMERGE_EDGE_TOKEN", "").strip()
    if not token:
        raise SearchmergeError("give the edge's token with --token-file FILE or $SEARCHMERGE_EDGE_TOKEN")
    return token


def _add_study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", metavar="STUDY.yaml", help="a study file with tasks per model (see studies/)")
    parser.add_argument("--storage", default=None,
                        help="storage URL (default: sqlite:///NAME.db in the working directory)")
    parser.add_argument("--blob-dir", default=None,
                        help="folder for checkpoint files (default: next to a SQLite file; required otherwise)")


def _add_run_arguments(parser: argparse.ArgumentParser, *, n_trials: int, study_name: str) -> None:
    """The flags of every command that runs a study: strategy, trials, name, seed, heartbeat."""
    from searchmerge.search.strategies import STRATEGIES

    parser.add_argument("--strategy", choices=STRATEGIES, default="greedy", help="how plans are proposed")
    parser.add_argument("--n-trials", type=_n_trials, default=n_trials,
                        help="finished (complete or pruned) trials the study should have in total"
                        " (default: %(default)s)")
    parser.add_argument("--study-name", default=None, help=study_name)
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler and the retraining")
    parser.add_argument("--heartbeat", type=int, default=10, metavar="SECONDS",
                        help="heartbeat of running trials; a trial silent for twice this is failed and retried")


def _add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """The plans of ``profile`` and ``simulate``, and the search that 'best' comes from."""
    parser.add_argument("--plan", action="append", default=None, metavar="PLAN",
                        help="none, all, best (the search's best feasible plan) or comma-separated group names;"
                        " repeat to compare (default: none, best when a search has one, all)")
    parser.add_argument("--study-name", default=None, help="the search whose best plan 'best' is"
                        " (default: the search with the best feasible plan, see docs/cli.md)")


def _share_or_off(text: str) -> float | None:
    """A share in (0, 1], or ``off``; checked while parsing."""
    return None if text.strip().lower() == "off" else _fraction(text, "the share")


def _n_trials(text: str) -> int:
    """Checked while parsing, so that a bad count fails before the originals are prepared."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"n-trials must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"n-trials must be at least 1, got {value}")
    return value


def _target(text: str) -> float:
    return _fraction(text, "target")


def _fraction(text: str, what: str) -> float:
    """A number in (0, 1], or an argparse error naming ``what``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{what} must be in (0, 1], got {text!r}")
    return value


def _quiet_optuna() -> None:
    """searchmerge prints its own progress line per trial; Optuna's INFO lines would repeat them."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="searchmerge", description="Merge the layers that several vision models have in common."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in _COMMANDS:
        add_command(commands)
    return parser


def _add_analyze(commands: argparse._SubParsersAction) -> None:
    analyze = commands.add_parser(
        "analyze",
        help="which layers could these models share, and how much memory would that save",
        description="Find the shareable layer groups of a workload and account for its memory.",
    )
    analyze.add_argument("models", nargs="+", metavar="MODEL|STUDY.yaml", help="torchvision names, "
                         "'package.module:factory' paths, or one YAML study file")
    analyze.add_argument("--share-norm", action="store_true", help="share normalisation layers too")
    analyze.add_argument("--activations", action="store_true", help="also measure activation (run) memory")
    analyze.add_argument("--batch-sizes", type=_batch_sizes, default=[1, 2, 4], metavar="1,2,4",
                         help="batch sizes for --activations (default 1,2,4)")
    analyze.add_argument("--device", default=None, help="device for --activations (default: cuda if present)")
    analyze.add_argument("--max-groups", type=int, default=20, help="groups listed in the text output")
    analyze.add_argument("--json", action="store_true", help="print one JSON document")
    analyze.set_defaults(handler=cmd_analyze)


def _add_prepare(commands: argparse._SubParsersAction) -> None:
    prepare = commands.add_parser(
        "prepare",
        help="check and store the original models of a study file and their baselines",
        description="Load each model with its weights and check it against its data (a digits-demo model without"
        " weights: pretrain each architecture, fine-tune one copy per camera task), then store the originals and"
        " their baseline metric on val and test. Already stored originals are reused unless --force.",
    )
    _add_study_arguments(prepare)
    prepare.add_argument("--force", action="store_true", help="retrain even if the originals are stored")
    prepare.set_defaults(handler=cmd_prepare)


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="retrain a sharing plan and tell whether every model keeps its accuracy",
        description="Merge the models by a plan, retrain them jointly on a subsample with early exit, and report"
        " per-model accuracy, feasibility, memory and cost. Prepares the originals first if needed.",
    )
    _add_study_arguments(evaluate)
    evaluate.add_argument("--share", default="none", metavar="none|all|GROUP,...",
                          help="the plan: none, all, or comma-separated group names (see 'analyze')")
    evaluate.add_argument("--target", type=_target, default=None, help="override the study's accuracy target")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the retraining")
    evaluate.add_argument("--json", action="store_true", help="print one JSON document")
    evaluate.set_defaults(handler=cmd_evaluate)


def _add_search(commands: argparse._SubParsersAction) -> None:
    """``search`` and ``worker``: the same command under two names."""
    for command, text in (
        ("search", "search for the sharing plan that saves the most memory while every model keeps its target"),
        ("worker", "the same as 'search': run one more worker on a shared (PostgreSQL) study"),
    ):
        search = commands.add_parser(
            command,
            help=text,
            description=text + ". Running the same command again resumes the study; the run stops when the study"
            " has N finished (complete or pruned) trials in total.",
        )
        _add_study_arguments(search)
        _add_run_arguments(search, n_trials=20, study_name="default: WORKLOAD-STRATEGY")
        search.set_defaults(handler=cmd_search)
        if command == "worker":
            _add_job_worker_arguments(search)


def _add_job_worker_arguments(worker: argparse.ArgumentParser) -> None:
    """``worker --jobs``: run the merging service's re-search jobs instead of a search's trials."""
    jobs = worker.add_argument_group(
        "re-search jobs", "With --jobs the worker claims and runs the re-search jobs that the merging service of the"
        " study's deployment started, one at a time, until stopped (Ctrl-C or SIGTERM), and publishes their versions."
        " Workers and services sharing the database (PostgreSQL) and the blob store run each job once; a job whose"
        " worker died is taken over when its lease (three --heartbeat) expires. --strategy, --n-trials and"
        " --study-name do not apply.")
    jobs.add_argument("--jobs", action="store_true", help="run re-search jobs (beside 'serve --no-jobs')")
    jobs.add_argument("--job-attempts", type=int, default=3, metavar="N", help="starts of a job (a crash counts)"
                      " before it fails with its last error (default: 3)")
    jobs.add_argument("--poll", type=float, default=2.0, metavar="SECONDS", help="how often to look for a free job"
                      " (default: 2)")
    jobs.add_argument("--signing-key", default=None, metavar="KEYFILE", help="sign the versions published, like"
                      " serve's (default: $SEARCHMERGE_SIGNING_KEY; none: unsigned)")


def _add_drift_check(commands: argparse._SubParsersAction) -> None:
    drift = commands.add_parser(
        "drift-check",
        help="score the deployed plan's merged models on drifted data (night, moved, rain, ...)",
        description="Load the best feasible plan of a search and its merged weights, and report per model the"
        " accuracy before and after a drift scenario, which models now miss their target, and their shared groups."
        f" Exit status: 0 when every model still meets its target, {EXIT_DRIFT_MISSES} when one misses it,"
        " 2 on bad input.",
    )
    _add_study_arguments(drift)
    drift.add_argument("--data", required=True, metavar="SCENARIO", help="drift scenario: night, moved, rain, or one"
                       " from the study file's 'drift:' section")
    drift.add_argument("--study-name", default=None, help="the search that deployed the plan"
                       " (default: the search with the best feasible plan, see docs/cli.md)")
    drift.add_argument("--json", action="store_true", help="print one JSON document")
    drift.set_defaults(handler=cmd_drift_check)


def _add_research(commands: argparse._SubParsersAction) -> None:
    research = commands.add_parser(
        "research",
        help="re-search incrementally from a deployed plan after a drift or a workload change",
        description="Start a new study linked to an earlier one: re-validate its deployed plan from the stored merged"
        " weights, back off from the groups of failing models, then search on. Running it again resumes.",
    )
    _add_study_arguments(research)
    research.add_argument("--data", default=None, metavar="SCENARIO", help="drift scenario to search on, or the"
                          " labelled frames of samples:DEPLOYMENT (what its edges sent) or samples:FOLDER")
    research.add_argument("--from-study", default=None, metavar="NAME",
                          help="the parent study (default: the parent workload's search with the best feasible plan)")
    research.add_argument("--parent-study-file", default=None, metavar="OLD.yaml",
                          help="the parent's study file, when STUDY.yaml adds or retires a model")
    _add_run_arguments(research, n_trials=10, study_name="the new study (default: PARENT-SCENARIO)")
    research.set_defaults(handler=cmd_research)


def _add_export(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="write the merged deployment (safetensors + manifest) of a study's best feasible plan",
        description="Rebuild the merged models of the best feasible trial (or trial K) from the checkpoint store"
        " and write them as a deployment folder: weights.safetensors (shared tensors once) and manifest.json.",
    )
    _add_study_arguments(export)
    export.add_argument("--study-name", default=None,
                        help="the search (default: the search with the best feasible plan, see docs/cli.md)")
    export.add_argument("--trial", type=int, default=None, metavar="K", help="export trial K instead of the best")
    export.add_argument("--out", required=True, metavar="DIR", help="the deployment folder to write")
    export.add_argument("--confirm", action="store_true",
                        help="confirm the plan first (see 'confirm'); a plan that fails is not exported")
    export.add_argument("--plan", default=None, metavar="none|all|GROUP,...",
                        help="instead of a search's trial: the weights 'evaluate --share PLAN' stored (same --seed and"
                        " --target); none exports the originals")
    export.add_argument("--seed", type=int, default=0, help="with --plan: the seed it was evaluated with (default: 0)")
    export.add_argument("--target", type=_target, default=None, help="with --plan: the target it was evaluated with")
    export.set_defaults(handler=cmd_export)


def _export_plan(args: argparse.Namespace, study) -> int:  # type: ignore[no-untyped-def]
    """``export --plan PLAN``: the weights ``evaluate --share PLAN`` stored (same seed and settings)."""
    from searchmerge.training.evaluate import export_plan

    given = [flag for flag, value in (("--study-name", args.study_name), ("--trial", args.trial),
                                       ("--confirm", args.confirm or None)) if value is not None]
    if given:
        raise SearchmergeError(f"--plan exports a plan evaluated with 'evaluate', not a search's trial: drop {given[0]}")
    directory, evaluation = export_plan(study, args.plan, args.out, seed=args.seed, progress=_say)
    what = ("the originals (nothing shared)" if evaluation is None else
            f"plan {args.plan!r} as 'evaluate' stored it ({'feasible' if evaluation.feasible else 'INFEASIBLE'},"
            f" {len(evaluation.plan)} shared group(s), saves {evaluation.saved_bytes / 1e6:.3f} MB; not confirmed)")
    print(f"exported {what} to {directory}")
    return 0


def _add_confirm(commands: argparse._SubParsersAction) -> None:
    confirm = commands.add_parser(
        "confirm",
        help="confirm a trial's plan by full retraining from the originals, and record the verdict with the trial",
        description="Merge the plan of the best feasible trial (or trial K) from the originals and retrain it on all"
        " the training data, stopping at the first check where every model meets its target (early stopping on"
        " validation). The verdict is recorded with the trial (user attribute 'confirmed', on the dashboard);"
        " 'export' and the service's version 1 say it. A search's cheap and incremental verdicts are about the"
        f" weights its path reached; this judges the plan itself. Exit status: 0 confirmed, {EXIT_NOT_CONFIRMED} not,"
        " 2 on bad input.",
    )
    _add_study_arguments(confirm)
    confirm.add_argument("--study-name", default=None,
                         help="the search (default: the search with the best feasible plan, see docs/cli.md)")
    confirm.add_argument("--trial", type=int, default=None, metavar="K", help="confirm trial K instead of the best")
    confirm.add_argument("--json", action="store_true", help="print one JSON document")
    confirm.set_defaults(handler=cmd_confirm)


def _add_store(commands: argparse._SubParsersAction) -> None:
    store = commands.add_parser("store", help="maintain the checkpoint store of a study file's storage")
    store_commands = store.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    gc = store_commands.add_parser(
        "gc",
        help="remove checkpoint blobs that no record uses (and, with --records, records no trial names)",
        description="Safe while workers run: only objects older than --min-age-hours are candidates. Originals"
        " are never removed.",
    )
    _add_study_arguments(gc)
    gc.add_argument("--records", action="store_true",
                    help="also remove merged-weight records that no trial of any study in the storage names")
    gc.add_argument("--min-age-hours", type=float, default=1.0, help="keep anything younger (default: 1)")
    gc.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    gc.set_defaults(handler=cmd_store_gc)


def _add_report(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser("report", help="best plan, trials and plots of a study file's searches")
    _add_study_arguments(report)
    report.add_argument("--study-name", default=None, help="one study (default: every search of this workload)")
    report.add_argument("--out", default="searchmerge-report", help="folder for the plots")
    report.add_argument("--export", default=None, metavar="DIR", help="also export the best plan's merged deployment"
                        " (of --study-name, else of the search with the best feasible plan, as 'export' chooses)")
    report.set_defaults(handler=cmd_report)


def _add_profile(commands: argparse._SubParsersAction) -> None:
    profile = commands.add_parser(
        "profile",
        help="measure what each model costs on this device (time, run memory, load) and lay out the plans",
        description="Measure per model the inference time and run memory at batch sizes 1, 2, 4, 8 on the device"
        " present, the host-to-device link on CUDA, and per plan the tensors a deployment holds (shared once)."
        " Needs no training: only the architectures (and, for 'best', a search).",
    )
    _add_study_arguments(profile)
    _add_plan_arguments(profile)
    profile.add_argument("--out", default="profile.json", help="the profile file to write (default: %(default)s)")
    profile.add_argument("--device", default=None, help="where to measure (default: cuda if present, else cpu)")
    profile.add_argument("--link-bandwidth", default=None, metavar="BYTES/S",
                         help="host-to-device bytes per second, e.g. 12GB (default: measured on CUDA, else PCIe 3 x16)")
    profile.add_argument("--repeats", type=int, default=3, help="timed runs per batch size (default: 3)")
    profile.set_defaults(handler=cmd_profile)


def _add_simulate(commands: argparse._SubParsersAction) -> None:
    simulate = commands.add_parser(
        "simulate",
        help="simulate one camera stream per model on a GPU memory budget: frames processed, swaps, loading",
        description="Simulate the plans on an edge box: one stream per model at FPS, a time-slicing scheduler"
        " batching 1/2/4/8 frames, frames that cannot meet the SLA dropped, models swapped in and out of the"
        " budget. Prints the plans side by side and writes the residency timeline and processed fraction vs"
        " memory as PNGs. Flags override the study file's deploy: section.",
    )
    _add_study_arguments(simulate)
    simulate.add_argument("--gpu-memory", default=None, metavar="SIZE", help="the budget, e.g. 4GiB or 512MiB")
    simulate.add_argument("--fps", default=None, help="frames per second per stream (default: 15)")
    simulate.add_argument("--sla-ms", default=None, help="latency target in milliseconds (default: 200)")
    simulate.add_argument("--seconds", default=None, help="simulated seconds (default: 60)")
    simulate.add_argument("--policy", default=None, help="eviction: lru or lookahead (default: lru)")
    simulate.add_argument("--swap", default=None, help="load per model, or per unit (merged group) (default: model)")
    _add_plan_arguments(simulate)
    simulate.add_argument("--profile", default=None, metavar="PROFILE.json",
                          help="a profile from 'searchmerge profile' (default: measure one now)")
    simulate.add_argument("--out", default="searchmerge-simulate", help="folder for the PNGs (default: %(default)s)")
    simulate.add_argument("--json", action="store_true", help="print one JSON document")
    simulate.set_defaults(handler=cmd_simulate)


def _add_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="the merging service: versions for edge agents, drift checks on their samples, re-search and publish",
        description="Serve the study's deployment to edge agents over HTTP (OpenAPI at /openapi.json). Version 1 is"
        " the best feasible plan of --study-name; when the edges' samples show a model below its target on a drift"
        " scenario, a re-search runs in the background and its best feasible plan is published as the next version.",
    )
    _add_study_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--study-name", default=None, help="the search whose best plan is version 1"
                       " (default: the search with the best feasible plan, see docs/cli.md)")
    serve.add_argument("--research-trials", type=_n_trials, default=10, help="finished trials of each re-search (default: 10)")
    serve.add_argument("--window", type=int, default=64, help="newest samples per model the drift check reads (default: 64)")
    serve.add_argument("--min-samples", type=int, default=32, help="samples a model needs to be judged (default: 32)")
    serve.add_argument("--max-upload-bytes", type=int, default=1 << 20, help="largest request body (default: 1 MiB)")
    serve.add_argument("--max-sample-bytes", type=int, default=512 * 1024,
                       help="largest encoded frame of one sample (default: 512 KiB; larger: 413)")
    serve.add_argument("--research-samples", type=int, default=512,
                       help="samples of each missing model a re-search waits for, to train and judge on (default: 512)")
    serve.add_argument("--heartbeat", type=int, default=10, metavar="SECONDS", help="heartbeat of the re-search's trials")
    serve.add_argument("--samples-per-minute", type=int, default=600, metavar="N", help="each edge's quota of samples"
                       " (past it: 429 with Retry-After; default: 600)")
    serve.add_argument("--job-attempts", type=int, default=3, metavar="N", help="starts of a re-search job (a crash"
                       " counts) before it fails with its last error (default: 3)")
    serve.add_argument("--drift-min-edges", type=int, default=2, metavar="N", help="a drift starts a re-search when"
                       " the samples of at least N edges show it (default: 2) ...")
    serve.add_argument("--drift-edge-share", type=_share_or_off, default=0.5, metavar="SHARE|off", help="... or when"
                       " it is at least this share of one edge's samples (default: 0.5; off: never one edge alone)")
    serve.add_argument("--max-jobs-per-hour", type=int, default=2, metavar="N", help="re-search jobs the deployment"
                       " may start in an hour (default: 2)")
    serve.add_argument("--no-jobs", action="store_true", help="run no re-search job here ('searchmerge worker'"
                       " processes on the same database and blob store run them)")
    serve.add_argument("--tls-cert", default=None, metavar="PEM", help="serve HTTPS with this certificate (chain) ...")
    serve.add_argument("--tls-key", default=None, metavar="PEM", help="... and its private key")
    serve.add_argument("--signing-key", default=None, metavar="KEYFILE", help="sign every version published with"
                       " this key from 'searchmerge keys init' (default: $SEARCHMERGE_SIGNING_KEY; none: unsigned)")
    serve.set_defaults(handler=cmd_serve)


def _add_keys(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="the key that signs published versions (edges run only what it signed)")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = actions.add_parser("init", help="make a new Ed25519 key pair",
                              description="Writes searchmerge-signing.key (private, mode 0600: for 'serve"
                              " --signing-key') and searchmerge-signing.pub (public: for 'edge --trust').")
    init.add_argument("--dir", default=".", help="where to write the two files (default: here)")
    init.add_argument("--overwrite", action="store_true", help="replace an existing key pair (every edge then"
                      " needs the new public key)")
    init.set_defaults(handler=cmd_keys_init)
    sign = actions.add_parser("sign", help="sign the published versions this key has not signed",
                              description="For versions published before the key was set up, or after a new key:"
                              " each version's stored manifest is checked against its SHA-256, then signed.")
    _add_study_arguments(sign)
    sign.add_argument("--signing-key", required=True, metavar="KEYFILE", help="the private key")
    sign.add_argument("--version", type=int, action="append", default=None, metavar="N",
                      help="only version N (repeatable; default: every version)")
    sign.set_defaults(handler=cmd_keys_sign)


def _add_edge_token(commands: argparse._SubParsersAction) -> None:
    edge_token = commands.add_parser("edge-token", help="make (or replace) the bearer token of an edge agent",
                                     description="Prints a new token for edge NAME; only its SHA-256 is stored,"
                                     " and a token made before for NAME stops working.")
    _add_study_arguments(edge_token)
    edge_token.add_argument("name", metavar="NAME", help="the edge's name: letters, digits, - and _")
    edge_token.set_defaults(handler=cmd_edge_token)


def _add_rollback(commands: argparse._SubParsersAction) -> None:
    rollback = commands.add_parser("rollback", help="make an earlier published version current again")
    _add_study_arguments(rollback)
    rollback.add_argument("version", type=int, metavar="VERSION", help="the version to return to")
    rollback.set_defaults(handler=cmd_rollback)


def _add_unpin(commands: argparse._SubParsersAction) -> None:
    unpin = commands.add_parser("unpin", help="release a rollback's pin: the newest version not rolled back is"
                                " current again")
    _add_study_arguments(unpin)
    unpin.set_defaults(handler=cmd_unpin)


def _add_jobs(commands: argparse._SubParsersAction) -> None:
    jobs = commands.add_parser("jobs", help="the re-search jobs of a deployment; queue an ended one again",
                               description="List the deployment's re-search jobs (state, version, message). A job"
                               " the publish gate held back, or that found no feasible plan or failed, is not"
                               " retried by itself: --requeue J asks again once the edges have sent more samples.")
    _add_study_arguments(jobs)
    jobs.add_argument("--requeue", type=int, default=None, metavar="J", help="queue job J again")
    jobs.add_argument("--n-trials", type=int, default=None, metavar="N",
                      help="with --requeue: let its re-search run up to N trials in all")
    jobs.add_argument("--json", action="store_true", help="print the jobs as one JSON document")
    jobs.set_defaults(handler=cmd_jobs)


def _add_edge(commands: argparse._SubParsersAction) -> None:
    edge = commands.add_parser(
        "edge",
        help="the edge agent: serve the current version on camera streams, sample for the service, switch versions",
        description="Run the deployment the merging service publishes on one or more streams, write predictions as"
        " JSON lines, send sampled frames and statistics, and switch to new versions between two frames (verified"
        " first; only changed tensors copied). /healthz and /metrics (Prometheus) on --metrics-port.",
    )
    edge.add_argument("--server", required=True, help="the merging service, e.g. http://127.0.0.1:8000")
    edge.add_argument("--token-file", default=None, metavar="FILE", help="a file holding the edge's token (default:"
                      " $SEARCHMERGE_EDGE_TOKEN)")
    edge.add_argument("--token", default=None, help="the token itself: visible to other users in ps; prefer"
                      " --token-file")
    edge.add_argument("--trust", default=None, metavar="KEYFILE", help="the service's public key"
                      " (searchmerge-signing.pub): run only versions it signed")
    edge.add_argument("--allow-unsigned", action="store_true", help="run versions without checking a signature"
                      " (needed without --trust)")
    edge.add_argument("--allow-factory", action="append", default=None, metavar="MODULE:FUNCTION",
                      help="a model or dataset factory a version may name, besides torchvision's architectures and"
                      " searchmerge.zoo's (repeatable); nothing else is imported")
    edge.add_argument("--ca-file", default=None, metavar="PEM", help="the CA that signed the service's TLS"
                      " certificate (default: the system's store)")
    edge.add_argument("--allow-insecure", action="store_true", help="allow plain http:// to a service that is not"
                      " on this machine")
    edge.add_argument("--streams", nargs="+", default=None, metavar="MODEL=SOURCE",
                      help="MODEL=digits (the generator's camera of MODEL) or MODEL=FOLDER of images"
                      " (a camera's whole frames for a model on video footage; default: a digits stream per model)")
    edge.add_argument("--state-dir", default="searchmerge-edge", help="the agent's versions and predictions")
    edge.add_argument("--predictions", default=None, help="JSON-lines file (default: STATE_DIR/predictions.jsonl)")
    edge.add_argument("--fps", type=float, default=10.0, help="frames per second per stream (default: 10)")
    edge.add_argument("--sample-every", type=int, default=10, help="send every N-th frame of a stream (default: 10)")
    edge.add_argument("--poll", type=float, default=5.0, help="seconds between polls of the service (default: 5)")
    edge.add_argument("--gpu-memory", default="1GiB", help="the device budget (default: 1GiB)")
    edge.add_argument("--device", default="simulated", help="simulated (the CPU) or cuda (default: simulated)")
    edge.add_argument("--drift", default=None, metavar="SCENARIO", help="switch the digits streams to this drift"
                      " scenario, and apply its camera changes to the camera streams' frames ...")
    edge.add_argument("--drift-after", type=float, default=0.0, metavar="SECONDS", help="... this long after start")
    edge.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after (default: never)")
    edge.add_argument("--metrics-host", default="127.0.0.1")
    edge.add_argument("--metrics-port", type=int, default=9100, help="/metrics and /healthz (0: any free port)")
    edge.add_argument("--threads", type=int, default=1, help="CPU threads of the models' operators (default: 1,"
                      " fastest for one frame of a small model on a busy CPU)")
    edge.add_argument("--keep-versions", type=int, default=3, metavar="N", help="versions kept on disk besides the"
                      " one serving (default: 3)")
    edge.add_argument("--predictions-max-size", default="100MiB", metavar="SIZE", help="rotate the predictions file"
                      " past this size (default: 100MiB) ...")
    edge.add_argument("--predictions-backups", type=int, default=3, metavar="N",
                      help="... keeping N rotated files (default: 3)")
    edge.add_argument("--stale-after", type=float, default=120.0, metavar="SECONDS", help="/healthz answers 503 when"
                      " the service last answered a poll longer ago than this (default: 120)")
    edge.set_defaults(handler=cmd_edge)


def _add_label(commands: argparse._SubParsersAction) -> None:
    label = commands.add_parser(
        "label",
        help="label a video or a folder of frames with a teacher detector (COCO-style boxes for a study's video:)",
        description="Run a study's teacher on every (--stride-th) frame of a video file or a folder of frames and"
        " write the COCO-style labels file that a study's video: labels reads. An interrupted run resumes where it"
        " stopped (OUT.partial holds the frames labelled so far).",
    )
    label.add_argument("source", metavar="SOURCE", help="a video file (anything PyAV decodes) or a folder of frames")
    label.add_argument("--teacher", required=True, metavar="STUDY_OR_SPEC",
                       help="a study file with a teacher: section, or a YAML file holding only that section")
    label.add_argument("--out", required=True, metavar="BOXES.json", help="the labels file to write")
    label.add_argument("--stride", type=int, default=1, metavar="N", help="label every N-th frame (default: 1)")
    label.add_argument("--threshold", type=float, default=None, metavar="T",
                       help="the lowest score of a kept box (default: the teacher's threshold)")
    label.set_defaults(handler=cmd_label)


def _add_dashboard(commands: argparse._SubParsersAction) -> None:
    dashboard = commands.add_parser("dashboard", help="start optuna-dashboard on the study storage")
    dashboard.add_argument("study", nargs="?", metavar="STUDY.yaml", help="a study file (for its default storage)")
    dashboard.add_argument("--storage", default=None, help="storage URL (default: the study file's)")
    dashboard.add_argument("--blob-dir", default=None,
                           help="the checkpoint blob location, for the trials' artifacts (default: next to a SQLite file)")
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=int, default=8080)
    dashboard.set_defaults(handler=cmd_dashboard)


#: The subcommands in the order ``searchmerge --help`` lists them; each function adds one
#: command (``_add_search`` adds ``search`` and ``worker``) with its flags and handler.
_COMMANDS = (
    _add_analyze, _add_label, _add_prepare, _add_evaluate, _add_search, _add_drift_check, _add_research,
    _add_confirm, _add_export, _add_store, _add_report, _add_profile, _add_simulate, _add_serve, _add_keys,
    _add_edge_token, _add_rollback, _add_unpin, _add_jobs, _add_edge, _add_dashboard,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "study", None) and args.command != "dashboard":
        # The first line comes at once: importing torch and making the data take a while.
        _say(f"searchmerge {args.command}: opening study file {args.study} ...")
    _quiet_optuna()
    try:
        return int(args.handler(args))
    except SearchmergeError as exc:
        print(f"searchmerge: error: {redact(str(exc))}", file=sys.stderr)  # no password of a URL, wherever made
        return 2
    except KeyboardInterrupt:
        print("searchmerge: interrupted", file=sys.stderr)
        return 130

