"""Benchmark kubeinfer against the raw model and its peers, side by side, in one bounded run on loopback.

    .venv/bin/python benchmarks/run.py            # everything: about 10 minutes on 2 cores

Builds the models and payloads (cached), installs each peer into its own venv
under .cache/bench-venvs/ when missing, measures each model's raw in-process
limit, then serves and loads every system in turn: kubeinfer (classifier with
batching on and off, through its native API and the Open Inference Protocol;
detector with batching on and off), KServe, MLServer and LitServe (classifier).
Writes benchmarks/results/{results.json,results.md,throughput.png} and points
benchmarks/README.md at them. Every process it starts is stopped on the way out,
whatever happens; servers listen on 127.0.0.1 only (checked).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable as a package
    sys.path.append(str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from benchmarks import h2load, models, report, systems, venvs
from benchmarks.processes import ManagedProcess, ServerError, cleanup_on_exit, signals_stay_with_main_thread
from kubeinfer.runtime.cpus import default_instances, thread_budget, usable_cpus

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXPORTS = models.CACHE / "exports"  # ONNX exports made by --backend auto, shared with the tests' runtimes
ALL_SYSTEMS = ("kubeinfer-classify", "kubeinfer-oip", "kubeinfer-classify-frontends", "kserve", "mlserver", "litserve",
               "kubeinfer-detect", "kubeinfer-detect-frontends", "kubeinfer-detect-torch", "grpc-floor")
FRONTENDS = 2  # the --frontends rows
PEERS = ("kserve", "mlserver", "litserve")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--systems", default=",".join(ALL_SYSTEMS),
                        help=f"comma-separated subset of {','.join(ALL_SYSTEMS)} (default: all)")
    parser.add_argument("--no-peers", action="store_true",
                        help="kubeinfer only: skip KServe, MLServer, LitServe and the OIP row (installs nothing)")
    parser.add_argument("--concurrency", default="1,4,16,64", help="closed-loop client counts (default 1,4,16,64)")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per level (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unrecorded seconds before each level (default 2)")
    parser.add_argument("--max-batch-size", type=int, default=16, help="batch limit of every batching server")
    parser.add_argument("--max-batch-delay-ms", type=float, default=5.0,
                        help="longest wait for a batch to fill, every batching server (default 5)")
    parser.add_argument("--torch-threads", type=int, default=thread_budget(usable_cpus()).model_threads,
                        help="intra-op threads of the model (torch, ONNX Runtime) in every server and in the limit "
                             "(default: kubeinfer's own, every usable CPU; h2load needs almost no CPU)")
    parser.add_argument("--limit-threads", type=int, default=usable_cpus(),
                        help="intra-op threads of the model alone, for the limit (default: every usable CPU, "
                             "nothing else runs beside it)")
    parser.add_argument("--generator", choices=("auto", "h2load", "python"), default="auto",
                        help="load generator of the gRPC rows: h2load (C, from nghttp2-client), python (grpc.aio "
                             "in load.py), or auto: h2load when installed")
    parser.add_argument("--limit-seconds", type=float, default=1.5, help="seconds per batch size for the limit")
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="seconds a server may take to start")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument("--work", type=Path, default=models.BENCH_CACHE / "work",
                        help="working folder: server logs and files (default .cache/bench/work)")
    parser.add_argument("--note", default="", help="free text recorded with the results (e.g. machine was shared)")
    parser.add_argument("--no-readme", action="store_true", help="do not point benchmarks/README.md at this run")
    args = parser.parse_args(argv)
    chosen = [s for s in args.systems.split(",") if s]
    unknown = sorted(set(chosen) - set(ALL_SYSTEMS))
    if unknown:
        parser.error(f"--systems: unknown {unknown}; known: {', '.join(ALL_SYSTEMS)}")
    if args.no_peers:
        chosen = [s for s in chosen if s not in (*PEERS, "kubeinfer-oip")]
    args.chosen = chosen
    if args.generator == "auto":
        args.generator = "h2load" if h2load.available() else "python"
    elif args.generator == "h2load" and not h2load.available():
        parser.error("--generator h2load: h2load is not installed (Debian package nghttp2-client)")
    args.levels = [int(c) for c in args.concurrency.split(",") if c]
    if not args.levels or min(args.levels) < 1:
        parser.error("--concurrency needs positive integers")
    return args


def server_env(threads: int, extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment minus anything that would leak one venv into another, plus like-for-like knobs."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1",
               NO_PROXY="127.0.0.1,localhost,::1", no_proxy="127.0.0.1,localhost,::1",
               YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(models.CACHE / "models" / ".ultralytics"),
               KUBEINFER_CACHE_DIR=str(EXPORTS))
    env.update(extra)
    return env


def kubeinfer_model_config(task: str, engine: str = "onnx", frontends: int = 1) -> tuple[int, int]:
    """(instances, intra-op threads per instance) a kubeinfer server of ``task`` runs its model with here, on
    ``engine`` behind ``frontends``: the runtime's own defaults, which the benchmark does not override."""
    cpus = usable_cpus()
    instances = default_instances(task, "cpu", cpus, engine)
    return instances, thread_budget(cpus, instances, frontends).model_threads


