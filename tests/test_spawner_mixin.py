"""A third-party spawner written for tljh-repo2docker 3.x, in a real hub.

Like Plasma's TLJH plugin: ``class S(SpawnerMixin, SystemUserSpawner)``
that filters ``list_images()`` by the user's JupyterHub groups and calls
``set_limits()`` in its ``start``. What the filter leaves out is neither
offered on the spawn form nor started, whether asked for through the form
or through the hub's REST API with hand-made user_options. A start refused
through the REST API leaves no server behind when the server never ran
(issue 24); the spawn form's Start button is legible (its contrast).
"""

import html
import json
import os
import re
import subprocess
import time
import uuid
from datetime import datetime
from types import SimpleNamespace

import pytest
from jupyterhub.objects import Hub

from tests.helpers.fixtures import running_hub
from tests.helpers.environments import build_environment
from tests.helpers.fakes import FakeDocker, env_labels, spawner_maker
from tests.helpers.utils import HubUser, admin_api, next_image_prefix
from tljh_repo2docker.spawner import Repo2DockerSpawner
from tljh_repo2docker.spawners import mixin


RUN = f"mx{os.getpid() % 100000}"
USER = f"{RUN}gina"
PHYSICS, CHEMISTRY = f"{RUN}-physics", f"{RUN}-chemistry"
#: An environment of the physics group whose image cannot start.
BROKEN = f"{PHYSICS}-broken"

SPAWNER_CONFIG = '''
from dockerspawner import SystemUserSpawner
from traitlets import default
from tljh_repo2docker import SpawnerMixin


class GroupSpawner(SpawnerMixin, SystemUserSpawner):
    """Users see the environments named after their JupyterHub groups."""

    async def list_images(self):
        groups = {{group.name for group in self.user.groups}}
        images = await super().list_images()
        return [i for i in images if i["display_name"].split("-broken")[0] in groups]

    async def start(self):
        await super().set_limits()
        self.log.info("GroupSpawner limits: %s %s", self.mem_limit, self.cpu_limit)
        return await super().start()

    # no system users on the test machine
    @default("user_id")
    def _default_user_id(self):
        return 1000

    @default("group_id")
    def _default_group_id(self):
        return 1000


c.JupyterHub.spawner_class = GroupSpawner
c.GroupSpawner.image_prefix = {prefix!r}
c.GroupSpawner.host_homedir_format_string = {homes!r} + "/{{username}}"
for role in c.JupyterHub.load_roles:
    if role["name"] == "test-admin" and "admin:groups" not in role["scopes"]:
        role["scopes"].append("admin:groups")
'''


def container(server):
    out = subprocess.run(
        ["docker", "inspect", f"tljh-r2d-test-{USER}-{server}"], capture_output=True, text=True
    )
    return json.loads(out.stdout)[0] if out.returncode == 0 else None


def spawn_through_api(hub, server, image):
    """Start ``server`` with hand-made user_options; (ready, message) once the hub has decided."""
    with admin_api(hub) as api:
        r = api.post(f"users/{USER}/servers/{server}", json={"image": image})
        if r.status_code >= 400:
            return False, r.json()["message"]
        for _ in range(120):
            model = api.get(f"users/{USER}").json()["servers"].get(server, {})
            if not model.get("pending"):
                break
            time.sleep(0.5)
        if model.get("ready"):
            return True, ""
        events = api.get(f"users/{USER}/servers/{server}/progress", timeout=30).text
        return False, events


