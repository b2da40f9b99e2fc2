"""A third-party spawner written for tljh-repo2docker 3.x, in a real hub.

Like Plasma's TLJH plugin: ``class S(SpawnerMixin, SystemUserSpawner)``
that filters ``list_images()`` by the user's JupyterHub groups and calls
``set_limits()`` in its ``start``. What the filter leaves out is neither
offered on the spawn form nor started, whether asked for through the form
or through the hub's REST API with hand-made user_options.
"""

import html
import json
import os
import re
import subprocess
import time
import uuid

import pytest

from tests.helpers.fixtures import running_hub
from tests.helpers.environments import build_environment
from tests.helpers.utils import HubUser, admin_api, next_image_prefix

pytestmark = [pytest.mark.hub, pytest.mark.docker]

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
