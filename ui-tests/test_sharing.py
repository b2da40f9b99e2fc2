"""Builders on the Environments page: their own environment, the sharing dialog, the owner filter."""

import pytest
from playwright.async_api import expect

from tests.helpers.utils import HubUser, admin_api
from ui_helpers import env_row, goto, logged_in_context, open_environments, row_action, service_path, shot

pytestmark = pytest.mark.browser

OWNER = "sh-owner"  # a builder in the test hub's configuration (tests/helpers/utils.py BUILDERS)
GROUP = "ui-sharing-team"
NAME = "Builder's env"


@pytest.fixture(scope="module")
async def owner_env(hub, demo_repo):
    with admin_api(hub) as api:
        assert api.post(f"groups/{GROUP}").status_code in (201, 409)
    owner = await HubUser.login(hub, OWNER)
    env = await owner.create_env({"repo": demo_repo, "name": NAME})
    env = await owner.wait_env(env["uid"], {"built"})
    yield env
    await owner.delete_env(env["uid"])
    await owner.close()
    with admin_api(hub) as api:
        api.delete(f"groups/{GROUP}")


async def test_builder_shares_an_environment(browser, hub, owner_env, alice_page):
    context = await logged_in_context(browser, hub, OWNER)
    try:
        page = await context.new_page()
        await open_environments(page)
        row = env_row(page, NAME)
        await expect(row.locator(".env-owner")).to_contain_text(OWNER)
        await expect(row.locator(".env-sharing")).to_have_text("private")
        await row_action(row, f"Share {NAME}")
        dialog = page.locator("#share-dialog")
        await expect(dialog).to_be_visible()
        await expect(page.locator("#share-everyone")).to_be_focused()
        await dialog.get_by_label("Users").fill("alice")
        await dialog.get_by_label(GROUP).check()
        await shot(page, "share-dialog")
        await dialog.get_by_role("button", name="Save").click()
        await expect(dialog).to_be_hidden()
        await expect(row.locator(".env-sharing")).to_have_text(f"alice; groups: {GROUP}")
        await shot(page, "environments-builder")
    finally:
        await context.close()
    # alice may use it now: the Servers page offers it
    await goto(alice_page, service_path("servers"))
    data = await alice_page.locator("#environments-data").text_content()
    assert owner_env["uid"] in data


async def test_admin_filters_by_owner(admin_page, owner_env):
    page = admin_page
    await goto(page, service_path("environments"))
    await page.locator("#owner-filter-select").select_option(OWNER)
    await page.wait_for_url(f"**owner={OWNER}")
    rows = page.locator("#environments tbody tr")
    await expect(env_row(page, NAME)).to_be_visible()
    for number in range(await rows.count()):
        await expect(rows.nth(number).locator(".env-owner")).to_contain_text(OWNER)
