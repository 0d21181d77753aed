"""Sensorium import throughput and random 2-second window reads from the store; prints one JSON object.

    .venv/bin/python benchmarks/import_and_read.py [--neurons 1000 8000] [--mb 100] [--repeats 5]

For each neuron count: a Sensorium-layout session of ~`--mb` MB (300-frame trials, 36x64 float32 videos with integral
values, float32 responses) is generated with numpy in a temporary directory, imported `--repeats` times (MB/s of
source bytes), then `--reads` random 60-sample windows (responses of all neurons, video, behavior) are read per repeat.
Medians are reported.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_source(root: Path, n_neurons: int, megabytes: float, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = 300
    trial_bytes = t * (n_neurons * 4 + 36 * 64 * 4 + 4 * 8)
    n_trials = max(2, int(megabytes * 1e6 // trial_bytes))
    folder = root / f"dynamic{n_neurons}-1-1-Video-bench"
    for key in ("videos", "responses", "behavior", "pupil_center"):
        (folder / "data" / key).mkdir(parents=True)
    for i in range(n_trials):
        np.save(folder / "data/videos" / f"{i}.npy", rng.integers(0, 256, (36, 64, t)).astype(np.float32))
        np.save(folder / "data/responses" / f"{i}.npy", rng.gamma(2.0, 1.0, (n_neurons, t)).astype(np.float32))
        np.save(folder / "data/behavior" / f"{i}.npy", rng.normal(0, 1, (2, t)))
        np.save(folder / "data/pupil_center" / f"{i}.npy", rng.normal(0, 1, (2, t)))
    (folder / "meta/trials").mkdir(parents=True)
    (folder / "meta/neurons").mkdir(parents=True)
    np.save(folder / "meta/trials/tiers.npy", np.array(["train"] * (n_trials - 1) + ["oracle"]))
    np.save(folder / "meta/neurons/unit_ids.npy", np.arange(n_neurons))
    np.save(folder / "meta/neurons/cell_motor_coordinates.npy", rng.normal(0, 1, (n_neurons, 3)))
    return folder


def bench(n_neurons: int, megabytes: float, repeats: int, reads: int, workdir: Path) -> dict:
    from omnimouse_jax.data.sensorium import find_sources, import_session
    from omnimouse_jax.data.store import open_store

    folder = make_source(workdir, n_neurons, megabytes)
    source_mb = sum(p.stat().st_size for p in (folder / "data").rglob("*.npy")) / 1e6
    import_mbps = []
    for r in range(repeats):
        (source,) = find_sources([folder])
        t0 = time.perf_counter()
        import_session(source, workdir / "store", replace=r > 0, log=lambda line: None)
        import_mbps.append(source_mb / (time.perf_counter() - t0))
    session = open_store(workdir / "store").session(folder.name)
    rng = np.random.default_rng(1)
    fields = ("responses", "video", "behavior")
    reads_per_s = []
    for _ in range(repeats):
        starts = rng.integers(0, session.n_samples - 60, reads)
        t0 = time.perf_counter()
        for start in starts:
            session.read(int(start), int(start) + 60, fields=fields)
        reads_per_s.append(reads / (time.perf_counter() - t0))
    return {"neurons": n_neurons, "trials": session.n_trials, "source_mb": round(source_mb, 1),
            "import_mb_per_s": round(statistics.median(import_mbps), 1),
            "window_reads_per_s": round(statistics.median(reads_per_s), 1),
            "window_mb": round(60 * (n_neurons * 4 + 36 * 64 + 3 * 4 * 5) / 1e6, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, nargs="+", default=[1000, 8000])
    parser.add_argument("--mb", type=float, default=100.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reads", type=int, default=500)
    args = parser.parse_args()
    results = []
    for n in args.neurons:
        with tempfile.TemporaryDirectory() as tmp:
            results.append(bench(n, args.mb, args.repeats, args.reads, Path(tmp)))
    experanto = bench_experanto(max(args.neurons), minutes=20.0)
    print(json.dumps({"benchmark": "import_and_read", "results": results, "experanto": experanto}, indent=1))


def make_experanto_source(folder: Path, n_neurons: int, minutes: float, response_hz: float, seed: int = 0) -> Path:
    """An experanto-layout session: 10 s video clips (36x64 uint8) on a jittered 30 Hz screen, `response_hz`
    responses with phase shifts in a float32 memmap written in chunks, 20 Hz eye tracker and treadmill."""
    import yaml

    rng = np.random.default_rng(seed)
    n_clips, clip_frames = max(1, int(minutes * 6)), 300
    screen = folder / "screen"
    (screen / "data").mkdir(parents=True)
    (screen / "meta").mkdir()
    tiers = ["train"] * 8 + ["validation", "oracle"]
    for k in range(n_clips):
        np.save(screen / "data" / f"{k:05d}.npy", rng.integers(0, 256, (clip_frames, 36, 64), dtype=np.uint8))
        meta = {"modality": "video", "first_frame_idx": k * clip_frames, "num_frames": clip_frames,
                "image_size": [36, 64], "tier": tiers[k % len(tiers)], "condition_hash": f"clip{k}"}
        (screen / "meta" / f"{k:05d}.yml").write_text(yaml.safe_dump(meta))
    frame_t = np.cumsum((1 + rng.uniform(-0.05, 0.05, n_clips * clip_frames)) / 30.0)
    np.save(screen / "timestamps.npy", frame_t)
    (screen / "meta.yml").write_text(yaml.safe_dump({"modality": "screen", "frame_rate": 30.0}))

    def device(name, rate, n_signals, shifts=None, chunk=4096):
        root = folder / name
        (root / "meta").mkdir(parents=True)
        t = np.arange(-1.0, frame_t[-1] + 1.0, 1.0 / rate)
        data = np.memmap(root / "data.mem", dtype=np.float32, mode="w+", shape=(len(t), n_signals))
        for s in range(0, len(t), chunk):
            data[s:s + chunk] = rng.gamma(2.0, 1.0, (min(chunk, len(t) - s), n_signals))
        data.flush()
        np.save(root / "timestamps.npy", t)
        if shifts is not None:
            np.save(root / "meta" / "phase_shifts.npy", shifts)
        meta = {"modality": "sequence", "sampling_rate": rate, "n_signals": n_signals, "n_timestamps": len(t),
                "dtype": "float32", "start_time": float(t[0]), "end_time": float(t[-1]),
                "phase_shift_per_signal": shifts is not None, "is_mem_mapped": True}
        (root / "meta.yml").write_text(yaml.safe_dump(meta))

    device("responses", response_hz, n_neurons, shifts=rng.uniform(0, 1 / response_hz, n_neurons))
    device("eye_tracker", 20.0, 3)
    device("treadmill", 20.0, 1)
    return folder


def bench_experanto(n_neurons: int, minutes: float, response_rates=(8.0, 30.0)) -> list[dict]:
    """Experanto import throughput (MB/s of source bytes, 30 Hz samples/s) for each response rate, both modes."""
    from omnimouse_jax.data.experanto import find_sources, import_session
    from omnimouse_jax.data.store import open_store

    rows = []
    for rate in response_rates:
        with tempfile.TemporaryDirectory() as tmp:
            folder = make_experanto_source(Path(tmp) / f"dynamic{n_neurons}-1-1-Video-bench_30hz", n_neurons,
                                           minutes, rate)
            source_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
            for mode in ("nearest", "linear"):
                (source,) = find_sources([folder])
                t0 = time.perf_counter()
                import_session(source, Path(tmp) / "store", interpolation=mode, replace=True, log=lambda line: None)
                seconds = time.perf_counter() - t0
                samples = open_store(Path(tmp) / "store").session(folder.name).n_samples
                rows.append({"neurons": n_neurons, "minutes": minutes, "response_hz": rate, "interpolation": mode,
                             "source_mb": round(source_mb, 1), "import_mb_per_s": round(source_mb / seconds, 1),
                             "samples_per_s": round(samples / seconds, 1), "seconds": round(seconds, 1)})
    return rows


if __name__ == "__main__":
    main()
