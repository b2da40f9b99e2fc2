"""Content pulled at launch, without a hub: the fields' checks, the
user_options they make, the puller's script (run with the local git on a
local repository), the spawners' part (default URL, the kube pod's init
container) and the configuration that hands the spawners the puller's image.
"""

import os
import shutil
import socket
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest
from traitlets.config import Config

from tests.helpers.fakes import NOWHERE_KUBECONFIG
from tljh_repo2docker import contract, hub_config
from tljh_repo2docker.errors import FieldError
from tljh_repo2docker.service.content import checked_content, content_dir, parse_content
from tljh_repo2docker.spawners import content as puller

REPO = "https://git.example.org/course/intro-python.git"


# -- the fields ---------------------------------------------------------------


def test_content_makes_the_user_options_shape():
    content = parse_content({"content": REPO, "content_ref": "main"})
    assert content == {
        "repo": REPO, "ref": "main", "dir": "intro-python", "urlpath": "lab/tree/intro-python"
    }
    options = contract.with_content({"image": "x", "environment": "u"}, content)
    assert options[contract.CONTENT_OPTION] == content
    assert options["image"] == "x"


def test_urlpath_is_kept_without_its_leading_slash():
    content = parse_content({"content": REPO, "urlpath": "/lab/tree/notebooks/intro.ipynb"})
    assert content["urlpath"] == "lab/tree/notebooks/intro.ipynb"
    assert content["ref"] == ""


def test_no_content_is_none():
    assert parse_content({}) is None
    assert parse_content({"content": "", "urlpath": "lab"}) is None


@pytest.mark.parametrize(
    "body, field",
    [
        ({"content": "https://user:secret@git.example.org/x.git"}, "content"),
        ({"content": "https://token@git.example.org/x.git"}, "content"),
        ({"content": "file:///etc/passwd"}, "content"),
        ({"content": "/srv/repos/x"}, "content"),
        ({"content": "ftp://git.example.org/x.git"}, "content"),
        ({"content": "-oProxyCommand=x@h:p"}, "content"),
        ({"content": "https://git.example.org/x y.git"}, "content"),
        ({"content": 7}, "content"),
        ({"content": "https://" + "a" * 3000}, "content"),
        ({"content": REPO, "content_ref": "-x"}, "content_ref"),
        ({"content": REPO, "content_ref": "a..b"}, "content_ref"),
        ({"content": REPO, "content_ref": ["main"]}, "content_ref"),
        ({"content_ref": "main"}, "content_ref"),
        ({"content": REPO, "urlpath": "../../hub/admin"}, "urlpath"),
        ({"content": REPO, "urlpath": "lab/tree/%2e%2e/x"}, "urlpath"),
        ({"content": REPO, "urlpath": "https://evil.example.org/"}, "urlpath"),
        ({"content": REPO, "urlpath": "//evil.example.org/x"}, "urlpath"),
        ({"content": REPO, "urlpath": "javascript:alert(1)"}, "urlpath"),
        ({"content": REPO, "urlpath": "lab\\..\\x"}, "urlpath"),
        ({"urlpath": "../x"}, "urlpath"),
    ],
)
def test_refusals_name_the_field(body, field):
    with pytest.raises(FieldError) as info:
        parse_content(body)
    assert info.value.field == field
    assert info.value.status_code == 400
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    "repo, folder",
    [
        ("https://github.com/owner/notebooks.git", "notebooks"),
        ("https://github.com/owner/notebooks/", "notebooks"),
        ("https://github.com/owner/..git", "content"),
        ("https://github.com/owner/.hidden", "hidden"),
        ("https://host/a/we%20ird$name", "we-20ird-name"),
        ("git@github.com:owner/lessons.git", "lessons"),
        ("https://host/", "content"),
    ],
)
def test_the_folder_is_a_safe_name_from_the_repository(repo, folder):
    assert content_dir(repo) == folder


def test_spawners_check_the_content_again():
    # anyone may send the hub user_options: the folder always comes from the repository
    sent = {"content": {"repo": REPO, "ref": "", "dir": "../../etc", "urlpath": ""}}
    assert checked_content(sent)["dir"] == "intro-python"
    assert checked_content({"image": "x"}) is None
    for bad in ({"content": "x"}, {"content": {"repo": "file:///etc"}}, {"content": {"ref": "main"}}):
        with pytest.raises(FieldError):
            checked_content(bad)


def test_the_default_puller_image_is_the_builders():
    from tljh_repo2docker.builds.docker import DockerBuilder

    assert DockerBuilder.repo2docker_image.default_value == contract.DEFAULT_REPO2DOCKER_IMAGE


# -- the puller's script, with the local git ----------------------------------------

GIT = ("git", "-c", "user.name=t", "-c", "user.email=t@example.invalid")


