"""Content at launch in the browser (issue 23): a launch link with a content
repository, made in the Environments page's "Copy launch link" dialog, opened
by a user. The repository's notebook shows in JupyterLab; the user edits a
file there; the repository gets a new commit; the user stops the server on
the Servers page; the same link brings the new notebook and keeps the edit.

The repository is on ``content_server`` (tests/helpers/fixtures.py): a git
server on the hub's Docker gateway, which the servers' network reaches as it
would a git host outside.
"""

import asyncio
import json
import re
import uuid

import pytest
from playwright.async_api import expect

from tests.helpers.gitserver import add_commit, make_repo
from tests.helpers.servers import Files
from tests.helpers.utils import HubUser
from ui_helpers import (
    SPAWN_TIMEOUT,
    env_row,
    goto,
    logged_in_context,
    open_environments,
    open_servers,
    row_action,
    server_row,
)

pytestmark = pytest.mark.browser

#: The launch link's server: the slug of the environment's name ("Python demo").
SERVER = "python-demo"


def notebook(text):
    """A notebook of one Markdown cell saying ``text`` (rendered when opened),
    for the image's Python kernel (JupyterLab asks for a kernel otherwise)."""
    cell = {"cell_type": "markdown", "id": "intro", "metadata": {}, "source": [text]}
    kernel = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    body = {"cells": [cell], "metadata": {"kernelspec": kernel}, "nbformat": 4, "nbformat_minor": 5}
    return json.dumps(body, indent=1) + "\n"


@pytest.fixture
async def learner(browser, hub):
    """A user of its own (so that its server named after the environment is
    this test's), logged in to the browser and to the API; its server is
    removed afterwards."""
    name = f"learner{uuid.uuid4().hex[:6]}"
    context = await logged_in_context(browser, hub, name)
    page = await context.new_page()
    page.set_default_timeout(20_000)
    user = await HubUser.login(hub, name)
    files = Files(hub, name)
    try:
        yield {"name": name, "page": page, "api": user, "files": files}
    finally:
        await user.api("DELETE", f"api/servers/{SERVER}", params={"remove": "true"})
        for _ in range(60):
            r = await user.api("GET", "api/servers")
            if not any(s["name"] == SERVER for s in r.json()["servers"]):
                break
            await asyncio.sleep(1)
        await files.close()
        await user.close()
        await context.close()


async def launch_link(page, env_name, content, urlpath):
    """The link of the "Copy launch link" dialog with ``content`` and ``urlpath``, as copied."""
    await open_environments(page)
    await row_action(env_row(page, env_name), f"Copy launch link {env_name}")
    dialog = page.locator("#launch-dialog")
    await expect(dialog).to_be_visible()
    await page.get_by_label("Content repository URL").fill(content)
    await page.get_by_label("Open (path in the server)").fill(urlpath)
    copy = page.locator("#launch-copy-link")
    await copy.click()
    await expect(copy).to_contain_text("Copied")
    link = await page.evaluate("navigator.clipboard.readText()")
    assert link == await page.locator("#launch-link").input_value()
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    return link


async def open_in_lab(page, link, lab_path):
    """Open the launch link: the server starts and the tab ends in JupyterLab at ``lab_path``."""
    response = await goto(page, link)
    assert response.status == 200, response.status
    await page.wait_for_url(re.compile(re.escape(lab_path) + "$"), timeout=SPAWN_TIMEOUT)
    await expect(page).to_have_title(re.compile("JupyterLab|Jupyter"), timeout=60_000)


async def wait_file(files, path, expected, timeout=30):
    """The text of ``path`` in the server once it contains ``expected`` (a save may take a moment)."""
    text = None
    for _ in range(timeout * 2):
        text = await files.read(SERVER, path)
        if text is not None and expected in text:
            return text
        await asyncio.sleep(0.5)
    raise AssertionError(f"{path} does not contain {expected!r}: {text!r}")


async def test_launch_link_with_content_clones_then_updates_keeping_the_users_edit(
    admin_page, demo_env, content_server, learner, run_id
):
    root, git = content_server
    make_repo(root, "course", {
        "intro.ipynb": notebook(f"Welcome to the course {run_id}"),
        "lesson.md": "# Lesson\n\nline 1\n",
    })
    urlpath = "lab/tree/course/intro.ipynb"
    link = await launch_link(admin_page, demo_env["name"], git.url("course"), urlpath)
    assert "content=" in link and "urlpath=lab%2Ftree%2Fcourse%2Fintro.ipynb" in link, link

    user, page, files = learner["name"], learner["page"], learner["files"]
    lab = f"/user/{user}/{SERVER}/"
    await open_in_lab(page, link, lab + urlpath)
    # The repository's notebook, rendered in JupyterLab.
    await expect(page.locator(".jp-Notebook .jp-RenderedMarkdown").get_by_text(f"Welcome to the course {run_id}")).to_be_visible(
        timeout=60_000
    )

    # The user edits the lesson in JupyterLab's editor, and saves it.
    await goto(page, lab + "lab/tree/course/lesson.md")
    editor = page.locator(".jp-FileEditor .cm-content").last
    await expect(editor).to_contain_text("line 1", timeout=60_000)
    await editor.click()
    await page.keyboard.press("Control+End")
    await page.keyboard.type("my answer")
    await page.keyboard.press("Control+s")
    edited = await wait_file(files, "course/lesson.md", "my answer")
    assert edited.startswith("# Lesson\n\nline 1\n"), edited

    # Upstream: a new commit brings the notebook of week 2.
    add_commit(root, "course", {"week2.ipynb": notebook(f"Week 2 {run_id}")})

    # Stopped on the Servers page.
    await open_servers(page)
    row = server_row(page, SERVER)
    await row.get_by_role("button", name=f"Stop {SERVER}").click()
    await expect(row).to_have_attribute("data-status", "stopped", timeout=60_000)

    # The same link again: the new notebook is there, the user's edit too.
    await open_in_lab(page, link, lab + urlpath)
    await expect(page.locator(".jp-Notebook .jp-RenderedMarkdown").get_by_text(f"Welcome to the course {run_id}")).to_be_visible(
        timeout=60_000
    )
    await expect(page.locator(".jp-DirListing-content").get_by_text("week2.ipynb")).to_be_visible(timeout=30_000)
    assert await files.read(SERVER, "course/lesson.md") == edited
    await goto(page, lab + "lab/tree/course/week2.ipynb")
    await expect(page.locator(".jp-Notebook .jp-RenderedMarkdown").get_by_text(f"Week 2 {run_id}")).to_be_visible(timeout=60_000)
