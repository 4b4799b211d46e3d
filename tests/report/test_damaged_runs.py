"""A damaged run file (issue 15): the index of every other run still renders, naming the file it
skipped, and an intact run's report is unaffected; the damaged run's own report names the file.
Two pipelines of run folders from tests/runfolders.py, one file damaged per case. Listing the
runs: tests/core/test_runs.py; the terminal: tests/flows/test_cli_faults.py."""

from __future__ import annotations

import pytest

from runfolders import DAMAGES, damage, two_pipelines


@pytest.mark.parametrize("case", list(DAMAGES))
def test_a_damaged_run_file_is_skipped_by_name_and_the_rest_still_renders(tmp_path, case):
    from tasks.core.runs import RunFolderError
    from tasks.report.rendering import regenerate, render_index

    env = two_pipelines(tmp_path)
    pipeline_name, name, how = DAMAGES[case]
    path = damage(env, pipeline_name, name, how)

    index = render_index(env.art).read_text()  # the index of the others still renders
    for d in env.alpha:
        assert d.name in index
    if name not in ("history.json", "predictions.npz"):  # the index reads neither
        assert str(path) in index and 'id="skipped"' in index

    report, _ = regenerate(env.alpha[1], env.art)  # an intact run's report is unaffected
    assert report.is_file()
    if name == "metrics.json" and how == "fifo":
        return  # the run is incomplete to `cifar report` (no regular metrics.json): covered above
    assert report.is_file()
    if name != "registry.json":
        with pytest.raises(RunFolderError) as info:
            regenerate(env.beta[0], env.art)
        assert str(path) in str(info.value)
