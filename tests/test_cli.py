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
class Inner:
    pretrained: str = "hub/model"         # which weights
    steps: tuple[int, ...] = (4, 2)       # a schedule

    def __post_init__(self):
        if any(a <= b for a, b in zip(self.steps, self.steps[1:])):
            raise ValueError(f"steps must be decreasing, got {self.steps}")


@dataclasses.dataclass(frozen=True)
class Outer:
    lr: float = 1e-4                      # learning rate
    inner: Inner = dataclasses.field(default_factory=Inner, metadata={"flags": {"pretrained": "teacher"}})


def test_a_nested_config_is_flags_of_its_own_fields(capsys):
    """Each field of a nested config is one flag (renamed where asked), its default stated
    once in the nested config; build() and from_dict() make the same configs."""
    assert [f.name for f in cli.flags(Outer)] == ["lr", "teacher", "steps"]
    cfg = cli.parse(Outer, ["--teacher", "local/dir", "--steps", "9", "3", "1", "--lr", "0.5"])
    assert cfg == Outer(lr=0.5, inner=Inner(pretrained="local/dir", steps=(9, 3, 1)))
    assert cli.parse(Outer, []) == Outer()
    assert cli.build(Outer, teacher="local/dir", steps=[9, 3, 1], lr=0.5) == cfg
    assert cli.build(Outer, cfg, steps=(2,)) == Outer(lr=0.5, inner=Inner(pretrained="local/dir", steps=(2,)))
    assert cli.from_dict(Outer, dataclasses.asdict(cfg)) == cfg
    with pytest.raises(TypeError, match="no flag pretrained"):
        cli.build(Outer, pretrained="x")        # the flag is --teacher
    with pytest.raises(SystemExit):              # the nested config's own check, one line naming the flag
        cli.parse(Outer, ["--steps", "1", "2"])
    assert "error: --steps: must be decreasing, got (1, 2)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse(Outer, ["--help"])
    assert "--teacher TEACHER     which weights (default: hub/model)" in capsys.readouterr().out


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
    """The real configs: every flag of the restore and distillation jobs is explained, those of
    nested configs (the distillation's losses and upscaler) included."""
    from pipelines.restore.config import RestoreConfig
    from pipelines.train.distill import DistillTrainConfig

    for cls in (RestoreConfig, DistillTrainConfig):
        missing = [f.name for f in cli.flags(cls) if not f.help]
        assert missing == [], (cls.__name__, missing)
    assert "rate factor" in cli.field_help(RestoreConfig, "crf")
