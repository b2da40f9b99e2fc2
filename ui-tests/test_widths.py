"""Every page people live in, at 1280, 1024 and 390 px (issue 24): nothing is
clipped at 1024 px and the pages are usable on a 390 px phone screen.

On each page, at each width:

- nothing is wider than the viewport (the page never scrolls sideways);
- every visible control (button, link, input, select) starts and ends inside
  the viewport horizontally, and can be reached: scrolled into view, centred,
  at least 98 % of it is on screen (not cut by the viewport or by a scrolling
  box), so a person can see and press it;
- axe-core finds no serious or critical violation.

The pages: Environments with a failed build's sentence in its row, the build
log viewer with a folded traceback, History, Servers and its New Server
dialog (on a phone the New Server flow goes on until the server is open),
Homes, Disk, the hub's spawn page and the service's 403 page.
"""

import re
import subprocess

import pytest
from playwright.async_api import expect

from tests.helpers.fixtures import SINGLEUSER_IMAGE
from tests.helpers.gitserver import make_repo
from tests.helpers.servers import wait_server
from ui_helpers import (
    SPAWN_TIMEOUT,
    assert_accessible,
    env_row,
    find_env,
    goto,
    open_environments,
    open_servers,
    row_action,
    server_row,
    service_path,
)

pytestmark = pytest.mark.browser

WIDTHS = [1280, 1024, 390]
HEIGHT = 800

FAILED_NAME = "Widths failed build"
SERVER = "ui-widths"
MISSING_REF = "does-not-exist"
SENTENCE = f"The ref '{MISSING_REF}' does not exist in the repository."

#: How wide the page is, and what reaches past the viewport's right edge.
PAGE_WIDTH = """() => {
  const width = window.innerWidth;
  const past = [...document.querySelectorAll("body *")]
    .map((e) => [e, e.getBoundingClientRect()])
    .filter(([e, r]) => r.width > 0 && r.right > width + 0.5)
    .slice(0, 8)
    .map(([e, r]) => `${e.tagName.toLowerCase()}#${e.id}.${e.className}: right ${Math.round(r.right)}`);
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: width, past};
}"""

#: The visible controls under ``root`` (a CSS selector, or the whole page),
#: each checked twice: its box inside the viewport horizontally as the page
#: is drawn, then, scrolled into view (centred), at least 98 % of it seen on
#: screen (an IntersectionObserver counts what the viewport and any scrolling
#: box around it cut off). Returns the number checked and the problems.
CONTROLS = """async (root) => {
  const scope = root ? document.querySelector(root) : document;
  const width = window.innerWidth;
  const describe = (e) => {
    const text = (e.getAttribute("aria-label") || e.textContent || e.id || e.name || "").trim();
    return `${e.tagName.toLowerCase()} "${text.replace(/\\s+/g, " ").slice(0, 50)}"`;
  };
  const controls = [...scope.querySelectorAll("button, a, input, select")]
    .filter((e) => e.type !== "hidden")
    .filter((e) => !e.closest(".visually-hidden, .visually-hidden-focusable"))
    .filter((e) => e.checkVisibility({opacityProperty: true, visibilityProperty: true,
                                       checkOpacity: true, checkVisibilityCSS: true}))
    .filter((e) => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; });
  const problems = [];
  for (const e of controls) {
    const r = e.getBoundingClientRect();
    if (r.left < -0.5 || r.right > width + 0.5) {
      problems.push(`${describe(e)} spans ${Math.round(r.left)}..${Math.round(r.right)} px of a ${width} px viewport`);
    }
  }
  const seen = (e) => new Promise((resolve) => {
    const observer = new IntersectionObserver((entries) => {
      observer.disconnect();
      resolve(entries[0].intersectionRatio);
    });
    observer.observe(e);
  });
  for (const e of controls) {
    e.scrollIntoView({block: "center", inline: "center", behavior: "instant"});
    const ratio = await seen(e);
    if (ratio < 0.98) problems.push(`${describe(e)}: ${Math.round(ratio * 100)} % on screen once scrolled to`);
  }
  window.scrollTo({top: 0, left: 0, behavior: "instant"});
  return {count: controls.length, problems};
}"""


