"""Small two-photon NWB files written with pynwb, for import tests.

The default file: two imaging planes (3 + 2 ROIs, ids 10..12 and 20..21) with irregular ~12 Hz and ~9 Hz DfOverF
timestamps from 0 s to 1 s after the last trial; six trials of 2.5 s starting every 3.5 s from 1 s (tier column:
train x4, oracle, validation) during which a 6 x 8 uint8 movie plays at ~30 Hz, onsets jittered by 1-3 ms (the first
frame exactly at the trial start; nothing is shown between trials); running speed at irregular ~20 Hz in
processing/behavior; pupil area in PupilTracking and pupil position (x, y) in EyeTracking at ~25 Hz. Returns the truth
as numpy arrays.
"""
from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

FRAME = (6, 8)
TRIAL_SECONDS = 2.5
TIERS = ["train", "train", "oracle", "train", "validation", "train"]


def _irregular(rng, start, stop, rate, jitter=0.3):
    n = int((stop - start) * rate) + 2
    t = start + np.concatenate([[0.0], np.cumsum((1 + rng.uniform(-jitter, jitter, n)) / rate)])
    return t[t <= stop]


def make_nwb(path, *, seed: int = 0, trials: str = "trials", stimulus: str = "image_series", rgb: bool = False,
             fluorescence_too: bool = False, behavior: bool = True, subject: str | None = "mouseA",
             n_trials: int = 6, response_gap: tuple[float, float] | None = None) -> dict:
    """Writes an NWB file at `path`; returns the truth: trial starts/stops/tiers, per-plane (times, data), movie
    onsets and frames (gray, as the importer should store them), running (times, data), pupil area, position.

    `n_trials` other than 6 writes no tier column; `response_gap` (a, b) removes plane 0's samples between a and b."""
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.base import ImageReferences, Images
    from pynwb.behavior import EyeTracking, PupilTracking, SpatialSeries
    from pynwb.file import Subject
    from pynwb.image import GrayscaleImage, ImageSeries, IndexSeries, OpticalSeries, RGBImage
    from pynwb.ophys import DfOverF, Fluorescence, ImageSegmentation, OpticalChannel

    rng = np.random.default_rng(seed)
    nwb = NWBFile(session_description="test session", identifier=f"test-{seed}",
                  session_start_time=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
                  subject=Subject(subject_id=subject, species="Mus musculus") if subject else None)
    starts = 1.0 + 3.5 * np.arange(n_trials)
    duration = starts[-1] + TRIAL_SECONDS + 1.0
    tiers = TIERS if n_trials == len(TIERS) else None
    truth = {"starts": starts, "stops": starts + TRIAL_SECONDS, "tiers": tiers, "planes": []}

    device = nwb.create_device(name="scope")
    ophys = nwb.create_processing_module(name="ophys", description="optical physiology")
    segmentation = ImageSegmentation()
    ophys.add(segmentation)
    dff, fluo = DfOverF(), Fluorescence()
    ophys.add(dff)  # before its series, so their ROI regions share an ancestor with the segmentation
    if fluorescence_too:
        ophys.add(fluo)
    for k, (n_rois, rate, first_id) in enumerate(((3, 12.0, 10), (2, 9.0, 20))):
        plane = nwb.create_imaging_plane(
            name=f"plane{k}", optical_channel=OpticalChannel(name="green", description="GCaMP", emission_lambda=510.0),
            description="V1", device=device, excitation_lambda=920.0, indicator="GCaMP6s", location="V1",
            imaging_rate=rate)
        seg = segmentation.create_plane_segmentation(name=f"rois{k}", description="cells", imaging_plane=plane)
        for r in range(n_rois):
            seg.add_roi(id=first_id + r, pixel_mask=[(r, k, 1.0)])
        region = seg.create_roi_table_region(region=list(range(n_rois)), description="all")
        times = _irregular(rng, 0.0, duration, rate)
        if response_gap is not None and k == 0:
            times = times[(times < response_gap[0]) | (times > response_gap[1])]
        data = rng.gamma(2.0, 1.0, (len(times), n_rois)).astype(np.float32)
        dff.create_roi_response_series(name=f"plane{k}", data=data, rois=region, unit="n.a.", timestamps=times)
        if fluorescence_too:
            fluo.create_roi_response_series(name=f"plane{k}", data=data * 100, rois=region, unit="a.u.",
                                            timestamps=times)
        truth["planes"].append((times, data))

    # The movie: per trial 75 frames, onsets jittered by 1 to 3 ms either way (so no onset is within float rounding of
    # a grid time) except the first, exactly at the trial start.
    n_per_trial = int(TRIAL_SECONDS * 30)
    jitter = rng.uniform(1e-3, 3e-3, (len(starts), n_per_trial)) * rng.choice([-1, 1], (len(starts), n_per_trial))
    jitter[:, 0] = 0.0
    onsets = (starts[:, None] + np.arange(n_per_trial) / 30 + jitter).ravel()
    n_frames = len(onsets)
    if rgb:
        color = rng.integers(0, 256, (n_frames, *FRAME, 3), dtype=np.uint8)
        frames = color
        gray = np.round(color.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    else:
        frames = gray = rng.integers(0, 256, (n_frames, *FRAME), dtype=np.uint8)
    if stimulus == "image_series":
        nwb.add_stimulus(ImageSeries(name="movie", data=frames, unit="n.a.", timestamps=onsets))
        truth["frames"] = gray
    elif stimulus == "optical_acquisition":
        nwb.add_acquisition(OpticalSeries(name="movie", data=frames, unit="n.a.", timestamps=onsets, distance=0.1,
                                          field_of_view=[0.2, 0.3], orientation="lower left"))
        truth["frames"] = gray
    elif stimulus == "index_series":
        # 5 template images shown in a seeded order; an image is a GrayscaleImage (or RGBImage) in an Images container.
        cls = RGBImage if rgb else GrayscaleImage
        images = [cls(name=f"img{i}", data=frames[i]) for i in range(5)]
        templates = Images(name="templates", images=images, description="natural images",
                           order_of_images=ImageReferences(name="order_of_images", data=images))
        nwb.add_stimulus_template(templates)
        which = rng.integers(0, 5, n_frames).astype(np.uint32)
        nwb.add_stimulus(IndexSeries(name="scenes", data=which, indexed_images=templates, unit="N/A",
                                     timestamps=onsets))
        truth["frames"] = gray[:5][which]
    truth["onsets"] = onsets

    if behavior:
        module = nwb.create_processing_module(name="behavior", description="running and eye")
        run_t = _irregular(rng, 0.0, duration, 20.0)
        speed = rng.normal(5.0, 2.0, len(run_t))
        module.add(TimeSeries(name="running_speed", data=speed, unit="cm/s", timestamps=run_t))
        eye_t = _irregular(rng, 0.0, duration, 25.0)
        area = 100 + 10 * np.sin(eye_t)
        module.add(PupilTracking(time_series=TimeSeries(name="pupil_area", data=area, unit="px^2", timestamps=eye_t)))
        position = rng.normal(0, 3, (len(eye_t), 2))
        module.add(EyeTracking(spatial_series=SpatialSeries(name="pupil_position", data=position, timestamps=eye_t,
                                                            reference_frame="camera")))
        truth.update(running=(run_t, speed), area=(eye_t, area), position=(eye_t, position))

    if trials == "trials" and tiers is not None:
        nwb.add_trial_column(name="tier", description="data split")
        for a, b, tier in zip(truth["starts"], truth["stops"], tiers):
            nwb.add_trial(start_time=float(a), stop_time=float(b), tier=tier)
    elif trials == "trials":
        for a, b in zip(truth["starts"], truth["stops"]):
            nwb.add_trial(start_time=float(a), stop_time=float(b))
    elif trials == "epochs":
        for a, b in zip(truth["starts"], truth["stops"]):
            nwb.add_epoch(start_time=float(a), stop_time=float(b), tags=["movie"])
    with NWBHDF5IO(str(Path(path)), "w") as io:
        io.write(nwb)
    return truth
