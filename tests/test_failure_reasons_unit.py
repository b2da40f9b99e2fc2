"""A failed build's cause in one plain sentence (builds/failure.py ``explain``/``describe``).

The log tails here are what repo2docker 2026.4 printed in this project's
build container (``tests/helpers/dockerbuilder.py``) against the test git
server: a ref that does not exist, a closed git:// port, a missing
repository, a private one without or with wrong credentials, a Dockerfile
step running ``pip install`` of a missing or conflicting requirement, a step
killed with SIGKILL, and a base image whose registry is out of reach. The
cases this machine cannot produce (conda's solvers, a timed-out download, a
host name that does not resolve) use the messages those tools print, as
quoted in their own issue trackers.
"""

import pytest

from tljh_repo2docker.builds import failure

SUMMARY = "repo2docker exited with code 1"
R2D = "/opt/r2d/lib/python3.13/site-packages/repo2docker"

#: How repo2docker 2026.4 ends when its content provider raised ValueError.
FETCH_TRACEBACK = [
    '  File "/opt/r2d/bin/jupyter-repo2docker", line 8, in <module>',
    "    sys.exit(main())",
    "             ~~~~^^",
    f'  File "{R2D}/__main__.py", line 476, in main',
    "    r2d.start()",
    "    ~~~~~~~~~^^",
    f'  File "{R2D}/app.py", line 856, in start',
    "    self.build()",
    "    ~~~~~~~~~~^^",
    f'  File "{R2D}/app.py", line 738, in build',
    "    self.fetch(self.repo, self.ref, checkout_path)",
    "    ~~~~~~~~~~^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
    f'  File "{R2D}/app.py", line 516, in fetch',
    "    for log_line in picked_content_provider.fetch(",
    "                    ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~^",
    "        spec, checkout_path, yield_output=self.json_logs",
    "        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
    "    ):",
    "    ^",
]

#: A ref that does not exist: the traceback starts on the line of the message
#: (repo2docker logs it without a line end).
BAD_REF = [
    "Picked Git content provider.",
    "Cloning into '/tmp/repo2dockerrxx9ar1g'...",
    "Failed to check out ref does-not-existTraceback (most recent call last):",
    *FETCH_TRACEBACK,
    f'  File "{R2D}/contentproviders/git.py", line 57, in fetch',
    "    raise ValueError(msg)",
    "ValueError: Failed to check out ref does-not-exist",
]


def clone_failure(url, *git_lines, tmp="/tmp/repo2docker0lz0g5js"):
    """The end of a log whose ``git clone`` of ``url`` failed printing ``git_lines``."""
    return [
        "Picked Git content provider.",
        f"Cloning into '{tmp}'...",
        *git_lines,
        "Traceback (most recent call last):",
        f'  File "{R2D}/contentproviders/git.py", line 32, in fetch',
        "    yield from execute_cmd(cmd, capture=yield_output)",
        f'  File "{R2D}/utils.py", line 47, in execute_cmd',
        "    raise subprocess.CalledProcessError(ret, cmd)",
        "subprocess.CalledProcessError: Command "
        f"'['git', 'clone', '--no-checkout', '{url}', '{tmp}']' returned non-zero exit status 128.",
        "",
        "The above exception was the direct cause of the following exception:",
        "",
        "Traceback (most recent call last):",
        *FETCH_TRACEBACK,
        f'  File "{R2D}/contentproviders/git.py", line 39, in fetch',
        "    raise ContentProviderException(msg) from e",
        "repo2docker.contentproviders.base.ContentProviderException: "
        f"Failed to clone repository from {url} (ref main).",
    ]


#: How repo2docker 2026.4 ends when ``docker buildx build`` failed.
BUILD_TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "/opt/r2d/bin/jupyter-repo2docker", line 8, in <module>',
    "    sys.exit(main())",
    f'  File "{R2D}/app.py", line 819, in build',
    "    for l in picked_buildpack.build(",
    "    ...<6 lines>...",
    f'  File "{R2D}/utils.py", line 76, in execute_cmd',
    "    raise subprocess.CalledProcessError(ret, cmd)",
    "subprocess.CalledProcessError: Command '['docker', 'buildx', 'build', '--progress', 'plain', "
    "'--build-arg', 'NB_USER=jovyan', '--build-arg', 'NB_UID=1000', '--file', 'Dockerfile', "
    "'--tag', 'tljh-repo2docker-build-t147f69637313:257173fc98d7', '--platform', 'linux/amd64', "
    "'/tmp/repo2dockerugs5avig']' returned non-zero exit status 1.",
]