@pytest.fixture(scope="module")
def group_hub(tmp_path_factory, test_images):
    workdir = tmp_path_factory.mktemp("mixin-hub")
    homes = workdir / "homes"
    (homes / USER).mkdir(parents=True)
    os.chown(homes / USER, 1000, 1000)
    # The environments and the config need the hub's image prefix: choose it here.
    prefix = next_image_prefix()
    images = {
        PHYSICS: f"{prefix}physics:1",
        CHEMISTRY: f"{prefix}chemistry:1",
    }
    for display_name, image in images.items():
        build_environment(
            test_images["singleuser"], image, uid=uuid.uuid4().hex, display_name=display_name,
            image_name=image, mem_limit="384M", cpu_limit="0.5", node_selector="{}",
        )
    images[BROKEN] = f"{prefix}broken:1"
    subprocess.run(
        ["docker", "build", "-q", "-t", images[BROKEN], "--label", f"tljh_repo2docker.uid={uuid.uuid4().hex}",
         "--label", f"tljh_repo2docker.display_name={BROKEN}", "-"],
        input=f'FROM {test_images["singleuser"]}\nENTRYPOINT ["/no/such/program"]\n',
        text=True, check=True, capture_output=True,
    )
    config = SPAWNER_CONFIG.format(prefix=prefix, homes=str(homes))
    try:
        with running_hub(workdir, extra_config=config, image_prefix=prefix) as hub:
            with admin_api(hub) as api:
                assert api.post("users", json={"usernames": [USER]}).status_code in (201, 409)
                for group in (PHYSICS, CHEMISTRY):
                    assert api.post(f"groups/{group}").status_code in (201, 409)
                r = api.post(f"groups/{PHYSICS}/users", json={"users": [USER]})
                assert r.status_code == 200, r.text
            yield hub, images
    finally:
        subprocess.run(["docker", "rmi", "-f", *images.values()], capture_output=True)


@pytest.mark.hub
@pytest.mark.docker
async def test_the_filter_decides_what_is_offered_and_started(group_hub):
    hub, images = group_hub
    gina = await HubUser.login(hub, USER)
    try:
        # the spawn form offers what the filter leaves
        r = await gina.client.get(f"hub/spawn/{USER}/s1")
        assert r.status_code == 200
        assert f'value="{images[PHYSICS]}"' in r.text
        assert images[CHEMISTRY] not in r.text

        # posting the other one anyway is refused, with the reason
        action = re.search(r'id="spawn_form"\s+action="([^"]+)"', r.text).group(1)
        r = await gina.client.post(html.unescape(action), data={"image": images[CHEMISTRY]})
        assert "not one of the environments offered to you" in html.unescape(r.text)
        assert container("s1") is None

        # and through the REST API with hand-made user_options
        ready, message = spawn_through_api(hub, "s2", images[CHEMISTRY])
        assert not ready
        assert "not one of the environments offered to you" in message
        assert container("s2") is None

        # what the filter allows starts, with the environment's limits
        ready, message = spawn_through_api(hub, "s3", images[PHYSICS])
        assert ready, message
        info = container("s3")
        assert info["Config"]["Image"] == images[PHYSICS]
        assert info["HostConfig"]["Memory"] == 384 * 1024**2
        # SystemUserSpawner's own home: the host directory, no home volume
        assert [m["Source"] for m in info["Mounts"]] == [str(hub.workdir / "homes" / USER)]
        with admin_api(hub) as api:
            api.request("DELETE", f"users/{USER}/servers/s3", json={"remove": True})

        # a start that fails says why, in Docker's words (not just "error")
        ready, message = spawn_through_api(hub, "s5", images[BROKEN])
        assert not ready
        assert f"could not be started from {BROKEN!r}" in message, message
        assert "/no/such/program" in message, message
        with admin_api(hub) as api:
            api.request("DELETE", f"users/{USER}/servers/s5", json={"remove": True})

            # out of the group: the same environment is refused, even on a restart
            r = api.request("DELETE", f"groups/{PHYSICS}/users", json={"users": [USER]})
            assert r.status_code == 200, r.text
        ready, message = spawn_through_api(hub, "s4", images[PHYSICS])
        assert not ready and "not one of the environments offered to you" in message
    finally:
        await gina.close()


# -- a refused start leaves no server behind (issue 24) ----------------------------------


