"""The Add dialog's Builder choice: shown only when ``allowed_repo2docker_images``
offers more than the default builder; its first option (the default) sends
nothing, another one sends ``builder_image``."""

import asyncio
import json

import pytest
from playwright.async_api import expect

from tests.helpers.fixtures import BUILDER_IMAGE, running_hub
from ui_helpers import logged_in_context, open_environments

pytestmark = pytest.mark.browser

OTHER = "example.org/jupyterhub/repo2docker:ui-test"


@pytest.fixture(scope="module")
def builders_hub(tmp_path_factory, test_images):
    """A hub of its own whose service allows a second builder."""
    args = [f"--TljhRepo2Docker.allowed_repo2docker_images={OTHER}"]
    with running_hub(tmp_path_factory.mktemp("builders-hub"), extra_service_args=args) as info:
        yield info


async def test_no_builder_choice_with_the_default_builder_only(admin_page):
    page = admin_page
    await open_environments(page)
    await page.click("#add-environment")
    dialog = page.locator("#add-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_label("Builder", exact=True)).to_have_count(0)
    await page.keyboard.press("Escape")


async def test_builder_choice_is_sent(browser, builders_hub, git_server):
    context = await logged_in_context(browser, builders_hub, "admin")
    bodies = []

    async def refuse(route):
        # Nothing is built: the request is kept and refused.
        bodies.append(json.loads(route.request.post_data))
        await route.fulfill(
            status=400,
            content_type="application/json",
            body=json.dumps(
                {"status": 400, "message": "builder_image: stopped by the test", "field": "builder_image"}
            ),
        )

    try:
        page = await context.new_page()
        await page.route(
            "**/api/environments",
            lambda route: refuse(route) if route.request.method == "POST" else route.continue_(),
        )
        response = await page.goto("services/tljh_repo2docker/environments")
        assert response.status == 200
        await page.click("#add-environment")
        dialog = page.locator("#add-dialog")
        await expect(dialog).to_be_visible()
        builder = dialog.get_by_label("Builder", exact=True)
        await expect(builder.locator("option")).to_have_text([f"{BUILDER_IMAGE} (default)", OTHER])
        await page.locator("#add-repo").fill(git_server.url("anything"))
        await builder.select_option(OTHER)
        await dialog.get_by_role("button", name="Add and build").click()
        await expect(dialog).to_contain_text("stopped by the test")
        assert bodies[-1]["builder_image"] == OTHER
        await builder.select_option(index=0)
        await dialog.get_by_role("button", name="Add and build").click()
        for _ in range(100):
            if len(bodies) == 2:
                break
            await asyncio.sleep(0.1)
        assert len(bodies) == 2, bodies
        assert "builder_image" not in bodies[-1]
    finally:
        await context.close()
