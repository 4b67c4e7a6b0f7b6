"""End to end in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium): open the
chat page of a running server, upload an image, ask, see the streamed answer (the same text the
library gives), then ask again with the attention heat map ticked and see the map appear."""
from __future__ import annotations

import shutil

import pytest

from tests.serve.conftest import API_KEY, shape_image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[test])")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="no chromium + chromedriver on PATH (apt-get install chromium chromium-driver)")


@pytest.fixture()
def browser(tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1100,900", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def reference_answer(image_path, question: str, max_tokens: int) -> str:
    import ocellus
    from ocellus.infer.generate import generate
    d = ocellus.default_model_dir()
    model, proc = ocellus.load(d), ocellus.load_processor(d)
    batch = proc(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
                 images=[str(image_path)])
    out = generate(model, batch["input_ids"], pixel_values=batch["pixel_values"], max_new_tokens=max_tokens)
    return proc.decode(out[0, batch["input_ids"].shape[1]:].tolist(), skip_special_tokens=True).strip()


def test_upload_ask_and_see_the_streamed_answer_and_heat_map(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "blue.png"
    shape_image((30, 40, 220)).save(image)
    wait = WebDriverWait(browser, 60)
    browser.get(server.url + "/")
    browser.find_element(By.ID, "api-key").send_keys(API_KEY, Keys.TAB)  # the server wants a key
    wait.until(lambda d: d.find_element(By.ID, "model").text == "llava-tiny-shapes")

    question = "What color is the shape?"
    browser.find_element(By.ID, "file").send_keys(str(image))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pending img"))
    browser.find_element(By.ID, "prompt").send_keys(question)
    browser.find_element(By.ID, "send").click()
    reply = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='1']"))[0]
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg.error")
    assert reply.text.strip() == reference_answer(image, question, 64) != ""
    user_msg = browser.find_element(By.CSS_SELECTOR, ".msg.user")
    assert user_msg.find_element(By.TAG_NAME, "img").get_attribute("src").startswith("data:image/png;base64,")

    browser.find_element(By.ID, "heatmap-toggle").click()
    browser.find_element(By.ID, "file").send_keys(str(image))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pending img"))
    browser.find_element(By.ID, "prompt").send_keys("Where is the shape?", Keys.ENTER)
    heat = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "img.heatmap"))[0]
    assert heat.get_attribute("src").startswith("data:image/png;base64,")
    wait.until(lambda d: d.execute_script("return document.querySelector('img.heatmap').naturalWidth") > 0)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='1']")) == 2
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg.error")
    browser.save_screenshot(str(tmp_path / "chat.png"))


def test_page_reports_a_bad_image(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    fake = tmp_path / "fake.png"
    fake.write_bytes(b"not a png at all")
    wait = WebDriverWait(browser, 60)
    browser.get(server.url + "/")
    browser.find_element(By.ID, "api-key").send_keys(API_KEY, Keys.TAB)
    wait.until(lambda d: d.find_element(By.ID, "model").text == "llava-tiny-shapes")
    browser.find_element(By.ID, "file").send_keys(str(fake))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pending img"))
    browser.find_element(By.ID, "prompt").send_keys("What is it?", Keys.ENTER)
    err = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.error"))[0]
    assert err.text.startswith("400:") and "not an image" in err.text
    assert server.health()["status"] == "ok"