def servers_of(hub):
    """The servers of USER the hub has a record of, started or not."""
    with admin_api(hub) as api:
        r = api.get(f"users/{USER}", params={"include_stopped_servers": "1"})
        r.raise_for_status()
        return r.json()["servers"]


def gone(hub, server, wait=10):
    """True once the hub has no record of ``server`` (within ``wait`` seconds)."""
    deadline = time.monotonic() + wait
    while server in servers_of(hub):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def settled(hub, server, wait=30):
    """The model of ``server`` once nothing is pending on it (the hub is done with it)."""
    deadline = time.monotonic() + wait
    while True:
        model = servers_of(hub).get(server)
        if model is None or not model.get("pending"):
            return model
        assert time.monotonic() < deadline, f"{server} still pending: {model}"
        time.sleep(0.2)


def refused(api, server, options):
    """POST a start of ``server`` that must be refused; the hub's answer's message."""
    r = api.post(f"users/{USER}/servers/{server}", json=options)
    assert r.status_code == 400, (r.status_code, r.text)
    return r.json()["message"]


def join_physics(hub):
    with admin_api(hub) as api:
        r = api.post(f"groups/{PHYSICS}/users", json={"users": [USER]})
        assert r.status_code == 200, r.text


@pytest.mark.hub
@pytest.mark.docker
def test_a_start_refused_through_the_api_leaves_no_server(group_hub):
    hub, images = group_hub
    join_physics(hub)
    cases = {
        # another group's (private) environment
        "ghost-private": ({"image": images[CHEMISTRY]}, "not one of the environments offered to you"),
        # an image that is not there
        "ghost-unknown": (
            {"image": images[PHYSICS].rsplit(":", 1)[0] + ":no-such-tag"},
            "There is no environment",
        ),
        # an environment the user may start, with content refused at launch
        "ghost-content": (
            {"image": images[PHYSICS], "content": "not an object"},
            "The content to pull at launch is refused",
        ),
    }
    with admin_api(hub) as api:
        for server, (options, reason) in cases.items():
            message = refused(api, server, options)
            # the caller is told why, as before
            assert reason in message, message
            assert gone(hub, server), f"{server} is still listed: {servers_of(hub)}"
            assert container(server) is None
        # the default server is never removed
        r = api.post(f"users/{USER}/server", json={"image": images[CHEMISTRY]})
        assert r.status_code == 400, r.text
        assert "not one of the environments offered to you" in r.json()["message"]
        assert settled(hub, "") is not None
        time.sleep(1.5)  # a removal would be done by now (it polls every 0.1 s)
        assert "" in servers_of(hub)


@pytest.mark.hub
@pytest.mark.docker
def test_a_server_created_with_put_goes_when_its_first_start_is_refused(group_hub):
    hub, images = group_hub
    join_physics(hub)
    with admin_api(hub) as api:
        version = api.get("").json()["version"]
        if int(version.split(".")[0]) < 6:
            pytest.skip(f"JupyterHub {version} cannot create a server without starting it")
        r = api.put(
            f"users/{USER}/servers/ghost-put", json={"user_options": {"image": images[CHEMISTRY]}}
        )
        assert r.status_code == 201, r.text
        assert "ghost-put" in servers_of(hub)
        # started with the user_options it was created with
        message = refused(api, "ghost-put", {"user_options": None})
        assert "not one of the environments offered to you" in message
    assert gone(hub, "ghost-put"), servers_of(hub)


@pytest.mark.hub
@pytest.mark.docker
def test_a_refused_restart_keeps_a_server_that_ran(group_hub):
    hub, images = group_hub
    join_physics(hub)
    ready, message = spawn_through_api(hub, "kept", images[PHYSICS])
    assert ready, message
    with admin_api(hub) as api:
        try:
            r = api.delete(f"users/{USER}/servers/kept")  # stopped, kept
            assert r.status_code in (202, 204), r.text
            assert settled(hub, "kept")["ready"] is False
            message = refused(api, "kept", {"image": images[CHEMISTRY]})
            assert "not one of the environments offered to you" in message
            assert settled(hub, "kept") is not None
            time.sleep(1.5)  # a removal would be done by now (it polls every 0.1 s)
            assert "kept" in servers_of(hub)
            # and it starts again with what it may use
            ready, message = spawn_through_api(hub, "kept", images[PHYSICS])
            assert ready, message
        finally:
            api.request("DELETE", f"users/{USER}/servers/kept", json={"remove": True})