def commit(repo, files, message):
    for path, text in files.items():
        target = repo / path
        if text is None:
            target.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", message], cwd=repo, check=True)


@pytest.fixture
def upstream(tmp_path):
    repo = tmp_path / "upstream"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    commit(repo, {"intro.ipynb": "line 1\nline 2\n", "README.md": "readme\n"}, "first")
    return repo


def pull(upstream, home, ref=""):
    content = {"repo": str(upstream), "ref": ref, "dir": "course"}
    env = {**os.environ, **puller.environment(content, str(home))}
    return subprocess.run(puller.command(), env=env, capture_output=True, text=True, timeout=60)


def test_clone_then_update_keeps_the_users_work(upstream, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    assert pull(upstream, home).returncode == 0
    course = home / "course"
    assert (course / "intro.ipynb").read_text() == "line 1\nline 2\n"
    # the user edits a notebook, deletes the README, makes a file upstream will add
    (course / "intro.ipynb").write_text("line 1\nmy answer\n")
    (course / "README.md").unlink()
    (course / "data.csv").write_text("mine\n")
    commit(upstream, {"intro.ipynb": "line 1\nline 2 fixed\n", "new.ipynb": "new\n", "data.csv": "up\n"}, "two")
    result = pull(upstream, home)
    assert result.returncode == 0, result.stderr
    assert (course / "intro.ipynb").read_text() == "line 1\nmy answer\n"  # theirs kept
    assert (course / "README.md").read_text() == "readme\n"  # deleted: back
    assert (course / "new.ipynb").read_text() == "new\n"  # new upstream file arrived
    assert (course / "data.csv").read_text() == "up\n"
    moved = [p for p in course.iterdir() if p.name.startswith("data_")]
    assert [p.read_text() for p in moved] == ["mine\n"]  # their file moved, not lost
    # nothing of the user's reached the remote
    log = subprocess.run(["git", "log", "--format=%s", "main"], cwd=upstream, capture_output=True, text=True)
    assert log.stdout.split() == ["two", "first"]
    # a third pull with nothing new changes nothing
    assert pull(upstream, home).returncode == 0
    assert (course / "intro.ipynb").read_text() == "line 1\nmy answer\n"


def test_a_ref_is_checked_out(upstream, tmp_path):
    subprocess.run(["git", "branch", "lesson2"], cwd=upstream, check=True)
    subprocess.run(["git", "checkout", "-q", "lesson2"], cwd=upstream, check=True)
    commit(upstream, {"lesson2.ipynb": "2\n"}, "lesson 2")
    subprocess.run(["git", "checkout", "-q", "main"], cwd=upstream, check=True)
    home = tmp_path / "home"
    home.mkdir()
    assert pull(upstream, home, ref="lesson2").returncode == 0
    assert (home / "course" / "lesson2.ipynb").exists()
    tag_home = tmp_path / "home2"
    tag_home.mkdir()
    subprocess.run(["git", "tag", "v1", "main"], cwd=upstream, check=True)
    assert pull(upstream, tag_home, ref="v1").returncode == 0
    assert not (tag_home / "course" / "lesson2.ipynb").exists()


def test_a_failed_pull_says_why_and_a_folder_of_the_users_is_left_alone(upstream, tmp_path):
    home = tmp_path / "home"
    (home / "course").mkdir(parents=True)
    (home / "course" / "mine.txt").write_text("mine")
    result = pull(upstream, home)
    assert result.returncode != 0
    assert "is not a git repository" in result.stderr
    assert (home / "course" / "mine.txt").read_text() == "mine"
    missing = pull(tmp_path / "nowhere", tmp_path)
    assert missing.returncode != 0 and "git clone failed" in missing.stderr


def test_the_init_containers_command_never_fails(tmp_path):
    env = {**os.environ, **puller.environment({"repo": str(tmp_path / "nowhere"), "dir": "x"}, str(tmp_path))}
    result = subprocess.run(puller.command(never_fail=True), env=env, capture_output=True, text=True)
    assert result.returncode == 0
    assert "git clone failed" in result.stdout


@pytest.fixture
def silent_git_host():
    """A TCP server that accepts connections and never answers (a git host
    that hangs): ``http://127.0.0.1:PORT``. Its connections close with it."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    stop.set()
    thread.join(timeout=5)
    for connection in accepted:
        connection.close()
    server.close()


@pytest.mark.parametrize("never_fail", [False, True])
def test_a_pull_that_hangs_is_stopped_after_the_timeout(silent_git_host, tmp_path, never_fail):
    base, accepted = silent_git_host
    repo = f"{base}/course/intro.git"
    env = {**os.environ, **puller.environment({"repo": repo, "dir": "intro"}, str(tmp_path))}
    command = puller.command(never_fail=never_fail, timeout=2)
    # the repository is in the environment only: the command shows no URL
    assert base not in " ".join(command) and "127.0.0.1" not in " ".join(command)
    started = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    took = time.monotonic() - started
    assert accepted, "git never reached the silent host: the test tests nothing"
    assert 2 <= took < 2 + puller.KILL_AFTER + 5, took
    said = (result.stdout if never_fail else result.stderr).strip().splitlines()
    assert said[-1] == "the pull took longer than 2 seconds: stopped", said
    if never_fail:
        assert result.returncode == 0  # the pod starts anyway
    else:
        assert result.returncode in (124, 137), result.returncode
    assert not (tmp_path / "intro").exists() or not any((tmp_path / "intro").iterdir())


def test_a_pull_within_its_timeout_is_not_stopped(upstream, tmp_path):
    content = {"repo": str(upstream), "ref": "", "dir": "course"}
    env = {**os.environ, **puller.environment(content, str(tmp_path))}
    result = subprocess.run(
        puller.command(never_fail=True, timeout=60), env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert result.stdout.strip().splitlines()[-1] == "cloned into ~/course"
    assert (tmp_path / "course" / "intro.ipynb").exists()


def test_an_image_without_the_timeout_command_says_so(tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("sh", "tail"):
        (tools / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(tools), **puller.environment({"repo": REPO, "dir": "x"}, str(tmp_path))}
    result = subprocess.run(puller.command(never_fail=True, timeout=5), env=env, capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.strip() == "the puller image has no timeout command (coreutils): not pulled"


@pytest.mark.parametrize("timeout", [-1, 2.5, "60", True])
def test_a_timeout_that_is_no_whole_number_of_seconds_is_refused(timeout):
    with pytest.raises(ValueError, match="content_pull_timeout"):
        puller.command(timeout=timeout)


# -- the Docker spawner: the default URL of a start with content --------------------------


def test_docker_spawner_opens_at_the_contents_urlpath():
    from jupyterhub.objects import Hub

    from tljh_repo2docker.spawner import EnvironmentRefused, Repo2DockerSpawner

    spawner = Repo2DockerSpawner(
        user=SimpleNamespace(name="ann", id=1, url="/user/ann/", base_url="/user/ann/", groups=[]),
        orm_spawner=SimpleNamespace(name="", server=None, user_options=None),
        hub=Hub(),
        default_url="/lab",
    )
    spawner.user_options = {"image": "x", "content": parse_content({"content": REPO})}
    spawner.choose_content()
    assert spawner.default_url == "/lab/tree/intro-python"
    assert spawner.get_env()["JUPYTERHUB_DEFAULT_URL"] == "/lab/tree/intro-python"
    spawner.restore_default_url()
    assert spawner.default_url == "/lab"
    spawner.user_options = {"image": "x", "content": {"repo": "https://u:p@h/x.git"}}
    with pytest.raises(EnvironmentRefused) as info:
        spawner.choose_content()
    assert "u:p" not in str(info.value.jupyterhub_message)
    spawner.user_options = {"image": "x"}
    assert spawner.choose_content() is None and spawner.default_url == "/lab"


# -- the Kubernetes spawner: an init container in the pod ----------------------------------

KUBECONFIG = NOWHERE_KUBECONFIG


@pytest.fixture
def kube_spawner(tmp_path, monkeypatch):
    pytest.importorskip("kubespawner")
    from jupyterhub.objects import Hub
    from kubernetes_asyncio.config import kube_config
    from kubespawner.clients import load_config

    from tljh_repo2docker import Repo2DockerKubeSpawner

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    load_config.cache_clear()

    def make(content, config=None):
        config = config or Config()
        config.Repo2DockerKubeSpawner.trust_user_options = True  # no db_url: read user_options
        spawner = Repo2DockerKubeSpawner(
            config=config,
            _mock=True,
            user=SimpleNamespace(name="ann", id=7, url="/user/ann/", groups=[]),
            orm_spawner=SimpleNamespace(name="", server=None, user_options=None),
            hub=Hub(),
        )
        spawner.user_options = contract.with_content(
            {"image": "registry.example.org/r2d/python-env:abc", "environment": "env1", "metadata": {}},
            content,
        )
        return spawner

    yield make
    load_config.cache_clear()


def as_sent(obj):
    from kubernetes_asyncio.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


async def test_kube_pod_pulls_content_in_an_init_container(kube_spawner):
    content = parse_content({"content": REPO, "content_ref": "main", "urlpath": "lab/tree/intro-python/a.ipynb"})
    c = Config()
    c.EnvironmentMixin.content_puller_image = "quay.io/jupyterhub/repo2docker:test"
    spawner = kube_spawner(content, c)
    await spawner.load_user_options()
    pod = as_sent(await spawner.get_pod_manifest())["spec"]
    [init] = [i for i in pod["initContainers"] if i["name"] == "tljh-r2d-content"]
    assert init["image"] == "quay.io/jupyterhub/repo2docker:test"
    assert init["securityContext"]["runAsUser"] == 1000
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env == {
        "CONTENT_REPO": REPO, "CONTENT_REF": "main", "CONTENT_DIR": "intro-python",
        "CONTENT_HOME": "/home/jovyan",
    }
    [mount] = init["volumeMounts"]
    assert mount["name"] == "tljh-r2d-home" and mount["mountPath"] == "/home/jovyan"
    # KubeSpawner formats the init containers' strings: the script arrives as it is
    assert init["command"] == puller.command(never_fail=True, timeout=300)  # content_pull_timeout
    assert REPO not in " ".join(init["command"])
    server_env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert server_env["JUPYTERHUB_DEFAULT_URL"] == "/lab/tree/intro-python/a.ipynb"
    # the configuration is left as it was for the next start
    assert spawner.init_containers == [] and spawner.default_url == ""


async def test_kube_pod_without_content_has_no_init_container(kube_spawner):
    spawner = kube_spawner(None)
    await spawner.load_user_options()
    pod = as_sent(await spawner.get_pod_manifest())["spec"]
    assert not pod.get("initContainers")


# -- configuration ---------------------------------------------------------------------------


def test_configure_gives_the_spawners_the_services_repo2docker_image():
    c = Config()
    hub_config.configure(c, args=["--repo2docker_image=example.org/r2d:1"])
    assert c.EnvironmentMixin.content_puller_image == "example.org/r2d:1"
    c = Config()
    hub_config.configure_spawners(c, content_puller_image="example.org/r2d:2")
    assert c.EnvironmentMixin.content_puller_image == "example.org/r2d:2"


def test_tljh_config_gives_the_spawners_the_builders_image(tmp_path):
    from tljh_repo2docker import tljh_config

    c = Config()
    tljh_config.configure(
        c, {"services": {"tljh_repo2docker": {"DockerBuilder": {"repo2docker_image": "example.org/r2d:3"}}}}
    )
    assert c.EnvironmentMixin.content_puller_image == "example.org/r2d:3"


def test_odd_input_is_a_field_error_or_a_safe_content():
    import random

    rng = random.Random(23)
    alphabet = "ab/.:@%-_~?#{}\\ \t\n\x00éの" + "https://git.example.org/"
    for _ in range(3000):
        body = {
            key: rng.choice([None, 0, [], {}, "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))])
            for key in ("content", "content_ref", "urlpath")
            if rng.random() < 0.8
        }
        if rng.random() < 0.5 and isinstance(body.get("content"), str):
            body["content"] = "https://git.example.org/" + body["content"]
        try:
            content = parse_content(body)
        except FieldError as e:
            assert e.field in {"content", "content_ref", "urlpath"}
            continue
        if content is None:
            continue
        assert content["dir"] not in {"", ".", ".."} and "/" not in content["dir"]
        assert not content["dir"].startswith(".")
        assert ".." not in content["urlpath"].split("/")
        assert "://" not in content["urlpath"] and not content["urlpath"].startswith("/")
        assert not content["ref"].startswith("-")


async def test_a_pull_that_raises_does_not_stop_the_start(monkeypatch, caplog):
    from jupyterhub.objects import Hub

    from tljh_repo2docker.spawner import Repo2DockerSpawner
    from tljh_repo2docker.spawners import homes
    from tljh_repo2docker.spawners.mixin import Home

    def broken(*args, **kwargs):
        raise RuntimeError("the engine went away")

    monkeypatch.setattr(homes, "pull_content", broken)
    spawner = Repo2DockerSpawner(
        user=SimpleNamespace(name="ann", id=1, url="/user/ann/", base_url="/user/ann/", groups=[]),
        orm_spawner=SimpleNamespace(name="", server=None, user_options=None),
        hub=Hub(),
    )
    spawner.user_options = {"image": "x", "content": parse_content({"content": REPO})}
    spawner.choose_content()
    await spawner.pull_content(Home(source="v", path="/home/jovyan", labels={}))
    [line] = [r.getMessage() for r in caplog.records if "was not pulled" in r.getMessage()]
    assert REPO in line and "the engine went away" in line
    # a server with no home pulls into its container's copy of ~/<dir>: the same
    monkeypatch.setattr(homes, "pull_content_into", broken)
    caplog.clear()
    await spawner.pull_content(None)
    [line] = [r.getMessage() for r in caplog.records if "was not pulled" in r.getMessage()]
    assert REPO in line and "the engine went away" in line
