"""The pages themselves: navigation, permissions, theme, layout, accessibility basics."""

import pytest
from playwright.async_api import expect

from ui_helpers import logged_in_context
from ui_helpers import open_environments, open_servers, service_path

pytestmark = pytest.mark.browser


async def test_admin_navigation(admin_page, hub):
    page = admin_page
    await open_servers(page)
    nav = page.get_by_role("navigation", name="Main")
    await expect(nav.get_by_role("link", name="Servers")).to_have_attribute("aria-current", "page")
    await nav.get_by_role("link", name="Environments").click()
    await expect(page).to_have_url(f"{hub.url}{service_path('environments')}")
    await expect(page.get_by_role("heading", name="Environments", level=1)).to_be_visible()
    # Back to the hub and again to the service.
    await nav.get_by_role("link", name="Home", exact=True).click()
    await expect(page).to_have_url(f"{hub.url}hub/home")
    await expect(page.locator("#current-user, #login_widget").first).to_contain_text("admin")


async def test_plain_user_gets_no_environments(alice_page):
    page = alice_page
    await open_servers(page)
    nav = page.get_by_role("navigation", name="Main")
    await expect(nav.get_by_role("link", name="Servers")).to_be_visible()
    await expect(nav.get_by_role("link", name="Environments")).to_have_count(0)
    await expect(page.locator("#current-user")).to_have_text("alice")

    response = await page.goto(service_path("environments"))
    assert response.status == 403
    await expect(page.get_by_role("heading", level=1)).to_have_text("403 : Forbidden")
    await expect(page.locator("#error-message")).to_contain_text("admin permission")
    await page.get_by_role("link", name="Back to your servers").click()
    await expect(page.get_by_role("heading", name="Servers", level=1)).to_be_visible()


async def test_dark_mode_follows_the_hub(admin_page):
    page = admin_page
    await page.goto("hub/home")
    await page.evaluate("localStorage.setItem('jupyterhub-bs-theme', 'dark')")
    await open_environments(page)
    await expect(page.locator("html")).to_have_attribute("data-bs-theme", "dark")
    await page.click("#dark-theme-toggle")
    await expect(page.locator("html")).to_have_attribute("data-bs-theme", "light")
    await page.goto("hub/home")
    await expect(page.locator("html")).to_have_attribute("data-bs-theme", "light")
    await page.evaluate("localStorage.removeItem('jupyterhub-bs-theme')")


async def test_logout(browser, hub):
    context = await logged_in_context(browser, hub, "carol")
    try:
        page = await context.new_page()
        await open_servers(page)
        await page.get_by_role("button", name="Logout").click()
        await expect(page).to_have_url(f"{hub.url}hub/login")
        # The hub forgot the login.
        await page.goto("hub/home")
        assert "/hub/login" in page.url, page.url
    finally:
        await context.close()


@pytest.mark.parametrize("width", [1280, 390])
async def test_no_horizontal_scrolling(admin_page, width):
    page = admin_page
    await page.set_viewport_size({"width": width, "height": 900})
    for opener in (open_environments, open_servers):
        await opener(page)
        scroll_width = await page.evaluate("document.documentElement.scrollWidth")
        wide = await page.evaluate(
            """(w) => Array.from(document.querySelectorAll('body *'))
                .filter((e) => e.getBoundingClientRect().right > w + 1)
                .filter((e) => getComputedStyle(e).position !== 'static')
                .slice(0, 5).map((e) => e.tagName + '#' + e.id + '.' + e.className)""",
            width,
        )
        assert scroll_width <= width, f"{page.url}: {scroll_width}px wide at {width}px: {wide}"


async def test_every_control_has_a_label(admin_page):
    page = admin_page
    unlabelled_js = """
        () => Array.from(document.querySelectorAll('input, select, textarea, button'))
          .filter((e) => e.type !== 'hidden')
          .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                         && !e.textContent.trim())
          .map((e) => e.outerHTML)
    """
    for opener in (open_environments, open_servers):
        await opener(page)
        assert await page.evaluate(unlabelled_js) == [], page.url
