"""The Environments table fits the screen: at 1280 px no cell wraps, at 1024 px
nothing goes past the right edge, at 390 px each environment is a card whose
Rebuild and More controls stay usable; the More menu works with the keyboard
and passes axe."""

import pytest
from playwright.async_api import expect

from tests.helpers.fixtures import need
from ui_helpers import AXE, VIEWPORT, env_row, more_button, open_environments, shot

pytestmark = pytest.mark.browser

#: The text of a row that runs over more than one line (a failure's reason may).
WRAPPED = """(row) => {
  const wrapped = [];
  const walker = document.createTreeWalker(row, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (!node.textContent.trim()) continue;
    if (node.parentElement.closest(".env-error, .visually-hidden, .env-menu")) continue;
    const range = document.createRange();
    range.selectNodeContents(node);
    const tops = new Set(
      [...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top))
    );
    if (tops.size > 1) wrapped.push(node.textContent.trim());
  }
  // Each line of a cell is one line high.
  for (const line of row.querySelectorAll(".env-line")) {
    const height = line.getBoundingClientRect().height;
    if (height > parseFloat(getComputedStyle(line).lineHeight) + 1) wrapped.push(line.textContent.trim());
  }
  return wrapped;
}"""

#: What of the table reaches past the viewport's right edge.
PAST_THE_EDGE = """(table) => {
  const width = document.documentElement.clientWidth;
  const past = [...table.querySelectorAll("*")]
    .filter((e) => !e.closest(".visually-hidden, caption"))
    .map((e) => [e, e.getBoundingClientRect()])
    .filter(([e, r]) => r.width > 0 && r.right > width + 0.5)
    .map(([e, r]) => `${e.tagName}.${e.className}: ${Math.round(r.right)} > ${width}`);
  const wrapper = table.parentElement;
  if (wrapper.scrollWidth > wrapper.clientWidth) {
    past.push(`scrolls: ${wrapper.scrollWidth} > ${wrapper.clientWidth}`);
  }
  return past;
}"""


async def at_width(page, width):
    await page.set_viewport_size({"width": width, "height": VIEWPORT["height"]})


async def test_no_cell_wraps_at_1280(admin_page, demo_env):
    page = admin_page
    await open_environments(page)
    row = env_row(page, demo_env["name"])
    await expect(row).to_have_attribute("data-status", "built")
    await expect(row.locator(".env-timing")).to_contain_text("in ")
    for number in range(await page.locator("#environments tbody tr").count()):
        other = page.locator("#environments tbody tr").nth(number)
        assert await other.evaluate(WRAPPED) == [], await other.inner_text()
    table = page.locator("#environments")
    assert await table.evaluate(PAST_THE_EDGE) == []
    # The two buttons that matter, and the menu for the rest.
    await expect(row.get_by_role("button", name=f"Logs {demo_env['name']}")).to_be_visible()
    await expect(row.get_by_role("button", name=f"Rebuild {demo_env['name']}")).to_be_visible()
    await expect(row.get_by_role("button", name=f"Remove {demo_env['name']}")).to_have_count(0)
    await expect(more_button(row)).to_have_attribute("aria-haspopup", "menu")


async def test_nothing_past_the_edge_at_1024(admin_page, demo_env):
    page = admin_page
    await at_width(page, 1024)
    try:
        await open_environments(page)
        row = env_row(page, demo_env["name"])
        await expect(row).to_be_visible()
        assert await page.locator("#environments").evaluate(PAST_THE_EDGE) == []
        # The menu opens inside the viewport too.
        await more_button(row).click()
        menu = row.get_by_role("menu")
        await expect(menu).to_be_visible()
        box = await menu.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 1024, box
        await page.keyboard.press("Escape")
        await expect(menu).to_be_hidden()
    finally:
        await at_width(page, VIEWPORT["width"])