# what each kubeinfer system serves: (workload, engine, frontends, task)
SERVED_MODELS = {"kubeinfer-classify": ("classifier", "torch", 1, "classify"),
                 "kubeinfer-oip": ("classifier", "torch", 1, "classify"),
                 "kubeinfer-classify-frontends": ("classifier", "torch", FRONTENDS, "classify"),
                 "kubeinfer-detect": ("detector", "onnx", 1, "detect"),
                 "kubeinfer-detect-frontends": ("detector", "onnx", FRONTENDS, "detect"),
                 "kubeinfer-detect-torch": ("detector", "torch", 1, "detect")}


def measure_limits(args: argparse.Namespace, files: models.ClassifierFiles | None, detector: Path | None,
                   payloads: Path) -> dict[str, Any]:
    """The raw models alone, each in several configurations: one batch at a time at the servers' thread count
    and at every core (``--limit-threads``), and one batch per core at one thread each (``--model-instances``),
    plus whatever a kubeinfer server of that model runs. The limit is each model's fastest configuration, and
    its batch-1 forward (the C=1 targets' base) the fastest lone one of any; the model's CPU per image,
    subtracted from a kubeinfer server's, is taken at that server's configuration."""
    served = {report.model_cpu_key(workload, engine, frontends): (workload, engine,
                                                                   kubeinfer_model_config(task, engine, frontends))
              for system, (workload, engine, frontends, task) in SERVED_MODELS.items() if system in args.chosen}
    configs = list(dict.fromkeys([(1, args.torch_threads), (1, args.limit_threads), (usable_cpus(), 1),
                                  *(config for _, _, config in served.values())]))
    runs = {config: _limits_at(args, files, detector, payloads, threads=config[1], instances=config[0],
                               ultralytics=config == (1, args.torch_threads)) for config in configs}

    def fastest(same: list[dict[str, Any]]) -> dict[str, Any]:
        """The fastest configuration of one model, with the C=1 targets' base: the fastest lone batch-1
        forward of any configuration."""
        lone = {field: min(lim[field] for lim in same)
                for field in ("latency_ms_batch1", "latency_ms_batch1_after_idle")}
        return {**max(same, key=lambda lim: lim["images_per_s"]), **lone}

    best = dict(runs[(1, args.torch_threads)])  # ultralytics' predict and the versions come from this run
    for key in ("classifier", "detector"):
        if key in best:
            best[key] = fastest([run[key] for run in runs.values()])
    if "detector_by_backend" in best:
        best["detector_by_backend"] = {backend: fastest([run["detector_by_backend"][backend] for run in runs.values()])
                                       for backend in best["detector_by_backend"]}
    model_cpu: dict[str, Any] = {}  # per served model (report.model_cpu_key): CPU ms per image by batch size
    for key, (workload, engine, config) in served.items():
        run = runs[config]
        measured = run.get("classifier") if workload == "classifier" else run.get("detector_by_backend", {}).get(engine)
        if measured:
            model_cpu[key] = measured["by_batch_size"]
    return {**best, "model_cpu": model_cpu, "kubeinfer_model_config": {
        key: {"instances": instances, "threads": threads} for key, (_, _, (instances, threads)) in served.items()}}