def step_failure(step, command, output, exit_code=1):
    """BuildKit's plain output of a failed Dockerfile step ``#step``, then repo2docker's end."""
    stamped = [f"#{step} 0.465 {line}" for line in output]
    return [
        "Using DockerBuildPack builder",
        '#0 building with "default" instance using docker driver',
        "",
        "#4 [internal] load metadata for docker.io/tljh-repo2docker-test/singleuser:latest",
        "#4 DONE 0.0s",
        "",
        f"#{step} [3/3] RUN {command}",
        *stamped,
        f"#{step} ERROR: executor failed running [/bin/sh -c {command}]: exit code: {exit_code}",
        "------",
        f" > [3/3] RUN {command}:",
        *(f"0.465 {line}" for line in output[-10:]),
        "------",
        "ERROR: failed to solve: executor failed running "
        f"[/bin/sh -c {command}]: exit code: {exit_code}",
        *BUILD_TRACEBACK,
    ]


# -- git: the ref, the repository, the host, the credentials ----------------------


def test_a_ref_that_does_not_exist():
    assert failure.explain(BAD_REF) == "The ref 'does-not-exist' does not exist in the repository."
    reason = failure.describe(SUMMARY, BAD_REF)
    assert reason == "The ref 'does-not-exist' does not exist in the repository. (" + SUMMARY + ")"
    assert "Traceback" not in reason


def test_the_master_branch_that_is_not_there():
    lines = [
        "Failed to check out the 'master' branch. Maybe the default branch is not named 'master' "
        "for this repository.Traceback (most recent call last):",
        *FETCH_TRACEBACK,
    ]
    assert failure.explain(lines) == "The ref 'master' does not exist in the repository."


def test_a_git_host_that_refuses_the_connection():
    # git:// does not say the port: the repository URL repo2docker names does.
    lines = clone_failure(
        "git://127.0.0.1:9418/x.git",
        "fatal: unable to connect to 127.0.0.1:",
        "127.0.0.1[0: 127.0.0.1]: errno=Connection refused",
        "",
    )
    assert failure.explain(lines) == "The git host 127.0.0.1:9418 could not be reached."
    # The summary was cut ("…connect to 127.0.0.1:"): the sentence is whole.
    reason = failure.describe(SUMMARY, lines)
    assert reason.startswith("The git host 127.0.0.1:9418 could not be reached.")


def test_an_http_git_host_that_refuses_the_connection():
    lines = clone_failure(
        "http://127.0.0.1:9/x.git",
        "fatal: unable to access 'http://127.0.0.1:9/x.git/': "
        "Failed to connect to 127.0.0.1 port 9 after 0 ms: Could not connect to server",
    )
    assert failure.explain(lines) == "The git host 127.0.0.1:9 could not be reached."


def test_a_git_host_whose_name_does_not_resolve():
    url = "https://git.example.invalid/owner/repo.git"
    lines = clone_failure(
        url, f"fatal: unable to access '{url}/': Could not resolve host: git.example.invalid"
    )
    assert failure.explain(lines) == (
        "The git host git.example.invalid could not be found: check the repository URL."
    )


def test_a_git_host_that_does_not_answer_in_time():
    url = "https://github.com/owner/repo.git"
    lines = clone_failure(
        url,
        f"fatal: unable to access '{url}/': "
        "Failed to connect to github.com port 443 after 134912 ms: Connection timed out",
    )
    assert failure.explain(lines) == (
        "The git host github.com did not answer in time: try again later."
    )


def test_a_repository_that_does_not_exist():
    url = "http://127.0.0.1:34677/no-such-repo.git"
    lines = clone_failure(url, f"fatal: repository '{url}/' not found")
    assert failure.explain(lines) == f"The repository {url} was not found: check its URL."


