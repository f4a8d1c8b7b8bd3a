"""The web page end to end in headless Chromium: upload real photos, read the bars, compare with predict()."""
from __future__ import annotations

import base64
import io
import os
import re
import threading
import time
from pathlib import Path

import pytest
from helpers import free_port

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SPECS = ("tiny-clip:seed=0", "tiny-clip:seed=1")
LABELS = "astronaut\ncat\ncup of coffee\nrocket"  # one per line, typed with Enter; the page sends the text as is
SCREENSHOT = Path(__file__).resolve().parents[1] / "bench" / "results" / "serve_page.png"

selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
    pytest.skip(f"headless browser test needs {CHROMIUM} and {CHROMEDRIVER} "
                "(apt-get install chromium chromium-driver)", allow_module_level=True)


def photos() -> list[Path]:
    """Two real photos shipped with scikit-image."""
    data = pytest.importorskip("skimage.data", reason="scikit-image is not installed")
    folder = Path(data.__file__).parent
    return [folder / "astronaut.png", folder / "coffee.png"]


@pytest.fixture(scope="module")
def served():
    """(base URL, {spec: vlm}) of the app serving two tiny-clip models from a uvicorn thread."""
    uvicorn = pytest.importorskip("uvicorn")
    from zeroshift.serve.app import create_app
    from zeroshift.serve.config import ServeConfig
    from zeroshift.specs import load

    models = {spec: load(spec) for spec in SPECS}
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ServeConfig(models=SPECS), models=models),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start within 15 s"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", models
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,1000", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    except WebDriverException as e:
        pytest.skip(f"headless Chromium did not start: {str(e).splitlines()[0]}")
    driver.set_page_load_timeout(15)
    yield driver
    driver.quit()


def by_testid(driver, name: str):
    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{name}"]')


def open_page(driver, url: str) -> None:
    driver.get(url + "/")
    WebDriverWait(driver, 10).until(
        lambda d: d.find_element(By.ID, "models").get_attribute("aria-busy") == "false")


def shown(driver) -> dict[tuple[str, str], list[tuple[str, float, str]]]:
    """{(image, model): [(label, data-prob, displayed percent), ...]} in the page's order."""
    out = {}
    for article in driver.find_elements(By.CSS_SELECTOR, '[data-testid="image-result"]'):
        for card in article.find_elements(By.CSS_SELECTOR, '[data-testid="model-result"]'):
            rows = card.find_elements(By.CSS_SELECTOR, '[data-testid="result-row"]')
            out[article.get_attribute("data-image"), card.get_attribute("data-model")] = [
                (r.get_attribute("data-label"), float(r.get_attribute("data-prob")),
                 r.find_element(By.CSS_SELECTOR, '[data-testid="percent"]').text) for r in rows]
    return out


def save_screenshot(driver, *paths: Path) -> None:
    """The whole page as a small palette PNG."""
    from PIL import Image

    page = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
        "x": 0, "y": 0, "width": page["width"], "height": page["height"], "scale": 1}})
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
    image = image.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, optimize=True)


