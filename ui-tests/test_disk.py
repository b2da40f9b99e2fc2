"""The Disk page (admins): versions with sizes and marks, free space, and prune with its dry run first."""

import re
import subprocess
import uuid

import pytest
from playwright.async_api import expect

from tests.helpers.fixtures import SINGLEUSER_IMAGE
from ui_helpers import goto, service_path, shot

pytestmark = pytest.mark.browser


def docker(*args, check=True, **kwargs):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, **kwargs)


@pytest.fixture
def dangling(hub):
    """An untagged image labelled as this hub's (no environment names it)."""
    result = docker(
        "build", "-q",
        "--label", f"tljh_repo2docker.uid=gone-{uuid.uuid4().hex[:8]}",
        "--label", f"tljh_repo2docker.image_prefix={hub.image_prefix}",
        "-", input=f"FROM {SINGLEUSER_IMAGE}\nLABEL probe={uuid.uuid4().hex}\n",
    )
    image_id = result.stdout.strip().splitlines()[-1]
    yield image_id
    docker("rmi", image_id, check=False)


async def test_disk_page_shows_versions_and_prunes_after_a_dry_run(admin_page, demo_env, dangling):
    page = admin_page
    response = await goto(page, service_path("disk"))
    assert response.status == 200
    nav = page.get_by_role("navigation", name="Main")
    await expect(nav.get_by_role("link", name="Disk")).to_have_attribute("aria-current", "page")

    rows = page.locator(f'#disk-versions tbody tr[data-uid="{demo_env["uid"]}"]')
    await expect(rows.first).to_be_visible()
    await expect(rows.first.get_by_role("rowheader")).to_contain_text(demo_env["name"])
    await expect(rows.first.locator(".version-state")).to_contain_text("current")
    await expect(rows.first.locator(".version-size")).to_have_text(re.compile(r"\d+(\.\d)? [KMG]?B"))
    await expect(page.locator("#disk-free")).to_contain_text("/var/lib/docker")
    await expect(page.locator("#disk-dangling")).not_to_have_text("…")
    await shot(page, "disk")

    prune = page.get_by_role("button", name="Prune…")
    await expect(prune).to_be_enabled()
    await prune.click()
    dialog = page.locator("#confirm-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text("This would free")
    await expect(dialog.locator(".prune-plan")).to_contain_text("untagged images of this hub")
    assert docker("image", "inspect", dangling, check=False).returncode == 0, "the dry run removes nothing"
    await dialog.get_by_role("button", name="Prune").click()
    await expect(dialog).to_be_hidden()
    await expect(page.locator("#announcer")).to_contain_text("Prune freed")
    assert docker("image", "inspect", dangling, check=False).returncode != 0
    await expect(rows.first.locator(".version-state")).to_contain_text("current")


async def test_plain_users_have_no_disk_link_or_page(alice_page):
    page = alice_page
    await goto(page, service_path("servers"))
    nav = page.get_by_role("navigation", name="Main")
    await expect(nav.get_by_role("link", name="Servers")).to_be_visible()
    await expect(nav.get_by_role("link", name="Disk")).to_have_count(0)
    response = await goto(page, service_path("disk"))
    assert response.status == 403
