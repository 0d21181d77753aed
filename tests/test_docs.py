"""Documentation against behaviour: the README's command table, the splits table in docs/data.md, the demo's time."""
import re
from pathlib import Path

from omnimouse_jax import cli
from omnimouse_jax.data.pipeline import SPLITS
from omnimouse_jax.scaling.columns import FORM_NAMES

ROOT = Path(__file__).parents[1]


def test_readme_lists_every_command_and_fit_form():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The command surface", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("| `omnimouse"))
    for group, name in cli.COMMANDS:
        assert f"`omnimouse {group + ' ' if group else ''}{name}" in table, name
    fit_row = next(line for line in table.splitlines() if line.startswith("| `omnimouse fit"))
    assert "\\|".join(FORM_NAMES) in fit_row


def test_data_doc_states_the_tiers_of_each_split():
    text = (ROOT / "docs" / "data.md").read_text().split("## Splits", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (.+) \|$", text, flags=re.M)
    assert {split: tuple(re.findall(r"`(\w+)`", tiers)) for split, tiers in rows} == SPLITS


def test_the_demo_time_is_the_one_measured_figure_everywhere():
    readme = (ROOT / "README.md").read_text()
    total, sweep = re.search(r"(\d+) s in all \(synthesis \d+ s, sweep (\d+) s", readme).groups()
    for path in (ROOT / "docs" / "reproducing.md", ROOT / "experiments" / "sweeps" / "scaling_demo.py"):
        text = " ".join(path.read_text().split())
        assert f"took {sweep} s of the demo's {total} s" in text, path
        assert not re.search(r"demo[^.]*about \d+ minutes", text), path


def test_readme_says_how_to_open_the_logs_and_see_tracebacks():
    readme = (ROOT / "README.md").read_text()
    assert "pip install tensorboard" in readme and "tensorboard --logdir" in readme  # tensorboardX only writes
    assert "OMNIMOUSE_DEBUG=1" in readme and "--debug" in readme