def test_page_shows_the_rankings_predict_gives(served, browser, tmp_path):
    from zeroshift.ranking import predict
    from zeroshift.zeroshot.labels import parse_labels

    url, models = served
    images = photos()
    open_page(browser, url)
    listed = [li.get_attribute("data-model") for li in browser.find_elements(By.CSS_SELECTOR, '[data-testid="model"]')]
    assert sorted(listed) == sorted(SPECS)

    by_testid(browser, "file-input").send_keys("\n".join(str(p) for p in images))
    box = by_testid(browser, "labels")
    box.send_keys(LABELS)
    box.send_keys(Keys.CONTROL, Keys.ENTER)  # the keyboard path: Ctrl+Enter in the labels box submits
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state"))
    assert not by_testid(browser, "error").is_displayed(), by_testid(browser, "error").text
    assert "Classified 2 images with 2 models" in by_testid(browser, "status").text

    page = shown(browser)
    labels = parse_labels(LABELS)
    assert sorted(page) == sorted((p.name, s) for p in images for s in SPECS)
    for spec, vlm in models.items():
        for want in predict(vlm, images, labels):
            got = page[Path(want["image"]).name, spec]
            assert [g[0] for g in got] == [w["label"] for w in want["ranking"]], (spec, want["image"])
            for (_, prob, text), w in zip(got, want["ranking"]):
                assert abs(prob - w["prob"]) <= 2e-6  # both rounded to 6 places
                assert text.endswith("%") and abs(float(text[:-1]) - 100 * w["prob"]) <= 0.05 + 1e-3

    tops = browser.find_elements(By.CSS_SELECTOR, '[data-testid="result-row"][data-top1="true"]')
    assert len(tops) == 4 and all("top1" in t.get_attribute("class") for t in tops)
    for card in browser.find_elements(By.CSS_SELECTOR, '[data-testid="model-result"]'):
        assert card.find_elements(By.CSS_SELECTOR, '[data-testid="result-row"]')[0].get_attribute("data-top1") == "true"
        assert re.fullmatch(r"\d+\.\d ms", card.find_element(By.CSS_SELECTOR, '[data-testid="latency"]').text)
    assert browser.execute_script(
        "return [...document.querySelectorAll('img.thumb')].every(i => i.complete && i.naturalWidth > 0)")
    foreign = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(n => !n.startsWith(location.origin) && !n.startsWith('blob:') && !n.startsWith('data:'))")
    assert foreign == [], f"the page fetched from outside its server: {foreign}"

    keep = (SCREENSHOT,) if os.environ.get("ZEROSHIFT_SAVE_SCREENSHOT") else ()  # the README's picture, on request
    save_screenshot(browser, tmp_path / "serve_page.png", *keep)
    assert (tmp_path / "serve_page.png").stat().st_size < 400_000


def test_keyboard_order_and_error_message(served, browser):
    url, _ = served
    open_page(browser, url)
    order = []
    for _ in range(6):  # from a freshly loaded page, Tab walks the controls in reading order
        ActionChains(browser).send_keys(Keys.TAB).perform()
        order.append(browser.switch_to.active_element.get_attribute("data-testid")
                     or browser.switch_to.active_element.get_attribute("class"))
    assert order == ["skip", "file-input", "labels", "templates", "model-select", "submit"]

    by_testid(browser, "file-input").send_keys(str(photos()[0]))
    by_testid(browser, "labels").send_keys("cat, Cat")  # a duplicate label: the server answers 4xx
    by_testid(browser, "submit").send_keys(Keys.ENTER)
    error = by_testid(browser, "error")
    WebDriverWait(browser, 15).until(lambda d: error.is_displayed())
    assert re.match(r"Classification failed: 4\d\d: \S", error.text) and "duplicate" in error.text.lower()
    assert error.get_attribute("role") == "alert" and by_testid(browser, "status").get_attribute("aria-live") == "polite"


def test_drop_zone_takes_dropped_photos(served, browser):
    url, _ = served
    open_page(browser, url)
    by_testid(browser, "labels").send_keys("cat, dog")
    by_testid(browser, "submit").click()  # nothing chosen yet: refused in the page, focus back on the file input
    assert by_testid(browser, "error").text == "Choose or drop at least one image first."
    assert browser.switch_to.active_element.get_attribute("data-testid") == "file-input"

    photo = photos()[1]
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], arguments[1], {type: "image/png"}));
        document.querySelector('[data-testid="drop-zone"]').dispatchEvent(
            new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
    """, base64.b64encode(photo.read_bytes()).decode(), photo.name)
    assert by_testid(browser, "picked").text == photo.name
    by_testid(browser, "submit").click()
    WebDriverWait(browser, 15).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state"))
    assert not by_testid(browser, "error").is_displayed()
    assert {image for image, _ in shown(browser)} == {photo.name}
