"""Measure the near-duplicate thresholds (pHash shortlist + pixel check) on real data.

Distributions on the shared Kermany images:
  copies        - each sampled image vs. a re-encoded, resized copy of itself (what must match);
  same patient  - different images of the same child (what must NOT match: Kermany has several
                  images per patient, taken days apart, that look alike);
  nearest other - each image's nearest other image in the whole set by pHash.
For each, the pHash Hamming distance and the mean absolute difference of the 64x64 signatures
that ingest compares (cxrlabel.ingest.worker.signature). The closest pairs are listed with the
difference at 224x224 too, to show any near-duplicates the cleaned set still holds.

    python benchmarks/phash_threshold.py [--sample 400] [--plot out.png]
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from cxrlabel.config import shared_data_dir
from cxrlabel.ingest.decode import decode_image
from cxrlabel.ingest.dedup import NEAR_DUP_MAX_MAD, NEAR_DUP_MAX_PHASH
from cxrlabel.ingest.phash import PhashIndex, hamming, phash
from cxrlabel.ingest.worker import mean_abs_diff, signature

VARIANTS = [  # (JPEG quality, scale): the re-encodings a copy picks up on the way
    (95, 1.0),
    (75, 0.75),
    (60, 0.5),
    (40, 0.33),
    (85, 1.6),
]


def reencode(im: Image.Image, quality: int, scale: float) -> Image.Image:
    size = (max(8, round(im.width * scale)), max(8, round(im.height * scale)))
    buf = io.BytesIO()
    im.resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("L")


def mad224(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float64)
    y = np.asarray(b.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float64)
    return float(np.abs(x - y).mean())


def describe(name: str, values: list[float]) -> None:
    v = np.array(values)
    qs = np.percentile(v, [0, 1, 5, 50, 95, 99, 100])
    print(
        f"{name:>24}: n={len(v):6d}  min={qs[0]:.1f} p1={qs[1]:.1f} p5={qs[2]:.1f} "
        f"median={qs[3]:.1f} p95={qs[4]:.1f} p99={qs[5]:.1f} max={qs[6]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sample", type=int, default=400)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    root = shared_data_dir() / "kermany"
    rows = list(csv.DictReader((root / "manifest.csv").open()))
    start = time.perf_counter()
    images = {r["file"]: decode_image(root / r["file"]).to_pil() for r in rows}
    hashes = {f: phash(im) for f, im in images.items()}
    sigs = {f: signature(im) for f, im in images.items()}
    print(f"decoded and hashed {len(images)} images in {time.perf_counter() - start:.1f} s")

    rng = random.Random(0)
    copies, copies_mad = [], []
    for f in rng.sample(sorted(images), args.sample):
        for q, s in VARIANTS:
            copy = reencode(images[f], q, s)
            copies.append(hamming(hashes[f], phash(copy)))
            copies_mad.append(mean_abs_diff(sigs[f], signature(copy)))

    by_patient: dict[str, list[str]] = defaultdict(list)
    for r in rows:  # (patient, subtype): the README's conservative grouping for pneumonia
        by_patient[r["patient_id"]].append(r["file"])
    pairs = [p for files in by_patient.values() for p in itertools.combinations(files, 2)]
    same_patient = [hamming(hashes[a], hashes[b]) for a, b in pairs]
    same_patient_mad = [mean_abs_diff(sigs[a], sigs[b]) for a, b in pairs]

    index = PhashIndex()
    names = sorted(hashes)
    for i, f in enumerate(names):
        index.add(i, hashes[f])
    nearest, shortlisted_mad = [], []
    for i, f in enumerate(names):
        d = index.distances(hashes[f])
        d[i] = 99
        j = int(np.argmin(d))
        nearest.append((int(d[j]), f, names[j]))
        shortlisted_mad += [
            mean_abs_diff(sigs[f], sigs[names[k]])
            for k in np.flatnonzero(d <= NEAR_DUP_MAX_PHASH)
            if k > i
        ]
    describe("pHash: copies", copies)
    describe("pHash: same patient", same_patient)
    describe("pHash: nearest other", [n[0] for n in nearest])
    describe("64x64 MAD: copies", copies_mad)
    describe("64x64 MAD: same patient", same_patient_mad)
    describe(f"64x64 MAD: pHash<={NEAR_DUP_MAX_PHASH} pairs", shortlisted_mad)
    print(
        f"ingest uses pHash <= {NEAR_DUP_MAX_PHASH} and MAD <= {NEAR_DUP_MAX_MAD}: "
        f"copies caught {np.mean((np.array(copies) <= NEAR_DUP_MAX_PHASH) & (np.array(copies_mad) <= NEAR_DUP_MAX_MAD)):.2%}, "  # noqa: E501
        f"shortlisted different-image pairs flagged "
        f"{int(np.sum(np.array(shortlisted_mad) <= NEAR_DUP_MAX_MAD))}"
    )
    for threshold in range(4, 16, 2):
        caught = np.mean(np.array(copies) <= threshold)
        false = np.mean(np.array(same_patient) <= threshold)
        print(
            f"threshold {threshold:2d}: copies caught {caught:7.2%}   "
            f"same-patient pairs flagged {false:7.2%}"
        )
    print("closest pairs in the whole set (pHash distance, MAD 64x64, MAD 224x224, a, b):")
    seen = set()
    for d, a, b in sorted(nearest)[:16]:
        key = tuple(sorted((a, b)))
        if key in seen:
            continue
        seen.add(key)
        print(
            f"  {d:2d}  {mean_abs_diff(sigs[a], sigs[b]):5.1f}  "
            f"{mad224(images[a], images[b]):5.1f}  {a}  {b}"
        )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        bins = np.arange(0, 40)
        ax.hist(copies, bins=bins, alpha=0.7, label="re-encoded/resized copies", density=True)
        ax.hist(same_patient, bins=bins, alpha=0.7, label="same patient, other image", density=True)
        ax.set_xlabel("pHash Hamming distance (64 bits)")
        ax.set_ylabel("fraction")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
