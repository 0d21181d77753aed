"""One module per `omnimouse` command: its `add_arguments(parser)` and `run(args)`, which check the arguments and
call the library (data/, train/, evaluate/, scaling/, demo.py) with plain values. The top layer: nothing in the
library imports from here (tests/test_layers.py)."""
