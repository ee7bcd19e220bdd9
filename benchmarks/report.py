"""Turn one run's measurements into results.json, results.md (every figure and ratio) and throughput.png.

The ratios are computed here from figures of the same run only: kubeinfer over the
raw model's limit, and kubeinfer over each peer at the same concurrency.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from benchmarks.limits import IDLE_GAP_S

WORKLOADS = {
    "classifier": "Classifier: small CNN on raw 224x224 RGB pixels (one image per request)",
    "detector": "Detector: YOLOv8n rectangles, 128x128 JPEGs decoded by the server (one image per request)",
}
# the kubeinfer rows the targets are judged on (batching on, native API), per workload
HEADLINE = {"classifier": "kubeinfer-classify", "detector": "kubeinfer-detect"}
FLOOR = "grpc-floor"  # the bare transport's row: a reference, neither a peer nor plotted against the model
TARGET_CONCURRENCY = 16
# served throughput at TARGET_CONCURRENCY over the raw forward limit: the benchmark issue's 90 %, and the
# performance issue's 80 % for the detector (its limit leaves out the box selection every request needs)
VS_LIMIT_GOAL = {"classifier": 0.9, "detector": 0.8}
README_START, README_END = "<!-- latest-results:start -->", "<!-- latest-results:end -->"


def level(row: dict[str, Any], concurrency: int) -> dict[str, Any] | None:
    for entry in row.get("levels", []):
        if entry["concurrency"] == concurrency and entry["requests"] > 0:
            return entry
    return None


def model_cpu_key(workload: str, engine: str, frontends: int = 1) -> str:
    """Which of the limits' ``model_cpu`` entries a kubeinfer row's model CPU comes from: its model, engine and
    (through the thread budget) frontends."""
    key = f"detector:{engine}" if workload == "detector" else workload
    return key if frontends == 1 else f"{key} behind {frontends} frontends"


def model_cpu_ms(limits: dict[str, Any], row: dict[str, Any], mean_batch: float | None) -> float | None:
    """The model's own CPU ms per image (measured alone, in the configuration the kubeinfer server runs it:
    instances and threads) at the batch size nearest the mean one formed."""
    key = model_cpu_key(row["workload"], row.get("backend", ""), row.get("frontends", 1))
    sizes = limits.get("model_cpu", {}).get(key)
    if not sizes or not mean_batch or "cpu_ms_per_image" not in sizes[0]:
        return None
    nearest = min(sizes, key=lambda r: abs(math.log(r["batch_size"] / mean_batch)))
    return float(nearest["cpu_ms_per_image"])


def outside_model_ms(limits: dict[str, Any], row: dict[str, Any], lv: dict[str, Any]) -> float | None:
    """Server CPU per image minus the model's own: transport, decode, batching, selection, encoding."""
    model = model_cpu_ms(limits, row, lv.get("mean_batch"))
    server = lv.get("server_cpu_ms_per_image")
    return None if model is None or server is None else server - model


IDLE_GAP_MS = f"{IDLE_GAP_S * 1000:g}"


def _kubeinfer_config(limits: dict[str, Any]) -> str:
    """How kubeinfer's servers ran their models: the runtime's defaults, which the benchmark leaves alone."""
    configs = limits.get("kubeinfer_model_config")
    if not configs:
        return "kubeinfer at the same thread count"
    return "kubeinfer at its own defaults: " + "; ".join(
        f"{model}: {c['instances']} batch{'es' if c['instances'] > 1 else ''} at once x {c['threads']} "
        f"thread{'s' if c['threads'] > 1 else ''}" for model, c in configs.items())


def after_idle(limit: dict[str, Any]) -> str:
    """The batch-1 forward as a lone request finds the cores (see limits.after_idle_ms), for the C=1 targets."""
    idle = limit.get("latency_ms_batch1_after_idle")
    return f" ({idle:.2f} ms when it follows {IDLE_GAP_MS} ms of idle, as a lone request's does)" if idle else ""


def engine_limit(limits: dict[str, Any], row: dict[str, Any]) -> dict[str, Any] | None:
    """The limit measured on the engine the row serves with: a detector served by ONNX Runtime is judged
    against ONNX Runtime's own batch-1 forward, even when torch is the faster engine at its best batch."""
    if row["workload"] == "detector" and row.get("backend") in limits.get("detector_by_backend", {}):
        return limits["detector_by_backend"][row["backend"]]
    return limits.get(row["workload"])


def find_row(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["key"] == key and r["status"] == "ok"), None)


def headline_key(workload: str, batch: int) -> str:
    """The kubeinfer native row of this workload with this max batch size."""
    return f"{HEADLINE[workload]}-b{batch}"


