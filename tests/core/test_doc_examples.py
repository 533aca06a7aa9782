"""Every code block of README.md and docs/*.md runs, as a reader would run it, against a live
Switchyard: the real gateway (uvicorn), a Celery worker and the simulated upstream, on the test
database seeded with the demo (``seed_demo``).

Conventions the docs follow (docs/testing.md says the same for their writers):

- Every fenced block names its language. Blocks in ``bash``, ``sh``, ``console`` (the lines
  after ``$ ``) and ``python`` are run; ``js`` blocks run in Chromium on a page of the gateway,
  logged in as the demo admin, and pass once they ``console.log`` (with ``key: 1``, the demo
  key's id on a fresh database, replaced by its id here); ``json`` and ``text`` blocks show data
  or output and are not run.
- Examples reach the gateway through ``$SWITCHYARD_URL`` (no ``/v1``) and ``$SWITCHYARD_KEY``
  (a tenant key), which the README tells a reader to export; here they name the live gateway
  and the demo key.
- A block that must not run (it starts the platform, or runs the test suite) follows a line
  ``<!-- not run: <why> -->``. Those blocks are listed below, so that one more is a decision.

A block fails when it exits non-zero: Python raises, a bash command fails (``set -euo
pipefail``), or ``curl`` gets an HTTP error (it runs with ``--fail-with-body``). The blocks of a
page run in order in one folder shared by the whole run, as a reader at the project's root
would run them; each must also stand on its own (none reads a file an earlier block wrote).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.live import REPO, database_url_for_tests, stop_process

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN = {"bash", "sh", "console", "python", "js"}
SHOWN = {"json", "text"}
CHROMIUM = "/usr/bin/chromium"
NOT_RUN_MARK = re.compile(r"^<!--\s*not run:\s*(?P<why>\S.*?)\s*-->$")

# (file, how the first line of the block starts) of every block that is not run: keep this short.
NOT_RUN = {
    ("README.md", "make run "),
    ("docs/operations.md", "make cluster "),
    ("docs/security.md", "make lint"),
    ("docs/simulator.md", "python -m apps.simulator.server --port 8001 --outcomes "),
}

BLOCK_TIMEOUT = 120  # seconds: a bound for a block that hangs, not a duration anything waits for


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository
    line: int  # of the opening fence
    lang: str
    code: str
    not_run: str | None  # the reason, when marked

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def first_line(self) -> str:
        return self.code.splitlines()[0] if self.code else ""


def page_blocks(path: Path, root: Path = REPO) -> list[Block]:
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    page = str(path.relative_to(root))
    index = 0
    while index < len(lines):
        fence = re.match(r"^(```+)\s*(\S*)", lines[index])
        if not fence:
            index += 1
            continue
        start, ticks = index, fence.group(1)
        body = []
        index += 1
        while index < len(lines) and not lines[index].startswith(ticks):
            body.append(lines[index])
            index += 1
        index += 1
        before = next((line for line in reversed(lines[:start]) if line.strip()), "")
        mark = NOT_RUN_MARK.match(before.strip())
        blocks.append(Block(page, start + 1, fence.group(2), "\n".join(body) + "\n",
                            mark.group("why") if mark else None))
    return blocks


ALL_BLOCKS = [block for path in DOCS for block in page_blocks(path)]
RUNNABLE = [block for block in ALL_BLOCKS if block.lang in RUN and block.not_run is None]


def test_it_knows_the_language_of_every_block():
    unknown = [f"{b.id} ({b.lang or 'no language'})" for b in ALL_BLOCKS if b.lang not in RUN | SHOWN]
    assert not unknown, f"blocks whose language says neither run nor show: {unknown}"


def test_it_runs_every_block_but_the_listed_few():
    marked = [b for b in ALL_BLOCKS if b.not_run is not None]
    listed = {(b.page, start) for b in marked for page, start in NOT_RUN
              if page == b.page and b.first_line.startswith(start)}
    unlisted = [b.id for b in marked if not any(p == b.page and b.first_line.startswith(s) for p, s in NOT_RUN)]
    assert not unlisted, f"blocks marked not to run that NOT_RUN does not list: {unlisted}"
    assert listed == NOT_RUN, f"listed in NOT_RUN but not marked: {NOT_RUN - listed}"
    shown_marked = [b.id for b in ALL_BLOCKS if b.not_run is not None and b.lang not in RUN]
    assert not shown_marked, f"a not-run mark before a block that would not run anyway: {shown_marked}"
    assert len(RUNNABLE) >= 20


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_it_links_only_to_pages_and_headings_that_exist():
    broken = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue  # a URL
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                broken.append(f"{path.name}: {target}")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.MULTILINE)
                if anchor not in {_anchor(h) for h in headings}:
                    broken.append(f"{path.name}: {target}")
    assert not broken, f"links to nothing: {broken}"


def test_it_finds_the_blocks_a_page_holds(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```bash\necho one\n```\n\ntext\n\n<!-- not run: starts a server -->\n"
                    "```sh\nmake run\n```\n\n````python\nprint('```')\n````\n")
    found = [(b.lang, b.code, b.not_run) for b in page_blocks(page, tmp_path)]
    assert found == [("bash", "echo one\n", None), ("sh", "make run\n", "starts a server"),
                     ("python", "print('```')\n", None)]


# --- the live platform ---------------------------------------------------------------------


@dataclass
class Platform:
    env: dict
    workdir: Path
    logs: list[Path]
    base: str
    session: str  # the demo admin's session cookie
    key_id: int  # the demo key's


@pytest.fixture(scope="module")
def platform(django_db_setup, django_db_blocker, simulator_process, tmp_path_factory):
    """The gateway, a Celery worker and the simulator on the test database, seeded with the demo."""
    from django.conf import settings
    from django.core.management import call_command
    from django.test import override_settings

    from apps.core.demo import demo_seed
    from apps.tenants.models import ApiKey
    from tests.gateway.conftest import gateway_start, gateway_stop

    workdir = tmp_path_factory.mktemp("docs")
    (workdir / ".venv").symlink_to(REPO / ".venv")
    (workdir / "manage.py").symlink_to(REPO / "manage.py")
    files = workdir / "var" / "files"
    with django_db_blocker.unblock():
        with override_settings(VAR_DIR=workdir / "var"):
            credentials = demo_seed(upstream_url=simulator_process.v1)
        session = _logged_in("admin")
        key_id = ApiKey.objects.get(tenant__slug="demo").pk
        common = {"DATABASE_URL": database_url_for_tests(), "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
                  "BATCH_FILES_DIR": str(files), "CACHE_LOCAL_EMBEDDER": "0", "HF_HUB_OFFLINE": "1",
                  "PYTHONUNBUFFERED": "1"}
        gateway = gateway_start(workdir, extra_env=common)
        worker_log = workdir / "worker.log"
        with open(worker_log, "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--loglevel", "INFO"],
                cwd=REPO, env={**os.environ, **common}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        env = {key: value for key, value in os.environ.items() if not key.startswith("SWITCHYARD_")}
        env.update(common, SWITCHYARD_URL=gateway.base, SWITCHYARD_KEY=credentials.api_key,
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        try:
            yield Platform(env=env, workdir=workdir, logs=[gateway.log_path, worker_log], base=gateway.base,
                           session=session, key_id=key_id)
        finally:
            stop_process(worker, timeout=20)
            gateway_stop(gateway)
            call_command("flush", interactive=False, verbosity=0)


def _logged_in(username: str) -> str:
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(username=username))
    return client.cookies["sessionid"].value


def run_in_browser(block: Block, platform: Platform) -> dict:
    """Run a ``js`` block on the playground's page; what it logged first."""
    from playwright.sync_api import sync_playwright

    assert "key: 1," in block.code, "a js block names the demo key as `key: 1,`"
    code = block.code.replace("key: 1,", f"key: {platform.key_id},")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-background-networking"])
        try:
            context = browser.new_context()
            context.add_cookies([{"name": "sessionid", "value": platform.session, "url": platform.base}])
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(platform.base + "/playground/")
            with page.expect_console_message(lambda message: message.type == "log",
                                             timeout=BLOCK_TIMEOUT * 1000) as logged:
                page.add_script_tag(content=code)
            assert not errors, errors
            return logged.value.args[0].json_value()
        finally:
            browser.close()


