"""The Homes page (admins) and what the Servers page says about a server's build and failures.

Home volumes are made with ``docker volume create --label …`` as the spawner
labels them; the users (``hu-…``) are this module's own.
"""

import os
import re
import subprocess

import pytest
from playwright.async_api import expect

from tests.helpers.fixtures import SINGLEUSER_IMAGE
from tests.helpers.gitserver import add_commit, make_repo
from tests.helpers.utils import admin_api
from tljh_repo2docker.builds.docker.check import SERVER_PREFIX as CHECK_PREFIX
from ui_helpers import SPAWN_TIMEOUT, goto, logged_in_context, server_row, service_path, shot

pytestmark = pytest.mark.browser

RUN = f"hu-{os.getpid()}"
FREE_USER, BUSY_USER = "hu-ivy", "hu-jack"


def docker(*args, check=True):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


def volume_exists(name):
    return docker("volume", "inspect", name, check=False).returncode == 0


@pytest.fixture
def homes(hub):
    """Two homes of this hub (one used by a stopped container) and one of another hub."""
    def create(name, user, prefix, server=""):
        docker(
            "volume", "create",
            "--label", "tljh_repo2docker.home=1",
            "--label", f"tljh_repo2docker.home.user={user}",
            "--label", f"tljh_repo2docker.home.server={server}",
            "--label", "tljh_repo2docker.home.environment=",
            "--label", f"tljh_repo2docker.home.prefix={prefix}",
            name,
        )
        return name

    made = []
    container = f"{RUN}-container"
    try:
        made.append(create(f"{RUN}-free", FREE_USER, hub.image_prefix, server="analysis"))
        made.append(create(f"{RUN}-busy", BUSY_USER, hub.image_prefix))
        made.append(create(f"{RUN}-foreign", "hu-other", "another-hub/"))
        docker(
            "run", "--rm", "--user", "root", "-v", f"{made[0]}:/data", "--entrypoint", "sh",
            SINGLEUSER_IMAGE, "-c", "head -c 2500000 /dev/urandom > /data/notebook.ipynb",
        )
        docker("create", "--name", container, "-v", f"{made[1]}:/home/jovyan", SINGLEUSER_IMAGE)
        yield {"free": made[0], "busy": made[1], "foreign": made[2], "container": container}
    finally:
        docker("rm", "-f", container, check=False)
        for name in made:
            docker("volume", "rm", "-f", name, check=False)


def home_row(page, name):
    return page.locator(f'#homes tbody tr[data-name="{name}"]')


