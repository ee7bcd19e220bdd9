"""Where a kubeinfer server spends its time under benchmark load: py-spy on the server while load.py drives it.

    .venv/bin/python benchmarks/profiling.py --workload classifier --concurrency 16 --seconds 8

Starts the same kubeinfer server run.py measures, loads it with the same load
generator, samples every thread of the server with py-spy (``--gil`` to see only
what holds the GIL), and prints the functions with the most samples: self time
(where the CPU is) and inclusive time (which call paths it is under). The raw
collapsed stacks are kept for flame graphs. Needs py-spy (the project's dev extra).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable as a package
    sys.path.append(str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from benchmarks import h2load, models, systems
from benchmarks.processes import ManagedProcess, cleanup_on_exit
from benchmarks.run import server_env

HERE = Path(__file__).resolve().parent


def top_functions(collapsed: Path, count: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """(self, inclusive, total) sample counts per frame from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        total += n
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return own.most_common(count), inclusive.most_common(count), total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=("classifier", "detector"), default="classifier")
    parser.add_argument("--target", choices=("native", "oip"), default="native",
                        help="classifier only: native gRPC or the Open Inference Protocol")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-batch-delay-ms", type=float, default=5.0)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--generator", choices=("python", "h2load"),
                        default="h2load" if h2load.available() else "python",
                        help="load generator: h2load (C, costs the server's cores almost nothing) or load.py's")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0, help="sampled seconds")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--gil", action="store_true", help="only samples of the thread holding the GIL")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--work", type=Path, default=models.BENCH_CACHE / "work")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("profile: py-spy is not installed (pip install -e '.[dev]')", file=sys.stderr)
        return 2

    settings = systems.Settings(args.max_batch_size, args.max_batch_delay_ms, args.torch_threads)
    payloads = models.make_payloads(models.BENCH_CACHE / "payloads.npz")
    if args.workload == "classifier":
        files = models.ensure_classifier()
        plan = systems.kubeinfer_classifier(files.model, files.labels, settings, args.max_batch_size,
                                            with_oip=args.target == "oip")
        load = plan.loads[-1]
    else:
        plan = systems.kubeinfer_detector(models.ensure_detector(), settings, args.max_batch_size)
        load = plan.loads[0]
    name = f"profile-{load.key}-c{args.concurrency}"
    logs = args.work / "logs"
    with cleanup_on_exit():
        server = ManagedProcess(name, plan.argv, logs / f"{name}-server.log", server_env(args.torch_threads, {}),
                                args.work)
        server.wait_ready(plan.ready_url, 180)
        server.check_loopback()
        warmup = 2.0
        load_argv = [str(load.python), str(HERE / "load.py"), "--target", load.target, "--address", load.address,
                     "--payloads", str(payloads), "--concurrency", str(args.concurrency), "--answers", "0",
                     "--duration", str(args.seconds + 2), "--warmup", str(warmup), "--generator", args.generator,
                     *load.extra_args]
        driver = ManagedProcess(f"{name}-load", load_argv, logs / f"{name}-load.log", server_env(1, {}), args.work,
                                capture_stdout=True)
        time.sleep(warmup + 1.0)
        collapsed = args.work / f"{name}.collapsed.txt"
        spy_argv = [spy, "record", "--pid", str(server.pid), "--duration", str(int(args.seconds)), "--rate",
                    str(args.rate), "--format", "raw", "--output", str(collapsed), "--threads", "--nonblocking"]
        if args.gil:
            spy_argv.append("--gil")
        subprocess.run(spy_argv, check=True, capture_output=True, timeout=args.seconds + 60)
        out, _ = driver.process.communicate(timeout=args.seconds + 120)
        driver.stop()
        server.stop()
    measured = json.loads(out)["levels"][0]
    own, inclusive, total = top_functions(collapsed, args.top)
    print(f"{load.key} at C={args.concurrency}: {measured['throughput_rps']:.1f} req/s, "
          f"p50 {measured['p50_ms']:.2f} ms, p99 {measured['p99_ms']:.2f} ms; {total} samples; stacks in {collapsed}")
    for title, rows in (("self", own), ("inclusive", inclusive)):
        print(f"\n-- {title} samples (% of all)")
        for frame, n in rows:
            print(f"{100 * n / max(total, 1):5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
