"""The web inbox in a real browser: Debian's chromium, headless, driven by selenium through
chromedriver (python3-selenium, chromium-driver; installed by scripts/setup.sh).

A person signs in with an API key, sees a task arrive live (over SSE, no reload), opens it and
approves it, and the sender's axme.wait_for returns the decision; then an admin opens the
operations page.  A screenshot of each page is kept in $AXME_TEST_LOGDIR/screenshots.
Ends with a line "N passed, M failed".
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_gateway as tg  # noqa: E402  (the cluster setup, the gateway process, HTTP helpers)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SHOTS = os.path.join(tg.LOGDIR, "screenshots")
DRIVER = None
PROFILE = None


def setUpModule():
    global DRIVER, PROFILE
    tg.setUpModule()
    os.makedirs(SHOTS, exist_ok=True)
    PROFILE = tempfile.mkdtemp(prefix="axme-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--user-data-dir=" + PROFILE, "--window-size=1280,900"):
        opts.add_argument(a)
    DRIVER = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    DRIVER.set_page_load_timeout(30)
    # the versions under test (Debian bookworm's packages, installed by scripts/setup.sh)
    import selenium
    caps = DRIVER.capabilities
    print("browser: %s %s, chromedriver %s, selenium %s" % (
        caps.get("browserName"), caps.get("browserVersion"),
        (caps.get("chrome") or {}).get("chromedriverVersion", "?").split(" ")[0], selenium.__version__))


def tearDownModule():
    if DRIVER:
        DRIVER.quit()
    if PROFILE:
        shutil.rmtree(PROFILE, ignore_errors=True)
    tg.tearDownModule()


def shot(name):
    path = os.path.join(SHOTS, name + ".png")
    DRIVER.save_screenshot(path)
    print("screenshot: " + path)
    return path


def wait(cond, timeout=15):
    return WebDriverWait(DRIVER, timeout).until(cond)


def base():
    return "http://127.0.0.1:%d" % tg.GW.port


class Browser(unittest.TestCase):
    def test_1_signin_live_task_approve(self):
        DRIVER.get(base() + "/")
        key = wait(EC.visibility_of_element_located((By.ID, "api-key")))
        shot("01-signin")
        # a wrong key is refused on the page
        key.send_keys("axk_wrong_key_123")
        DRIVER.find_element(By.CSS_SELECTOR, "#signin-form button[type=submit]").click()
        wait(EC.text_to_be_present_in_element((By.ID, "signin-error"), "not valid"))
        key.clear()
        key.send_keys(tg.KEYS["approvers"])
        key.submit()
        wait(EC.visibility_of_element_located((By.ID, "app")))
        wait(EC.text_to_be_present_in_element((By.ID, "live"), "live"))
        self.assertEqual(DRIVER.find_element(By.ID, "who").text, "approvers")
        # the session is an HttpOnly cookie: the page's script cannot read the key
        self.assertNotIn("axme_session", DRIVER.execute_script("return document.cookie"))
        self.assertNotIn(tg.KEYS["approvers"], DRIVER.current_url)

        # the sender sends the big order and waits for the decision in SQL (wait_for)
        doc = {"intent_type": "intent.order.approve.v1", "to_agent": tg.APPROVERS,
               "payload": {"order_id": "ORD-2026-00999", "total": 125000},
               "deadline_at": "2099-01-01T00:00:00Z",
               "human_task": {"task_type": "approval", "title": "Approve order ORD-2026-00999 (125,000 EUR)",
                              "description": "Above the automatic approval limit."}}
        st, d, _ = tg.call("POST", "/v1/intents", doc, "shop")
        self.assertEqual(st, 200, d)
        iid = d["intent_id"]
        result = {}

        def waiter():
            out = subprocess.run(["psql", "-XAtq", "-d", "postgres", "-c",
                                  "SET ROLE shop; SELECT axme.wait_for('%s', '60 seconds')" % iid],
                                 capture_output=True, text=True)
            result["doc"] = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else None
            result["err"] = out.stderr

        t = threading.Thread(target=waiter)
        t.start()

        # it appears without a reload
        item = wait(EC.element_to_be_clickable((By.CSS_SELECTOR, "#tasks li[data-intent='%s'] button" % iid)))
        self.assertIn("ORD-2026-00999", item.text)
        self.assertIn("approval", item.text)
        self.assertIn("due", item.text)
        shot("02-inbox-task-arrived")

        # open it with the keyboard (focus + Enter), read the payload, approve
        item.send_keys("\n")
        wait(EC.text_to_be_present_in_element((By.ID, "d-payload"), "ORD-2026-00999"))
        self.assertIn("Above the automatic", DRIVER.find_element(By.ID, "d-desc").text)
        shot("03-task-thread")
        DRIVER.find_element(By.ID, "comment").send_keys("Within the quarter's budget")
        DRIVER.find_element(By.ID, "approve").click()
        wait(EC.text_to_be_present_in_element((By.ID, "d-outcome"), "approved"))
        shot("04-task-approved")
        t.join(60)
        self.assertIsNotNone(result.get("doc"), result.get("err"))
        self.assertEqual(result["doc"]["status"], "COMPLETED")
        self.assertEqual(result["doc"]["result"]["outcome"], "approved")
        self.assertEqual(result["doc"]["result"]["actor"], "approvers")
        self.assertEqual(result["doc"]["result"]["comment"], "Within the quarter's budget")
        # gone from the open list
        wait(lambda d: not d.find_elements(By.CSS_SELECTOR, "#tasks li[data-intent='%s']" % iid))

    def test_2_phone_width(self):
        DRIVER.set_window_size(390, 844)
        try:
            DRIVER.get(base() + "/")
            wait(EC.visibility_of_element_located((By.ID, "app")))
            shot("05-inbox-phone")
            width = DRIVER.execute_script("return document.documentElement.scrollWidth")
            self.assertLessEqual(width, 400)
        finally:
            DRIVER.set_window_size(1280, 900)

    def test_3_ops_page(self):
        # an intent in dead letters, to see the replay button work
        iid = tg.send(payload={"ops": 1})
        tg.psql("SELECT axme.resolve('%s', 'FAILED', '{\"e\": 1}')" % iid)
        tg.psql("UPDATE axme.intents SET dead_letter_reason = 'exhausted', dead_lettered_at = now() WHERE intent_id = '%s'" % iid)
        DRIVER.delete_all_cookies()
        DRIVER.get(base() + "/")
        key = wait(EC.visibility_of_element_located((By.ID, "api-key")))
        key.send_keys(tg.KEYS["opsadmin"])
        key.submit()
        wait(EC.visibility_of_element_located((By.ID, "ops-link"))).click()
        wait(EC.text_to_be_present_in_element((By.ID, "queues"), tg.ORDERS))
        wait(EC.text_to_be_present_in_element((By.ID, "dead"), iid))
        DRIVER.find_element(By.ID, "tl-id").send_keys(iid)
        DRIVER.find_element(By.CSS_SELECTOR, "#tl-form button").click()
        wait(EC.text_to_be_present_in_element((By.ID, "tl"), "intent.failed"))
        shot("06-operations")
        DRIVER.find_element(By.CSS_SELECTOR, "button[aria-label='Replay %s']" % iid).click()
        wait(lambda d: iid not in d.find_element(By.ID, "dead").text)
        st, d, _ = tg.call("GET", "/v1/intents/" + iid, key="shop")
        self.assertEqual(d["intent"]["status"], "SUBMITTED")


if __name__ == "__main__":
    runner = unittest.TextTestRunner(verbosity=2, stream=sys.stdout)
    prog = unittest.main(exit=False, testRunner=runner)
    r = prog.result
    failed = len(r.failures) + len(r.errors)
    print("%d passed, %d failed" % (r.testsRun - failed, failed))
    sys.exit(1 if failed else 0)
