"""`omnimouse data info STORE [--json]`: what a session store holds, per session and in total."""
from __future__ import annotations

from omnimouse_jax.data.store import open_store


def summarize(path) -> dict:
    """Per-session metadata plus totals: neural tokens (neurons x samples with responses) and their hours."""
    store = open_store(path)
    sessions = []
    for name in store.sessions:
        m = store.session(name).manifest
        sessions.append({
            "name": name, "animal": m["animal"], "n_neurons": m["n_neurons"], "n_trials": m["n_trials"],
            "n_samples": m["n_samples"], "tiers": m["tiers"], "sampling_rate": m["sampling_rate"],
            "frame_shape": m["frame_shape"], "behavior_channels": m["behavior_channels"],
            "neural_tokens": m["n_neurons"] * m["n_response_samples"],
            "hours": m["n_response_samples"] / m["sampling_rate"] / 3600,
        })
    return {
        "store": str(store.root), "sessions": sessions,
        "total": {"sessions": len(sessions), "animals": len({s["animal"] for s in sessions}),
                  "neurons": sum(s["n_neurons"] for s in sessions),
                  "neural_tokens": sum(s["neural_tokens"] for s in sessions),
                  "hours": sum(s["hours"] for s in sessions)},
    }