def test_a_private_repository_without_credentials():
    url = "http://127.0.0.1:39537/repo-e8543fa6.git"
    lines = clone_failure(
        url,
        "fatal: could not read Username for 'http://127.0.0.1:39537': terminal prompts disabled",
    )
    assert failure.explain(lines) == (
        "The git host 127.0.0.1:39537 asked for credentials: "
        "the repository is private or does not exist."
    )


def test_refused_credentials():
    url = "http://127.0.0.1:39537/repo-15a28320.git"
    lines = clone_failure(
        url, "remote: authentication required", f"fatal: Authentication failed for '{url}/'"
    )
    assert failure.explain(lines) == (
        "The git host 127.0.0.1:39537 refused the credentials: "
        "check the username and the password or token."
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://teacher:s3cr3t-pass@git.example.org/course/repo.git",
        "https://ghp_t0kenvalue@github.com/course/repo.git",
    ],
)
def test_credentials_in_a_url_are_never_repeated(url):
    """A URL typed with user:password@ (or a token@) is said without them."""
    lines = clone_failure(url, f"fatal: Authentication failed for '{url}/'")
    for reason in (failure.explain(lines), failure.describe(SUMMARY, lines)):
        assert "s3cr3t" not in reason and "teacher" not in reason and "t0ken" not in reason, reason
        assert "refused the credentials" in reason
    # The fallback line too, whatever it is.
    other = [f"error: something unexpected happened with {url}"]
    assert failure.explain(other) is None
    reason = failure.describe(SUMMARY, other)
    assert "s3cr3t" not in reason and "t0ken" not in reason and "git" in reason, reason
    assert failure.redact(url) == "https://" + url.split("@", 1)[1]


def test_ssh_keys_refused():
    lines = clone_failure(
        "git@github.com:course/repo.git",
        "git@github.com: Permission denied (publickey).",
        "fatal: Could not read from remote repository.",
    )
    assert failure.explain(lines) == (
        "The git host github.com refused access over SSH: use an https:// URL instead."
    )


# -- dependencies ------------------------------------------------------------------


def test_pip_finds_no_version():
    lines = step_failure(
        5,
        "pip install --no-index nosuchpkg-tljh==1.0",
        [
            "ERROR: Could not find a version that satisfies the requirement nosuchpkg-tljh==1.0 "
            "(from versions: none)",
            "ERROR: No matching distribution found for nosuchpkg-tljh==1.0",
        ],
    )
    assert failure.explain(lines) == (
        "pip could not find a version of 'nosuchpkg-tljh' that satisfies the requirement "
        "'nosuchpkg-tljh==1.0'."
    )
    bare = step_failure(
        5, "pip install nosuchpkg", ["ERROR: No matching distribution found for nosuchpkg"]
    )
    assert failure.explain(bare) == (
        "pip could not find a version of 'nosuchpkg' that satisfies the requirement."
    )


def test_pip_without_the_package_index():
    lines = step_failure(
        9,
        "pip install -r requirements.txt",
        [
            "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, "
            "status=None)) "
            "after connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection."
            "HTTPSConnection object at 0x7f>: Failed to establish a new connection: [Errno -3] "
            "Temporary failure in name resolution')': /simple/numpy/",
            "ERROR: Could not find a version that satisfies the requirement numpy "
            "(from versions: none)",
            "ERROR: No matching distribution found for numpy",
        ],
    )
    assert failure.explain(lines) == "pip could not reach the package index to download 'numpy'."


PIP_CONFLICT = [
    "Looking in links: /tmp/wheels",
    "Processing /tmp/wheels/alpha-1.0-py3-none-any.whl",
    "Processing /tmp/wheels/beta-1.0-py3-none-any.whl",
    "INFO: pip is looking at multiple versions of alpha to determine which version is compatible "
    "with other requirements. This could take a while.",
    "ERROR: Cannot install alpha==1.0 and beta==1.0 because these package versions have "
    "conflicting dependencies.",
    "",
    "The conflict is caused by:",
    "    The user requested beta==1.0",
    "    alpha 1.0 depends on beta==2.0",
    "",
    "To fix this you could try to:",
    "1. loosen the range of package versions you've specified",
    "2. remove package versions to allow pip to attempt to solve the dependency conflict",
    "",
    "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/"
    "dependency-resolution/#dealing-with-dependency-conflicts",
]


