"""Helpers of the browser tests: locators, waits and screenshots."""

import re
from pathlib import Path

from playwright.async_api import expect

from tests.helpers.fixtures import need
from tests.helpers.utils import SERVICE

VIEWPORT = {"width": 1280, "height": 900}

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "docs" / "screenshots"

#: The display names of the environments the browser tests add.
UI_ENVS = {
    "demo": "Python demo",
    "slow": "Slow build",
    "broken": "Broken build",
    "html": "<img src=x onerror=alert(1)>",
    "private": "Private repo",
    "files": "Files demo",
    "image": "Image demo",
    "files_refused": "Files refused",
    "files_history": "Files history",
    "archive": "Archive demo",
    "phase": "Phase demo",
}

BUILD_TIMEOUT = 300_000  # ms
SPAWN_TIMEOUT = 150_000  # ms


def service_path(path=""):
    return f"services/{SERVICE}/{path}"


async def shot(page, name):
    """Save docs/screenshots/<name>.png (for the README)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


async def find_env(user, name):
    """The API model of the environment called ``name``, or None."""
    r = await user.api("GET", "api/environments")
    assert r.status_code == 200, r.text
    return next((e for e in r.json()["environments"] if e["name"] == name), None)


def env_row(page, name):
    """The row of the environments table whose name cell is exactly ``name``."""
    return page.locator("#environments tbody tr").filter(
        has=page.get_by_role("rowheader", name=name, exact=True)
    )


def server_row(page, name):
    return page.locator(f'#servers tbody tr[data-name="{name}"]')


async def goto(page, url, attempts=3):
    """page.goto, again when Chromium aborts it with ERR_NETWORK_CHANGED.

    Chromium cancels requests in flight when a network interface appears,
    and Docker adds one for every container it starts on this machine.
    """
    for attempt in range(attempts):
        try:
            return await page.goto(url)
        except Exception as e:
            if "ERR_NETWORK_CHANGED" not in str(e) or attempt == attempts - 1:
                raise


async def open_environments(page):
    response = await goto(page, service_path("environments"))
    assert response.status == 200, response.status
    await expect(page.locator("#environments tbody tr").first).to_be_visible()


async def open_servers(page, query=""):
    response = await goto(page, service_path("servers") + query)
    await expect(page.locator("#servers tbody tr").first).to_be_visible()
    return response


async def add_environment(page, repo, name=None, profile=None, gpu=None):
    """Fill and submit the Add New dialog; returns the dialog locator (still open on errors)."""
    await page.click("#add-environment")
    dialog = page.locator("#add-dialog")
    await expect(dialog).to_be_visible()
    await page.locator("#add-repo").fill(repo)
    if name is not None:
        await page.locator("#add-name").fill(name)
    if profile is not None:
        await page.get_by_label("Machine profile").select_option(value=profile)
    if gpu is not None:
        await page.get_by_label("GPU availability").select_option(gpu)
    await dialog.get_by_role("button", name="Add and build").click()
    return dialog


async def wait_status(row, status, timeout=BUILD_TIMEOUT):
    await expect(row).to_have_attribute("data-status", status, timeout=timeout)


async def logged_in_context(browser, hub, name):
    context = await browser.new_context(
        base_url=hub.url, viewport=VIEWPORT, reduced_motion="reduce", accept_downloads=True
    )
    await context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=hub.url.rstrip("/")
    )
    page = await context.new_page()
    await page.goto("hub/login")
    await page.fill("#username_input", name)
    await page.fill("#password_input", "any password")
    async with page.expect_navigation():
        await page.click("#login_submit")
    # Log in to the service too (the OAuth round trip through the hub).
    await page.goto(f"services/{SERVICE}/servers")
    assert f"/services/{SERVICE}/servers" in page.url, page.url
    await page.close()
    return context


def row_control(row, label):
    """The control of an environment's row whose accessible name contains ``label``
    (e.g. "History Python demo"): a button of the row, or an item of its More
    menu (found while the menu is closed too)."""
    return (
        row.get_by_role("button", name=label)
        .or_(row.get_by_role("menuitem", name=label, include_hidden=True))
        .or_(row.get_by_role("menuitemcheckbox", name=label, include_hidden=True))
    )


def more_button(row):
    """The row's "More actions for <name>" menu button."""
    return row.get_by_role("button", name=re.compile(r"^More actions for "))


async def row_action(row, label):
    """Click the control ``label`` of an environment's row: its button when it
    is one, else the item of the More menu (opened first when closed).
    Returns the control's locator."""
    control = row_control(row, label)
    if not await control.is_visible():
        await more_button(row).click()
        await expect(control).to_be_visible()
    await control.click()
    return control


async def focus_target(row, label):
    """Where the focus goes back when the dialog opened by ``label`` closes: the
    control itself when it is a button of the row, the More button when it is
    an item of the menu (closed while the dialog is open)."""
    if await row.get_by_role("button", name=label).count():
        return row.get_by_role("button", name=label)
    return more_button(row)


#: axe-core, installed by ``./dev setup`` (npm ci in ui-tests/).
AXE = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"

#: The axe-core ratings that fail a test.
AXE_BLOCKING = ("serious", "critical")


async def axe_violations(page, context="document"):
    """The serious and critical axe-core violations of ``page`` (or of the part
    the CSS selector ``context`` names): dicts with id, impact, help and the
    first elements with what is wrong with them. axe is injected once per page.
    """
    if not AXE.exists():
        need(f"axe-core is not installed at {AXE} (cd ui-tests && npm ci)")
    if not await page.evaluate("() => typeof window.axe !== 'undefined'"):
        await page.add_script_tag(path=str(AXE))
    violations = await page.evaluate(
        """(context) => axe.run(context === 'document' ? document : context, {resultTypes: ['violations']})
          .then((r) => r.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.slice(0, 5).map((n) => n.target.join(' ') + ': ' + n.failureSummary)})))""",
        context,
    )
    return [v for v in violations if v["impact"] in AXE_BLOCKING]


async def assert_accessible(page, where="", context="document"):
    """Fail, naming the rules and elements, if axe finds a serious or critical violation."""
    blocking = await axe_violations(page, context)
    assert not blocking, f"{where or page.url}: " + "\n".join(
        f"{v['id']} ({v['impact']}): {v['help']}\n  " + "\n  ".join(v["nodes"]) for v in blocking
    )
