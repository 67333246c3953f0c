"""Charts of one scripts/bench.sh run, from its raw results.

    python scripts/bench_charts.py RAW [LAG_HISTOGRAM] OUTDIR

RAW is the run's `--out` file with `.raw` appended (lines: workload system
value), LAG_HISTOGRAM its `.lag-histogram` (the regionfs_replication_lag_seconds
buckets at the end of the lag phase; "-" when there is none). Writes to OUTDIR:

- ratios.png: regionfs's median against each peer's, per workload, with the
  target where there is one (times: lower is better; IOPS: higher is better);
- lag.png: the share of versions in each bucket of the replication lag
  histogram;
- rss.png: peak RSS against the files the mount has seen (the scale phase's
  tar of N files, and the rss phase's 1 x and 10 x batches).
"""
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Per workload: (workload, label, {peer: target or None}, higher is better).
# Each peer with a row in the run gets a bar; the target is the issue's.
WORKLOADS = [
    ("big-close", "1 GiB close", {"local": 1.25, "rclone": None, "s3fs": None}, False),
    ("big-durable", "1 GiB durable", {"raw": 1.15, "rclone": None, "s3fs": None}, False),
    ("small-close", "2,000 small, last close", {"rclone": 1.0, "local-fsync": 3.0, "s3fs": None}, False),
    ("small-durable", "2,000 small, in bucket", {"raw": 1.2, "rclone": None, "s3fs": None}, False),
    ("small-busy-close", "small after 1 GiB, close", {"rclone": None, "s3fs": None}, False),
    ("repl", "replication", {"rclone-sync": 0.7}, False),
    ("ls-cold", "cold ls -l", {"s3fs": 0.5, "rclone": None}, False),
    ("ls-foreign", "cold ls -l, foreign", {"s3fs": 0.5, "rclone": None}, False),
    ("read-cold", "cold 1 GiB read", {"raw": 1.11, "raw-ranged": None, "rclone": None, "s3fs": None}, False),
    ("read-warm", "warm 1 GiB read", {"local-read": 1.25, "rclone": None, "s3fs": None}, False),
    ("tar-exit", "tar -xf, exit", {"rclone": 1.0, "local-fsync": None, "s3fs": None}, False),
    ("tar-durable", "tar -xf, in bucket", {"raw": 1.3, "rclone": None, "s3fs": None}, False),
    ("git-clone", "git clone", {"rclone": 1.0, "s3fs": None}, False),
    ("randwrite-iops", "random 4 KiB writes (IOPS)", {"local": 0.8, "rclone": None, "s3fs": None}, True),
]
PEER_COLORS = {
    "local": "#7f7f7f", "local-fsync": "#bcbd22", "local-read": "#7f7f7f", "raw": "#1f77b4",
    "raw-ranged": "#17becf", "rclone": "#ff7f0e", "rclone-sync": "#ff7f0e", "s3fs": "#9467bd",
}


def medians(path):
    rows = {}
    for line in open(path):
        parts = line.split()
        if len(parts) == 3:
            rows.setdefault((parts[0], parts[1]), []).append(float(parts[2]))
    return {k: statistics.median(v) for k, v in rows.items()}