def test_pip_cannot_resolve_the_dependencies():
    command = "pip install --no-index --find-links /tmp/wheels alpha==1.0 beta==1.0"
    lines = step_failure(7, command, PIP_CONFLICT)
    assert failure.explain(lines) == (
        "pip could not install alpha==1.0 and beta==1.0 together: their dependencies conflict "
        "(alpha 1.0 depends on beta==2.0)."
    )
    # The tail the backends keep holds the line even after repo2docker's traceback.
    assert failure.explain(lines[-failure.TAIL_LINES :]) == failure.explain(lines)
    # Only BuildKit's summary of the step left: ResolutionImpossible is enough.
    summary_only = [f"0.465 {line}" for line in PIP_CONFLICT[-6:]] + BUILD_TRACEBACK
    assert failure.explain(summary_only) == (
        "pip could not find versions of the requirements that work together."
    )


def test_conda_packages_not_found():
    lines = [
        "Solving environment: failed",
        "",
        "PackagesNotFoundError: The following packages are not available from current channels:",
        "",
        "  - nosuchpkg",
        "",
        "Current channels:",
        "",
        "  - https://conda.anaconda.org/conda-forge/linux-64",
        "  - https://conda.anaconda.org/conda-forge/noarch",
    ]
    assert failure.explain(lines) == (
        "conda could not find the package 'nosuchpkg' in the channels of environment.yml."
    )


def test_mamba_packages_not_found():
    lines = step_failure(
        8,
        '${MAMBA_EXE} env update -p ${NB_PYTHON_PREFIX} --file "environment.yml"',
        [
            "error    libmamba Could not solve for environment specs",
            "    The following package could not be installed",
            "    └─ nosuchpkg   does not exist (perhaps a typo or a missing channel).",
            "critical libmamba Could not solve for environment specs",
        ],
    )
    assert failure.explain(lines) == (
        "conda could not find the package 'nosuchpkg' in the channels of environment.yml."
    )
    older = [
        "Encountered problems while solving:",
        "  - nothing provides requested nosuchpkg 1.0**",
    ]
    assert failure.explain(older) == (
        "conda could not find the package 'nosuchpkg' in the channels of environment.yml."
    )


def test_conda_packages_that_do_not_fit_together():
    for line in (
        "UnsatisfiableError: The following specifications were found to be incompatible with "
        "each other:",
        "    The following packages are incompatible",
    ):
        assert failure.explain(["Solving environment: failed", line]) == (
            "conda could not find versions of the packages in environment.yml that work together."
        )


# -- the machine: disk, memory, network ----------------------------------------------


def test_a_step_killed_most_likely_for_memory():
    command = (
        "echo before && python3 -c 'import os, signal; os.kill(os.getpid(), signal.SIGKILL)' "
        "&& echo after"
    )
    lines = step_failure(5, command, ["before", "Killed"], exit_code=137)
    sentence = failure.explain(lines)
    assert sentence.startswith("The build was killed, most likely because it ran out of memory")
    # repo2docker itself killed (its container's exit code)
    killed = failure.explain(["Step 3/9 : RUN pip install big"], "repo2docker exited with code 137")
    assert killed == sentence
    # bash says it its own way
    bash = step_failure(
        5,
        "bash -c 'python3 big.py; exit $?'",
        ["bash: line 1:     7 Killed                  python3 big.py"],
        exit_code=137,
    )
    assert failure.explain(bash) == sentence
    # "Killed" in other words is not a kill.
    other = step_failure(5, "./cleanup.sh", ["Killed 3 stale processes", "oops"], exit_code=2)
    assert failure.explain(other) is None


def test_out_of_memory():
    lines = ["Collecting torch", "  Downloading torch-2.3.0.whl (779.1 MB)", "MemoryError"]
    assert failure.explain(lines).startswith(
        "The build ran out of memory: give the build machine more memory"
    )


def test_disk_space_is_still_said_first():
    lines = ["write /var/lib/docker/tmp/x: no space left on device", *BUILD_TRACEBACK]
    reason = failure.describe(SUMMARY, lines)
    assert reason.startswith("The build ran out of disk space")