def _limits_at(args: argparse.Namespace, files: models.ClassifierFiles | None, detector: Path | None,
               payloads: Path, threads: int, instances: int, ultralytics: bool) -> dict[str, Any]:
    argv = [sys.executable, str(HERE / "limits.py"), "--payloads", str(payloads), "--seconds", str(args.limit_seconds),
            "--threads", str(threads), "--instances", str(instances), "--cache-dir", str(EXPORTS)]
    if files:
        argv += ["--classifier", str(files.model)]
    if detector:
        backends = "auto,torch" if "kubeinfer-detect-torch" in args.chosen else "auto"
        argv += ["--detector", str(detector), "--detector-backends", backends, *(["--ultralytics"] * ultralytics)]
    name = f"limits-{instances}x{threads}"
    proc = ManagedProcess(name, argv, args.work / "logs" / f"{name}.log", server_env(threads, {}), args.work,
                          capture_stdout=True)
    try:
        out, _ = proc.process.communicate(timeout=600)
        if proc.process.returncode != 0:
            raise RuntimeError(f"measuring the raw limits failed:\n{proc.log_tail()}")
        return json.loads(out)
    finally:
        proc.stop()


def run_load(plan: systems.LoadPlan, args: argparse.Namespace, payloads: Path,
             reference: list[Any] | None, server: ManagedProcess | None = None,
             metrics_url: str | None = None) -> dict[str, Any]:
    """One row: the load generator against a running server, every concurrency level."""
    argv = [str(plan.python), str(HERE / "load.py"), "--target", plan.target, "--address", plan.address,
            "--payloads", str(payloads), "--concurrency", ",".join(map(str, args.levels)),
            "--duration", str(args.duration), "--warmup", str(args.warmup), "--generator", args.generator,
            *plan.extra_args]
    if server is not None:
        argv += ["--server-pid", str(server.process.pid), *(["--metrics-url", metrics_url] if metrics_url else [])]
    row = plan.row()
    bound = len(args.levels) * (args.warmup + args.duration + 30) + 60
    proc = ManagedProcess(f"load-{plan.key}", argv, args.work / "logs" / f"load-{plan.key}.log",
                          server_env(1, {}), args.work, capture_stdout=True)
    try:
        out, _ = proc.process.communicate(timeout=bound)
    except Exception:
        proc.stop()
        raise
    tail = proc.log_tail(5)
    proc.stop()
    if proc.process.returncode != 0:
        unimplemented = "UNIMPLEMENTED" in tail.upper() or "unknown service" in tail.lower()
        row["status"] = "skipped" if plan.optional and unimplemented else "failed"
        row["reason"] = ("the server does not offer this API yet" if row["status"] == "skipped"
                         else tail.splitlines()[-1] if tail else f"load generator exited {proc.process.returncode}")
        return row
    measured = json.loads(out)
    row["levels"] = measured["levels"]
    row["generator"] = measured.get("generator", "python")
    given = measured.get("answers")
    if given and reference:  # same model, same answers: the rows compare like with like
        agree = sum(same_answer(a, b) for a, b in zip(given, reference, strict=False))
        row["answers_as_raw"] = f"{agree}/{len(reference)}"
    return row


BOX_TOLERANCE_PX, SCORE_TOLERANCE = 2.0, 0.05  # ONNX Runtime vs torch, kubeinfer's letterbox vs ultralytics'


def same_answer(served: Any, raw: Any) -> bool:
    """A classifier's top-1 class equal; a detector's boxes the same set: classes equal, corners within
    ``BOX_TOLERANCE_PX`` pixels, scores within ``SCORE_TOLERANCE`` (rows matched in a canonical order)."""
    if not isinstance(served, list) or not isinstance(raw, list):
        return bool(served == raw)
    if len(served) != len(raw):
        return False
    ours, theirs = sorted(served), sorted(raw)  # by class, then x1, y1...
    return all(a[0] == b[0] and max(abs(x - y) for x, y in zip(a[1:5], b[1:5], strict=True)) <= BOX_TOLERANCE_PX
               and abs(a[5] - b[5]) <= SCORE_TOLERANCE for a, b in zip(ours, theirs, strict=True))


