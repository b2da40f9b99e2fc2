"""The Environments page: add, build logs, rebuild, cancel, launch links, removal.

The tests run in file order and share the environments they add (building
is the slow part): "Python demo" is added through the dialog by the first
build test; later tests get it from the ``demo_env`` fixture.
"""

import asyncio
import json
import re
from pathlib import Path

import pytest
from playwright.async_api import expect

from ui_helpers import (
    BUILD_TIMEOUT,
    add_environment,
    env_row,
    find_env,
    focus_target,
    open_environments,
    row_action,
    service_path,
    shot,
    wait_status,
)

pytestmark = pytest.mark.browser


async def test_add_dialog_suggests_a_name_and_shows_field_errors(admin_page, demo_repo):
    page = admin_page
    await open_environments(page)
    # Keyboard: the dialog takes the focus and gives it back.
    await page.locator("#add-environment").focus()
    await page.keyboard.press("Enter")
    dialog = page.locator("#add-dialog")
    await expect(dialog).to_be_visible()
    await expect(page.locator("#add-repo")).to_be_focused()

    await page.locator("#add-repo").press_sequentially("https://github.com/owner/my-project.git")
    await expect(page.locator("#add-name")).to_have_value("my-project")
    # The suggestion stops once the name is edited.
    await page.locator("#add-name").fill("My project")
    await page.locator("#add-repo").press_sequentially("x")
    await expect(page.locator("#add-name")).to_have_value("My project")

    await expect(page.locator("#add-ref")).to_have_value("HEAD")
    await expect(dialog.get_by_label("Machine profile")).to_have_value("Small")
    await expect(dialog.get_by_label("GPU availability")).to_be_visible()
    await expect(dialog.get_by_label("Build arguments")).to_be_hidden()  # Advanced is collapsed
    await expect(dialog.get_by_label("Password or access token")).to_be_hidden()

    await page.locator("#add-repo").fill(demo_repo)
    await page.locator("#add-name").fill("Python demo")
    await dialog.get_by_label("GPU availability").select_option("no")
    await shot(page, "add-dialog")

    # A bad ref: the API's error appears next to the ref field; nothing typed is lost.
    await page.locator("#add-ref").fill("bad..ref")
    await dialog.get_by_text("Advanced").click()
    await dialog.get_by_label("Build arguments").fill("GREETING=hello")
    await dialog.get_by_role("button", name="Add and build").click()
    ref = page.locator("#add-ref")
    await expect(ref).to_have_attribute("aria-invalid", "true")
    await expect(ref).to_be_focused()
    await expect(page.locator("#add-ref-error")).to_contain_text("not a valid git reference")
    await expect(page.locator("#add-ref-error")).not_to_contain_text("ref:")
    assert "add-ref-error" in (await ref.get_attribute("aria-describedby"))
    await expect(page.locator("#add-repo")).to_have_value(demo_repo)
    await expect(page.locator("#add-name")).to_have_value("Python demo")
    await expect(dialog.get_by_label("Build arguments")).to_have_value("GREETING=hello")

    # A bad build argument: the collapsed section opens to show it.
    await ref.fill("HEAD")
    await dialog.get_by_label("Build arguments").fill("not a pair")
    await dialog.get_by_text("Advanced").click()  # close it again
    await dialog.get_by_role("button", name="Add and build").click()
    await expect(page.locator("#add-buildargs")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#add-buildargs-error")).to_contain_text("line 1 is not KEY=VALUE")
    await expect(ref).not_to_have_attribute("aria-invalid", "true")

    # A bad repository URL.
    await dialog.get_by_label("Build arguments").fill("")
    await page.locator("#add-repo").fill("ftp://example.org/repo.git")
    await dialog.get_by_role("button", name="Add and build").click()
    await expect(page.locator("#add-repo-error")).to_contain_text("scheme 'ftp' is not supported")

    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(page.locator("#add-environment")).to_be_focused()
    assert await find_env_count(page) == 0


async def find_env_count(page):
    names = await page.locator("#environments tbody th.env-name").all_inner_texts()
    return sum(name in {"My project", "my-project"} for name in names)


async def test_add_environment_and_follow_its_log(admin_page, admin, ui_envs, demo_repo):
    page = admin_page
    await open_environments(page)
    name = ui_envs["demo"]
    dialog = await add_environment(page, demo_repo, name=name, profile="Small", gpu="no")
    await expect(dialog).to_be_hidden()
    row = env_row(page, name)
    await expect(row).to_have_count(1)
    await expect(row.locator(".env-status")).to_contain_text(re.compile("Queued|Building"))
    await expect(row.locator(".env-resources")).to_contain_text("Small")
    await expect(row.locator(".env-resources")).to_contain_text("512M · 0.5 CPU")
    await expect(row.locator(".env-node-selector")).to_have_text("gpu=no")
    await expect(row.locator(".env-owner")).to_have_text("admin")
    await expect(row.locator(".env-repo a")).to_have_attribute("href", demo_repo)

    # The live log, while it builds.
    logs_button = row.get_by_role("button", name=f"Logs {name}")
    await logs_button.click()
    logs = page.locator("#logs-dialog")
    await expect(logs).to_be_visible()
    await expect(page.locator("#logs-dialog-title")).to_have_text(f"Build log: {name}")
    await expect(page.locator("#logs-output")).to_be_focused()
    await expect(page.locator("#logs-status")).to_have_text(re.compile("^Built"), timeout=BUILD_TIMEOUT)
    output = page.locator("#logs-output")
    text = await output.text_content()
    for i in range(1, 13):
        assert len(re.findall(rf"demo line {i}\n", text)) >= 1, text[-3000:]
    # Coloured output becomes coloured spans; HTML in the output stays text.
    red = output.locator("span.ansi-red.ansi-bold", has_text="red bold")
    await expect(red.first).to_be_visible()
    await expect(output.locator("span.ansi-green", has_text="green").first).to_be_visible()
    assert "<script>alert(2)</script><b>not bold</b>" in text
    assert await output.locator("script, b").count() == 0
    assert "\x1b" not in text
    await expect(output).to_contain_text("» built")

    # The end of the log is in view.
    at_end = await output.evaluate("(e) => e.scrollTop + e.clientHeight >= e.scrollHeight - 30")
    assert at_end
    await shot(page, "logs")

    # Copy and Download give the whole log as plain text.
    await logs.get_by_role("button", name="Copy").click()
    await expect(logs.get_by_role("button", name="Copied")).to_be_visible()
    copied = await page.evaluate("navigator.clipboard.readText()")
    assert copied.strip() == text.strip()
    async with page.expect_download() as download_info:
        await logs.get_by_role("button", name="Download").click()
    download = await download_info.value
    assert download.suggested_filename == "python-demo-build.log"
    assert Path(await download.path()).read_text() == copied

    await logs.get_by_role("button", name="Close").last.click()
    await expect(logs).to_be_hidden()
    await expect(logs_button).to_be_focused()
    # The row changed without a reload.
    await wait_status(row, "built")
    await expect(row.locator(".env-status")).to_have_text("Built")
    await expect(row.locator(".env-size")).to_have_text(re.compile(r"^\d+(\.\d)? (MB|GB)$"))


async def test_finished_log_replays_and_survives_a_dropped_connection(admin_page, demo_env):
    """The stored log replays; a cut stream resumes from Last-Event-ID without doubles."""
    page = admin_page
    await open_environments(page)
    row = env_row(page, demo_env["name"])
    await row.get_by_role("button", name=f"Logs {demo_env['name']}").click()
    await expect(page.locator("#logs-status")).to_have_text(re.compile("^Built"))
    full = await page.locator("#logs-output").text_content()
    await page.keyboard.press("Escape")

    requests = []

    async def cut_stream(route):
        requests.append(route.request.url)
        if len(requests) == 1:
            # The first connection delivers 8 events, then the network "drops".
            response = await route.fetch()
            events = [e for e in (await response.text()).split("\n\n") if e.startswith("id:")]
            await route.fulfill(
                status=200,
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
                body="\n\n".join(events[:8]) + "\n\n",
            )
        else:
            # The page resumes after the last event it has. Make the server
            # repeat three events the page already has: they must not show twice.
            assert "last_event_id=8" in route.request.url, route.request.url
            await route.continue_(url=route.request.url.replace("last_event_id=8", "last_event_id=5"))

    logs_url = re.compile(r".*/api/environments/[^/]+/logs.*")
    await page.route(logs_url, cut_stream)
    await row.get_by_role("button", name=f"Logs {demo_env['name']}").click()
    await expect(page.locator("#logs-status")).to_have_text(re.compile("^Built"))
    assert len(requests) == 2, requests
    assert await page.locator("#logs-output").text_content() == full
    await page.unroute(logs_url)
    await page.keyboard.press("Escape")


async def test_a_log_stream_left_silent_is_opened_again(admin_page, demo_env):
    """When the service is killed, the proxy can keep the page's stream open with
    nothing coming: after 35 s of silence the page opens it again."""
    page = admin_page
    await page.clock.install()
    await open_environments(page)
    requests = []

    async def silent_first(route):
        requests.append(route.request.url)
        if len(requests) > 1:
            await route.continue_()
        # The first one never answers, like a stream to a dead service.

    logs_url = re.compile(r".*/api/environments/[^/]+/logs.*")
    await page.route(logs_url, silent_first)
    row = env_row(page, demo_env["name"])
    await row.get_by_role("button", name=f"Logs {demo_env['name']}").click()
    await expect(page.locator("#logs-status")).to_have_text("Connecting…")
    # The stream's request reaches the route a moment after the status shows:
    # only then does the fake clock run (else the first request can come late).
    for _ in range(200):
        if requests:
            break
        await asyncio.sleep(0.05)
    await page.clock.run_for(34_000)
    assert len(requests) == 1, requests
    await page.clock.run_for(2_000)
    await expect(page.locator("#logs-status")).to_have_text(re.compile("^Built"))
    assert len(requests) == 2, requests
    await page.unroute(logs_url)
    await page.keyboard.press("Escape")


async def test_ansi_parser(admin_page):
    page = admin_page
    await open_environments(page)
    runs = await page.evaluate(
        """() => TljhR2D.parseAnsi('a\\x1b[1;31mB\\x1b[22mc\\x1b[39m\\x1b[94md\\x1b[0m\\x1b[2Ke'
                                  + '\\x1b[38;5;200mf\\x1b[0m<i>')"""
    )
    assert runs == [
        {"text": "a", "fg": None, "bright": False, "bold": False},
        {"text": "B", "fg": "red", "bright": False, "bold": True},
        {"text": "c", "fg": "red", "bright": False, "bold": False},
        {"text": "d", "fg": "blue", "bright": True, "bold": False},
        {"text": "e", "fg": None, "bright": False, "bold": False},
        {"text": "f", "fg": None, "bright": False, "bold": False},  # 256 colours: ignored
        {"text": "<i>", "fg": None, "bright": False, "bold": False},
    ]


async def test_copy_launch_link(admin_page, demo_env, hub):
    page = admin_page
    await open_environments(page)
    row = env_row(page, demo_env["name"])
    await row_action(row, f"Copy launch link {demo_env['name']}")
    dialog = page.locator("#launch-dialog")
    await expect(dialog).to_be_visible()
    button = page.locator("#launch-copy-link")
    await button.click()
    await expect(button).to_contain_text("Copied")
    await expect(page.locator("#announcer")).to_have_text("Copied")
    link = await page.evaluate("navigator.clipboard.readText()")
    assert link == f"{hub.url}{service_path('servers')}?name=python-demo&environment=Python+demo"
    await expect(button).to_have_text("Copy link", timeout=5000)
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()


async def test_name_conflict_is_shown_next_to_the_name(admin_page, demo_env, demo_repo):
    page = admin_page
    await open_environments(page)
    dialog = await add_environment(page, demo_repo, name="python DEMO")
    await expect(page.locator("#add-name")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#add-name-error")).to_contain_text("exists")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()


async def test_cancel_and_rebuild(admin_page, ui_envs, slow_repo, demo_env):
    page = admin_page
    await open_environments(page)
    name = ui_envs["slow"]
    await expect(await add_environment(page, slow_repo, name=name)).to_be_hidden()
    row = env_row(page, name)
    await wait_status(row, "building", timeout=120_000)
    await expect(row.locator(".env-status .spinner-border")).to_be_visible()
    await expect(row.get_by_role("button", name=f"Rebuild {name}")).to_have_count(0)
    await row.get_by_role("button", name=f"Cancel {name}").click()
    await wait_status(row, "cancelled", timeout=60_000)
    await expect(row.locator(".env-status")).to_contain_text("Cancelled")

    # Rebuild the built demo: its commit is already built, which the page says,
    # offering to build anyway; then it goes through queued/building back to built.
    demo = env_row(page, demo_env["name"])
    await demo.get_by_role("button", name=f"Rebuild {demo_env['name']}").click()
    notice = page.locator("#page-notice")
    await expect(notice).to_contain_text(re.compile("already built", re.I))
    await notice.get_by_role("button", name="Rebuild anyway").click()
    await expect(demo).to_have_attribute("data-status", re.compile("queued|building"))
    await expect(demo.get_by_role("button", name=f"Cancel {demo_env['name']}")).to_be_visible()
    await wait_status(demo, "built")
    await expect(page.locator("#announcer")).to_contain_text("built")


async def test_failed_build_shows_its_error(admin_page, ui_envs, broken_repo, slow_repo):
    page = admin_page
    await open_environments(page)
    name = ui_envs["broken"]
    await expect(await add_environment(page, broken_repo, name=name, profile="Large")).to_be_hidden()
    row = env_row(page, name)
    await wait_status(row, "failed")
    await expect(row.locator(".env-error")).to_contain_text(re.compile("exit|code|failed", re.I))

    # The list, with a build in progress for the screenshot.
    slow = env_row(page, ui_envs["slow"])
    if await slow.count():
        await slow.get_by_role("button", name=f"Rebuild {ui_envs['slow']}").click()
    else:
        await expect(await add_environment(page, slow_repo, name=ui_envs["slow"])).to_be_hidden()
    await wait_status(slow, "building", timeout=120_000)
    await page.mouse.move(0, 0)
    await shot(page, "environments")
    await slow.get_by_role("button", name=f"Cancel {ui_envs['slow']}").click()
    await wait_status(slow, "cancelled", timeout=60_000)


async def test_private_repository_credentials(admin_page, ui_envs, private_repo):
    """Credentials go with the build; a rebuild asks for them again."""
    from tests.helpers.utils import SECRET_PASSWORD

    page = admin_page
    name = ui_envs["private"]
    await open_environments(page)
    await page.click("#add-environment")
    dialog = page.locator("#add-dialog")
    await page.locator("#add-repo").fill(private_repo)
    await page.locator("#add-name").fill(name)
    await dialog.get_by_text("Credentials for a private repository").click()
    await dialog.get_by_label("Username").fill("builder")
    await dialog.get_by_label("Password or access token").fill(SECRET_PASSWORD)
    await dialog.get_by_role("button", name="Add and build").click()
    await expect(dialog).to_be_hidden()
    row = env_row(page, name)
    await wait_status(row, "built")

    await row.get_by_role("button", name=f"Rebuild {name}").click()
    rebuild = page.locator("#rebuild-dialog")
    await expect(rebuild).to_be_visible()
    await expect(rebuild.get_by_label("Username")).to_be_focused()
    await rebuild.get_by_label("Username").fill("builder")
    await rebuild.get_by_label("Password or access token").fill(SECRET_PASSWORD)
    await rebuild.get_by_role("button", name="Rebuild").click()
    await expect(rebuild).to_be_hidden()
    await expect(row).to_have_attribute("data-status", re.compile("queued|building|built"))
    await wait_status(row, "built")
    assert SECRET_PASSWORD not in await page.content()


async def test_html_in_a_name_is_text(admin_page, admin, ui_envs, demo_repo):
    page = admin_page
    name = ui_envs["html"]
    await open_environments(page)
    await expect(await add_environment(page, demo_repo, name=name)).to_be_hidden()
    row = env_row(page, name)
    await expect(row).to_have_count(1)
    await expect(row.locator("th.env-name")).to_have_text(name)
    assert await page.locator("#environments img").count() == 0
    env = await find_env(admin, name)
    assert env["name"] == name  # the API took it as a display name
    await row.get_by_role("button", name=f"Logs {name}").click()
    await expect(page.locator("#logs-dialog-title")).to_have_text(f"Build log: {name}")
    await page.keyboard.press("Escape")
    await wait_status(row, "built")
    assert await page.locator("img:not(.jpy-logo):not(.launch-badge-img)").count() == 0


async def test_remove_refused_while_in_use_then_done(admin_page, admin, html_env):
    page = admin_page
    name = html_env["name"]
    r = await admin.api("POST", "api/servers", json={"name": "ui-in-use", "environment": html_env["uid"]})
    assert r.status_code == 202, r.text
    try:
        await open_environments(page)
        row = env_row(page, name)
        # Remove is in the More menu: the focus comes back to its button.
        await row_action(row, f"Remove {name}")
        remove = await focus_target(row, f"Remove {name}")
        confirm = page.locator("#confirm-dialog")
        await expect(confirm).to_be_visible()
        await expect(confirm.locator(".confirm-body")).to_contain_text(name)
        await confirm.get_by_role("button", name="Remove").click()
        await expect(confirm.locator(".confirm-error")).to_contain_text("used by running servers: admin/ui-in-use")
        await expect(confirm).to_be_visible()
        await confirm.get_by_role("button", name="Cancel").click()
        await expect(confirm).to_be_hidden()
        await expect(remove).to_be_focused()
    finally:
        r = await admin.api("DELETE", "api/servers/ui-in-use?remove=true")
        assert r.status_code in (202, 204), r.text
        for _ in range(60):
            servers = (await admin.api("GET", "api/servers")).json()["servers"]
            if not any(s["name"] == "ui-in-use" for s in servers):
                break
            await asyncio.sleep(1)

    await row_action(row, f"Remove {name}")
    await expect(confirm.locator(".confirm-error")).to_be_hidden()
    await confirm.get_by_role("button", name="Remove").click()
    await expect(confirm).to_be_hidden()
    await expect(row).to_have_count(0)
    await expect(page.locator("#add-environment")).to_be_focused()
    assert await find_env(admin, name) is None
    r = await admin.api("GET", "api/environments")
    assert json.dumps(r.json()).count(html_env["uid"]) == 0
