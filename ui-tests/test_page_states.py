"""Pages say what state things are in, and what is wrong in whole sentences.

- Status badges: built, running and current in the success colour, failed in
  danger, queued and building in warning, in light and dark mode.
- A form's error names its field ("Repository URL is required."); a text
  longer than its limit is kept whole and refused, not cut.
- The Webhook button says whether the webhook is on; "Disable the webhook"
  is offered only when it is.
- "New Server" ends in the server, in the same tab, when it is ready.
"""

import asyncio
import re

import pytest
from playwright.async_api import expect

from ui_helpers import SPAWN_TIMEOUT, env_row, find_env, open_environments, open_servers, row_action

pytestmark = pytest.mark.browser

#: The green of our status badges (static/css/tljh_repo2docker.css), in both modes.
SUCCESS = "rgb(20, 108, 67)"


async def background(locator):
    return await locator.evaluate("(e) => getComputedStyle(e).backgroundColor")


async def test_a_built_environment_is_green_in_light_and_dark_mode(admin_page, demo_env):
    page = admin_page
    for theme in ("light", "dark"):
        await page.goto("hub/home")
        await page.evaluate(f"localStorage.setItem('jupyterhub-bs-theme', '{theme}')")
        await open_environments(page)
        await expect(page.locator("html")).to_have_attribute("data-bs-theme", theme)
        badge = env_row(page, demo_env["name"]).locator(".env-status .badge")
        await expect(badge).to_contain_text("Built")
        await expect(badge).to_have_class(re.compile(r"\btext-bg-success\b"))
        assert await background(badge) == SUCCESS
    await page.evaluate("localStorage.removeItem('jupyterhub-bs-theme')")


async def test_errors_name_their_field_and_long_names_are_refused_whole(admin_page, admin):
    page = admin_page
    await open_environments(page)
    await page.click("#add-environment")
    dialog = page.locator("#add-dialog")
    await expect(dialog).to_be_visible()
    await dialog.get_by_role("button", name="Add and build").click()
    await expect(page.locator("#add-repo-error")).to_have_text("Repository URL is required.")

    # The limit is shown, and a longer name is kept whole and refused.
    await expect(page.locator("#add-name-help")).to_contain_text("up to 100 characters")
    await page.locator("#add-repo").fill("https://example.org/owner/some-repository")
    long_name = "n" * 120
    name = page.locator("#add-name")
    await name.fill(long_name)
    await expect(name).to_have_value(long_name)
    await expect(page.locator("#add-name-length")).to_have_text(
        "Name is longer than 100 characters (it has 120): shorten it."
    )
    await expect(name).to_have_attribute("aria-invalid", "true")
    await dialog.get_by_role("button", name="Add and build").click()
    await expect(name).to_be_focused()
    await expect(dialog).to_be_visible()
    assert await find_env(admin, long_name) is None
    # Back under the limit: the error goes.
    await name.fill("n" * 100)
    await expect(page.locator("#add-name-length")).to_have_count(0)
    await dialog.get_by_role("button", name="Cancel").click()


async def test_a_long_server_name_is_refused_whole(alice_page, demo_env):
    page = alice_page
    await open_servers(page)
    await page.get_by_role("button", name="New Server").click()
    dialog = page.locator("#new-server-dialog")
    await expect(dialog).to_be_visible()
    await expect(page.locator("#server-name-help")).to_contain_text("Up to 63 characters")
    name = dialog.get_by_label("Server name")
    long_name = "s" * 70
    await name.fill(long_name)
    await expect(name).to_have_value(long_name)
    await expect(page.locator("#server-name-length")).to_contain_text(
        "Server name is longer than 63 characters (it has 70)"
    )
    await dialog.get_by_role("button", name="Start").click()
    await expect(dialog).to_be_visible()
    await expect(name).to_be_focused()
    await dialog.get_by_role("button", name="Cancel").click()


async def test_the_webhook_control_says_whether_it_is_on(admin_page, admin, demo_env):
    page = admin_page
    await open_environments(page)
    row = env_row(page, demo_env["name"])
    state = "on" if (await admin.get_env(demo_env["uid"]))["webhook"] else "off"
    button = row.locator('[data-action="webhook"]')
    await expect(button).to_have_text(f"Webhook {state}")
    await row_action(row, f"Webhook {demo_env['name']}")
    dialog = page.locator("#webhook-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_role("heading")).to_contain_text(f": {state}")
    disable = dialog.get_by_role("button", name="Disable the webhook")
    if state == "off":
        await expect(disable).to_be_hidden()
    else:
        await expect(disable).to_be_visible()
    await dialog.get_by_role("button", name="Close").first.click()
    await expect(dialog).to_be_hidden()


async def test_new_server_opens_the_server_when_it_is_ready(alice_page, alice, demo_env):
    page = alice_page
    await open_servers(page)
    await page.get_by_role("button", name="New Server").click()
    dialog = page.locator("#new-server-dialog")
    await dialog.get_by_label("Environment").select_option(label=demo_env["name"])
    await dialog.get_by_label("Server name").fill("ui-opened")
    await expect(dialog.get_by_label("Open it in this tab when it is ready")).to_be_checked()
    await dialog.get_by_role("button", name="Start").click()
    await expect(dialog).to_be_hidden(timeout=30_000)
    banner = page.locator("#launching")
    # Progress while it starts (unless it was ready at once).
    try:
        await expect(banner).to_contain_text("Starting ui-opened", timeout=5_000)
    except AssertionError:
        pass
    await page.wait_for_url(re.compile(r"/user/alice/ui-opened/"), timeout=SPAWN_TIMEOUT)
    r = await alice.api("DELETE", "api/servers/ui-opened?remove=true")
    assert r.status_code in (202, 204), r.text
    for _ in range(60):
        r = await alice.api("GET", "api/servers")
        if not any(s["name"] == "ui-opened" for s in r.json()["servers"]):
            break
        await asyncio.sleep(1)


async def test_start_from_the_environments_menu_ends_in_the_server(admin_page, admin, demo_env):
    """An admin tries a built environment in one click: More → Start a server,
    and the tab ends in the server once it is ready."""
    page = admin_page
    await open_environments(page)
    row = env_row(page, demo_env["name"])
    await row_action(row, f"Start a server {demo_env['name']}")
    slug = "python-demo"  # the launch link's server name: the environment's slug
    await page.wait_for_url(re.compile(rf"/user/admin/{slug}/"), timeout=SPAWN_TIMEOUT)
    r = await admin.api("DELETE", f"api/servers/{slug}?remove=true")
    assert r.status_code in (202, 204), r.text
    for _ in range(60):
        r = await admin.api("GET", "api/servers")
        if not any(s["name"] == slug for s in r.json()["servers"]):
            break
        await asyncio.sleep(1)
