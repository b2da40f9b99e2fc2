"""A failed build says why in its row, in one plain sentence, and its log folds tracebacks.

The build is real: repo2docker in Docker clones a repository of the test git
server at a ref that does not exist, fails, and ends its log with a Python
traceback glued to its last message ("Failed to check out ref
does-not-existTraceback (most recent call last):").
"""

import re

import pytest
from playwright.async_api import expect

from tests.helpers.fixtures import SINGLEUSER_IMAGE
from tests.helpers.gitserver import make_repo
from ui_helpers import env_row, find_env, open_environments, wait_status

pytestmark = pytest.mark.browser

NAMES = ("Missing ref", "Unreachable host")
REF = "does-not-exist"
SENTENCE = f"The ref '{REF}' does not exist in the repository."


@pytest.fixture(scope="module")
def missing_ref_repo(git_server, git_root, test_images, run_id):
    make_repo(
        git_root,
        "ui-missing-ref",
        {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN echo 'missing ref {run_id}'\n"},
    )
    return git_server.url("ui-missing-ref")


@pytest.fixture
async def fresh_names(admin):
    """NAMES, with no environment of those names before or after the test."""

    async def remove():
        for name in NAMES:
            env = await find_env(admin, name)
            while env is not None:
                r = await admin.delete_env(env["uid"])
                assert r.status_code in (200, 204, 404), r.text
                env = await find_env(admin, name)

    await remove()
    yield NAMES
    await remove()


async def test_a_missing_ref_is_said_in_the_row_and_its_traceback_folded(
    admin_page, missing_ref_repo, fresh_names
):
    page = admin_page
    name = fresh_names[0]
    await open_environments(page)
    await page.click("#add-environment")
    dialog = page.locator("#add-dialog")
    await expect(dialog).to_be_visible()
    await page.locator("#add-repo").fill(missing_ref_repo)
    await page.locator("#add-ref").fill(REF)
    await page.locator("#add-name").fill(name)
    await dialog.get_by_role("button", name="Add and build").click()
    await expect(dialog).to_be_hidden()
    row = env_row(page, name)
    await expect(row.locator(".env-ref")).to_contain_text(REF)
    await wait_status(row, "failed", timeout=180_000)

    # The row: the plain sentence, whole (not cut), and no traceback.
    error = row.locator(".env-error")
    await expect(error).to_contain_text(SENTENCE)
    text = await error.text_content()
    assert "Traceback" not in text and "…" not in text, text
    cut = await error.evaluate(
        "(e) => e.scrollHeight > e.clientHeight + 1 || e.scrollWidth > e.clientWidth + 1"
    )
    assert not cut, "the reason is cut"
    assert await error.evaluate("(e) => getComputedStyle(e).textOverflow") != "ellipsis"

    # "View log" is a button with an accessible name; the keyboard opens the log.
    view = row.get_by_role("button", name=f"View log of {name}")
    await expect(view).to_be_visible()
    await expect(view).to_contain_text("View log")
    await view.focus()
    await page.keyboard.press("Enter")
    logs = page.locator("#logs-dialog")
    await expect(logs).to_be_visible()
    await expect(page.locator("#logs-dialog-title")).to_have_text(f"Build log: {name}")
    await expect(page.locator("#logs-status")).to_contain_text(f"Failed: {SENTENCE}")
    output = page.locator("#logs-output")

    # The message and the traceback glued to it are two lines.
    alone = re.compile(rf"^Failed to check out ref {REF}\s*$")
    message = output.locator(".log-line", has_text=alone)
    await expect(message).to_have_count(1)
    assert "does-not-existTraceback" not in await output.text_content()

    # The traceback is folded: a collapsed <details>, its summary counting its
    # lines; the exception's own line stays visible after it.
    traceback = output.locator("details.log-traceback")
    await expect(traceback).to_have_count(1)
    summary = traceback.locator("summary")
    await expect(summary).to_have_text(re.compile(r"^Traceback \(\d+ lines\)$"))
    count = int(re.search(r"\d+", await summary.text_content()).group())
    await expect(traceback.locator(".log-line")).to_have_count(count)
    assert count > 5
    assert await traceback.get_attribute("open") is None
    first = traceback.locator(".log-line").first
    await expect(first).to_have_text("Traceback (most recent call last):\n")
    await expect(first).to_be_hidden()
    await expect(traceback.locator(".log-line", has_text="raise ValueError(msg)")).to_be_hidden()
    exception = output.locator(
        "details.log-traceback + .log-line", has_text=f"ValueError: Failed to check out ref {REF}"
    )
    await expect(exception).to_be_visible()

    # The keyboard opens and closes it.
    await summary.focus()
    await expect(summary).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(traceback).to_have_attribute("open", "")
    await expect(first).to_be_visible()
    await page.keyboard.press("Space")
    await expect(first).to_be_hidden()

    # Copy gives the plain log: each line once, the summary not among them.
    await logs.get_by_role("button", name="Copy").click()
    copied = await page.evaluate("navigator.clipboard.readText()")
    glued = f"Failed to check out ref {REF}\nTraceback (most recent call last):\n"
    assert glued in copied, copied[-3000:]
    assert "Traceback (" + str(count) not in copied

    # Closing gives the focus back to the button that opened it.
    await page.keyboard.press("Escape")
    await expect(logs).to_be_hidden()
    await expect(view).to_be_focused()


async def test_chained_tracebacks_fold_one_by_one(admin_page, admin, fresh_names):
    """git cannot connect: repo2docker prints two chained tracebacks; each folds, and
    each exception line, and the line between them, stays in view."""
    page = admin_page
    name = fresh_names[1]
    env = await admin.create_env({"repo": "http://127.0.0.1:9/nowhere.git", "name": name})
    env = await admin.wait_env(env["uid"], {"failed"}, timeout=180)
    assert env["error"].startswith("The git host 127.0.0.1:9 could not be reached."), env["error"]

    await open_environments(page)
    row = env_row(page, name)
    await expect(row.locator(".env-error")).to_have_text(env["error"])
    await row.get_by_role("button", name=f"View log of {name}").click()
    await expect(page.locator("#logs-status")).to_contain_text("Failed: The git host")
    output = page.locator("#logs-output")
    folded = output.locator("details.log-traceback")
    await expect(folded).to_have_count(2)
    for i in range(2):
        await expect(folded.nth(i).locator("summary")).to_have_text(
            re.compile(r"^Traceback \(\d+ lines\)$")
        )
    await expect(output.get_by_text("subprocess.CalledProcessError:")).to_be_visible()
    await expect(
        output.get_by_text("The above exception was the direct cause of the following exception:")
    ).to_be_visible()
    await expect(
        output.get_by_text("ContentProviderException: Failed to clone repository from")
    ).to_be_visible()
    await expect(output.get_by_text("fatal: unable to access")).to_be_visible()
    await page.keyboard.press("Escape")
