"""Summary table of benchmarks/vs_labelstudio.sh: cxrlabel vs Label Studio, per judgment.

    python benchmarks/vs_labelstudio_table.py /tmp/vs-labelstudio

A judgment is one answer to one image. Label Studio's loop annotates one task (1 judgment);
cxrlabel's loop submits a page of ``items_per_page`` answers (10 in the bundled job) after
fetching its renditions. Ratios are judgments/s over judgments/s at the same concurrency.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _rows(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if path.exists()
        else []
    )


def _lat(d: dict) -> str:
    return f"{d['p50_ms']:.0f}/{d['p95_ms']:.0f}/{d['p99_ms']:.0f}" if d.get("count") else "-"


def main(folder: str) -> int:
    res = Path(folder)
    cxr = {r["annotators"]: r for r in _rows(res / "cxrlabel.jsonl")}
    ls = {r["concurrency"]: r for r in _rows(res / "labelstudio.jsonl")}
    wsgi = {r["concurrency"]: r for r in _rows(res / "labelstudio-wsgi.jsonl")}
    head = (
        "| C | system | judgments/s | loops/s | next p50/p95/p99 ms | submit p50/p95/p99 ms | "
        "image p50/p95/p99 ms | errors | stored = acked | over-assigned | server cores | "
        "RSS peak MB | load avg |"
    )
    print(head)
    print("|" + "|".join(["---"] * 13) + "|")
    for c in sorted(set(cxr) | set(ls) | set(wsgi)):
        if c in cxr:
            r = cxr[c]
            srv = r.get("server") or {}
            v = r["verify"]
            print(
                f"| {c} | cxrlabel | **{r['judgments_per_s']}** | {r['loops_per_s']} | "
                f"{_lat(r['latency']['next'])} | {_lat(r['latency']['submit'])} | "
                f"{_lat(r['latency']['image'])} | {r['errors']['total']} | "
                f"{v['stored_judgments']} = {v['acknowledged_judgments']} "
                f"{'ok' if v['ok'] else 'MISMATCH'} | "
                f"{v['images_over_target'] + v['images_over_max']} | {srv.get('avg_cores')} | "
                f"{srv.get('rss_peak_mb')} | {r['loadavg_start'][0]} |"
            )
        for name, table in (("Label Studio (runserver)", ls), ("Label Studio (gunicorn)", wsgi)):
            if c not in table:
                continue
            r = table[c]
            v, srv = r["verify"], r.get("server") or {}
            load = r.get("label", "").rpartition("load ")[2].split(" ")[0] or "?"
            print(
                f"| {c} | {name} | **{r['loops_per_s']}** | {r['loops_per_s']} | "
                f"{_lat(r['latency']['next'])} | {_lat(r['latency']['submit'])} | - | "
                f"{r['errors']['total']} | {v['stored_annotations']} = {v['successful_posts']} "
                f"{'ok' if v['ok'] else 'MISMATCH'} | {v['tasks_with_gt1_annotations']} | "
                f"{srv.get('avg_cores')} | {srv.get('rss_peak_mb')} | {load} |"
            )
    print()
    for c in sorted(cxr):
        for name, table in (("runserver", ls), ("gunicorn", wsgi)):
            if c in table and table[c]["loops_per_s"]:
                ratio = cxr[c]["judgments_per_s"] / table[c]["loops_per_s"]
                print(f"C={c}: cxrlabel / Label Studio ({name}) judgments/s = {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/vs-labelstudio"))
