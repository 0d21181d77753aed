"""Small Sensorium 2023-layout sessions built with numpy, for import tests (frame axis last, as in the source)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

NAME = "dynamic29156-11-10-Video-8744edeac3b4d1ce16b680916b5267ce"
FRAME = (6, 8)


def make_session(parent, name: str = NAME, *, lengths=(30, 24, 27, 30), n_neurons: int = 5,
                 tiers=("train", "train", "oracle", "live_test_main"), float_video: bool = False,
                 missing_responses=(), nan_responses=(3,), seed: int = 0) -> tuple[Path, dict]:
    """Writes a session folder under `parent`; returns it and the source arrays {key: [per-trial arrays]}."""
    rng = np.random.default_rng(seed)
    folder = Path(parent) / name
    arrays = {"videos": [], "responses": [], "behavior": [], "pupil_center": []}
    for key in arrays:
        (folder / "data" / key).mkdir(parents=True)
    for i, t in enumerate(lengths):
        video = rng.normal(100, 40, (*FRAME, t)) if float_video else rng.integers(0, 256, (*FRAME, t)).astype(np.float32)
        responses = rng.gamma(2.0, 1.0, (n_neurons, t)).astype(np.float32)
        if i in nan_responses:
            responses[:] = np.nan
        trial = {"videos": video, "responses": responses, "behavior": rng.normal(0, 1, (2, t)),
                 "pupil_center": rng.normal(0, 5, (2, t)).astype(np.float32)}
        for key, value in trial.items():
            arrays[key].append(value)
            if not (key == "responses" and i in missing_responses):
                np.save(folder / "data" / key / f"{i}.npy", value)
    (folder / "meta" / "trials").mkdir(parents=True)
    (folder / "meta" / "neurons").mkdir(parents=True)
    np.save(folder / "meta" / "trials" / "tiers.npy", np.array(tiers))
    np.save(folder / "meta" / "neurons" / "unit_ids.npy", np.arange(100, 100 + n_neurons))
    np.save(folder / "meta" / "neurons" / "cell_motor_coordinates.npy", rng.normal(0, 100, (n_neurons, 3)))
    (folder / "meta" / "statistics" / "behavior" / "all").mkdir(parents=True)
    np.save(folder / "meta" / "statistics" / "behavior" / "all" / "mean.npy", np.array([1.5, 2.5]))
    (folder / "config.json").write_text(json.dumps({"modality": "video"}))
    return folder, arrays


def zip_session(folder: Path, zip_path: Path, nested: bool = False) -> Path:
    """Zips a session folder with the folder at the zip's top level, or nested one level under `outer/`."""
    prefix = f"outer/{folder.name}" if nested else folder.name
    with zipfile.ZipFile(zip_path, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{prefix}/{path.relative_to(folder)}")
    return zip_path
