"""`omnimouse data info STORE [--json]`: what a session store holds, per session and in total."""
from __future__ import annotations

import argparse
import json


def summarize(path) -> dict:
    """Per-session metadata plus totals: neural tokens (neurons x samples with responses) and their hours."""
    from omnimouse_jax.data.store import open_store

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="session store directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    summary = summarize(args.store)
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    for s in summary["sessions"]:
        tiers = ", ".join(f"{k} {v}" for k, v in sorted(s["tiers"].items()))
        print(f"{s['name']}: animal {s['animal']}, {s['n_neurons']} neurons, {s['n_trials']} trials ({tiers}), "
              f"{s['n_samples']} samples at {s['sampling_rate']:g} Hz, frames {s['frame_shape'][0]}x"
              f"{s['frame_shape'][1]}, behavior [{', '.join(s['behavior_channels'])}]")
    t = summary["total"]
    print(f"total: {t['sessions']} sessions, {t['animals']} animals, {t['neurons']} neurons, "
          f"{t['neural_tokens']:,} neural tokens, {t['hours']:.2f} hours with responses")
    return 0
