"""The History dialog of the Environments page: versions and rollback."""

import re

import pytest
from playwright.async_api import expect

from tests.helpers.fixtures import SINGLEUSER_IMAGE
from tests.helpers.gitserver import add_commit, make_repo
from tests.helpers.servers import wait_server
from ui_helpers import env_row, open_environments, open_servers, row_action, server_row, shot

pytestmark = [pytest.mark.hub, pytest.mark.docker]


@pytest.fixture
async def two_versions(admin, git_root, git_server, test_images, run_id):
    """An environment built twice (two commits), removed afterwards."""
    name = f"ui-history-{run_id}"
    make_repo(git_root, name, {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN echo 'one {run_id}'\n"})
    env = await admin.create_env({"repo": git_server.url(name), "name": f"History {run_id}"})
    env = await admin.wait_env(env["uid"], {"built", "failed", "cancelled"})
    assert env["status"] == "built", env
    add_commit(git_root, name, {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN echo 'two {run_id}'\n"})
    r = await admin.api("POST", f"api/environments/{env['uid']}/rebuild")
    assert r.status_code == 202, r.text
    env = await admin.wait_env(env["uid"], {"built", "failed", "cancelled"})
    assert env["status"] == "built", env
    yield env
    await admin.delete_env(env["uid"])


async def test_history_shows_versions_and_rolls_back(admin_page, admin, two_versions):
    env = two_versions
    page = admin_page
    # a server on version 2, which a rollback leaves on its image
    r = await admin.api("POST", "api/servers", json={"name": "hist-srv", "environment": env["name"]})
    assert r.status_code == 202, r.text
    try:
        await wait_server(admin, "hist-srv")
        await history_and_rollback(page, admin, env)
        await open_servers(page)
        hint = server_row(page, "hist-srv").locator(".server-outdated")
        await expect(hint).to_contain_text("not on the current version")
        await rebuild_a_version(page, admin, env)
    finally:
        await admin.api("DELETE", "api/servers/hist-srv", params={"remove": "true"})
        await wait_server(admin, "hist-srv", "absent")


async def history_and_rollback(page, admin, env):
    await open_environments(page)
    row = env_row(page, env["name"])
    await row_action(row, f"History {env['name']}")
    dialog = page.locator("#history-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.locator(".modal-title")).to_have_text(f"History of {env['name']}")
    rows = dialog.locator("tbody tr[data-id]")  # (each version's row; its details row follows)
    await expect(rows).to_have_count(2)
    # What is inside v2, and what changed since v1 (the same single-user image: nothing)
    inside = dialog.locator(f'tr[data-details-of="{await rows.nth(0).get_attribute("data-id")}"]')
    await expect(inside).to_contain_text("What's inside")
    await expect(inside).to_contain_text(re.compile(r"Python 3\.\d+"))
    await expect(inside).to_contain_text(re.compile(r"\d+ packages"))
    await inside.get_by_text("Changes since v1").click()
    await expect(inside).to_contain_text("No package changed.")
    await expect(rows.nth(0).locator(".version-number")).to_contain_text("v2")
    await expect(rows.nth(0).locator(".version-current")).to_be_visible()
    await expect(rows.nth(1).locator(".version-current")).to_have_count(0)
    await expect(rows.nth(0).locator(".version-commit code")).to_have_text(env["commit"][:8])
    await expect(rows.nth(0).locator(".version-by")).to_have_text("admin")
    await expect(rows.nth(0).locator(".version-servers")).to_have_text("1")
    await expect(rows.nth(1).locator(".version-servers")).to_have_text("0")
    await shot(page, "history-dialog")
    # only non-current versions can be rolled back to
    await expect(rows.nth(0).get_by_role("button", name=re.compile("Roll back"))).to_have_count(0)

    await rows.nth(1).get_by_role("button", name="Roll back to version 1").click()
    confirm = dialog.locator(".history-confirm")
    await expect(confirm).to_contain_text("running servers keep the image")
    await confirm.get_by_role("button", name="Roll back").click()
    await expect(rows.nth(1).locator(".version-current")).to_be_visible()
    await expect(rows.nth(0).locator(".version-current")).to_have_count(0)
    await expect(confirm).to_be_hidden()
    await expect(page.locator("#announcer")).to_contain_text("rolled back to version 1")
    versions = (await admin.api("GET", f"api/environments/{env['uid']}/versions")).json()["versions"]
    assert [v["current"] for v in versions] == [False, True]
    assert (await admin.get_env(env["uid"]))["image_id"] == versions[1]["image_id"]
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()


async def rebuild_a_version(page, admin, env):
    """Rebuilding version 2 (its commit, its builder) from the History dialog
    makes version 3, current."""
    await open_environments(page)
    row = env_row(page, env["name"])
    await row_action(row, f"History {env['name']}")
    dialog = page.locator("#history-dialog")
    rows = dialog.locator("tbody tr[data-id]")
    await expect(rows).to_have_count(2)
    await rows.nth(0).get_by_role("button", name=re.compile("^Rebuild version 2")).click()
    await expect(dialog).to_be_hidden()
    env3 = await admin.wait_env(env["uid"], {"built", "failed", "cancelled"})
    assert env3["status"] == "built", env3
    versions = (await admin.api("GET", f"api/environments/{env['uid']}/versions")).json()["versions"]
    assert [v["number"] for v in versions] == [3, 2, 1] and versions[0]["current"], versions
    assert versions[0]["commit"] == versions[1]["commit"] == env["commit"]
    assert versions[0]["builder"] == versions[1]["builder"]
