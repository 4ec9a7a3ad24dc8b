"""Time and size the `image_folder` ingestion from files to the final `.npy`.

Generates two labelled image folders (10 class sub-folders each): many small PNGs
(32x32 RGB, like CIFAR) and fewer large JPEGs (640x480 RGB, quality 90, like photos);
their content is a gradient plus smooth and fine noise, so the files compress like real
images rather than like constant ones. Generation is not timed. Then, for each folder,
a fresh child process does what `kedro run` does in ingestion:
`ingest_images(IngestionConfig(source="image_folder", ...), MaskingConfig(...), seed=0)`
and `NumpyDataset(.../images.npy).save(images)`, and reports
- the wall time of decode + save and files/s;
- the size of the final array (N x H x W x C bytes);
- the child's RSS after its imports and a warm-up ingestion of 50 images (the baseline,
  a constant independent of N),
  its peak RSS (`ru_maxrss` of RUSAGE_SELF) and the largest decoding worker's peak
  private memory (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup, sampled every
  0.05 s: the workers are forked, so their RSS would also count the pages they share
  with the main process);
- whether peak RSS (main) < 2 x final array + baseline.
`ru_maxrss` counts the pages of memory-mapped files that the process touched (the
staging array is one), so it is an upper bound on the memory the process needed.

Usage (repository root, project environment):
    python benchmarks/ingest_folder.py [--pngs 20000] [--jpegs 2000] [--jpeg-size 64]
        [--workers N] [--workdir DIR] [--json PATH]
--workdir keeps the generated folders (reused when they hold the right number of
files); without it they go to a temporary folder that is removed at the end.
--workers defaults to every CPU core. Prints the machine, the date, the command and a
Markdown table for BENCHMARKS.md; exits non-zero if an ingestion fails.

The project (torch, pandas, Kedro) is imported in the child process only.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# Run as a script, this folder is on sys.path.
from machine import cpu_model, write_json
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10
PATCH_SIZE = 4
PNG_SHAPE = (32, 32)  # height, width
JPEG_SHAPE = (480, 640)
JPEG_QUALITY = 90
MIB = 2**20


# --- generation --------------------------------------------------------------------


def synthetic_image(index: int, label: int, shape: tuple[int, int]) -> np.ndarray:
    """A uint8 (H, W, 3) image: a class-dependent colour gradient, smooth noise (a coarse
    random grid upsampled) and fine per-pixel noise. Deterministic in `index`."""
    rng = np.random.default_rng(index)
    height, width = shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = 2 * np.pi * label / CLASSES
    ramp = np.cos(angle) * x / width + np.sin(angle) * y / height
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    colour = rng.uniform(0.3, 1.0, size=3).astype(np.float32)
    coarse = rng.integers(0, 256, size=(max(2, height // 8), max(2, width // 8), 3))
    smooth = np.asarray(
        Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC),
        dtype=np.float32,
    )
    fine = rng.normal(0.0, 6.0, size=(height, width, 3)).astype(np.float32)
    image = 150.0 * ramp[..., None] * colour + 0.45 * smooth + fine
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_one(job: tuple[str, int, str]) -> int:
    root, index, kind = job
    label = index % CLASSES
    path = Path(root) / f"class_{label}" / f"{index:06d}.{kind}"
    if kind == "png":
        Image.fromarray(synthetic_image(index, label, PNG_SHAPE)).save(path)
    else:
        Image.fromarray(synthetic_image(index, label, JPEG_SHAPE)).save(path, quality=JPEG_QUALITY)
    return path.stat().st_size


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root)) if root.is_dir() else 0


def folder_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def ensure_folder(root: Path, count: int, kind: str, workers: int) -> tuple[bool, float]:
    """Generate `count` images of `kind` (png, jpg) under root/class_*/ unless it already
    holds exactly `count` files. Returns (generated, seconds)."""
    if count_files(root) == count:
        return False, 0.0
    start = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    for label in range(CLASSES):
        (root / f"class_{label}").mkdir(parents=True)
    jobs = [(str(root), index, kind) for index in range(count)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for _ in pool.imap_unordered(_write_one, jobs, chunksize=64):
            pass
    return True, time.perf_counter() - start


# --- measurement (child process) ---------------------------------------------------


def rss_now_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def descendants(pid: int, depth: int = 1) -> list[tuple[int, int]]:
    """(pid, depth) of every live descendant of `pid` (children have depth 1)."""
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids = [int(child) for child in children.read_text().split()]
        except OSError:
            continue
        for child_pid in pids:
            found.append((child_pid, depth))
            found.extend(descendants(child_pid, depth + 1))
    return found


def private_kib(pid: int) -> int | None:
    """Memory only this process holds (not shared with its forking parent), in KiB."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return None
    fields = ("Private_Clean:", "Private_Dirty:")
    return sum(int(line.split()[1]) for line in lines if line.startswith(fields))