def ratios_chart(med, out):
    """One group of bars per workload, one bar per peer: regionfs's median
    over the peer's (for IOPS, regionfs's over the peer's as well: higher is
    better there). Log scale: 0.1 and 10 are as far from even."""
    groups = []
    for w, label, peers, higher in WORKLOADS:
        a = med.get((w, "regionfs"))
        bars = [(p, a / med[(w, p)], t) for p, t in peers.items() if a and med.get((w, p))]
        if bars:
            groups.append((label + (" ↑" if higher else ""), bars, higher))
    for n in sorted({int(w.split("-")[1]) for (w, _) in med if w.startswith("tar-") and w.endswith("-per-file")}):
        a = med.get((f"tar-{n}-per-file", "regionfs"))
        bars = [(p, a / med[(f"tar-{n}-per-file", p)], 1.0 if p == "rclone" else None)
                for p in ("rclone", "local") if a and med.get((f"tar-{n}-per-file", p))]
        if bars:
            groups.append((f"tar -xpf {n:,} files, per file", bars, False))
    if not groups:
        return False
    rows = sum(len(b) for _, b, _ in groups) + len(groups)
    fig, ax = plt.subplots(figsize=(10, 0.22 * rows + 1.5))
    y, ticks, labels, seen = 0, [], [], set()
    for label, bars, higher in groups:
        ticks.append(y + (len(bars) - 1) / 2)
        labels.append(label)
        for peer, v, target in bars:
            met = target is None or (v >= target if higher else v <= target)
            ax.barh(y, v, color=PEER_COLORS.get(peer, "#333333"),
                    edgecolor="black" if target is not None else "none",
                    hatch="" if met else "///", label=None if peer in seen else peer)
            seen.add(peer)
            if target is not None:
                ax.plot([target, target], [y - 0.45, y + 0.45], color="black", linewidth=2)
            ax.text(v, y, f" {v:.2f} × {peer}", va="center", fontsize=7)
            y += 1
        y += 1
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("regionfs ÷ peer, medians (log scale; black tick: target; hatched: target missed; ↑: higher is better)")
    ax.set_title("regionfs against each peer")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def lag_chart(path, out):
    if not path or path == "-" or not os.path.exists(path):
        return False
    points = []
    for line in open(path):
        if 'le="' not in line:
            continue
        le = line.split('le="')[1].split('"')[0]
        if le == "+Inf":
            continue
        points.append((float(le), float(line.rsplit(" ", 1)[1])))
    total = max((c for _, c in points), default=0)
    if total == 0:
        return False
    points.sort()
    # Each bucket's own share (the histogram is cumulative), up to the last
    # bucket that adds any.
    last = max(i for i, (_, c) in enumerate(points) if i == 0 or c > points[i - 1][1])
    shares, labels, prev_le, prev_c = [], [], 0.0, 0.0
    for le, c in points[: last + 1]:
        shares.append(100 * (c - prev_c) / total)
        labels.append(f"≤ {le:g} s" if prev_le == 0 else f"{prev_le:g}-{le:g} s")
        prev_le, prev_c = le, c
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.bar(range(len(shares)), shares, color="#1f77b4")
    for b, v in zip(bars, shares):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.1f} %", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("replication lag (from close to the replica present; the histogram's buckets)")
    ax.set_ylabel("% of versions")
    ax.set_ylim(0, 105)
    ax.set_title(f"Replication lag at a steady 200 files/s ({int(total):,} versions)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def rss_chart(med, out):
    tar = sorted(
        (int(w.split("-")[1]), v)
        for (w, s), v in med.items()
        if s == "regionfs" and w.startswith("tar-") and w.endswith("-rss") and w.count("-") == 2
    )
    anon = sorted(
        (int(w.split("-")[1]), v)
        for (w, s), v in med.items()
        if s == "regionfs" and w.startswith("tar-") and w.endswith("-rss-anon")
    )
    if not tar:
        return False
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([n for n, _ in tar], [v for _, v in tar], marker="o", label="peak RSS (tar of N files)")
    if anon:
        ax.plot([n for n, _ in anon], [v for _, v in anon], marker="s", label="of which anonymous")
    ax.axhline(64, color="black", linestyle=":", linewidth=1, label="target 64 MiB")
    ax.set_xscale("log")
    ax.set_ylim(0, max(70, max(v for _, v in tar) * 1.1))
    ax.set_xlabel("files written through the mount")
    ax.set_ylabel("MiB")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("regionfs memory against file count")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    raw, lag, outdir = sys.argv[1:]
    os.makedirs(outdir, exist_ok=True)
    med = medians(raw)
    made = [
        name
        for name, ok in (
            ("ratios.png", ratios_chart(med, os.path.join(outdir, "ratios.png"))),
            ("lag.png", lag_chart(lag, os.path.join(outdir, "lag.png"))),
            ("rss.png", rss_chart(med, os.path.join(outdir, "rss.png"))),
        )
        if ok
    ]
    print(f"# charts in {outdir}: {', '.join(made) or 'none (no rows for them)'}")


if __name__ == "__main__":
    main()
