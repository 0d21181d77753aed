"""Run logs: `W/metrics.jsonl` (one JSON object per logged step), TensorBoard event files, and a progress line.

On resume, lines past the restored step (written after the last checkpoint by a run that then died) are dropped, so
the file reads as if the run had never been interrupted."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from tensorboardX import SummaryWriter

from omnimouse_jax.files import write_text_atomic


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


class MetricsLogger:
    def __init__(self, workdir, *, total_steps: int, resume_step: int = 0, tensorboard: bool = True,
                 stream=None):
        stream = stream or sys.stderr  # looked up per logger: a default bound at import outlives a swapped stderr
        self.path = Path(workdir) / "metrics.jsonl"
        self._truncate_after(resume_step)
        self.file = open(self.path, "a")
        self.total_steps, self.stream = total_steps, stream
        self.interactive = hasattr(stream, "isatty") and stream.isatty()
        self.start_time, self.start_step = time.monotonic(), resume_step
        self.writer = None
        if tensorboard:
            self.writer = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            if record.get("step", 0) <= step:
                kept.append(line)
        write_text_atomic(self.path, "".join(k + "\n" for k in kept))

    def write(self, record: dict) -> None:
        """Appends one record (must hold `step`) to metrics.jsonl and TensorBoard."""
        record = {k: _plain(v) for k, v in record.items()}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            prefix = f"{record['split']}/" if "split" in record else "train/"
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self.writer.add_scalar(prefix + key, value, record["step"])

    def progress(self, step: int, text: str) -> None:
        """A progress line with ETA: redrawn in place on a terminal, one line per call otherwise."""
        elapsed = time.monotonic() - self.start_time
        done = max(step - self.start_step, 1)
        eta = elapsed / done * max(self.total_steps - step, 0)
        line = f"step {step}/{self.total_steps} {text} | {elapsed:,.0f}s elapsed, ETA {eta:,.0f}s"
        if self.interactive:
            self.stream.write("\r" + line[:200].ljust(120))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.interactive:
            self.stream.write("\n")
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
        self.file.close()
        if self.writer is not None:
            self.writer.close()
