"""Fixtures of the browser tests (``ui-tests/``).

They reuse the real infrastructure of ``tests/helpers/fixtures.py`` (JupyterHub with
configurable-http-proxy, the service as a managed service, Docker, the git
server) and add a browser:

- ``browser``: Debian's Chromium driven by Playwright (its own browser
  download cannot work here). Missing Chromium or Playwright fails under
  CI=true and skips elsewhere.
- ``admin_context``, ``alice_context``: browser contexts (1280x900, reduced
  motion, clipboard allowed) logged in through the hub's login form as the
  hub admin ``admin`` and the plain user ``alice``.
- ``admin_page``, ``alice_page``: a fresh page in those contexts. The test
  fails if the page opened a JavaScript dialog (``alert`` and friends) or
  threw an uncaught error.
- ``run_id``: a short id unique to the session, put into the Dockerfiles of
  the test repositories so that Docker's build cache never hides their output.
- ``demo_repo``, ``slow_repo``, ``broken_repo``, ``private_repo``: git
  repositories whose Dockerfile starts ``FROM`` the test single-user image:
  one that prints coloured lines, one that sleeps 60 s (to cancel), one whose
  build fails, one behind basic auth.
- ``ui_envs``: the display names the tests use; environments with those
  names are removed before the session (leftovers of an interrupted run,
  adopted from their images) and after it.
- ``demo_env``: the built environment "Python demo" (added through the
  dialog by the first build test; built through the API when a test runs
  alone). ``html_env``: a built environment named like an HTML injection.

The hub is the one of ``tests/helpers/fixtures.py`` (machine profiles Small/Large and
a ``gpu`` node selector are configured). Run together with ``tests/``, the
browser tests get a hub of their own: the fixtures are imported here, so
pytest holds them twice. Helpers that tests import live in ``ui_helpers.py``.
"""

import os
import uuid
from pathlib import Path

import pytest

# hub, admin, alice, git_server, ... come from tests/helpers/fixtures.py (loaded by the root conftest.py)
from tests.helpers.fixtures import IN_CI, SINGLEUSER_IMAGE, need
from tests.helpers.gitserver import make_repo
from tests.helpers.utils import SERVICE
from ui_helpers import logged_in_context

try:
    from playwright.async_api import async_playwright
except ImportError:
    # Without Playwright the browser tests cannot even be collected: they
    # are left out, except under CI=true, where they must run.
    if IN_CI:
        raise
    collect_ignore_glob = ["test_*.py"]
    UI_ENVS, find_env = {}, None
else:
    from ui_helpers import UI_ENVS, find_env

#: Runs before the other browser tests: it adds "Python demo" through the
#: dialog and reads its build log fresh, before any other test (through the
#: demo_env fixture) has built that repository and filled the build cache.
FIRST = "test_environments.py"


def pytest_collection_modifyitems(session, config, items):
    ui = [i for i in items if Path(str(i.fspath)).parent == Path(__file__).parent]
    if not ui:
        return
    first = [i for i in ui if Path(str(i.fspath)).name == FIRST]
    rest = [i for i in ui if Path(str(i.fspath)).name != FIRST]
    start = items.index(ui[0])
    ui_set = set(ui)
    others = [i for i in items if i not in ui_set]
    items[:] = others[:start] + first + rest + others[start:]


