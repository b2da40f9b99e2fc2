"""Environments from anything (issue 23) in the browser: the Add dialog's
source tabs, a files environment built from the Dockerfile starting point, an
existing image registered, the launch link with content and its README
badge; and (issue 24) Prune disabled, with its reason, when it would free
nothing."""

import io
import json
import re
import zipfile
from urllib.parse import urlencode

import pytest
from playwright.async_api import expect

from tests.helpers.fixtures import SINGLEUSER_IMAGE
from ui_helpers import (
    env_row,
    find_env,
    goto,
    more_button,
    open_environments,
    row_action,
    service_path,
    wait_status,
)

pytestmark = pytest.mark.browser

TABS = ["Git repository", "Files", "Archive", "Image"]


async def open_add_dialog(page):
    await open_environments(page)
    await page.click("#add-environment")
    dialog = page.locator("#add-dialog")
    await expect(dialog).to_be_visible()
    return dialog


async def built(row):
    """Wait for the row's build to end; it must have built (else its status cell says why)."""
    await wait_status(row, re.compile("^(built|failed|cancelled)$"))
    status = await row.get_attribute("data-status")
    assert status == "built", await row.locator("td.env-status-cell").inner_text()


async def test_source_tabs_switch_and_are_keyboard_accessible(admin_page):
    page = admin_page
    dialog = await open_add_dialog(page)
    tablist = dialog.get_by_role("tablist", name="Where the environment comes from")
    tabs = [tablist.get_by_role("tab", name=name) for name in TABS]
    await expect(tabs[0]).to_have_attribute("aria-selected", "true")
    await expect(dialog.get_by_role("tabpanel")).to_have_count(1)
    await expect(page.locator("#add-repo")).to_be_visible()

    # Arrow keys move along the tabs, and show their panel; Home and End go to the ends.
    await tabs[0].focus()
    await page.keyboard.press("ArrowRight")
    await expect(tabs[1]).to_be_focused()
    await expect(tabs[1]).to_have_attribute("aria-selected", "true")
    await expect(tabs[0]).to_have_attribute("aria-selected", "false")
    await expect(tabs[0]).to_have_attribute("tabindex", "-1")
    await expect(page.locator("#add-panel-files")).to_be_visible()
    await expect(page.locator("#add-repo")).to_be_hidden()
    await page.keyboard.press("End")
    await expect(tabs[3]).to_be_focused()
    await expect(page.get_by_label("Image reference")).to_be_visible()
    await page.keyboard.press("ArrowRight")  # wraps around
    await expect(tabs[0]).to_be_focused()
    await page.keyboard.press("ArrowLeft")
    await expect(tabs[3]).to_be_focused()
    await page.keyboard.press("Home")
    await expect(tabs[0]).to_have_attribute("aria-selected", "true")
    # Tab leaves the tab list for the shown panel.
    await page.keyboard.press("Tab")
    assert await page.evaluate("() => Boolean(document.activeElement.closest('#add-panel-git'))")

    # Files: starting points fill the list; files are added and removed.
    await tabs[1].click()
    await dialog.get_by_role("button", name="R: runtime.txt + install.R").click()
    paths = dialog.locator(".file-path")
    await expect(paths).to_have_count(2)
    await expect(paths.nth(0)).to_have_value("runtime.txt")
    await expect(paths.nth(1)).to_have_value("install.R")
    await dialog.get_by_role("button", name="pip: requirements.txt").click()
    await expect(paths).to_have_count(1)
    await expect(paths.nth(0)).to_have_value("requirements.txt")
    await expect(dialog.locator(".file-text").nth(0)).to_have_value(re.compile("numpy"))
    await dialog.get_by_role("button", name="Add a file").click()
    await expect(paths).to_have_count(2)
    await expect(paths.nth(1)).to_be_focused()
    await paths.nth(1).fill("postBuild")
    await dialog.get_by_role("button", name=re.compile(r"^Remove file")).nth(1).click()
    await expect(paths).to_have_count(1)

    # The page's own check: a file without a path is named next to the files.
    await dialog.get_by_role("button", name="Add a file").click()
    await dialog.locator(".file-text").nth(1).fill("echo hi")
    await dialog.get_by_role("button", name="Add and build").click()
    await expect(page.locator("#add-files")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#add-files-error")).to_contain_text("path")

    # Archive: the size limit is said; Image: an empty reference is named.
    await tabs[2].click()
    await expect(page.locator("#add-archive")).to_have_attribute("accept", re.compile(r"\.zip"))
    await tabs[3].click()
    await dialog.get_by_role("button", name="Add and build").click()
    await expect(page.locator("#add-image")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#add-image-error")).to_contain_text("Image reference is required")

    # A phone screen: the tabs stay on one line and the dialog does not scroll sideways.
    await page.set_viewport_size({"width": 390, "height": 800})
    for tab in tabs:
        await expect(tab).to_be_visible()
    overflow = await page.evaluate(
        "() => { const d = document.querySelector('#add-dialog .modal-content');"
        " return d.scrollWidth - d.clientWidth; }"
    )
    assert overflow <= 1, overflow
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()


async def test_a_server_error_naming_files_is_shown_next_to_the_files(admin_page, ui_envs):
    page = admin_page
    dialog = await open_add_dialog(page)
    await dialog.get_by_role("tab", name="Files").click()
    await page.locator(".file-path").first.fill("../outside.txt")
    await page.locator(".file-text").first.fill("x")
    await page.locator("#add-name").fill(ui_envs["files_refused"])
    await dialog.get_by_role("button", name="Add and build").click()
    await expect(page.locator("#add-files")).to_have_attribute("aria-invalid", "true", timeout=10_000)
    await expect(page.locator("#add-panel-files")).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()


async def test_files_environment_from_the_dockerfile_starting_point_builds(admin_page, ui_envs, run_id, test_images):
    page = admin_page
    dialog = await open_add_dialog(page)
    await dialog.get_by_role("tab", name="Files").click()
    await dialog.get_by_role("button", name="Dockerfile").click()
    await expect(page.locator(".file-path").first).to_have_value("Dockerfile")
    await page.locator(".file-text").first.fill(f"FROM {SINGLEUSER_IMAGE}\nRUN echo 'files {run_id}'\n")
    await page.locator("#add-name").fill(ui_envs["files"])
    await dialog.get_by_role("button", name="Add and build").click()
    await expect(dialog).to_be_hidden()
    row = env_row(page, ui_envs["files"])
    await expect(row.locator("td.env-repo")).to_contain_text("Files")
    await built(row)
    await expect(row.get_by_role("button", name=f"Rebuild {ui_envs['files']}")).to_be_visible()


async def test_archive_tab_uploads_a_zip_that_builds(admin_page, ui_envs, run_id, test_images):
    page = admin_page
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("Dockerfile", f"FROM {SINGLEUSER_IMAGE}\nRUN echo 'archive {run_id}'\n")
    dialog = await open_add_dialog(page)
    await dialog.get_by_role("tab", name="Archive").click()
    await expect(page.locator("#add-archive-help")).to_contain_text(re.compile(r"up to [\d.]+ [KMG]B packed"))
    await page.locator("#add-archive").set_input_files(
        files=[{"name": "archive-demo.zip", "mimeType": "application/zip", "buffer": packed.getvalue()}]
    )
    # The name is suggested from the archive's.
    await expect(page.locator("#add-name")).to_have_value("archive-demo")
    await page.locator("#add-name").fill(ui_envs["archive"])
    await dialog.get_by_role("button", name="Add and build").click()
    await expect(dialog).to_be_hidden()
    row = env_row(page, ui_envs["archive"])
    await expect(row.locator("td.env-repo")).to_contain_text("Files")
    await built(row)


async def test_image_tab_registers_a_local_image(admin_page, ui_envs, test_images):
    page = admin_page
    dialog = await open_add_dialog(page)
    await dialog.get_by_role("tab", name="Image").click()
    await page.locator("#add-image").fill(SINGLEUSER_IMAGE)
    # The name is suggested from the reference.
    await expect(page.locator("#add-name")).to_have_value("singleuser")
    await page.locator("#add-name").fill(ui_envs["image"])
    await dialog.get_by_role("button", name="Add and build").click()
    await expect(dialog).to_be_hidden()
    row = env_row(page, ui_envs["image"])
    await expect(row.locator("td.env-repo")).to_contain_text(f"Image: {SINGLEUSER_IMAGE}")
    await built(row)
    await expect(row.get_by_role("button", name=f"Pull again {ui_envs['image']}")).to_be_visible()


async def test_launch_link_with_content_and_badge(admin_page, demo_env, hub):
    page = admin_page
    await open_environments(page)
    row = env_row(page, demo_env["name"])
    await row_action(row, f"Copy launch link {demo_env['name']}")
    dialog = page.locator("#launch-dialog")
    await expect(dialog).to_be_visible()
    await expect(page.get_by_label("Content repository URL")).to_be_focused()
    base = f"{hub.url}{service_path('servers')}"
    await expect(page.locator("#launch-link")).to_have_value(f"{base}?name=python-demo&environment=Python+demo")

    await page.get_by_label("Content repository URL").fill("https://github.com/owner/notebooks")
    await page.get_by_label("Content reference").fill("main")
    await page.get_by_label("Open (path in the server)").fill("/lab/tree/notebooks/index.ipynb")
    expected = base + "?" + urlencode({
        "name": "python-demo",
        "environment": "Python demo",
        "content": "https://github.com/owner/notebooks",
        "content_ref": "main",
        "urlpath": "lab/tree/notebooks/index.ipynb",
    })
    await expect(page.locator("#launch-link")).to_have_value(expected)
    copy = page.locator("#launch-copy-link")
    await copy.click()
    await expect(copy).to_contain_text("Copied")
    assert await page.evaluate("navigator.clipboard.readText()") == expected

    # The README badge: Markdown around our own SVG, served by the service.
    badge_url = f"{hub.url}{service_path('static/img/launch-badge.svg')}"
    await expect(page.locator("#launch-badge")).to_have_value(f"[![Launch Python demo]({badge_url})]({expected})")
    response = await page.request.get(badge_url)
    assert response.status == 200
    assert "svg" in response.headers["content-type"]
    await dialog.get_by_role("button", name="Copy badge").click()
    assert (await page.evaluate("navigator.clipboard.readText()")).startswith("[![Launch Python demo](")

    # Credentials in a content URL: named next to it, and left out of the link.
    await page.get_by_label("Content repository URL").fill("https://user:secret@github.com/owner/notebooks")
    await expect(page.get_by_label("Content repository URL")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#launch-content-error")).to_contain_text("password")
    await expect(page.locator("#launch-link")).not_to_have_value(re.compile("secret"))
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()


async def test_prune_is_disabled_with_its_reason_when_it_would_free_nothing(admin_page):
    page = admin_page

    async def nothing_to_prune(route):
        response = await route.fetch()
        data = await response.json()
        data["reclaimable"] = 0
        data["dangling"]["count"] = 0
        if data.get("build_cache"):
            data["build_cache"]["older_than_max_age"] = 0
        for env in data["environments"]:
            for version in env["versions"]:
                version["removable"] = False
        await route.fulfill(response=response, body=json.dumps(data))

    await page.route(re.compile(r".*/api/disk$"), nothing_to_prune)
    response = await goto(page, service_path("disk"))
    assert response.status == 200
    prune = page.get_by_role("button", name="Prune…")
    await expect(prune).to_be_disabled()
    await expect(page.locator("#prune-why")).to_be_visible()
    await expect(page.locator("#prune-why")).to_contain_text("it would free 0 B")
    await expect(prune).to_have_attribute("aria-describedby", "prune-why")


async def test_history_shows_what_changed_in_the_files(admin_page, admin, ui_envs, run_id, test_images):
    page = admin_page
    name = ui_envs["files_history"]
    first = {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN echo 'one {run_id}'\n", "postBuild": "echo a\n"}
    env = await admin.create_env({"files": first, "name": name})
    env = await admin.wait_env(env["uid"], {"built", "failed"})
    assert env["status"] == "built", env
    second = {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN echo 'two {run_id}'\n", "start": "exec \"$@\"\n"}
    r = await admin.api("PATCH", f"api/environments/{env['uid']}", json={"files": second})
    assert r.status_code in (200, 202), r.text
    env = await admin.wait_env(env["uid"], {"built", "failed"})
    assert env["status"] == "built", env

    await open_environments(page)
    row = env_row(page, name)
    await expect(row.locator("td.env-repo")).to_contain_text("Files")
    await row_action(row, f"History {name}")
    dialog = page.locator("#history-dialog")
    rows = dialog.locator("tbody tr[data-id]")
    await expect(rows).to_have_count(2)
    inside = dialog.locator(f'tr[data-details-of="{await rows.nth(0).get_attribute("data-id")}"]')
    await inside.get_by_text("Changes since v1").click()
    await expect(inside.locator(".files-added")).to_contain_text("start")
    await expect(inside.locator(".files-removed")).to_contain_text("postBuild")
    changed = inside.locator(".files-changed")
    await expect(changed).to_contain_text("Files changed (1)")
    await changed.locator("summary", has_text="Dockerfile").click()
    await expect(changed.locator(".diff-add")).to_contain_text(f"two {run_id}")
    await expect(changed.locator(".diff-del")).to_contain_text(f"one {run_id}")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()


async def test_a_running_build_shows_its_phase_next_to_the_elapsed_time(admin_page, admin, ui_envs, slow_repo):
    page = admin_page
    env = await admin.create_env({"repo": slow_repo, "name": ui_envs["phase"]})
    try:
        await admin.wait_env(env["uid"], {"building"}, timeout=60)
        await open_environments(page)
        row = env_row(page, ui_envs["phase"])
        status = row.locator("td.env-status-cell")
        # The page as served: the phase of the build's last status event.
        await expect(status.locator(".env-phase")).to_have_text("building")
        await expect(status.locator(".env-timing")).to_have_text(re.compile(r"^\d+ s$"))
        listed = next(e for e in (await admin.api("GET", "api/environments")).json()["environments"]
                      if e["uid"] == env["uid"])
        if "phase" not in listed:
            pytest.skip("api/environments does not pass the builds to the list yet (handlers/environments.py)")
        assert listed["phase"] == "building"
        # Still there after the page's next poll of the list.
        await page.wait_for_timeout(3000)
        await expect(status.locator(".env-phase")).to_have_text("building")
    finally:
        await admin.api("POST", f"api/environments/{env['uid']}/cancel")


async def test_files_are_edited_into_the_next_version_then_rolled_back(admin_page, admin, run_id, test_images):
    """A files environment made in the page, edited in its Edit files dialog
    into version 2, rolled back to version 1 in History: its files are version 1's again."""
    page = admin_page
    name = f"Files edit {run_id}"
    first = {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN echo 'edit one {run_id}'\n"}
    second = {
        "Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN echo 'edit two {run_id}'\n",
        "notes.txt": "added in the dialog\n",
    }
    try:
        dialog = await open_add_dialog(page)
        await dialog.get_by_role("tab", name="Files").click()
        await dialog.get_by_role("button", name="Dockerfile").click()
        await page.locator("#add-file-list .file-text").first.fill(first["Dockerfile"])
        await page.locator("#add-name").fill(name)
        limits = re.search(r"up to .* in all", await page.locator("#add-files-help").inner_text()).group(0)
        await dialog.get_by_role("button", name="Add and build").click()
        await expect(dialog).to_be_hidden()
        row = env_row(page, name)
        await built(row)
        uid = await row.get_attribute("data-uid")

        # The dialog loads the current files, and says the same limits as the Add dialog.
        await row_action(row, f"Edit files {name}")
        edit = page.locator("#files-dialog")
        await expect(edit).to_be_visible()
        await expect(edit.locator(".modal-title")).to_have_text(f"Edit files: {name}")
        paths, texts = edit.locator(".file-path"), edit.locator(".file-text")
        await expect(paths).to_have_count(1)
        await expect(paths.nth(0)).to_have_value("Dockerfile")
        await expect(paths.nth(0)).to_be_focused()
        await expect(texts.nth(0)).to_have_value(first["Dockerfile"])
        await expect(page.locator("#files-edit-help")).to_contain_text(limits)
        save = edit.get_by_role("button", name="Save and build")

        # Unchanged files: the API's message, in the dialog, which stays open.
        await save.click()
        await expect(page.locator("#files-status")).to_contain_text("Already built from the same files")
        await expect(edit).to_be_visible()

        # A file the API refuses is named next to the files.
        await edit.get_by_role("button", name="Add a file").click()
        await expect(paths).to_have_count(2)
        await expect(paths.nth(1)).to_be_focused()
        await paths.nth(1).fill("../outside.txt")
        await texts.nth(1).fill("x")
        await save.click()
        files_set = page.locator("#files-edit")
        await expect(files_set).to_have_attribute("aria-invalid", "true")
        await expect(page.locator("#files-edit-error")).to_contain_text(re.compile(r"^Files: the path .*outside\.txt.* leaves the folder"))
        await expect(page.locator("#files-status")).to_be_hidden()

        # Edited, added and removed: saved as the next version, built.
        await paths.nth(1).fill("notes.txt")
        await texts.nth(1).fill(second["notes.txt"])
        await texts.nth(0).fill(second["Dockerfile"])
        await edit.get_by_role("button", name="Add a file").click()
        await expect(paths).to_have_count(3)
        await paths.nth(2).fill("postBuild")
        await edit.get_by_role("button", name=re.compile(r"^Remove file")).nth(2).click()
        await expect(paths).to_have_count(2)
        await save.click()
        await expect(edit).to_be_hidden()
        await expect(files_set).not_to_have_attribute("aria-invalid", "true")
        # Not offered while the build runs (read at once, with the status the row has then).
        state = await row.evaluate(
            "(tr) => [tr.dataset.status, Boolean(tr.querySelector('[data-action=\"edit-files\"]'))]"
        )
        if state[0] in ("queued", "building"):
            assert state[1] is False, state
        await built(row)
        versions = (await admin.api("GET", f"api/environments/{uid}/versions")).json()["versions"]
        assert [v["number"] for v in versions] == [2, 1]
        r = await admin.api("GET", f"api/environments/{uid}/versions/{versions[0]['id']}/files")
        assert r.json()["files"] == second

        # Rolled back to version 1 in History.
        await row_action(row, f"History {name}")
        history = page.locator("#history-dialog")
        rows = history.locator("tbody tr[data-id]")
        await expect(rows).to_have_count(2)
        await rows.nth(1).get_by_role("button", name="Roll back to version 1").click()
        await history.locator(".history-confirm").get_by_role("button", name="Roll back").click()
        await expect(rows.nth(1).locator(".version-current")).to_be_visible()
        await page.keyboard.press("Escape")
        await expect(history).to_be_hidden()

        # The API and the dialog show version 1's files.
        r = await admin.api("GET", f"api/environments/{uid}")
        assert r.status_code == 200, r.text
        assert r.json()["files"] == first
        await row_action(row, f"Edit files {name}")
        await expect(edit).to_be_visible()
        await expect(paths).to_have_count(1)
        await expect(paths.nth(0)).to_have_value("Dockerfile")
        await expect(texts.nth(0)).to_have_value(first["Dockerfile"])
        await expect(page.locator("#files-status")).to_be_hidden()
        await page.keyboard.press("Escape")
        await expect(edit).to_be_hidden()
        await expect(more_button(row)).to_be_focused()
    finally:
        env = await find_env(admin, name)
        if env is not None:
            await admin.delete_env(env["uid"])
