"""`omnimouse planted`: its command-line arguments and their checks; omnimouse_jax.evaluate.planted does the work."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from omnimouse_jax.errors import UserError
from omnimouse_jax.evaluate import planted


def add_arguments(parser) -> None:
    parser.add_argument("--workdir", required=True, help="trained run directory (newest checkpoint)")
    parser.add_argument("--store", help="digital-mouse store (default: the one the model was trained on)")
    parser.add_argument("--out", help="JSON path (default: WORKDIR/planted.json)")


def run(args) -> int:
    from omnimouse_jax.files import write_json_atomic
    from omnimouse_jax.evaluate.report import planted_markdown
    from omnimouse_jax.train.restore import load_trained

    trained = load_trained(args.workdir)
    store = Path(args.store or trained.config.data.root)
    if not (store / "catalog.json").is_file():
        where = "--store" if args.store else f"the run's config.data.root ({args.workdir}/config.json)"
        raise UserError(f"{store}: no session store there ({where}); pass the store the run was trained on with "
                        "--store")
    results = planted.planted_recovery(np.asarray(trained.model.identity.neuron_table[...]), trained.layout,
                                       store / "ground_truth")
    if not results:
        raise UserError(f"no session of {args.workdir} has the {planted.MIN_NEURONS} neurons the probe's nested "
                        "folds need")
    out = Path(args.out or Path(args.workdir) / "planted.json")
    write_json_atomic(out, {"step": trained.step, "store": str(store), "r2": results})
    print(f"cross-validated R^2 of planted neuron parameters from the learned embeddings, step {trained.step}")
    print(planted_markdown(results))
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    """`python -m omnimouse_jax.commands.planted ...` is `omnimouse planted ...`."""
    from omnimouse_jax import cli

    return cli.main(["planted", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
