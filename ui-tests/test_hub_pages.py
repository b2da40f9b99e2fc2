"""The hub's own pages link to the service, and its spawn form never offers a dead Start.

A hub of its own, configured as ``hub_config.configure`` does it (our
``hub_templates/page.html`` on ``c.JupyterHub.template_paths``), with a fresh
image prefix: it has no environment at all.

- The hub's navigation bar (Home, Token, the spawn form) has "Servers" for
  everyone and "Environments" for those who may add environments.
- With no environment, the spawn form tells an admin where to add one and a
  plain user to ask an administrator, and shows no Start button.
- Visiting ``/hub/spawn/<user>/<name>`` then leaves no server ``<name>``
  behind in the hub (the REST API does not list it).
"""

import httpx
import pytest
from playwright.async_api import expect

from tests.helpers import utils
from tests.helpers.fixtures import running_hub
from ui_helpers import goto, logged_in_context

pytestmark = pytest.mark.browser

EXTRA_CONFIG = """
from tljh_repo2docker import hub_config as _hub_config
_hub_config.configure_templates(c)
"""


@pytest.fixture(scope="module")
def bare_hub(tmp_path_factory, test_images):
    """A hub with our hub templates and no environment."""
    with running_hub(tmp_path_factory.mktemp("bare-hub"), extra_config=EXTRA_CONFIG) as info:
        yield info


@pytest.fixture(scope="module")
async def bare_admin(browser, bare_hub):
    context = await logged_in_context(browser, bare_hub, "admin")
    page = await context.new_page()
    yield page
    await context.close()


@pytest.fixture(scope="module")
async def bare_alice(browser, bare_hub):
    context = await logged_in_context(browser, bare_hub, "alice")
    page = await context.new_page()
    yield page
    await context.close()


def nav(page):
    return page.get_by_role("navigation")


async def test_the_hub_navigation_links_to_the_service(bare_admin, bare_alice, bare_hub):
    service = f"/services/{utils.SERVICE}/"
    for page, builds in ((bare_admin, True), (bare_alice, False)):
        for path in ("hub/home", "hub/token"):
            response = await goto(page, path)
            assert response.status == 200, (path, response.status)
            servers = nav(page).get_by_role("link", name="Servers", exact=True)
            await expect(servers).to_have_attribute("href", f"{service}servers")
            environments = nav(page).get_by_role("link", name="Environments", exact=True)
            if builds:
                await expect(environments).to_have_attribute("href", f"{service}environments")
            else:
                await expect(environments).to_have_count(0)
            # JupyterHub's own links are still there.
            await expect(nav(page).get_by_role("link", name="Home", exact=True)).to_be_visible()
    # The links lead to the service's pages.
    page = bare_admin
    await goto(page, "hub/home")
    await nav(page).get_by_role("link", name="Environments", exact=True).click()
    await expect(page).to_have_url(f"{bare_hub.url.rstrip('/')}{service}environments")
    await expect(page.get_by_role("heading", name="Environments")).to_be_visible()


async def test_an_admin_is_told_where_to_add_an_environment(bare_admin, bare_hub):
    page = bare_admin
    await goto(page, "hub/spawn/admin/nothing-here")
    message = page.locator("#tljh-r2d-no-environment")
    await expect(message).to_contain_text("No environment has been built yet")
    link = message.get_by_role("link", name="Environments")
    await expect(link).to_have_attribute("href", f"/services/{utils.SERVICE}/environments")
    await expect(page.get_by_role("button", name="Start")).to_have_count(0)
    await expect(page.locator("#spawn_form [type=submit]")).to_be_hidden()
    await link.click()
    await expect(page.get_by_role("heading", name="Environments")).to_be_visible()


async def test_a_user_is_told_to_ask_and_no_ghost_server_stays(bare_alice, bare_hub):
    page = bare_alice
    response = await goto(page, "hub/spawn/alice/ghost")
    assert response.status == 200, response.status
    message = page.locator("#tljh-r2d-no-environment")
    await expect(message).to_contain_text("Ask an administrator")
    await expect(message.get_by_role("link")).to_have_count(0)
    await expect(page.locator("#spawn_form [type=submit]")).to_be_hidden()

    # Sending the form anyway (as a script could) is refused, and leaves nothing either.
    xsrf = await page.evaluate(
        "() => document.cookie.split('; ').find((c) => c.startsWith('_xsrf='))?.slice(6) || ''"
    )
    refused = await page.request.post(
        "hub/spawn/alice/ghost2", form={"image": "nothing:latest", "_xsrf": xsrf}
    )
    assert refused.status >= 400, refused.status

    with utils.admin_api(bare_hub) as api:
        for params in ({}, {"include_stopped_servers": "1"}):
            r = api.get("users/alice", params=params)
            assert r.status_code == 200, r.text
            servers = r.json().get("servers") or {}
            assert "ghost" not in servers and "ghost2" not in servers, servers

    # Nor does the service's Servers page list it.
    await goto(page, f"services/{utils.SERVICE}/servers")
    await expect(page.locator('#servers tbody tr[data-name="ghost"]')).to_have_count(0)
    r = httpx.get(f"{bare_hub.url}hub/api/", timeout=10)
    assert r.status_code == 200
