"""The benchmark's Markdown table and latency-against-throughput plot."""

from pathlib import Path

from dipr.benchmarks.run import NO_BOXES, ONE_PERSON, BenchReport


def _streams(streams: int) -> str:
    return "one batch at a time" if streams == 1 else f"{streams} batches at once"


def markdown(report: BenchReport) -> str:
    lines = [
        f"Benchmark {report.date} on {report.machine}; ONNX Runtime {report.provider.upper()}"
        + "".join(f", {name}={value}" for name, value in report.service_env.items())
        + f"; model `{Path(report.model).name}`, photo "
        f"`{report.photo}`; decode + warp {report.preprocess_ms:.2f} ms/image; each point pooled "
        f"from {report.rounds} interleaved rounds."
        + (
            f" Without boxes: detector `{Path(report.detector).name}` on a group photo of "
            f"{report.group_persons} persons (its CPU work around the models "
            f"{report.detection_preprocess_ms:.2f} ms/image)."
            if report.detector
            else ""
        ),
        "",
        "| what | batch / concurrency | requests/s | images/s | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.limit:
        lines.append(
            f"| limit (ORT alone, {_streams(r.streams)}) | batch {r.batch_size} | | "
            f"{r.images_per_s:.1f} | "
            f"{r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.p99_ms:.1f} |"
        )
    for r in report.detection_limit:
        lines.append(
            f"| limit, no boxes (detector, then pose on {report.group_persons} persons; "
            f"{_streams(r.streams)}) | batch {r.batch_size} | | {r.images_per_s:.1f} | "
            f"{r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.p99_ms:.1f} |"
        )
    for r in [*report.service, *report.naive]:
        what, images = r.target, r.crops_per_s
        if r.target.endswith(NO_BOXES):
            images = r.requests_per_s  # an image each, whatever it holds
        elif r.crops_per_request > 1:
            what += f", {r.crops_per_request} boxes"
        errors = f" ({r.errors} errors)" if r.errors else ""
        lines.append(
            f"| {what}{errors} | c={r.concurrency} | {r.requests_per_s:.1f} | "
            f"{images:.1f} | {r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.p99_ms:.1f} |"
        )
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in report.ratios.items()]
    lines.append("")
    lines.append(
        "images/s counts the pose model's inputs (person crops): with 4 boxes a request is 4; "
        "without boxes, images/s counts images (requests)."
    )
    return "\n".join(lines) + "\n"


def plot(report: BenchReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    curves = []  # (style, label, [(images/s, latency ms, tag)])
    for one_stream, style in ((True, "k.--"), (False, "kx:")):
        limit = [r for r in report.limit if (r.streams == 1) == one_stream]
        if limit:
            label = f"limit: ORT alone, {_streams(limit[0].streams)} (p50 per batch)"
            points = [(r.images_per_s, r.p50_ms, f"b{r.batch_size}") for r in limit]
            curves.append((style, label, points))
    for series, style in ((report.service, "o-"), (report.naive, "s-")):
        single = [r for r in series if r.target in ONE_PERSON]
        if single:
            points = [(r.crops_per_s, r.p99_ms, f"c{r.concurrency}") for r in single]
            curves.append((style, f"{single[0].target} (p99)", points))
    for style, label, points in curves:
        xs, ys, _ = zip(*points, strict=True)
        axis.plot(xs, ys, style, label=label)
        for x, y, tag in points:
            axis.annotate(tag, (x, y), fontsize=7)
    axis.set_xlabel("throughput, images/s")
    axis.set_ylabel("latency, ms")
    axis.set_yscale("log")
    axis.set_title(f"dipr on {report.machine[:60]}", fontsize=9)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
