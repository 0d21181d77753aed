"""Config files and command-line overrides."""
import pytest

from omnimouse_jax.config import load_config, split_overrides
from omnimouse_jax.errors import UserError

CONFIG = "experiments/configs/omnimouse.py"


def test_overrides_keep_types_and_reach_nested_keys():
    config = load_config(f"{CONFIG}:size=test", [("train.steps", "7"), ("optim.lr", "1"), ("data.root", "/x"),
                                                  ("mesh.fsdp", "2"), ("masking.neuron_counts", "(2, 4)")])
    assert config.train.steps == 7 and isinstance(config.train.steps, int)
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.data.root == "/x" and config.mesh.fsdp == 2 and tuple(config.masking.neuron_counts) == (2, 4)


def test_unknown_key_names_close_matches():
    with pytest.raises(UserError, match=r"--config.train.step: no such config key; did you mean train.steps"):
        load_config(f"{CONFIG}:size=test", [("train.step", "7")])


def test_wrong_type_is_rejected():
    with pytest.raises(UserError, match="train.steps=many: expected a int"):
        load_config(f"{CONFIG}:size=test", [("train.steps", "many")])


def test_missing_file_and_bad_arg():
    with pytest.raises(UserError, match="nope.py: no such file"):
        load_config("nope.py")
    with pytest.raises(UserError, match="size"):
        load_config(f"{CONFIG}:size=huge")


def test_split_overrides_both_spellings():
    rest, overrides = split_overrides(["--workdir", "w", "--config.a.b=1", "--config.c", "x"])
    assert rest == ["--workdir", "w"] and overrides == [("a.b", "1"), ("c", "x")]


def test_sessions_take_all_or_a_list_of_names():
    cfg = load_config(CONFIG, [("data.sessions", "[mouse-a, mouse-b]")])
    assert tuple(cfg.data.sessions) == ("mouse-a", "mouse-b")
    cfg = load_config(CONFIG, [("data.sessions", '["mouse-a", "mouse-b"]')])
    assert tuple(cfg.data.sessions) == ("mouse-a", "mouse-b")
    assert load_config(CONFIG, [("data.sessions", "all")]).data.sessions == "all"
    # other string fields still take the text as it is
    assert load_config(CONFIG, [("masking.mix", "[a, b]")]).masking.mix == "[a, b]"


def test_a_config_that_is_not_python_is_named(tmp_path):
    yaml = tmp_path / "config.yaml"
    yaml.write_text("train:\n  steps: 5\n")
    with pytest.raises(UserError, match=r"config.yaml: not a Python file; expected path/to/config.py"):
        load_config(str(yaml))
