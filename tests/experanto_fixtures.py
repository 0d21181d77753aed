"""Small OmniMouse (experanto per-device) sessions built with numpy and PyYAML, for import tests.

The default session: a ~30 Hz screen with jittered frame times presenting seven clips (a video followed by a 0.2 s
pause, a blank, a video, a still image held 0.5 s, another blank, a repeat of the first video, a last video); irregular ~8 Hz responses with per-neuron phase shifts in a
float32 memmap; a 20 Hz eye tracker (float64 data.npy, columns named in shuffled order, dilation linear in time) and a
20 Hz treadmill with a gap inside clip 2. Every device starts 1 s before the first frame and ends 1 s after the last.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

NAME = "dynamic17797-4-7-Video-021a75e56847d574b9acbcc06c675055_30hz"
FRAME = (6, 8)
# (modality, frames, tier, stimulus id, seconds from the clip's last frame to the next clip's first, if not ~1/30)
CLIPS = (("video", 40, "train", "a", 0.2), ("blank", 1, None, None, 0.3), ("video", 36, "train", "b", None),
         ("image", 1, "oracle", "c", 0.5), ("blank", 1, None, None, 0.3), ("video", 40, "validation", "a", None),
         ("video", 30, "final_test_main", "d", None))
EYE_NAMES = ["pupil_y", "pupil_dilation", "extra", "pupil_x"]
TREADMILL_GAP_CLIP = 2          # the treadmill has no samples between frames 10 and 22 of this clip
TREADMILL_GAP_FRAMES = (10, 22)
# Image-session-like: 1-s clips and still images between blanks (each shown 0.5 s), one final-test clip, every device
# covering every frame.
SHORT_CLIPS = (("blank", 1, None, None, 0.5), ("video", 30, "train", "p", None), ("blank", 1, None, None, 0.5),
               ("video", 30, "train", "q", None), ("image", 1, "train", "r", 1.0),
               ("video", 30, "final_test_main", "s", None), ("blank", 1, None, None, 0.3),
               ("video", 30, "train", "t", 0.2), ("video", 30, "train", "u", None))
BLANK_LEVEL = 96  # the blanks' interleave_value


def write_sequence(folder: Path, timestamps, data, *, phase_shifts=None, memmap: bool = True,
                   signal_names=None) -> None:
    """A sequence device folder: data.mem (or data.npy), timestamps.npy, meta.yml and meta/{means,stds}.npy."""
    folder = Path(folder)
    (folder / "meta").mkdir(parents=True)
    data = np.asarray(data)
    if memmap:
        data.tofile(folder / "data.mem")
    else:
        np.save(folder / "data.npy", data)
    np.save(folder / "timestamps.npy", np.asarray(timestamps, np.float64))
    meta = {"modality": "sequence", "sampling_rate": float(1 / np.median(np.diff(timestamps))),
            "n_signals": int(data.shape[1]), "n_timestamps": int(data.shape[0]), "dtype": str(data.dtype),
            "start_time": float(timestamps[0]), "end_time": float(timestamps[-1]),
            "phase_shift_per_signal": phase_shifts is not None, "is_mem_mapped": memmap}
    if signal_names is not None:
        meta["signal_names"] = list(signal_names)
    if phase_shifts is not None:
        np.save(folder / "meta" / "phase_shifts.npy", np.asarray(phase_shifts, np.float64))
    np.save(folder / "meta" / "means.npy", np.nanmean(data, 0))
    np.save(folder / "meta" / "stds.npy", np.nanstd(data, 0))
    (folder / "meta.yml").write_text(yaml.safe_dump(meta))


def _irregular(rng, start, stop, rate, jitter):
    """Sample times from `start` to `stop` every 1/rate s, each interval scaled by 1 +- `jitter`."""
    n = int((stop - start) * rate) + 2
    t = start + np.concatenate([[0.0], np.cumsum((1 + rng.uniform(-jitter, jitter, n)) / rate)])
    return t[t <= stop]


def make_session(parent, name: str = NAME, *, n_neurons: int = 6, seed: int = 0, clips_spec=CLIPS,
                 treadmill_gap: bool = True) -> tuple[Path, dict]:
    """Writes the default session (or the clips of `clips_spec`, as CLIPS lays them out) under `parent`; returns its
    folder and the truth: frame times, per-clip frame ranges and frames, and each device's timestamps, data and phase
    shifts. `treadmill_gap`: the treadmill misses frames TREADMILL_GAP_FRAMES of clip TREADMILL_GAP_CLIP."""
    rng = np.random.default_rng(seed)
    folder = Path(parent) / name
    screen = folder / "screen"
    (screen / "data").mkdir(parents=True)
    (screen / "meta").mkdir()
    intervals, clips, first = [], [], 0
    for k, (modality, n, tier, stimulus, hold) in enumerate(clips_spec):
        gaps = (1 + rng.uniform(-0.1, 0.1, n)) / 30
        if hold is not None:
            gaps[-1] = hold
        intervals.extend(gaps)
        meta = {"modality": modality, "first_frame_idx": first, "image_size": list(FRAME)}
        if modality == "video":
            meta["num_frames"] = n
        if tier is not None:
            meta["tier"] = tier
            meta["condition_hash"] = stimulus
        else:
            meta["interleave_value"] = BLANK_LEVEL
        (screen / "meta" / f"{k:05d}.yml").write_text(yaml.safe_dump(meta))
        frames = None
        if modality != "blank":
            frames = (clips[0]["frames"] if stimulus == "a" and k
                      else rng.integers(0, 256, (n, *FRAME)).astype(np.uint8))
            np.save(screen / "data" / f"{k:05d}.npy", frames if modality == "video" else frames[0])
        clips.append({"first": first, "n": n, "frames": frames, "modality": modality, "tier": tier})
        first += n
    frame_times = 100.0 + np.concatenate([[0.0], np.cumsum(intervals[:-1])])
    np.save(screen / "timestamps.npy", frame_times)
    (screen / "meta.yml").write_text(yaml.safe_dump({"modality": "screen", "frame_rate": 30.0}))

    lo, hi = frame_times[0] - 1.0, frame_times[-1] + 1.0
    resp_t = _irregular(rng, lo, hi, 8.0, 0.05)
    shifts = rng.uniform(0, 1 / 8, n_neurons)
    responses = rng.gamma(2.0, 1.0, (len(resp_t), n_neurons)).astype(np.float32)
    write_sequence(folder / "responses", resp_t, responses, phase_shifts=shifts)
    np.save(folder / "responses" / "meta" / "unit_ids.npy", np.arange(100, 100 + n_neurons))
    np.save(folder / "responses" / "meta" / "cell_motor_coordinates.npy", rng.normal(0, 100, (n_neurons, 3)))

    eye_t = _irregular(rng, lo, hi, 20.0, 0.02)
    eye = rng.normal(0, 3, (len(eye_t), len(EYE_NAMES)))
    eye[:, EYE_NAMES.index("pupil_dilation")] = 2.0 + 0.5 * (eye_t - 100.0)  # linear in time: a closed form
    write_sequence(folder / "eye_tracker", eye_t, eye, memmap=False, signal_names=EYE_NAMES)

    tread_t = _irregular(rng, lo, hi, 20.0, 0.02)
    if treadmill_gap:
        gap_clip = clips[TREADMILL_GAP_CLIP]
        g0, g1 = frame_times[gap_clip["first"] + np.array(TREADMILL_GAP_FRAMES)]
        tread_t = tread_t[(tread_t < g0) | (tread_t > g1)]
    treadmill = rng.normal(5, 2, (len(tread_t), 1)).astype(np.float32)
    write_sequence(folder / "treadmill", tread_t, treadmill)

    truth = {"frame_times": frame_times, "clips": clips,
             "responses": (resp_t, responses, shifts), "eye_tracker": (eye_t, eye), "treadmill": (tread_t, treadmill)}
    return folder, truth
