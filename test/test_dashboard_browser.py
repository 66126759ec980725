"""The dashboard page in a real browser: headless Chromium (Debian's chromium + chromium-driver)
driven by Selenium, against a served dashboard node and a real therapy node."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from fer_ros.msg import FaceExpressionArray  # noqa: E402
from fer_ros.ros.dashboard_node import DashboardNode  # noqa: E402
from fer_ros.ros.therapy_node import TherapyNode  # noqa: E402
from fer_ros.ros.image import bgr_to_image_msg  # noqa: E402
from conftest import faces_msg, shared_dir  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver)")
DOMAIN = random.randint(1, 100)
# The machine has no network: nothing in the browser may try to reach out.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1024,768")


def annotated_frame():
    """A camera frame with the expression node's kind of overlay (a face photo when the shared
    media are there, else a plain frame)."""
    import cv2
    import numpy as np

    photo = shared_dir() / "media" / "single_face.jpg"
    bgr = cv2.imread(str(photo)) if photo.is_file() else None
    if bgr is None:
        bgr = np.full((480, 640, 3), 90, np.uint8)
    bgr = cv2.resize(bgr, (640, round(bgr.shape[0] * 640 / bgr.shape[1])))
    h, w = bgr.shape[:2]
    cv2.rectangle(bgr, (w // 3, h // 5), (2 * w // 3, 3 * h // 5), (0, 200, 0), 2)
    cv2.putText(bgr, "#4 happy 90%", (w // 3, h // 5 - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 200, 0), 2)
    return bgr


@pytest.fixture
def served(tmp_path):
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN)
    clock = [1000.0]
    params = dict(log_dir=str(tmp_path), emotions=["happy", "sad"], teaching_trials_per_emotion=0,
                  practice_trials_per_emotion=1, intro_seconds=60.0, feedback_seconds=0.3, practice_timeout=60.0,
                  face_lost_seconds=5.0)
    therapy = TherapyNode(clock=lambda: clock[0], context=ctx,
                          parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    dash = DashboardNode(context=ctx, parameter_overrides=[Parameter("port", value=0),
                                                           Parameter("log_dir", value=str(tmp_path))])
    child = Node("browser_test_child", context=ctx)
    pub = child.create_publisher(FaceExpressionArray, "faces/expressions", 10)
    pub_image = child.create_publisher(Image, "faces/image_annotated", 10)
    annotated = bgr_to_image_msg(annotated_frame())
    ex = SingleThreadedExecutor(context=ctx)
    for n in (therapy, dash, child):
        ex.add_node(n)
    stop = threading.Event()

    def child_in_view():  # session time passes with the child's face in view
        while not stop.is_set():
            clock[0] += 0.1
            pub.publish(faces_msg("happy"))
            pub_image.publish(annotated)
            time.sleep(0.05)

    threads = [threading.Thread(target=ex.spin, daemon=True), threading.Thread(target=child_in_view, daemon=True)]
    for t in threads:
        t.start()
    yield f"http://127.0.0.1:{dash.port}/"
    stop.set()
    ex.shutdown()
    for t in threads:
        t.join(timeout=5)
    for n in (dash, therapy, child):
        n.destroy_node()
    rclpy.shutdown(context=ctx)


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="fer_ros_chromium_")
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={profile}",):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_page_starts_a_session_and_scores_an_answer(served, browser):
    browser.get(served)
    wait = WebDriverWait(browser, 15)
    text = lambda id_: browser.find_element(By.ID, id_).text
    wait.until(lambda d: text("stage") == "idle")
    # the live image arrives while the page is shown
    wait.until(lambda d: d.execute_script("const f = document.getElementById('frame');"
                                          "return !f.hidden && f.complete && f.naturalWidth === 640;"))
    assert text("score") == "0/0"
    boxes = browser.find_elements(By.CSS_SELECTOR, "#emotion-choices input:checked")
    assert [b.get_attribute("value") for b in boxes] == ["happy", "sad"]  # the therapy node's settings

    browser.find_element(By.ID, "btn-start").click()
    wait.until(lambda d: text("stage") == "introduction")
    assert "started" in text("feedback")
    assert not browser.find_element(By.ID, "start-form").is_displayed()

    # a card before any question is refused, with the reason, in the feedback line
    browser.find_element(By.CSS_SELECTOR, '.card[data-emotion="sad"]').click()
    wait.until(lambda d: "not scored" in text("feedback"))
    assert "refused" in browser.find_element(By.ID, "feedback").get_attribute("class")
    assert text("score") == "0/0"
    browser.find_element(By.ID, "btn-skip").click()
    wait.until(lambda d: text("stage") == "practice" and text("phase") == "awaiting")
    assert text("target") == "happy"
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert [c.text.lower() for c in cards] == ["happy", "sad"]
    assert not browser.find_element(By.ID, "answer-mode").is_displayed()  # card mode: no imitation hint
    browser.find_element(By.CSS_SELECTOR, '.card[data-emotion="happy"]').click()
    wait.until(lambda d: text("score") == "1/1")
    assert "right" in text("feedback")
    if os.environ.get("FER_DASHBOARD_SCREENSHOT"):  # for the docs: FER_DASHBOARD_SCREENSHOT=docs/images/x.png
        browser.save_screenshot(os.environ["FER_DASHBOARD_SCREENSHOT"])
    wait.until(lambda d: text("phase") == "awaiting" and text("target") == "sad")
    browser.find_element(By.CSS_SELECTOR, '.card[data-emotion="happy"]').click()
    wait.until(lambda d: text("score") == "1/2")
    assert "wrong" in text("feedback")
    wait.until(lambda d: text("stage") == "done")