CHROMIUM = os.environ.get("TLJH_R2D_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

@pytest.fixture(scope="session")
def run_id():
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def demo_repo(git_server, git_root, test_images, run_id):
    """Prints plain, coloured and HTML-looking lines while it builds."""
    script = (
        f"echo 'ui-test run {run_id}'"
        " && for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo \"demo line $i\"; done"
        " && printf '\\033[1;31mred bold\\033[0m and \\033[32mgreen\\033[0m\\n'"
        " && echo '<script>alert(2)</script><b>not bold</b>'"
    )
    make_repo(git_root, "ui-demo", {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN {script}\n"})
    return git_server.url("ui-demo")


@pytest.fixture(scope="session")
def slow_repo(git_server, git_root, test_images, run_id):
    make_repo(
        git_root,
        "ui-slow",
        {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN echo 'slow {run_id}' && sleep 60\n"},
    )
    return git_server.url("ui-slow")


@pytest.fixture(scope="session")
def broken_repo(git_server, git_root, test_images, run_id):
    make_repo(
        git_root,
        "ui-broken",
        {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN echo 'broken {run_id}' && exit 3\n"},
    )
    return git_server.url("ui-broken")


@pytest.fixture(scope="session")
def private_repo(private_git_server, private_git_root, test_images, run_id):
    """A repository that needs the user name and password of ``private_git_server``."""
    make_repo(
        private_git_root,
        "ui-private",
        {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN echo 'private {run_id}'\n"},
    )
    return private_git_server.url("ui-private")


@pytest.fixture(scope="session")
async def browser():
    if not Path(CHROMIUM).exists():
        need(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    playwright = await async_playwright().start()
    browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    await browser.close()
    await playwright.stop()


@pytest.fixture(scope="session")
async def admin_context(browser, hub):
    context = await logged_in_context(browser, hub, "admin")
    yield context
    await context.close()


@pytest.fixture(scope="session")
async def alice_context(browser, hub):
    context = await logged_in_context(browser, hub, "alice")
    yield context
    await context.close()


class WatchedPage:
    """Records what must never happen: JavaScript dialogs, and uncaught errors in our pages.

    Errors in the single-user servers' pages (JupyterLab) are theirs, not ours.
    """

    def __init__(self, page):
        self.page = page
        self.dialogs = []
        self.errors = []
        page.on("dialog", self._on_dialog)
        page.on("pageerror", self._on_error)

    async def _on_dialog(self, dialog):
        if dialog.type != "beforeunload":
            self.dialogs.append(f"{dialog.type} on {self.page.url}: {dialog.message}")
        await dialog.dismiss()

    def _on_error(self, error):
        if "/user/" not in self.page.url:
            self.errors.append(f"{self.page.url}: {error}")

    def check(self):
        assert not self.dialogs, f"JavaScript dialogs opened: {self.dialogs}"
        assert not self.errors, f"JavaScript errors: {self.errors}"


async def _watched_page(context):
    page = await context.new_page()
    watched = WatchedPage(page)
    page.set_default_timeout(20_000)
    yield page
    try:
        watched.check()
    finally:
        await page.close()


@pytest.fixture
async def admin_page(admin_context):
    async for page in _watched_page(admin_context):
        yield page


@pytest.fixture
async def alice_page(alice_context):
    async for page in _watched_page(alice_context):
        yield page


@pytest.fixture(scope="session")
async def ui_envs(admin):
    """UI_ENVS; environments with those names are removed before and after the session.

    Before: leftovers of an interrupted run, adopted from their images.
    After: so that the next run does not adopt them.
    """
    await _remove_envs(admin, UI_ENVS.values())
    yield UI_ENVS
    await _remove_envs(admin, UI_ENVS.values())


async def _remove_envs(user, names):
    r = await user.api("GET", "api/environments")
    assert r.status_code == 200, r.text
    for env in r.json()["environments"]:
        if env["name"] in names:
            await user.delete_env(env["uid"])


@pytest.fixture
async def demo_env(admin, ui_envs, demo_repo):
    """The built "Python demo" environment, built through the API if no test added it."""
    env = await find_env(admin, ui_envs["demo"])
    if env is None:
        env = await admin.create_env(
            {"repo": demo_repo, "name": ui_envs["demo"], "machine_profile": "Small"}
        )
    return await admin.wait_env(env["uid"], {"built"}, timeout=300)


@pytest.fixture
async def html_env(admin, ui_envs, demo_repo):
    """A built environment whose display name is an HTML injection attempt."""
    env = await find_env(admin, ui_envs["html"])
    if env is None:
        env = await admin.create_env({"repo": demo_repo, "name": ui_envs["html"]})
    return await admin.wait_env(env["uid"], {"built"}, timeout=300)