BASH_PRELUDE = 'set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; }\n'


def command_for(block: Block) -> list[str]:
    if block.lang == "python":
        return [sys.executable, "-c", block.code]
    code = block.code
    if block.lang == "console":
        code = "\n".join(line[2:] for line in code.splitlines() if line.startswith("$ ")) + "\n"
    return ["bash", "-c", BASH_PRELUDE + code]


# The mark makes pytest-django create the test database; the test itself reads nothing from it.
@pytest.mark.django_db
@pytest.mark.parametrize("block", RUNNABLE, ids=[block.id for block in RUNNABLE])
def test_the_example_runs(block: Block, platform: Platform):
    if block.lang == "js":
        if not os.path.exists(CHROMIUM):
            pytest.skip(f"no system Chromium at {CHROMIUM} (apt-get install chromium)")
        assert run_in_browser(block, platform)
        return
    done = subprocess.run(command_for(block), cwd=platform.workdir, env=platform.env, capture_output=True,
                          text=True, timeout=BLOCK_TIMEOUT, check=False)
    if done.returncode != 0:
        tails = "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}" for path in platform.logs)
        pytest.fail(f"{block.id} exited with {done.returncode}\n--- code\n{block.code}--- stdout\n{done.stdout}"
                    f"--- stderr\n{done.stderr}{tails}")
