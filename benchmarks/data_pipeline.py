"""Input-pipeline throughput: batches/s, video frames/s, neural tokens/s and peak RSS, as JSON.

    python benchmarks/data_pipeline.py [--minutes 30] [--repeats 3] [--out benchmarks/out/data_pipeline.json]

Builds stores of random data with the real SessionWriter (4 sessions x 1000 neurons x `--minutes`, the same with 8000
neurons, and 4 vs 16 short sessions for the memory check), then reads each in a fresh process so that peak RSS is the
reader's alone. Throughput is the median over repeats, each a fresh process reading `--batches` batches after a
warm-up. Neural tokens counted are real (unpadded) neurons x samples delivered.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BLOCK, BATCH = 60, 32


def build_store(root: Path, sessions: int, neurons: int, minutes: float, seed: int = 0) -> None:
    from omnimouse_jax.data.store import SessionWriter

    rng = np.random.default_rng(seed)
    trial_len = 300
    n_trials = max(1, int(minutes * 60 * 30) // trial_len)
    video = rng.integers(0, 256, (trial_len, 36, 64), dtype=np.uint8)
    channels = ["pupil_dilation", "running_speed", "pupil_x", "pupil_y", "pupil_dilation_derivative"]
    for s in range(sessions):
        with SessionWriter(root, f"bench{s:02d}", animal=f"m{s}", n_neurons=neurons, frame_shape=(36, 64),
                           behavior_channels=channels) as writer:
            for i in range(n_trials):
                writer.add_trial(responses=rng.gamma(0.5, 1.0, (trial_len, neurons)).astype(np.float32),
                                 video=np.roll(video, i, axis=0), behavior=rng.normal(size=(trial_len, 5)),
                                 pupil_center=rng.normal(size=(trial_len, 2)), tier="train")


def read_benchmark(store_path: str, max_neurons: int, batches: int, threads: int) -> dict:
    """Runs in a fresh process: reads `batches` batches after a warm-up and reports rates and peak RSS."""
    from omnimouse_jax.data import pipeline
    from omnimouse_jax.data.layout import SessionLayout
    from omnimouse_jax.data.store import open_store

    store = open_store(store_path)
    windows = pipeline.TrainWindows(store, SessionLayout.from_store(store), block=BLOCK, max_neurons=max_neurons,
                                    global_batch=BATCH, seed=0)
    it = iter(pipeline.train_dataset(windows, num_threads=threads, prefetch=2 * threads))
    for _ in range(5):
        next(it)
    tokens = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        tokens += int(batch["neuron_mask"].sum()) * BLOCK
    seconds = time.perf_counter() - start
    return {"batches_per_s": batches / seconds, "video_frames_per_s": batches * BATCH * BLOCK / seconds,
            "neural_tokens_per_s": tokens / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _measure(store: Path, max_neurons: int, batches: int, threads: int, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--read", str(store), "--max-neurons", str(max_neurons),
                              "--batches", str(batches), "--threads", str(threads)],
                             check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    result = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    result["best_video_frames_per_s"] = max(r["video_frames_per_s"] for r in runs)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="recording length per session")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--max-neurons", type=int, default=4096)
    parser.add_argument("--read", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.read:
        print(json.dumps(read_benchmark(args.read, args.max_neurons, args.batches, args.threads)))
        return
    results = {"block_samples": BLOCK, "batch": BATCH, "threads": args.threads, "repeats": args.repeats,
               "cpu_count": os.cpu_count(), "minutes_per_session": args.minutes}
    with tempfile.TemporaryDirectory() as tmp:
        for neurons in (1000, 8000):
            store = Path(tmp) / f"n{neurons}"
            build_store(store, 4, neurons, args.minutes)
            results[f"4x{neurons}_neurons"] = _measure(store, min(neurons, args.max_neurons), args.batches,
                                                        args.threads, args.repeats)
            subprocess.run(["rm", "-rf", str(store)], check=True)
        for sessions in (4, 16):  # memory must not grow with the number of sessions
            store = Path(tmp) / f"s{sessions}"
            build_store(store, sessions, 1000, 5.0)
            results[f"rss_{sessions}_sessions"] = _measure(store, 1000, args.batches, args.threads, 1)["peak_rss_mb"]
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