def run_server(plan: systems.ServerPlan, args: argparse.Namespace, payloads: Path,
               references: dict[str, list[Any] | None]) -> list[dict[str, Any]]:
    """Start one server, load it once per row, stop it; failures become rows with a reason."""
    work = args.work / plan.name
    work.mkdir(parents=True, exist_ok=True)
    for rel, content in plan.files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(content)
    log(f"starting {plan.name}")
    server = ManagedProcess(plan.name, plan.argv, args.work / "logs" / f"server-{plan.name}.log",
                            server_env(args.torch_threads, plan.env), work)
    rows = []
    try:
        seconds = server.wait_ready(plan.ready_url, args.ready_timeout)
        addresses = server.check_loopback()
        log(f"{plan.name} ready in {seconds:.1f}s, listening on {', '.join(addresses)}")
        for load in plan.loads:
            if load.is_kubeinfer:
                load.backend = served_backend(load.address)
            log(f"loading {load.key} ({load.protocol}) at C={args.concurrency}")
            # kubeinfer serves from one process; peers may fork workers whose CPU their parent's pid misses
            metrics_url = plan.ready_url.replace("/readyz", "/metrics") if load.is_kubeinfer else None
            one_process = load.is_kubeinfer or load.one_process
            row = run_load(load, args, payloads, references.get(load.workload), server if one_process else None,
                           metrics_url)
            _print_row(row)
            rows.append(row)
    except ServerError as exc:
        reason = str(exc).splitlines()
        missing = any("not available in this build" in line for line in reason)
        status = "skipped" if missing else "failed"
        log(f"{plan.name} {status}: {reason[0]}")
        detail = next((line for line in reversed(reason) if line.strip()), reason[0])
        for load in plan.loads:
            if any(r["key"] == load.key for r in rows):
                continue
            rows.append(load.row(status, f"{reason[0]} ({detail.strip()[:200]})"))
    finally:
        server.stop()
        time.sleep(1.0)  # let the machine settle before the next system
    return rows


def served_backend(address: str) -> str:
    """The engine a kubeinfer server reports in GetModelInfo (torch or onnx)."""
    import grpc

    from kubeinfer.v1 import inference_pb2 as pb
    from kubeinfer.v1.inference_pb2_grpc import InferenceStub

    with signals_stay_with_main_thread(), grpc.insecure_channel(address) as channel:
        return str(InferenceStub(channel).GetModelInfo(pb.ModelInfoRequest(), timeout=30).backend)


def _print_row(row: dict[str, Any]) -> None:
    if row["status"] != "ok":
        log(f"  {row['key']}: {row['status']}: {row['reason']}")
        return
    for lv in row["levels"]:
        log(f"  {row['key']} C={lv['concurrency']}: {lv['throughput_rps']:.1f} req/s, p50 {lv['p50_ms'] or 0:.2f} ms,"
            f" p99 {lv['p99_ms'] or 0:.2f} ms, errors {lv['errors']}")