def evaluate_targets(limits: dict[str, Any], rows: list[dict[str, Any]], batch: int) -> list[dict[str, Any]]:
    """The issue's three targets, each with the figures it was judged on (met is None when not measurable)."""
    targets: list[dict[str, Any]] = []
    c = TARGET_CONCURRENCY
    for workload in WORKLOADS:
        limit = limits.get(workload)
        row = find_row(rows, headline_key(workload, batch))
        served = level(row, c) if row else None
        value = served["throughput_rps"] / limit["images_per_s"] if served and limit else None
        goal = VS_LIMIT_GOAL[workload]
        selected = limit.get("selected_images_per_s") if limit else None
        step = f"; the batch step with box selection alone {selected:.1f} img/s" if selected else ""
        targets.append({
            "id": f"{workload}-vs-limit", "workload": workload,
            "target": f"{headline_key(workload, batch)}: served throughput >= {goal:.0%} of the raw model's at "
                      f"concurrency {c}",
            "measured": value, "goal": goal, "met": None if value is None else value >= goal,
            "detail": (f"{served['throughput_rps']:.1f} req/s served vs {limit['images_per_s']:.1f} img/s raw "
                       f"(best batch {limit['best_batch_size']}){step}") if value is not None else "not measured"})
    classifier_peers = [r for r in rows if r["workload"] == "classifier" and not r["is_kubeinfer"]
                        and r["status"] == "ok" and level(r, c)]
    best_peer = max(classifier_peers, key=lambda r: level(r, c)["throughput_rps"], default=None)  # type: ignore[index]
    behind_frontends = [r["key"] for r in rows if r["workload"] == "classifier" and r["is_kubeinfer"]
                        and r.get("frontends", 1) > 1 and r["key"].endswith(f"-b{batch}")]
    for key in (headline_key("classifier", batch), f"kubeinfer-oip-b{batch}", *behind_frontends):
        row = find_row(rows, key)
        ours = level(row, c) if row else None
        theirs = level(best_peer, c) if best_peer else None
        ratio = ours["throughput_rps"] / theirs["throughput_rps"] if ours and theirs else None
        p99_ok = ours["p99_ms"] <= theirs["p99_ms"] if ours and theirs else None
        targets.append({
            "id": f"{key}-vs-best-peer", "workload": "classifier",
            "target": f"{key}: >= 1.5x the best peer's throughput at concurrency {c}, p99 no worse",
            "measured": ratio, "goal": 1.5, "met": None if ratio is None else (ratio >= 1.5 and bool(p99_ok)),
            "detail": (f"{ours['throughput_rps']:.1f} vs {best_peer['system']} {theirs['throughput_rps']:.1f} req/s; "
                       f"p99 {ours['p99_ms']:.1f} vs {theirs['p99_ms']:.1f} ms")
            if ratio is not None and best_peer else "not measured"})
    for workload in WORKLOADS:
        for b in sorted({batch, 1}, reverse=True):
            row = find_row(rows, headline_key(workload, b))
            limit = engine_limit(limits, row) if row else None
            served = level(row, 1) if row else None
            overhead = served["p50_ms"] - limit["latency_ms_batch1"] if served and limit else None
            targets.append({
                "id": f"{workload}-b{b}-latency-overhead", "workload": workload,
                "target": f"{headline_key(workload, b)}: p50 latency at concurrency 1 <= raw model + 1 ms",
                "measured": overhead, "goal": 1.0, "met": None if overhead is None else overhead <= 1.0,
                "detail": (f"served p50 {served['p50_ms']:.2f} ms vs raw batch-1 forward "
                           f"{limit['latency_ms_batch1']:.2f} ms{after_idle(limit)}" if overhead is not None
                           else "not measured")})
    predict = limits.get("detector_ultralytics")
    row = find_row(rows, headline_key("detector", batch))
    served = level(row, c) if row else None
    outside = outside_model_ms(limits, row, served) if row and served else None
    floor_row = find_row(rows, FLOOR)
    floor = level(floor_row, c) if floor_row else None
    floor_cpu = floor.get("server_cpu_ms_per_image") if floor else None
    floor_note = f"; a bare grpc.aio server takes {floor_cpu:.2f} ms CPU per request alone" if floor_cpu else ""
    targets.append({
        "id": "detector-cpu-outside-model", "workload": "detector",
        "target": f"{headline_key('detector', batch)}: server CPU per image outside the model <= 1 ms at "
                  f"concurrency {c}",
        "measured": outside, "goal": 1.0, "met": None if outside is None else outside <= 1.0,
        "detail": (f"server {served['server_cpu_ms_per_image']:.2f} ms CPU/img, model alone "
                   f"{model_cpu_ms(limits, row, served.get('mean_batch')):.2f} ms CPU/img at mean batch "
                   f"{served['mean_batch']:.1f}{floor_note}") if outside is not None and served else "not measured"})
    ratio = served["throughput_rps"] / predict["images_per_s"] if served and predict else None
    targets.append({
        "id": "detector-vs-ultralytics", "workload": "detector",
        "target": f"{headline_key('detector', batch)}: >= 1.5x ultralytics' in-process batched predict at "
                  f"concurrency {c}",
        "measured": ratio, "goal": 1.5, "met": None if ratio is None else ratio >= 1.5,
        "detail": (f"{served['throughput_rps']:.1f} req/s served vs {predict['images_per_s']:.1f} img/s predict "
                   f"(batch {predict['best_batch_size']})") if ratio is not None else "not measured"})
    return targets