# -- unit: when a refusal removes the server; the Start button's colours -------------------


@pytest.fixture
def fake_docker():
    fake = FakeDocker()
    fake.add_image("python-env:main", env_labels())
    return fake


def spawner_in_a_start(name, **record):
    """A spawner of server ``name`` whose hub record holds ``record``, in a start
    (JupyterHub sets ``_start_pending`` around ``start()``)."""
    user = SimpleNamespace(name="alice", id=1, url="/user/alice/", base_url="/user/alice/", groups=[])
    orm_spawner = SimpleNamespace(name=name, server=None, user_options=None, **record)
    spawner = Repo2DockerSpawner(user=user, orm_spawner=orm_spawner, hub=Hub(), image_prefix="")
    spawner._start_pending = True
    return spawner


async def test_only_a_named_server_that_never_ran_goes_with_a_refused_start():
    spawner = spawner_in_a_start("never-ran")
    removal = spawner.forget_refused_first_start()
    assert removal is not None
    # asked again for the same refusal (choose_environment, then start): one removal
    assert spawner.forget_refused_first_start() is removal
    removal.cancel()

    # the default server
    assert spawner_in_a_start("").forget_refused_first_start() is None
    # a server that ran before: its saved state, its last activity
    ran = spawner_in_a_start("ran", state={"environment_image": "python-env:main"})
    assert ran.forget_refused_first_start() is None
    assert spawner_in_a_start("active", last_activity=datetime.now()).forget_refused_first_start() is None
    # one that started since this spawner was made
    restarted = spawner_in_a_start("restarted")
    restarted.started_once()
    assert restarted.forget_refused_first_start() is None
    # no start under way (a refusal of the spawn form's data)
    idle = spawner_in_a_start("form")
    idle._start_pending = False
    assert idle.forget_refused_first_start() is None


def relative_luminance(colour):
    """WCAG 2's relative luminance of ``#rrggbb``."""
    def linear(channel):
        c = channel / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b)


def contrast(one, other):
    light, dark = sorted((relative_luminance(one), relative_luminance(other)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_the_start_button_is_legible(fake_docker):
    # JupyterHub's own: white on #f37524, what axe reports
    assert contrast("#ffffff", "#f37524") < 3
    style = mixin._START_BUTTON_STYLE
    declarations = dict(re.findall(r"(--bs-btn-[a-z-]+):\s*(#[0-9a-f]{6});", style))
    for state in ("", "hover-", "active-"):
        text, background = declarations[f"--bs-btn-{state}color"], declarations[f"--bs-btn-{state}bg"]
        assert contrast(text, background) >= 4.5, (state, text, background)
    # darker shades of the same orange (hue within a few degrees of JupyterHub's)
    import colorsys

    def hue(colour):
        return colorsys.rgb_to_hls(*(int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)))[0] * 360

    assert abs(hue(declarations["--bs-btn-bg"]) - hue("#f37524")) < 3
    # scoped to the spawn form's submit button, for every theme (no media query, no theme selector)
    assert style.startswith("<style>\n#spawn_form [type=submit].btn-jupyter {")
    assert "@media" not in style and "data-bs-theme" not in style


async def test_the_spawn_form_carries_the_start_button_style(fake_docker):
    spawner = spawner_maker(fake_docker, Repo2DockerSpawner)()
    form = await spawner.environments_form()
    assert 'value="python-env:main"' in form
    assert mixin._START_BUTTON_STYLE in form
