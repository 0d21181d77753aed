"""`omnimouse data info STORE [--json]`: what a session store holds, per session and in total."""
from __future__ import annotations

from omnimouse_jax.data.pipeline import eligible_trials
from omnimouse_jax.data.schema import WINDOW_SAMPLES
from omnimouse_jax.data.store import open_store


def window_samples(session) -> int:
    """Samples of the train trials the trainer can draw a WINDOW_SAMPLES-sample window from (every one of their
    samples lies in some window)."""
    rows = eligible_trials(session, ("train",), WINDOW_SAMPLES, 1.0, require_responses=True)
    return int((session.trials["stop"][rows] - session.trials["start"][rows]).sum())


def summarize(path) -> dict:
    """Per-session metadata plus totals: neural tokens (neurons x samples with responses), those in 2-s training
    windows (and, for an experanto import, what the other trial layout would give) and their hours."""
    store = open_store(path)
    sessions = []
    for name in store.sessions:
        session = store.session(name)
        m = session.manifest
        imported = m.get("provenance", {}).get("train_samples_in_windows", {})
        sessions.append({
            "name": name, "animal": m["animal"], "n_neurons": m["n_neurons"], "n_trials": m["n_trials"],
            "n_samples": m["n_samples"], "tiers": m["tiers"], "sampling_rate": m["sampling_rate"],
            "frame_shape": m["frame_shape"], "behavior_channels": m["behavior_channels"],
            "neural_tokens": m["n_neurons"] * m["n_response_samples"],
            "window_tokens": m["n_neurons"] * window_samples(session),
            **{f"window_tokens_{layout}": m["n_neurons"] * imported[layout] for layout in ("per_clip", "continuous")
               if imported.get(layout) is not None},
            "hours": m["n_response_samples"] / m["sampling_rate"] / 3600,
        })
    return {
        "store": str(store.root), "sessions": sessions,
        "total": {"sessions": len(sessions), "animals": len({s["animal"] for s in sessions}),
                  "neurons": sum(s["n_neurons"] for s in sessions),
                  "neural_tokens": sum(s["neural_tokens"] for s in sessions),
                  "window_tokens": sum(s["window_tokens"] for s in sessions),
                  "hours": sum(s["hours"] for s in sessions)},
    }
