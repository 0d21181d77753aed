"""`omnimouse data info`: its command-line arguments and their checks; omnimouse_jax.data.info does the work."""
from __future__ import annotations

import argparse
import json

from omnimouse_jax.data import info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="session store directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    summary = info.summarize(args.store)
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    for s in summary["sessions"]:
        tiers = ", ".join(f"{k} {v}" for k, v in sorted(s["tiers"].items()))
        layouts = ", ".join(f"{s[f'window_tokens_{k}']:,} {k.replace('_', ' ')}" for k in ("continuous", "per_clip")
                            if f"window_tokens_{k}" in s)
        print(f"{s['name']}: animal {s['animal']}, {s['n_neurons']} neurons, {s['n_trials']} trials ({tiers}), "
              f"{s['n_samples']} samples at {s['sampling_rate']:g} Hz, frames {s['frame_shape'][0]}x"
              f"{s['frame_shape'][1]}, behavior [{', '.join(s['behavior_channels'])}], {s['neural_tokens']:,} neural "
              f"tokens, {s['window_tokens']:,} in 2-s training windows"
              + (f" (imported: {layouts})" if layouts else ""))
    t = summary["total"]
    print(f"total: {t['sessions']} sessions, {t['animals']} animals, {t['neurons']} neurons, "
          f"{t['neural_tokens']:,} neural tokens ({t['window_tokens']:,} in 2-s training windows), "
          f"{t['hours']:.2f} hours with responses")
    return 0
