"""The Servers page, direct launch links and the hub's spawn form, as the plain user alice."""

import asyncio
import re

import pytest
from playwright.async_api import expect

from ui_helpers import SPAWN_TIMEOUT, goto, open_servers, server_row, service_path, shot

pytestmark = pytest.mark.browser


async def wait_gone(user, name, timeout=60):
    """Wait until ``user`` has no server ``name`` any more (a stop may take a moment)."""
    for _ in range(timeout):
        r = await user.api("GET", "api/servers")
        if not any(s["name"] == name for s in r.json()["servers"]):
            return
        await asyncio.sleep(1)
    raise TimeoutError(f"server {name} still there after {timeout}s")


async def test_new_server_open_stop_remove(alice_page, alice, demo_env):
    page = alice_page
    await open_servers(page)
    await page.get_by_role("button", name="New Server").click()
    dialog = page.locator("#new-server-dialog")
    await expect(dialog).to_be_visible()
    name_input = dialog.get_by_label("Server name")
    await expect(name_input).to_be_focused()
    select = dialog.get_by_label("Environment")
    await select.select_option(label=demo_env["name"])
    await expect(name_input).to_have_value("python-demo")
    # The same facts as on the hub's spawn form.
    help_text = page.locator("#server-environment-help")
    await expect(help_text).to_contain_text(f"{demo_env['repo']} @ HEAD")
    await expect(help_text).to_contain_text("Memory: 512M · CPUs: 0.5")
    # and what its current version holds
    await expect(help_text).to_contain_text(re.compile(r"Python 3\.\d+ · \d+ packages"))
    await name_input.fill("ui-lab")
    await shot(page, "new-server-dialog")

    # A bad name comes back next to the field.
    await name_input.fill("no spaces")
    await dialog.get_by_role("button", name="Start").click()
    await expect(name_input).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#server-name-error")).to_contain_text("not a valid server name")

    await name_input.fill("ui-lab")
    # Stay on the list to follow the row (opening the server when ready, the
    # default, is tested in test_page_states.py).
    await dialog.get_by_label("Open it in this tab when it is ready").uncheck()
    await dialog.get_by_role("button", name="Start").click()
    # The hub answers when the server started, or after its slow_spawn_timeout (10 s).
    await expect(dialog).to_be_hidden(timeout=30_000)
    row = server_row(page, "ui-lab")
    await expect(row.locator(".server-environment")).to_have_text(demo_env["name"])
    open_link = row.locator('[data-action="open"]')
    await expect(row).to_have_attribute("data-status", "running", timeout=SPAWN_TIMEOUT)
    await expect(row.locator(".server-status")).to_have_text("Running")
    await expect(open_link).not_to_have_class(re.compile("disabled"))
    await expect(page.locator("#announcer")).to_contain_text("ui-lab is running")
    # The page drawn from scratch shows the same (no state beyond the server's).
    await open_servers(page)
    await expect(row.locator(".server-status")).to_have_text("Running")
    await page.mouse.move(0, 0)
    await shot(page, "servers")

    # Open: the server answers through the proxy.
    await open_link.click()
    await page.wait_for_url(re.compile(r"/user/alice/ui-lab/"), timeout=60_000)
    await expect(page).to_have_title(re.compile("JupyterLab|Jupyter"), timeout=60_000)

    await open_servers(page)
    row = server_row(page, "ui-lab")
    await row.get_by_role("button", name="Stop ui-lab").click()
    await expect(row).to_have_attribute("data-status", "stopped", timeout=60_000)
    await expect(row.locator('[data-action="open"]')).to_have_class(re.compile("disabled"))
    await expect(row.get_by_role("button", name="Start ui-lab")).to_be_visible()

    await row.get_by_role("button", name="Remove ui-lab").click()
    confirm = page.locator("#confirm-dialog")
    await expect(confirm).to_be_visible()
    await expect(confirm.locator(".confirm-body")).to_contain_text("ui-lab")
    await confirm.get_by_role("button", name="Remove").click()
    await expect(confirm).to_be_hidden()
    await expect(row).to_have_count(0)
    await expect(page.get_by_role("button", name="New Server")).to_be_focused()
    await wait_gone(alice, "ui-lab")


async def test_direct_link_starts_and_opens_the_server(alice_page, alice, demo_env):
    page = alice_page
    query = f"?name=ui-direct&environment={demo_env['name'].replace(' ', '+')}&urlpath=lab"
    response = await goto(page, service_path("servers") + query)
    assert response.status == 200
    await page.wait_for_url(re.compile(r"/user/alice/ui-direct/lab"), timeout=SPAWN_TIMEOUT)
    await expect(page).to_have_title(re.compile("JupyterLab|Jupyter"), timeout=60_000)

    # The same link again: the server runs, so it goes there at once.
    await goto(page, service_path("servers") + query)
    await page.wait_for_url(re.compile(r"/user/alice/ui-direct/lab"))

    await open_servers(page)
    r = await alice.api("DELETE", "api/servers/ui-direct?remove=true")
    assert r.status_code in (202, 204), r.text
    await wait_gone(alice, "ui-direct")


async def test_direct_link_errors_are_readable(alice_page):
    page = alice_page
    response = await goto(page, service_path("servers") + "?name=ui-x&environment=No+such+thing")
    assert response.status == 404
    error = page.locator("#error")
    await expect(error).to_be_visible()
    await expect(error).to_have_attribute("role", "alert")
    await expect(page.locator("#error-message")).to_have_text("environment: no environment named 'No such thing'")
    await expect(page.locator("#launching")).to_have_count(0)
    # The rest of the page still works.
    await expect(page.get_by_role("button", name="New Server")).to_be_enabled()

    response = await goto(page, service_path("servers") + "?name=not+valid&environment=x")
    assert response.status == 400
    await expect(page.locator("#error-message")).to_contain_text("not a valid server name")


async def test_html_name_is_text_for_users(alice_page, html_env):
    page = alice_page
    await open_servers(page)
    await page.get_by_role("button", name="New Server").click()
    option = page.locator("#server-environment option", has_text="onerror")
    await expect(option).to_have_text(html_env["name"])
    await page.locator("#server-environment").select_option(label=html_env["name"])
    await expect(page.locator("#server-name")).to_have_value("img-src-x-onerror-alert-1")
    await page.keyboard.press("Escape")
    assert await page.locator("img:not(.jpy-logo)").count() == 0


async def test_spawn_form_matches_the_servers_page(alice_page, demo_env, html_env):
    """The hub's own spawn page shows the spawner's options form."""
    page = alice_page
    await goto(page, "hub/spawn/alice/ui-form")
    form = page.locator("#spawn_form")
    await expect(form).to_be_visible()
    fieldset = form.locator("fieldset.tljh-repo2docker-environments")
    await expect(fieldset.locator("legend")).to_have_text("Environment")
    demo = fieldset.get_by_label(re.compile(f"^{demo_env['name']}"))
    await expect(demo).to_have_count(1)
    label = fieldset.locator("label", has_text=demo_env["name"])
    await expect(label).to_contain_text(f"{demo_env['repo']} @ HEAD")
    await expect(label).to_contain_text("Memory: 512M · CPUs: 0.5")
    await expect(label.locator(".tljh-r2d-summary")).to_have_text(re.compile(r"^Python 3\.\d+ · \d+ packages$"))
    await expect(fieldset.locator("label", has_text="onerror")).to_contain_text(html_env["name"])
    assert await page.locator("#spawn_form img").count() == 0
    await demo.check()
    await shot(page, "spawn-form")