async def test_rows_are_cards_at_390(admin_page, demo_env):
    page = admin_page
    await at_width(page, 390)
    try:
        await open_environments(page)
        row = env_row(page, demo_env["name"])
        await expect(row).to_be_visible()
        # The cells are stacked: each one starts under the one before.
        boxes = await row.locator(":scope > th, :scope > td").evaluate_all(
            "(cells) => cells.map((c) => c.getBoundingClientRect().toJSON())"
        )
        assert len(boxes) == 6, boxes
        for above, below in zip(boxes, boxes[1:]):
            assert below["top"] >= above["bottom"] - 1, (above, below)
            assert below["width"] == pytest.approx(above["width"], abs=1), (above, below)
        assert await page.evaluate(
            "() => document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        ), "the page scrolls sideways"
        for control in (
            row.get_by_role("button", name=f"Rebuild {demo_env['name']}"),
            more_button(row),
        ):
            await control.scroll_into_view_if_needed()
            await expect(control).to_be_visible()
            await expect(control).to_be_in_viewport(ratio=1)
        await more_button(row).click()
        menu = row.get_by_role("menu")
        await expect(menu).to_be_in_viewport(ratio=1)
        await shot(page, "environments-phone")
        await page.keyboard.press("Escape")
        await expect(menu).to_be_hidden()
    finally:
        await at_width(page, VIEWPORT["width"])


async def test_more_menu_with_the_keyboard(admin_page, demo_env):
    page = admin_page
    name = demo_env["name"]
    await open_environments(page)
    row = env_row(page, name)
    more = more_button(row)
    menu = row.get_by_role("menu")
    items = menu.get_by_role("menuitem").or_(menu.get_by_role("menuitemcheckbox"))
    await expect(more).to_have_attribute("aria-expanded", "false")
    await expect(menu).to_be_hidden()

    await more.focus()
    await page.keyboard.press("Enter")
    await expect(menu).to_be_visible()
    await expect(more).to_have_attribute("aria-expanded", "true")
    await expect(items.first).to_be_focused()
    await page.keyboard.press("ArrowDown")
    await expect(items.nth(1)).to_be_focused()
    await page.keyboard.press("ArrowUp")
    await expect(items.first).to_be_focused()
    await page.keyboard.press("ArrowUp")  # wraps around
    await expect(items.last).to_be_focused()
    await expect(items.last).to_have_accessible_name(f"Remove {name}")
    await page.keyboard.press("Home")
    await expect(items.first).to_be_focused()
    await expect(row.get_by_role("menuitem", name=f"History {name}")).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(menu).to_be_hidden()
    await expect(more).to_be_focused()
    await expect(more).to_have_attribute("aria-expanded", "false")

    # Space opens it too; ArrowDown on the button as well; a click outside closes it.
    await page.keyboard.press(" ")
    await expect(items.first).to_be_focused()
    await page.keyboard.press("Escape")
    await page.keyboard.press("ArrowDown")
    await expect(items.first).to_be_focused()
    await page.locator("h1").click()
    await expect(menu).to_be_hidden()
    await expect(more).to_have_attribute("aria-expanded", "false")

    # An item that opens a dialog gives the focus back to the menu button.
    await more.click()
    await row.get_by_role("menuitem", name=f"History {name}").click()
    dialog = page.locator("#history-dialog")
    await expect(dialog).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(more).to_be_focused()


async def test_the_open_menu_passes_axe(admin_page, demo_env):
    page = admin_page
    if not AXE.exists():
        need(f"axe-core is not installed at {AXE} (cd ui-tests && npm ci)")
    await open_environments(page)
    row = env_row(page, demo_env["name"])
    await more_button(row).click()
    await expect(row.get_by_role("menu")).to_be_visible()
    await page.add_script_tag(path=str(AXE))
    result = await page.evaluate(
        "() => axe.run('#environments', {resultTypes: ['violations']})"
        ".then((r) => r.violations.filter((v) => ['serious', 'critical'].includes(v.impact))"
        ".map((v) => v.id + ': ' + v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')))"
    )
    assert result == []
    await page.keyboard.press("Escape")
