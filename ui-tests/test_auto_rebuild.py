"""The Environments page's "rebuild when the repository changes": the toggle and the Webhook dialog."""

import re

import pytest
from playwright.async_api import expect

from ui_helpers import env_row, open_environments, row_action, row_control

pytestmark = pytest.mark.browser


async def test_auto_rebuild_toggle_and_webhook_dialog(admin_page, admin, demo_env):
    page = admin_page
    name = demo_env["name"]
    await open_environments(page)
    row = env_row(page, name)
    # In the More menu, the toggle is a menuitemcheckbox: aria-checked, not aria-pressed.
    toggle = row_control(row, f"{name}: rebuild when the repository changes")
    await expect(toggle).to_have_attribute("aria-checked", "false")
    await row_action(row, f"{name}: rebuild when the repository changes")
    await expect(page.locator("#announcer")).to_contain_text("on")
    toggle = row_control(row, f"{name}: rebuild when the repository changes")
    await expect(toggle).to_have_attribute("aria-checked", "true")
    assert (await admin.get_env(demo_env["uid"]))["auto_rebuild"] is True

    await row_action(row, f"Webhook {name}")
    dialog = page.locator("#webhook-dialog")
    await expect(dialog).to_be_visible()
    await dialog.get_by_role("button", name="Enable the webhook").click()
    secret = dialog.locator("#webhook-secret")
    await expect(secret).to_have_value(re.compile(r"^[0-9a-f]{64}$"))
    await expect(dialog.locator("#webhook-url")).to_have_value(
        re.compile(rf"/api/environments/{demo_env['uid']}/webhook$")
    )
    await expect(dialog).to_contain_text("GitHub")
    await expect(dialog).to_contain_text("GitLab")
    assert (await admin.get_env(demo_env["uid"]))["webhook"] is True
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(secret).to_have_value("")  # shown once, not kept in the page

    # Opened again: no secret to show, only a new one or disabling.
    await row_action(row, f"Webhook {name}")
    await expect(dialog.get_by_role("button", name="New secret")).to_be_visible()
    await dialog.get_by_role("button", name="Disable the webhook").click()
    await expect(dialog).to_be_hidden()
    assert (await admin.get_env(demo_env["uid"]))["webhook"] is False

    await row_action(row, f"{name}: rebuild when the repository changes")
    await expect(
        row_control(row, f"{name}: rebuild when the repository changes")
    ).to_have_attribute("aria-checked", "false")
    assert (await admin.get_env(demo_env["uid"]))["auto_rebuild"] is False
