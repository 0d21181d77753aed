"""Scores of a fine-tuned model on its new sessions only (omnimouse_jax/train/finetune.py trains it).

    from omnimouse_jax.evaluate.finetune_scores import score_sessions
    score_sessions(W2)["response/correlation"]

Unlike `omnimouse evaluate`, which scores every session of the extended layout, this needs a store holding only the
new sessions (docs/finetuning.md).
"""
from __future__ import annotations

from omnimouse_jax.data import pipeline
from omnimouse_jax.data.store import open_store
from omnimouse_jax.evaluate.metrics import MetricSuite
from omnimouse_jax.evaluate.regimes import CEILING_FIELD, ModelPredictor, eval_stride
from omnimouse_jax.train.finetune import SubLayout
from omnimouse_jax.train.restore import load_trained


def score_sessions(workdir, sessions=None, *, store=None, split: str = "test", preset: str = "video_behavior",
                   batch_size: int | None = None) -> dict:
    """MetricSuite results of the model of `workdir` on `sessions` only (default: the sessions it trained on,
    config.data.sessions) of `split`, under masking `preset`, from the store it trained on (or `store`). The
    neural-prediction score is result["response/correlation"]; on digital mice, result["ceiling"] holds the same
    metrics of the true rates. Unlike `omnimouse evaluate`, the store needs only these sessions."""
    trained = load_trained(workdir)
    config = trained.config
    if sessions is None:
        chosen = config.data.get("sessions", "all")
        sessions = trained.layout.names if chosen == "all" else tuple(chosen)
    view = SubLayout.of(trained.layout, list(sessions))
    store = open_store(store or config.data.root)
    ceiling = all(CEILING_FIELD in store.session(n).extra_fields for n in view.sub.names)
    T = int(config.model.num_samples)
    windows = pipeline.EvalWindows(store, view.sub, block=T, max_neurons=int(config.model.max_neurons),
                                   global_batch=batch_size or int(config.train.batch_size), seed=int(config.seed),
                                   tier=split, stride=eval_stride([preset], T),
                                   extra_fields=(CEILING_FIELD,) if ceiling else ())
    predictor = ModelPredictor(trained, view.apply(windows(0)))
    suites = {"model": MetricSuite(view.sub), **({"ceiling": MetricSuite(view.sub)} if ceiling else {})}
    for b in range(len(windows)):
        host = windows(b)
        predictions, masks = predictor.fetch(predictor.dispatch(predictor.device_batch(view.apply(host)), preset))
        suites["model"].update(predictions, host, masks)
        if ceiling:
            suites["ceiling"].update({"rates": host[CEILING_FIELD]}, host, masks)
    result = suites["model"].result()
    if ceiling:
        result["ceiling"] = suites["ceiling"].result()
    result.update(workdir=str(workdir), step=trained.step, sessions=list(view.sub.names), split=split, preset=preset)
    return result
