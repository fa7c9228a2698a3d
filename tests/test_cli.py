import dataclasses

import pytest

from pipelines.common import cli


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


@dataclasses.dataclass(frozen=True)
class Documented:
    # --- a section header (not help text)
    plain: int = 1                        # one line of help
    long: str = "x"                       # help that runs on
                                          # over two lines
    # a comment above the field
    above: float = 0.5
    bare: bool = False


def test_help_is_each_fields_comment(capsys):
    with pytest.raises(SystemExit):
        cli.parse(Documented, ["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--plain PLAIN one line of help (default: 1)" in out
    assert "--long LONG help that runs on over two lines (default: x)" in out
    assert "--above ABOVE a comment above the field (default: 0.5)" in out
    assert "section header" not in out
    assert cli.field_help(Documented, "bare") == ""


def test_every_job_flag_has_a_sentence():
    """The real configs: every field of the restore and distillation jobs is explained."""
    from pipelines.restore.config import RestoreConfig
    from pipelines.train.distill import DistillTrainConfig

    for cls in (RestoreConfig, DistillTrainConfig):
        missing = [f.name for f in dataclasses.fields(cls) if not cli.field_help(cls, f.name)]
        assert missing == [], (cls.__name__, missing)
    assert "rate factor" in cli.field_help(RestoreConfig, "crf")
