"""Names every part of the data path agrees on."""
from __future__ import annotations

# The store's behavior channels, in the order of every behavior array: Sensorium 2023's two source channels, then
# the pupil centre and the pupil's rate of change, derived at import.
BEHAVIOR_CHANNELS = ("pupil_dilation", "running_speed", "pupil_x", "pupil_y", "pupil_dilation_derivative")
# The paper's block, 2 s at 30 Hz: a train sample can be trained on when a window of this many samples holds it
# (what `omnimouse data info` and the experanto import count; the trainer's block is config.data.block_samples).
WINDOW_SAMPLES = 60