def test_a_download_that_timed_out():
    lines = [
        "pip._vendor.urllib3.exceptions.ReadTimeoutError: HTTPSConnectionPool("
        "host='files.pythonhosted.org', port=443): Read timed out.",
    ]
    assert failure.explain(lines) == (
        "Downloading from files.pythonhosted.org timed out: try again later."
    )
    # A retry that pip announced, then a failure of another kind: not a timeout.
    retried = step_failure(
        6,
        "pip install -r requirements.txt && exit 3",
        [
            "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, "
            "status=None)) after connection broken by 'ReadTimeoutError(\"HTTPSConnectionPool("
            "host='pypi.org', port=443): Read timed out. (read timeout=15)\")': /simple/numpy/",
            "Successfully installed numpy-2.0.0",
        ],
        exit_code=3,
    )
    assert failure.explain(retried) is None


def test_a_base_image_out_of_reach():
    lines = [
        "Using PythonBuildPack builder",
        "#3 [internal] load metadata for docker.io/library/buildpack-deps:24.04",
        '#3 ERROR: failed to do request: Head "https://registry-1.docker.io/v2/library/'
        'buildpack-deps/manifests/24.04": dial tcp: lookup registry-1.docker.io on '
        "10.255.255.53:53: no such host",
        "------",
        " > [internal] load metadata for docker.io/library/buildpack-deps:24.04:",
        "------",
        "ERROR: failed to solve: rpc error: code = Unknown desc = failed to solve with frontend "
        "dockerfile.v0: failed to create LLB definition: failed to do request: Head "
        '"https://registry-1.docker.io/v2/library/buildpack-deps/manifests/24.04": dial tcp: '
        "lookup registry-1.docker.io on 10.255.255.53:53: no such host",
        *BUILD_TRACEBACK,
    ]
    assert failure.explain(lines) == (
        "The base image docker.io/library/buildpack-deps:24.04 could not be downloaded: "
        "its registry could not be reached."
    )
    missing = [
        "#2 [internal] load metadata for docker.io/library/nosuchimage:1",
        "#2 ERROR: docker.io/library/nosuchimage:1: not found",
    ]
    assert failure.explain(missing) == (
        "The base image docker.io/library/nosuchimage:1 does not exist in its registry, "
        "or may not be pulled."
    )


# -- the rest: unchanged ------------------------------------------------------------


def test_other_failures_keep_the_line_that_says_why():
    lines = step_failure(5, "echo about-to-fail && exit 3", ["about-to-fail"], exit_code=3)
    assert failure.explain(lines) is None
    assert failure.describe(SUMMARY, lines) == (
        f"{SUMMARY}: ERROR: failed to solve: executor failed running "
        "[/bin/sh -c echo about-to-fail && exit 3]: exit code: 3"
    )


def test_binderhub_summary_goes_after_the_sentence():
    reason = failure.describe("The build failed on BinderHub", BAD_REF)
    assert reason == (
        "The ref 'does-not-exist' does not exist in the repository. (The build failed on BinderHub)"
    )


def test_binderhub_that_cannot_resolve_the_ref():
    """BinderHub runs ``git ls-remote`` itself before building (binderhub/builder.py), and
    fails with its stderr; tests/test_binderhub_real.py sees it end to end."""
    message = (
        "Error resolving ref for git:git%3A%2F%2F127.0.0.1%3A9%2Fbhr-noref.git/HEAD: "
        "Unable to run git ls-remote to get the `resolved_ref`: "
        "fatal: unable to connect to 127.0.0.1:\n"
        "127.0.0.1[0: 127.0.0.1]: errno=Connection refused\n\n"
    )
    reason = failure.describe("The build failed on BinderHub", message.splitlines())
    assert reason == (
        "Error resolving ref: the git host 127.0.0.1:9 could not be reached. "
        "(The build failed on BinderHub)"
    )
    # A detail no rule knows: BinderHub's own line, as before.
    other = ["Error resolving ref for gh:owner/repo/main: rate limited"]
    assert failure.describe("The build failed on BinderHub", other) == (
        "The build failed on BinderHub: Error resolving ref for gh:owner/repo/main: rate limited"
    )


def test_a_glued_traceback_is_its_own_line():
    glued = ["\x1b[31mFailed to check out ref xTraceback (most recent call last):", "  "]
    assert failure.split_lines(glued) == [
        "Failed to check out ref x",
        "Traceback (most recent call last):",
    ]
