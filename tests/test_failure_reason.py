"""The one rule that picks a failed build's reason from its log (builds/failure.py).

The Docker backend and the BinderHub backend both store what it picks; the
lines here are the kind each really prints (tests/test_docker_builder.py and
tests/test_binderhub_real.py see them end to end).
"""

from tljh_repo2docker.builds import failure

#: What BinderHub relays of a failed repo2docker build: the error line, then
#: repo2docker's summary, the whole command line.
BINDERHUB_FAILURE = [
    "#5 [2/2] RUN echo about to fail && exit 3",
    "#5 0.120 about to fail",
    '#5 ERROR: process "/bin/sh -c echo about to fail && exit 3" did not complete successfully: exit code: 3',
    '\x1b[31mERROR: failed to solve: process "/bin/sh -c echo about to fail && exit 3" '
    "did not complete successfully: exit code: 3\x1b[0m",
    "docker buildx build --progress plain --load -t r2d-abc:123 --label repo2docker.ref=123 "
    + "--build-arg NB_USER=jovyan " * 20,
    "",
]


def test_error_line_wins_over_the_command_line():
    reason = failure.describe("The build failed on BinderHub", BINDERHUB_FAILURE)
    assert reason == (
        'The build failed on BinderHub: ERROR: failed to solve: process "/bin/sh -c echo about '
        'to fail && exit 3" did not complete successfully: exit code: 3'
    )


def test_a_line_mentioning_an_error_when_none_starts_like_one():
    lines = ["Step 1/3 : FROM base", "Error during build: The command '/bin/sh -c pip' returned 1"]
    assert failure.describe("X", lines) == "X: Error during build: The command '/bin/sh -c pip' returned 1"


def test_last_line_otherwise_and_summary_alone_without_lines():
    assert failure.describe("X", ["cloning", "  building  ", ""]) == "X: building"
    assert failure.describe("X", []) == "X"


def test_no_space_left_is_said_first():
    lines = ["write /var/lib/docker/tmp/x: no space left on device", "ERROR: failed to solve: exit code: 1"]
    reason = failure.describe("X", lines)
    assert reason.startswith("The build ran out of disk space")
    assert "no space left on device" in reason


def test_long_lines_are_cut():
    reason = failure.describe("X", ["ERROR: " + "y" * 2000])
    assert len(reason) == len("X: ") + failure.MAX_REASON