# ---------------------------------------------------------------- writers

def write_all(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md", out / "throughput.png"]
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    paths[1].write_text(markdown(results))
    plot(results, paths[2])
    return paths


def _f(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    meta, limits, rows = results["meta"], results["limits"], results["rows"]
    lines = [
        "# kubeinfer benchmark results", "",
        f"- Date: {meta['date']}",
        f"- Machine: {meta['machine']}",
        f"- Load average (1 min) at start / end: {meta['load_start']:.2f} / {meta['load_end']:.2f}",
        f"- Settings: concurrency {meta['concurrency']}, {meta['warmup_s']:g} s warm-up + {meta['duration_s']:g} s "
        f"measured per level, batching {meta['batching']}, model threads {meta['torch_threads']} in every peer; "
        f"{_kubeinfer_config(limits)} (the limit: each model's fastest of one batch at a time at "
        f"{meta.get('limit_threads', meta['torch_threads'])} and {meta['torch_threads']} threads, and one batch "
        "per core at once at 1 thread each)",
        f"- Load generator of the gRPC rows: {meta.get('load_generator', 'python')} (one connection, C streams; "
        "answers checked by a real gRPC client first)",
        f"- Command: `{meta['command']}`",
    ]
    if meta.get("note"):
        lines.append(f"- Note: {meta['note']}")
    lines += ["- Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), ""]

    lines += ["## Targets", "", "| target | measured | goal | met | figures |", "| --- | --- | --- | --- | --- |"]
    for t in results["targets"]:
        unit = " ms" if "latency" in t["id"] or "cpu" in t["id"] else "x"
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        goal = f"<= {t['goal']:g}{unit}" if unit == " ms" else f">= {t['goal']:g}{unit}"
        lines.append(f"| {t['target']} | {_f(t['measured'], 2)}{unit if t['measured'] is not None else ''} "
                     f"| {goal} | {met} | {t['detail']} |")
    lines.append("")

    lines += ["## The limit: the raw model in-process, no serving", "",
              "| model | best batch (batches at once) | img/s at best batch | the same with box selection "
              f"| fastest lone batch-1 forward p50 ms | the same after {IDLE_GAP_MS} ms idle | preprocess ms/img "
              "| img/s by batch size |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    measured = [(workload, limits.get(workload)) for workload in WORKLOADS if workload != "detector"]
    measured += [(f"detector ({backend})", lim) for backend, lim in limits.get("detector_by_backend", {}).items()]
    if "detector_by_backend" not in limits:
        measured.append(("detector", limits.get("detector")))
    for name, lim in measured:
        if not lim:
            continue
        by = ", ".join(f"{r['batch_size']}: {r['images_per_s']:.0f}" for r in lim["by_batch_size"])
        idle = lim.get("latency_ms_batch1_after_idle")
        lines.append(f"| {name} | {lim['best_batch_size']} ({lim.get('instances', 1)}) | {lim['images_per_s']:.1f} | "
                     f"{_f(lim.get('selected_images_per_s'))} | "
                     f"{lim['latency_ms_batch1']:.2f} | {'—' if idle is None else f'{idle:.2f}'} | "
                     f"{lim['preprocess_ms_per_image']:.2f} | {by} |")
    predict = limits.get("detector_ultralytics")
    if predict:
        lines.append(f"| detector: ultralytics `predict` in-process, JPEG decoding and NMS included "
                     f"| {predict['best_batch_size']} (1) | {predict['images_per_s']:.1f} | — | — | — | — | — |")
    lines.append("")

    for workload, title in WORKLOADS.items():
        wrows = [r for r in rows if r["workload"] == workload]
        if not wrows:
            continue
        lim = limits.get(workload)
        lines += [f"## {title}", "",
                  "| system | protocol | backend | batching | load | C | req/s | p50 ms | p99 ms | errors | of limit "
                  "| answers as raw | mean batch | server CPU ms/img | outside the model ms/img |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in wrows:
            if r["status"] != "ok":
                lines.append(f"| {r['system']} | {r['protocol']} | {r.get('backend') or '—'} | {r['batching']} | "
                             f"| — | {r['status']}: {r['reason']} | | | | | |")
                continue
            for lv in r["levels"]:
                share = f"{100 * lv['throughput_rps'] / lim['images_per_s']:.0f}%" if lim and r["key"] != FLOOR else "—"
                lines.append(f"| {r['system']} | {r['protocol']} | {r.get('backend') or '—'} | {r['batching']} | "
                             f"{r.get('generator', 'python')} | {lv['concurrency']} | "
                             f"{lv['throughput_rps']:.1f} | {_f(lv['p50_ms'], 2)} | {_f(lv['p99_ms'], 2)} | "
                             f"{lv['errors']} | {share} | {r.get('answers_as_raw', '—')} | "
                             f"{_f(lv.get('mean_batch'))} | {_f(lv.get('server_cpu_ms_per_image'), 2)} | "
                             f"{_f(outside_model_ms(limits, r, lv), 2)} |")
        lines.append("")
        lines += _peer_ratios(wrows, results["meta"]["concurrency"])
    lines += ["![throughput vs concurrency](throughput.png)", ""]
    return "\n".join(lines)


def _peer_ratios(rows: list[dict[str, Any]], levels: list[int]) -> list[str]:
    ours = [r for r in rows if r["is_kubeinfer"] and r["status"] == "ok"]
    peers = [r for r in rows if not r["is_kubeinfer"] and r["status"] == "ok" and r["key"] != FLOOR]
    if not ours or not peers:
        return []
    out = ["kubeinfer ÷ peer at the same concurrency: throughput ratio (p99 ratio; below 1 means kubeinfer's p99 "
           "is lower).", "", "| kubeinfer row | peer | " + " | ".join(f"C={c}" for c in levels) + " |",
           "| --- | --- | " + " | ".join("---" for _ in levels) + " |"]
    for mine in ours:
        for peer in peers:
            cells = []
            for c in levels:
                a, b = level(mine, c), level(peer, c)
                cells.append(f"{a['throughput_rps'] / b['throughput_rps']:.2f}x ({a['p99_ms'] / b['p99_ms']:.2f})"
                             if a and b and b["throughput_rps"] > 0 and b["p99_ms"] else "—")
            out.append(f"| {mine['system']}, {mine['batching']} | {peer['system']} | " + " | ".join(cells) + " |")
    return [*out, ""]


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [w for w in WORKLOADS if any(r["workload"] == w for r in results["rows"])]
    fig, axes = plt.subplots(1, max(1, len(workloads)), figsize=(7 * max(1, len(workloads)), 5), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=False):
        for r in results["rows"]:
            if r["workload"] != workload or r["status"] != "ok" or r["key"] == FLOOR:
                continue
            xs = [lv["concurrency"] for lv in r["levels"]]
            ys = [lv["throughput_rps"] for lv in r["levels"]]
            style = "-" if r["is_kubeinfer"] else "--"
            ax.plot(xs, ys, style, marker="o", label=f"{r['system']} ({r['batching']})")
        lim = results["limits"].get(workload)
        if lim:
            ax.axhline(lim["images_per_s"], color="black", linestyle=":",
                       label=f"raw model limit ({lim['images_per_s']:.0f} img/s, batch {lim['best_batch_size']})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(results["meta"]["concurrency"], [str(c) for c in results["meta"]["concurrency"]])
        ax.set_xlabel("concurrent clients (closed loop)")
        ax.set_ylabel("requests/s (1 image each)")
        ax.set_title(workload)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"kubeinfer vs raw model and peers — {results['meta']['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_readme(readme: Path, results: dict[str, Any], results_dir: Path) -> None:
    """Point the README's latest-results section at this run (date, machine, note)."""
    if not readme.exists():
        return
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return
    rel = results_dir.resolve().relative_to(readme.parent.resolve()) if results_dir.resolve().is_relative_to(
        readme.parent.resolve()) else results_dir
    meta = results["meta"]
    note = f" Note: {meta['note']}" if meta.get("note") else ""
    body = (f"Latest run: [{rel}/results.md]({rel}/results.md) ([JSON]({rel}/results.json), "
            f"[plot]({rel}/throughput.png)) — {meta['date']} on {meta['machine']}, load average at start "
            f"{meta['load_start']:.2f}.{note}")
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    readme.write_text(pattern.sub(lambda _m: f"{README_START}\n{body}\n{README_END}", text))