async def test_homes_page_lists_and_deletes_with_confirmation(admin_page, homes):
    page = admin_page
    response = await goto(page, service_path("homes"))
    assert response.status == 200
    nav = page.get_by_role("navigation", name="Main")
    await expect(nav.get_by_role("link", name="Homes")).to_have_attribute("aria-current", "page")

    free, busy = home_row(page, homes["free"]), home_row(page, homes["busy"])
    await expect(free).to_be_visible()
    await expect(home_row(page, homes["foreign"])).to_have_count(0)
    await expect(free.locator(".home-user")).to_contain_text(FREE_USER)
    await expect(free.locator(".home-server")).to_have_text("analysis")
    await expect(busy.locator(".home-server")).to_have_text("–")
    await expect(busy.locator(".home-in-use")).to_have_text(homes["container"])
    # 2.5 MB, in human units, once Docker has measured it (or "unknown", said above the table)
    size = free.locator(".home-size")
    await expect(size).to_have_text(re.compile(r"^(2\.5 MB|unknown)$"))
    if await size.text_content() == "unknown":
        await expect(page.locator("#sizes-note")).to_be_visible()
        for _ in range(20):
            await page.get_by_role("button", name="Refresh").click()
            if await size.text_content() != "unknown":
                break
            await page.wait_for_timeout(3000)
    await expect(size).to_have_text("2.5 MB")
    await page.mouse.move(0, 0)
    await shot(page, "homes")

    # Delete asks for the user's name; the button waits for it.
    await free.get_by_role("button", name=f"Delete the home {homes['free']}").click()
    dialog = page.locator("#delete-home-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text(homes["free"])
    confirm = dialog.get_by_label(re.compile("Type the user's name"))
    await expect(confirm).to_be_focused()
    submit = dialog.get_by_role("button", name="Delete")
    await expect(submit).to_be_disabled()
    await confirm.fill("hu-iv")
    await expect(submit).to_be_disabled()
    await confirm.fill(FREE_USER)
    await expect(submit).to_be_enabled()
    await submit.click()
    await expect(dialog).to_be_hidden()
    await expect(free).to_have_count(0)
    assert not volume_exists(homes["free"])
    await expect(page.locator("#announcer")).to_contain_text("deleted")

    # A home in use is refused, naming the container; the dialog says so.
    await busy.get_by_role("button", name=f"Delete the home {homes['busy']}").click()
    await expect(dialog).to_be_visible()
    await confirm.fill(BUSY_USER)
    await submit.click()
    await expect(dialog.locator(".invalid-feedback")).to_contain_text(homes["container"])
    await expect(dialog).to_be_visible()
    assert volume_exists(homes["busy"])
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(dialog).to_be_hidden()


async def test_plain_users_have_no_homes_link(alice_page):
    page = alice_page
    await goto(page, service_path("servers"))
    nav = page.get_by_role("navigation", name="Main")
    await expect(nav.get_by_role("link", name="Servers")).to_be_visible()
    await expect(nav.get_by_role("link", name="Homes")).to_have_count(0)


@pytest.fixture
async def kim_page(browser, hub):
    context = await logged_in_context(browser, hub, "hu-kim")
    page = await context.new_page()
    page.set_default_timeout(20_000)
    yield page
    await context.close()
    with admin_api(hub) as api:
        for name in api.get("users/hu-kim").json().get("servers", {}):
            api.request("DELETE", f"users/hu-kim/servers/{name}", json={"remove": True})


async def test_launch_link_of_a_broken_environment_says_why(admin, kim_page, git_server, git_root):
    make_repo(
        git_root,
        "hu-broken",
        {
            # Broken only where the build's check cannot see it (a server of
            # a user, not the check's): the check passes, the start fails.
            "Dockerfile": f"FROM {SINGLEUSER_IMAGE}\n"
            "ENTRYPOINT [\"sh\", \"-c\", "
            f"\"case \\\"$JUPYTERHUB_SERVICE_PREFIX\\\" in {CHECK_PREFIX}*) exec \\\"$@\\\";; esac; "
            "echo 'hu-broken: nothing to run' >&2; exit 3\", \"entry\"]\n"
        },
    )
    env = await admin.create_env({"repo": git_server.url("hu-broken"), "name": "hu-broken"})
    await admin.wait_env(env["uid"], {"built"})
    try:
        page = kim_page
        await goto(page, service_path("servers?name=broken&environment=hu-broken"))
        # refused at once (the page's error) or followed until it fails (the launch error)
        reason = page.locator("#error-message, #launch-error:not(.d-none)")
        await expect(reason.first).to_contain_text(
            "exited with status 3", timeout=SPAWN_TIMEOUT
        )
        await expect(reason.first).not_to_contain_text(re.compile(r": (error|Internal Server Error)$"))
        await page.screenshot(path="/tmp/hu-broken.png")
        # the list says it too
        row = server_row(page, "broken")
        await expect(row.locator(".server-error")).to_contain_text(
            "exited with status 3", timeout=SPAWN_TIMEOUT
        )
    finally:
        await admin.delete_env(env["uid"])


async def test_server_of_a_rebuilt_environment_says_restart(admin, kim_page, git_server, git_root):
    make_repo(git_root, "hu-rebuilt", {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nLABEL hu.version=1\n"})
    env = await admin.create_env({"repo": git_server.url("hu-rebuilt"), "name": "hu-rebuilt"})
    await admin.wait_env(env["uid"], {"built"})
    try:
        page = kim_page
        await goto(page, service_path("servers?name=rebuilt&environment=hu-rebuilt"))
        await page.wait_for_url(re.compile(r"/user/hu-kim/rebuilt/"), timeout=SPAWN_TIMEOUT)
        await goto(page, service_path("servers"))
        row = server_row(page, "rebuilt")
        await expect(row).to_have_attribute("data-status", "running")
        await expect(row.locator(".server-outdated")).to_have_count(0)

        add_commit(git_root, "hu-rebuilt", {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nLABEL hu.version=2\n"})
        r = await admin.api("POST", f"api/environments/{env['uid']}/rebuild")
        assert r.status_code == 202, r.text
        await admin.wait_env(env["uid"], {"built"})
        await goto(page, service_path("servers"))
        await expect(row.locator(".server-environment")).to_contain_text("hu-rebuilt")
        await expect(row.locator(".server-outdated")).to_have_text(
            "newer build available — restart to use it"
        )
        await page.screenshot(path="/tmp/hu-outdated.png")
    finally:
        with admin_api(admin.info) as api:
            api.request("DELETE", "users/hu-kim/servers/rebuilt", json={"remove": True})
        await admin.delete_env(env["uid"])