def plan_servers(args: argparse.Namespace, files: models.ClassifierFiles | None, detector: Path | None,
                 settings: systems.Settings) -> list[systems.ServerPlan]:
    chosen, batch = args.chosen, args.max_batch_size
    plans = []
    if files and "kubeinfer-classify-frontends" in chosen:  # --frontends 2: native and (when chosen) OIP rows
        plans.append(systems.kubeinfer_classifier(files.model, files.labels, settings, batch,
                                                  with_oip="kubeinfer-oip" in chosen, frontends=FRONTENDS))
    if files and ("kubeinfer-classify" in chosen or "kubeinfer-oip" in chosen):
        plans.append(systems.kubeinfer_classifier(files.model, files.labels, settings, batch,
                                                  with_oip="kubeinfer-oip" in chosen))
        if "kubeinfer-classify" in chosen:
            plans.append(systems.kubeinfer_classifier(files.model, files.labels, settings, 1, with_oip=False))
        if "kubeinfer-classify" not in chosen:  # OIP only: drop the native row of the batching server
            plans[0].loads = [load for load in plans[0].loads if load.target == "oip-grpc"]
    for peer, build in (("kserve", systems.kserve), ("mlserver", systems.mlserver), ("litserve", systems.litserve)):
        if files and peer in chosen:
            plans.append(build(files.model, settings))
    if detector and "kubeinfer-detect" in chosen:
        plans.append(systems.kubeinfer_detector(detector, settings, batch))
        plans.append(systems.kubeinfer_detector(detector, settings, 1))
    if detector and "kubeinfer-detect-frontends" in chosen:  # --frontends 2 beside the one-process rows
        plans.append(systems.kubeinfer_detector(detector, settings, batch, frontends=FRONTENDS))
    if detector and "kubeinfer-detect-torch" in chosen:
        plans.append(systems.kubeinfer_detector(detector, settings, batch, backend="torch"))
    if "grpc-floor" in chosen:
        plans.append(systems.grpc_floor())
    return plans


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    return f"{os.cpu_count()} x {cpu}, {mem_kb / 2**20:.0f} GiB RAM, {platform.system()} {platform.release()}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    settings = systems.Settings(args.max_batch_size, args.max_batch_delay_ms, args.torch_threads)
    needs_classifier = any(not s.startswith(("kubeinfer-detect", "grpc-floor")) for s in args.chosen)
    needs_client = any(s in (*PEERS, "kubeinfer-oip") for s in args.chosen)
    with cleanup_on_exit():
        args.work.mkdir(parents=True, exist_ok=True)
        log("preparing models and payloads (cached under .cache/)")
        files = models.ensure_classifier() if needs_classifier else None
        detector = models.ensure_detector() if any(s.startswith("kubeinfer-detect") for s in args.chosen) else None
        payloads = models.make_payloads(models.BENCH_CACHE / "payloads.npz")

        install_failures: dict[str, str] = {}
        wanted_venvs = (["client"] if needs_client else []) + [p for p in PEERS if p in args.chosen]
        for name in wanted_venvs:
            try:
                venvs.ensure(venvs.SPECS[name], args.work / "logs")
            except venvs.InstallError as exc:
                install_failures[name] = str(exc)
                log(str(exc))

        log(f"measuring the raw limits (one batch at a time at {args.limit_threads} and {args.torch_threads} model "
            f"threads, and {usable_cpus()} at once at 1 thread)")
        limits = measure_limits(args, files, detector, payloads)
        for name, lim in [("classifier", limits.get("classifier")),
                          *((f"detector ({b})", lim) for b, lim in limits.get("detector_by_backend", {}).items())]:
            if lim:
                log(f"  {name}: {lim['images_per_s']:.1f} img/s at batch {lim['best_batch_size']} x "
                    f"{lim['instances']} at once, batch-1 forward {lim['latency_ms_batch1']:.2f} ms")
        if "detector_ultralytics" in limits:
            log(f"  ultralytics predict in-process: {limits['detector_ultralytics']['images_per_s']:.1f} img/s")

        rows: list[dict[str, Any]] = []
        for plan in plan_servers(args, files, detector, settings):
            missing = [v for v in (plan.venv, "client" if any(
                load.python == venvs.SPECS["client"].python for load in plan.loads) else None) if v in install_failures]
            if missing:
                rows += [load.row("failed", install_failures[missing[0]]) for load in plan.loads]
                continue
            references = {"classifier": limits.get("classifier", {}).get("top1"),
                          "detector": limits.get("detector_ultralytics", {}).get("answers")}
            rows += run_server(plan, args, payloads, references)

        versions = {"python": platform.python_version(), "kubeinfer torch": limits.get("torch", "?")}
        for name in PEERS:
            if name in args.chosen and name not in install_failures:
                installed = venvs.versions(venvs.SPECS[name])
                versions[name] = installed.get(name, "?")
                versions[f"{name} torch"] = installed.get("torch", "?")
        if needs_client and "client" not in install_failures:
            versions["tritonclient"] = venvs.versions(venvs.SPECS["client"]).get("tritonclient", "?")
        results = {
            "meta": {
                "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
                "load_start": load_start, "load_end": os.getloadavg()[0], "note": args.note,
                "command": shlex.join(["benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
                "concurrency": args.levels, "duration_s": args.duration, "warmup_s": args.warmup,
                "batching": f"max {args.max_batch_size}, {args.max_batch_delay_ms:g} ms",
                "max_batch_size": args.max_batch_size, "max_batch_delay_ms": args.max_batch_delay_ms,
                "torch_threads": args.torch_threads, "limit_threads": args.limit_threads, "versions": versions,
                "load_generator": args.generator,
                "wall_s": round(time.monotonic() - started, 1),
            },
            "limits": {k: v for k, v in limits.items()
                       if k in ("classifier", "detector", "detector_by_backend", "detector_ultralytics", "model_cpu",
                                "kubeinfer_model_config")},
            "rows": rows,
        }
        results["targets"] = report.evaluate_targets(results["limits"], rows, args.max_batch_size)
        paths = report.write_all(results, args.out)
        if not args.no_readme:
            report.update_readme(HERE / "README.md", results, args.out)
        log("wrote " + ", ".join(str(p) for p in paths) + f" in {time.monotonic() - started:.0f}s")
        for t in results["targets"]:
            log(f"target {t['id']}: {t['met']} ({t['detail']})")
    failed = [r["key"] for r in rows if r["status"] == "failed"]
    if failed:
        log(f"failed rows: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\n[bench] interrupted; every server it started has been stopped", file=sys.stderr)
        sys.exit(130)
