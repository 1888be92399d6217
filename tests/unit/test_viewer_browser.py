"""`errata view` in a real browser: headless Chromium driven by Selenium against the running server (uvicorn on a
free localhost port). Loads the index, filters a table, opens a LEMMA revision and an Agent-R splice, checks that
the first wrong step is highlighted and that trained and masked text are rendered differently, and saves a
screenshot of each page under $ERRATA_TEST_ARTEFACTS (default: test-artefacts/) /viewer/.

Without a browser the test is skipped with how to install one: `apt-get install chromium chromium-driver` (Debian;
`.ci/run` does it when missing) and `pip install selenium` (a dev dependency)."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.viewer_data import build_viewer_root

HOW = ("no headless browser: install Chromium and its driver (Debian: `apt-get install chromium chromium-driver`; "
       ".ci/run does it) and Selenium (`pip install -e '.[dev]'`)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER and HAVE_SELENIUM), reason=HOW)
ARTEFACTS = Path(os.environ.get("ERRATA_TEST_ARTEFACTS", REPO / "test-artefacts")) / "viewer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from pipelines.viewer.app import create_app
    root = build_viewer_root(tmp_path_factory.mktemp("viewer-browser") / "data")
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(str(root)), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.1)
    assert srv.started, "the viewer did not start"
    yield root, f"http://127.0.0.1:{port}"
    srv.should_exit = True
    t.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,1600"):
        opts.add_argument(a)
    opts.binary_location = CHROMIUM
    d = webdriver.Chrome(options=opts, service=Service(DRIVER))
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    yield d
    d.quit()


def test_browse_filter_and_open_a_lemma_revision_and_an_agent_r_splice(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from pipelines.catalog import Catalog
    root, url = server
    d = browser
    d.get(url + "/")
    assert "Datasets" in d.find_element(By.TAG_NAME, "h1").text
    d.save_screenshot(str(ARTEFACTS / "01-index.png"))
    d.find_element(By.LINK_TEXT, "lm@1").click()
    assert "Dataset card" in d.page_source and d.find_element(By.CSS_SELECTOR, ".card img").size["width"] > 50
    d.save_screenshot(str(ARTEFACTS / "02-version-card.png"))

    # filter the revisions to one strategy; the count shown is the tables' own count
    d.get(url + "/d/lm/1/t/revisions")
    cat = Catalog(str(root))
    revs = cat.read_table(cat.resolve("lm@1"), "revisions").to_pylist()
    Select(d.find_element(By.NAME, "strategy")).select_by_visible_text("fix_continue")
    d.find_element(By.ID, "apply").click()
    n = sum(r["strategy"] == "fix_continue" for r in revs)
    assert d.find_element(By.ID, "count").text.startswith(f"{n} row(s) match")
    shown = d.find_elements(By.CSS_SELECTOR, "#rows tr")[1:]
    assert shown and all("fix_continue" in tr.text for tr in shown)
    d.save_screenshot(str(ARTEFACTS / "03-filtered.png"))

    # open a revision revised from a judgement: the first wrong step is highlighted, segments carry their loss
    rev = next(r for r in revs if r["strategy"] == "fix_continue" and r["judgement_id"])
    link = d.find_element(By.XPATH, f"//a[text()='{rev['revision_id']}']") if rev["revision_id"] in d.page_source \
        else None
    if link is not None:
        link.click()
    else:
        d.get(url + f"/d/lm/1/t/revisions/r/{rev['revision_id']}")
    err = d.find_element(By.CSS_SELECTOR, "#steps .step.first-error")
    assert err.is_displayed() and int(err.get_attribute("data-idx")) == rev["first_error_step"]
    assert err.value_of_css_property("background-color") != d.find_element(
        By.CSS_SELECTOR, "#steps .step:not(.first-error)").value_of_css_property("background-color")
    assert rev["error_type"] in d.find_element(By.ID, "first-error").text
    segs = d.find_elements(By.CSS_SELECTOR, "#segments .seg")
    assert [s.get_attribute("data-loss") == "true" for s in segs] == [s["loss"] for s in rev["segments"]]
    assert d.find_element(By.ID, "splice").is_displayed()
    d.save_screenshot(str(ARTEFACTS / "04-lemma-revision.png"))

    # an Agent-R splice: masked turns look different from trained ones; the tree around the paths is drawn
    ars = cat.read_table(cat.resolve("ar@1"), "revision_trajectories").to_pylist()
    sp = next(r for r in ars if r["kind"] == "revision")
    d.get(url + f"/d/ar/1/t/revision_trajectories/r/{sp['revision_id']}")
    masked = d.find_elements(By.CSS_SELECTOR, "#messages .loss-off")
    trained = d.find_elements(By.CSS_SELECTOR, "#messages .loss-on")
    assert len(masked) == sum(not m["loss"] for m in sp["messages"]) and len(trained) == sum(
        m["loss"] for m in sp["messages"]) > 0
    assert masked[0].value_of_css_property("background-color") != trained[0].value_of_css_property(
        "background-color")
    assert masked[0].value_of_css_property("text-decoration-line") == "line-through"
    assert d.find_element(By.ID, "splice").is_displayed()
    assert d.find_element(By.CSS_SELECTOR, ".msg.first-error").is_displayed()
    assert len(d.find_elements(By.CSS_SELECTOR, "#tree li.node")) > 3
    d.save_screenshot(str(ARTEFACTS / "05-agent-r-splice.png"))
    d.find_element(By.ID, "tree").screenshot(str(ARTEFACTS / "06-agent-r-tree.png"))
