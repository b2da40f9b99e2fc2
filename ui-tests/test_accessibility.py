"""An accessibility scan of every page of the service with axe-core.

axe-core (the npm package, in ui-tests/node_modules: ``./dev setup`` runs
``npm ci`` in ui-tests/) is injected into each page, in light and dark mode,
with its dialogs closed and the main one open; the test fails on any
violation axe rates serious or critical, naming the rule and the elements.
"""

import json
from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.helpers.fixtures import need
from ui_helpers import goto, open_environments, open_servers, service_path

pytestmark = pytest.mark.browser

AXE = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"
BLOCKING = {"serious", "critical"}


async def scan(page, where):
    """Run axe on ``page``; assert no serious or critical violation."""
    if not AXE.exists():
        need(f"axe-core is not installed at {AXE} (cd ui-tests && npm ci)")
    if not await page.evaluate("() => typeof window.axe !== 'undefined'"):
        await page.add_script_tag(path=str(AXE))
    result = await page.evaluate(
        "() => axe.run(document, {resultTypes: ['violations']})"
        ".then((r) => r.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.slice(0, 5).map((n) => n.target.join(' ') + ': ' + n.failureSummary)})))"
    )
    blocking = [v for v in result if v["impact"] in BLOCKING]
    assert not blocking, f"{where}: " + json.dumps(blocking, indent=1)


async def both_themes(page, open_page, where):
    for theme in ("light", "dark"):
        await goto(page, "hub/home")
        await page.evaluate(f"localStorage.setItem('jupyterhub-bs-theme', '{theme}')")
        await open_page()
        await expect(page.locator("html")).to_have_attribute("data-bs-theme", theme)
        await scan(page, f"{where} ({theme})")
    await page.evaluate("localStorage.removeItem('jupyterhub-bs-theme')")


async def test_servers_page(alice_page):
    page = alice_page
    await both_themes(page, lambda: open_servers(page), "Servers")
    await page.get_by_role("button", name="New Server").click()
    await expect(page.locator("#new-server-dialog")).to_be_visible()
    await scan(page, "Servers, New Server dialog")


async def test_environments_page(admin_page):
    page = admin_page
    await both_themes(page, lambda: open_environments(page), "Environments")
    await page.click("#add-environment")
    dialog = page.locator("#add-dialog")
    await expect(dialog).to_be_visible()
    await scan(page, "Environments, Add dialog")
    # Each source tab of the dialog (issue 23), the files one with a starting point.
    for tab in ("Files", "Archive", "Image"):
        await dialog.get_by_role("tab", name=tab).click()
        if tab == "Files":
            await dialog.get_by_role("button", name="pip: requirements.txt").click()
        await scan(page, f"Environments, Add dialog, {tab} tab")


async def test_admin_pages(admin_page):
    page = admin_page
    for name in ("homes", "disk"):

        async def open_page(name=name):
            response = await goto(page, service_path(name))
            assert response.status == 200, (name, response.status)
            await expect(page.locator("main table[aria-busy='true']")).to_have_count(0, timeout=30_000)

        await both_themes(page, open_page, name)


async def test_error_page(alice_page):
    page = alice_page
    response = await goto(page, service_path("environments"))
    assert response.status == 403
    await scan(page, "403 page")
    response = await goto(page, service_path("servers") + "?name=ui-x&environment=No+such+thing")
    assert response.status == 404
    await scan(page, "Servers with a launch error")