class WorkerPeak(threading.Thread):
    """Samples the private memory of this process's descendants (the forked decoding
    workers) every `interval` s and keeps each one's peak."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peaks: dict[int, tuple[int, int]] = {}  # pid -> (depth, VmHWM KiB)
        self._stop_event = threading.Event()

    def sample(self) -> None:
        for pid, depth in descendants(os.getpid()):
            hwm = private_kib(pid)
            if hwm is not None:
                self.peaks[pid] = (depth, max(hwm, self.peaks.get(pid, (depth, 0))[1]))

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def largest(self, depths: range) -> int | None:
        values = [hwm for depth, hwm in self.peaks.values() if depth in depths]
        return max(values) if values else None


def folder_ingestion(path: str, spec: dict):
    from selfsup.config import IngestionConfig

    options = {"path": path, "workers": spec["workers"], "staging_dir": spec["staging_dir"]}
    return IngestionConfig(source="image_folder", options=options)


def child(spec: dict) -> None:
    """Ingest one folder and save the array; print one JSON line of measurements."""
    started = time.perf_counter()
    from selfsup.config import MaskingConfig
    from selfsup.datasets import NumpyDataset
    from selfsup.pipelines.ingestion.nodes import ingest_images

    imports_s = time.perf_counter() - started
    # Warm-up on a 50-image folder: the one-time cost of ingesting at all (lazy imports
    # of scikit-learn's splitter, Pillow's codecs, the pool machinery) belongs to the
    # constant, not to the per-image memory the bound is about.
    warm_images = ingest_images(
        folder_ingestion(spec["warmup_path"], spec),
        MaskingConfig(image_size=32, patch_size=PATCH_SIZE),
        0,
    )[0]
    NumpyDataset(str(Path(spec["out"]).with_name("warmup.npy"))).save(warm_images)
    del warm_images
    gc.collect()
    baseline_kib = rss_now_kib()
    baseline_peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ingestion = folder_ingestion(spec["path"], spec)
    masking = MaskingConfig(image_size=spec["image_size"], patch_size=PATCH_SIZE)
    out = Path(spec["out"])
    sampler = WorkerPeak()
    sampler.start()
    start = time.perf_counter()
    images, samples, _classes, rejected = ingest_images(ingestion, masking, seed=0)
    decoded = time.perf_counter()
    NumpyDataset(str(out)).save(images)
    end = time.perf_counter()
    sampler.stop()
    shape = tuple(int(n) for n in images.shape)
    del images, samples
    self_peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "shape": list(shape),
        "array_bytes": int(np.prod(shape)),
        "rejected": len(rejected["rejected"]),
        "imports_s": imports_s,
        "decode_s": decoded - start,
        "save_s": end - decoded,
        "wall_s": end - start,
        "baseline_rss_kib": baseline_kib,
        "baseline_peak_rss_kib": baseline_peak_kib,
        "peak_rss_kib": self_peak_kib,
        "worker_peak_private_kib": sampler.largest(range(1, 100)),
        "worker_processes": len(sampler.peaks),
    }
    print("RESULT " + json.dumps(result), flush=True)


def run_child(spec: dict) -> dict:
    env = {**os.environ, "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1"}
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode or not lines:
        sys.stderr.write(completed.stdout + completed.stderr)
        raise RuntimeError(f"ingesting {spec['path']} failed (exit {completed.returncode})")
    return json.loads(lines[-1].removeprefix("RESULT "))


# --- report ------------------------------------------------------------------------


def mib(kib_or_bytes: float, unit: int = 1) -> str:
    return f"{kib_or_bytes * unit / MIB:.1f}"


def table(rows: list[dict]) -> str:
    header = (
        "| dataset | files | image size | workers | wall s | files/s | final array MiB "
        "| baseline RSS MiB | peak RSS MiB (main) | peak private MiB (largest worker) "
        "| bound 2x array + baseline MiB | within bound |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for row in rows:
        worker = row["worker_peak_private_kib"]
        lines.append(
            f"| {row['dataset']} | {row['files']} | {row['image_size']} | {row['workers']} "
            f"| {row['wall_s']:.2f} | {row['files_per_s']:.0f} | {mib(row['array_bytes'])} "
            f"| {mib(row['baseline_rss_kib'], 1024)} | {mib(row['peak_rss_kib'], 1024)} "
            f"| {mib(worker, 1024) if worker is not None else '–'} "
            f"| {mib(row['bound_bytes'])} | {'yes' if row['within_bound'] else 'no'} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pngs", type=int, default=20000, help="small PNGs to generate")
    parser.add_argument("--jpegs", type=int, default=2000, help="large JPEGs to generate")
    parser.add_argument("--jpeg-size", type=int, default=64, help="image size for the JPEGs")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, help="keep (and reuse) the generated folders")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    minimum = 5 * CLASSES  # val and test (20% each) need every class: 10 images each
    if args.pngs == args.jpegs == 0 or any(
        count < 0 or 0 < count < minimum for count in (args.pngs, args.jpegs)
    ):
        parser.error(
            f"--pngs and --jpegs must each be 0 or at least {minimum} (the stratified split "
            "puts 20% of the images, one per class at least, in val and in test), not both 0"
        )

    temporary = None
    if args.workdir is None:
        temporary = tempfile.TemporaryDirectory(prefix="ingest-bench-")
        workdir = Path(temporary.name)
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    datasets = [
        ("PNG 32x32", "pngs", "png", args.pngs, PNG_SHAPE[0]),
        ("JPEG 640x480 q90", "jpegs", "jpg", args.jpegs, args.jpeg_size),
    ]
    rows = []
    try:
        for name, folder, kind, count, _size in datasets:
            if count == 0:
                continue
            root = workdir / folder
            generated, seconds = ensure_folder(root, count, kind, args.workers)
            ensure_folder(workdir / "warmup", 5 * CLASSES, "png", args.workers)
            total = folder_bytes(root)
            print(
                f"{name}: {'generated' if generated else 'reused'} {count} files in {root} "
                f"({total / MIB:.1f} MiB, {total / count / 1024:.1f} KiB per file)"
                + (f" in {seconds:.1f} s (not timed below)" if generated else ""),
                flush=True,
            )
        for name, folder, _kind, count, size in datasets:
            if count == 0:
                continue
            run_dir = workdir / "runs" / folder
            shutil.rmtree(run_dir, ignore_errors=True)
            spec = {
                "path": str(workdir / folder),
                "workers": args.workers,
                "staging_dir": str(run_dir / "staging"),
                "warmup_path": str(workdir / "warmup"),
                "out": str(run_dir / "images.npy"),
                "image_size": size,
            }
            result = run_child(spec)
            saved = np.load(spec["out"], mmap_mode="r")
            expected = (count - result["rejected"], size, size, 3)
            if saved.shape != expected or tuple(result["shape"]) != expected:
                raise RuntimeError(f"{spec['out']} has shape {saved.shape}, expected {expected}")
            del saved
            bound = 2 * result["array_bytes"] + result["baseline_rss_kib"] * 1024
            rows.append(
                {
                    "dataset": name,
                    "files": count,
                    "image_size": size,
                    "workers": args.workers,
                    **result,
                    "files_per_s": count / result["wall_s"],
                    "bound_bytes": bound,
                    "within_bound": result["peak_rss_kib"] * 1024 < bound,
                }
            )
            print(f"{name}: done in {result['wall_s']:.1f} s", flush=True)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        if temporary is not None:
            temporary.cleanup()

    command = " ".join(["python benchmarks/ingest_folder.py", *sys.argv[1:]])
    print("\n## image_folder ingestion: files to the final .npy")
    print(f"- date: {time.strftime('%Y-%m-%d')}")
    print(f"- machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"- command: {command}")
    print(
        "- each row is one fresh process: `ingest_images` (scan, decode in worker processes "
        "into a memory-mapped staging file, split) then `NumpyDataset.save` of the images; "
        "wall s is decode + save, not the process start-up or imports"
    )
    print(
        "- bound: peak RSS (main) < 2 x final array + baseline RSS, where final array = "
        "N x H x W x C bytes and baseline = the process's RSS after importing the project "
        "and ingesting a 50-image warm-up folder, before the measured ingestion"
    )
    print(
        "- RSS is `ru_maxrss`, which counts touched pages of memory-mapped files (the "
        "staging array), so it is an upper bound; a worker's is its private memory "
        "(Private_Clean + Private_Dirty) sampled from /proc every 0.05 s; the image files "
        "were in the page cache (just generated or read before)"
    )
    print()
    print(table(rows))
    print()
    for row in rows:
        above = row["peak_rss_kib"] * 1024 - row["baseline_rss_kib"] * 1024
        rest = above - row["array_bytes"]
        print(
            f"- {row['dataset']}: decode {row['decode_s']:.2f} s + save {row['save_s']:.2f} s; "
            f"peak RSS (main) - baseline = {above / MIB:.1f} MiB "
            f"= {above / max(row['array_bytes'], 1):.2f} x final array "
            f"= staging array {mib(row['array_bytes'])} + other {rest / MIB:.1f}; "
            f"{row['worker_processes']} worker processes seen; "
            f"{row['rejected']} files rejected; imports took {row['imports_s']:.1f} s"
        )
    if args.json:
        write_json(
            args.json,
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": cpu_model(),
                "cores": os.cpu_count(),
                "command": command,
                "rows": rows,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