async def assert_fits(page, where, root=None):
    """The page is no wider than the viewport, and every visible control under
    ``root`` (a dialog, say; the whole page by default) is inside it and reachable."""
    size = await page.evaluate(PAGE_WIDTH)
    assert size["scrollWidth"] <= size["innerWidth"], f"{where}: the page scrolls sideways: {size}"
    controls = await page.evaluate(CONTROLS, root)
    assert controls["count"] > 0, f"{where}: no visible control found under {root or 'the page'}"
    assert controls["problems"] == [], f"{where}: " + "\n".join(controls["problems"])


async def check(page, where, root=None):
    await assert_fits(page, where, root)
    await assert_accessible(page, where)


async def at_width(page, width):
    await page.set_viewport_size({"width": width, "height": HEIGHT})


@pytest.fixture(scope="module")
def missing_ref_repo(git_server, git_root, test_images, run_id):
    make_repo(
        git_root,
        "ui-widths-missing-ref",
        {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN echo 'widths {run_id}'\n"},
    )
    return git_server.url("ui-widths-missing-ref")


@pytest.fixture(scope="module")
async def failed_env(admin, missing_ref_repo):
    """An environment whose build failed (a ref that does not exist), removed afterwards."""
    old = await find_env(admin, FAILED_NAME)
    if old is not None:
        await admin.delete_env(old["uid"])
    env = await admin.create_env({"repo": missing_ref_repo, "ref": MISSING_REF, "name": FAILED_NAME})
    env = await admin.wait_env(env["uid"], {"failed", "built", "cancelled"}, timeout=180)
    assert env["status"] == "failed", env
    yield env
    await admin.delete_env(env["uid"])


@pytest.fixture(scope="module")
def home_volume(hub):
    """A home volume of this hub, so that the Homes page has a row."""
    name = f"ui-widths-home-{hub.image_prefix.strip('/').replace('/', '-')}"
    labels = {
        "tljh_repo2docker.home": "1",
        "tljh_repo2docker.home.user": "widths-user",
        "tljh_repo2docker.home.server": "analysis",
        "tljh_repo2docker.home.environment": "",
        "tljh_repo2docker.home.prefix": hub.image_prefix,
    }
    args = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
    subprocess.run(["docker", "volume", "create", *args, name], check=True, capture_output=True)
    yield name
    subprocess.run(["docker", "volume", "rm", "-f", name], check=False, capture_output=True)


@pytest.fixture(scope="module")
async def server_removed_afterwards(alice):
    """Removes alice's SERVER when the module is done."""
    yield SERVER
    await alice.api("DELETE", f"api/servers/{SERVER}", params={"remove": "true"})
    await wait_server(alice, SERVER, "absent")


@pytest.fixture
async def alice_server(alice, demo_env, server_removed_afterwards):
    """alice's server SERVER, running (started once for the module), so that the
    Servers page has a row with its actions."""
    r = await alice.api("GET", "api/servers")
    if not any(s["name"] == SERVER for s in r.json()["servers"]):
        r = await alice.api("POST", "api/servers", json={"name": SERVER, "environment": demo_env["name"]})
        assert r.status_code == 202, r.text
    return await wait_server(alice, SERVER)


@pytest.mark.parametrize("width", WIDTHS)
async def test_environments_with_a_failed_build_and_its_log(admin_page, width, failed_env, demo_env):
    page = admin_page
    await at_width(page, width)
    await open_environments(page)
    row = env_row(page, FAILED_NAME)
    await expect(row).to_have_attribute("data-status", "failed")
    error = row.locator(".env-error")
    await expect(error).to_contain_text(SENTENCE)
    assert await error.evaluate("(e) => e.scrollWidth <= e.clientWidth + 1"), "the sentence is cut"
    await check(page, f"Environments at {width} px")

    view = row.get_by_role("button", name=f"View log of {FAILED_NAME}")
    await view.scroll_into_view_if_needed()
    await view.click()
    dialog = page.locator("#logs-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.locator("details.log-traceback summary").first).to_have_text(
        re.compile(r"^Traceback \(\d+ lines\)$")
    )
    await check(page, f"Build log at {width} px", "#logs-dialog")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()


@pytest.mark.parametrize("width", WIDTHS)
async def test_history(admin_page, width, demo_env):
    page = admin_page
    await at_width(page, width)
    await open_environments(page)
    name = demo_env["name"]
    await row_action(env_row(page, name), f"History {name}")
    dialog = page.locator("#history-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.locator("tbody tr[data-id]").first).to_be_visible()
    await check(page, f"History at {width} px", "#history-dialog")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()


@pytest.mark.parametrize("width", WIDTHS)
async def test_servers_and_the_new_server_dialog(alice_page, width, demo_env, alice_server):
    page = alice_page
    await at_width(page, width)
    await open_servers(page)
    await expect(server_row(page, SERVER)).to_have_attribute("data-status", "running")
    await check(page, f"Servers at {width} px")
    await page.get_by_role("button", name="New Server").click()
    dialog = page.locator("#new-server-dialog")
    await expect(dialog).to_be_visible()
    await dialog.get_by_label("Environment").select_option(label=demo_env["name"])
    await expect(page.locator("#server-environment-help")).to_contain_text(demo_env["repo"])
    await check(page, f"New Server dialog at {width} px", "#new-server-dialog")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()


async def test_a_new_server_on_a_phone_ends_in_the_server(alice_page, alice, demo_env):
    """At 390 px the whole flow works: New Server, choose, Start, and the server opens."""
    page = alice_page
    await at_width(page, 390)
    await open_servers(page)
    await page.get_by_role("button", name="New Server").click()
    dialog = page.locator("#new-server-dialog")
    await expect(dialog).to_be_visible()
    await dialog.get_by_label("Environment").select_option(label=demo_env["name"])
    await dialog.get_by_label("Server name").fill("ui-phone")
    await expect(dialog.get_by_label("Open it in this tab when it is ready")).to_be_checked()
    start = dialog.get_by_role("button", name="Start")
    await start.scroll_into_view_if_needed()
    await expect(start).to_be_in_viewport(ratio=0.98)
    await start.click()
    try:
        await page.wait_for_url(re.compile(r"/user/alice/ui-phone/"), timeout=SPAWN_TIMEOUT)
        await expect(page).to_have_title(re.compile("JupyterLab|Jupyter"), timeout=60_000)
    finally:
        r = await alice.api("DELETE", "api/servers/ui-phone", params={"remove": "true"})
        assert r.status_code in (202, 204, 404), r.text
        await wait_server(alice, "ui-phone", "absent")


@pytest.mark.parametrize("width", WIDTHS)
async def test_homes(admin_page, width, home_volume):
    page = admin_page
    await at_width(page, width)
    response = await goto(page, service_path("homes"))
    assert response.status == 200
    await expect(page.locator(f'#homes tbody tr[data-name="{home_volume}"]')).to_be_visible()
    await check(page, f"Homes at {width} px")


@pytest.mark.parametrize("width", WIDTHS)
async def test_disk(admin_page, width, demo_env):
    page = admin_page
    await at_width(page, width)
    response = await goto(page, service_path("disk"))
    assert response.status == 200
    await expect(page.locator(f'#disk-versions tbody tr[data-uid="{demo_env["uid"]}"]').first).to_be_visible()
    await expect(page.locator("#disk-free")).not_to_have_text("…")
    await check(page, f"Disk at {width} px")


@pytest.mark.parametrize("width", WIDTHS)
async def test_the_hub_spawn_page_and_the_403_page(alice_page, width, demo_env):
    page = alice_page
    await at_width(page, width)
    response = await goto(page, "hub/spawn")
    assert response.status == 200, response.status
    await expect(page.locator("#spawn_form")).to_be_visible()
    await check(page, f"The hub's spawn page at {width} px")

    response = await goto(page, service_path("environments"))
    assert response.status == 403
    await expect(page.get_by_role("heading", level=1)).to_have_text("403 : Forbidden")
    await check(page, f"The 403 page at {width} px")
