import dataclasses

import pytest

from pipelines import cli


@dataclasses.dataclass(frozen=True)
class Example:
    src: str = "in"                       # a path
    clip_len: int = 8                     # frames
    lr: float = 2e-5                      # learning rate
    timesteps: tuple[int, ...] = (750, 500, 250, 0)
    resume: bool = True
    name: str | None = None


def test_defaults_and_overrides():
    assert cli.parse(Example, []) == Example()
    cfg = cli.parse(Example, ["--clip-len", "4", "--lr", "1e-4", "--timesteps", "999", "0",
                              "--no-resume", "--name", "run1"])
    assert cfg == Example(clip_len=4, lr=1e-4, timesteps=(999, 0), resume=False, name="run1")
    assert cli.parse(Example, ["--name", "none"]).name is None


def test_bad_value_is_rejected():
    with pytest.raises(SystemExit):
        cli.parse(Example, ["--clip-len", "four"])


def test_tuple_flag_repeats_and_replaces_the_default():
    cfg = cli.parse(Example, ["--timesteps", "999", "--timesteps", "500", "0"])
    assert cfg.timesteps == (999, 500, 0)            # repeated: accumulated, default not kept
    assert cli.parse(Example, ["--timesteps", "7"]).timesteps == (7,)
    assert cli.parse(Example, []).timesteps == (750, 500, 250, 0)
