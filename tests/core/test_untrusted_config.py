"""Issue 29, config half: pipelines.yaml and --set read through the bounded YAML reader
(tasks/core/guards_yaml.py), and `cifar check` refusing what would only fail later
(flows/config_limits.py). Memory-bound cases run `cifar check` in a subprocess under
RLIMIT_AS, so the old reader's blow-up fails the test instead of the machine."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flows.config import load_settings, parse_set
from tasks.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
LIMIT = 1 << 30  # 1 GiB of address space: TF is never imported by `cifar check`


def bomb(levels: int, fanout: int = 9) -> str:
    """Nested aliases: level i is a list of ``fanout`` references to level i-1."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * fanout) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fanout) + "]")
    return "\n".join(lines) + f"\npipelines:\n  p:\n    description: *a{levels - 1}\n"


def check_in_subprocess(path: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({LIMIT}, {LIMIT}))
        sys.argv = ["cifar", "check", "--config", {str(path)!r}]
        from flows.cli import main
        sys.exit(main())
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=path.parent)


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return info.value.problems


def write(tmp_path: Path, text: str, name: str = "pipelines.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.mark.subprocess
@pytest.mark.parametrize("levels", [6, 9])  # 531 B and 774 B: 10^6 and 10^9 nodes once expanded
def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path, levels):
    p = tmp_path / "pipelines.yaml"
    p.write_text(bomb(levels))
    assert p.stat().st_size < 800
    r = check_in_subprocess(p)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "expands to more than 100,000 nodes once its aliases (*name) are expanded" in r.stderr
    assert "line " in r.stderr and "Traceback" not in r.stderr


def test_a_recursive_alias_and_deep_nesting_are_refused_by_line(tmp_path):
    got = problems(write(tmp_path, "x: &a [1, *a]\npipelines:\n  a: {}\n"))
    assert got == ["refused: line 1: an alias refers to an anchor that contains it (a recursive alias: "
                   "an endless value); refused. Remove the alias."]
    p = tmp_path / "deep.yaml"
    p.write_text("x: " + "[" * 100_000 + "]" * 100_000 + "\npipelines:\n  a: {}\n")
    (got,) = problems(p)
    assert got.startswith("refused: line 1: nested more than 64 levels deep")


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path):
    got = problems(write(tmp_path, """\
        pipelines:
          a:
            training: {epochs: 1}
          b: {}
          a:
            model: seed_cnn
    """))
    assert got == ["refused: line 5: key 'a' is given twice in one mapping (first on line 2); YAML would "
                   "silently keep only the last. Remove or rename one."]


def test_merge_keys_still_override_and_shared_blocks_still_load(tmp_path):
    s = load_settings(write(tmp_path, """\
        pipelines:
          a: {training: &base {epochs: 2, batch_size: 16}}
          b: {training: {<<: *base, epochs: 3}}
    """))
    assert (s.pipelines["a"].training.epochs, s.pipelines["b"].training.epochs) == (2, 3)
    assert s.pipelines["b"].training.batch_size == 16


def test_a_fifo_or_a_device_as_the_config_is_refused_unread(tmp_path):
    fifo = tmp_path / "pipelines.yaml"
    os.mkfifo(fifo)
    (got,) = problems(fifo)
    assert "is a FIFO (named pipe), not a regular file" in got
    (got,) = problems(Path("/dev/zero"))
    assert "is a character device, not a regular file" in got


def test_set_values_go_through_the_same_reader():
    assert parse_set(["training.epochs=3"]) == {"training.epochs": 3}
    bombed = bomb(6).split("\npipelines")[0].replace("\n", ", ")
    assert isinstance(parse_set([f"description={{{bombed}}}"])["description"], str)  # kept as text


@pytest.mark.parametrize("name", ["-rf", "a" * 300, "two words", "x/y", ".hidden", "猫"])
def test_pipeline_names_must_be_portable_file_names(tmp_path, name):
    (got,) = problems(write(tmp_path, f'pipelines:\n  "{name}": {{}}\n'))
    assert f"a pipeline name is a portable file name: a letter or digit, then at most 63" in got
    assert repr(name)[:40] in got


def test_portable_names_still_load(tmp_path):
    s = load_settings(write(tmp_path, "pipelines:\n  a.b_c-1: {}\n  " + "x" * 64 + ": {}\n"))
    assert list(s.pipelines) == ["a.b_c-1", "x" * 64]


def test_values_past_their_sane_range_are_refused_naming_the_range(tmp_path):
    got = problems(write(tmp_path, """\
        train_slots: 100000
        pipelines:
          a:
            keep_last: 10000000
            training: {epochs: 100000000000000000000000, batch_size: 100000000}
            dataset: {retries: 1000, read_timeout: 1.0e+9}
    """))
    assert "pipelines.a.training.epochs: must be within [1, 100,000], got 100,000,000,000,000,000,000,000; " \
           "a larger value would only fail later" in got
    assert "pipelines.a.training.batch_size: must be within [1, 65,536], got 100,000,000; a larger value " \
           "would only fail later" in got
    assert any(g.startswith("pipelines.a.keep_last: must be within [1, 1,000,000]") for g in got)
    assert any(g.startswith("pipelines.a.dataset.retries: must be within [0, 100]") for g in got)
    assert any(g.startswith("pipelines.a.dataset.read_timeout: must be within [0.001, 86,400]") for g in got)
    assert any(g.startswith("train_slots: must be within [1, 1,024]") for g in got)
    assert len(got) == 6, got


@pytest.mark.subprocess
def test_cifar_check_prints_one_paragraph_for_each_hostile_file(tmp_path):
    p = write(tmp_path, "pipelines:\n  a: {}\n  a: {}\n")
    r = check_in_subprocess(p)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "key 'a' is given twice in one mapping (first on line 2)" in r.stderr
