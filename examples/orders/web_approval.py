"""The order demo's approval in the web inbox: a person signs in to axme-gateway's web inbox with an
API key and approves the big order in a (headless) browser; a screenshot of the page is kept.

Called by approvals.py.  available() says whether it can run here (the gateway binary, Debian's
chromium and chromedriver, python3-selenium: scripts/setup.sh installs them); otherwise the demo
decides from psql as before.
"""
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import psycopg2

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APPROVER_ROLE = "demo_approver"


def _binary():
    try:
        bindir = subprocess.run([os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config"), "--bindir"],
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        bindir = ""
    for b in (os.path.join(ROOT, "gateway", "axme-gateway"), os.path.join(bindir, "axme-gateway")):
        if b and os.access(b, os.X_OK):
            return b
    return None


def available():
    if os.environ.get("AXME_DEMO_WEB", "1") == "0" or not _binary():
        return False
    if not (os.access("/usr/bin/chromium", os.X_OK) and os.access("/usr/bin/chromedriver", os.X_OK)):
        return False
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return True


def _setup(approvals_agent):
    """Roles, the inbox's db_role and a key (as the demo's superuser). Returns the key."""
    conn = psycopg2.connect("", application_name="order-demo-web-setup")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("""
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'demo_gateway') THEN
    CREATE ROLE demo_gateway LOGIN NOINHERIT PASSWORD 'demo-gateway';
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'demo_approver') THEN
    CREATE ROLE demo_approver;
  END IF;
END $$;
GRANT axme_gateway TO demo_gateway;
GRANT axme_agent TO demo_approver;
GRANT demo_approver TO demo_gateway;""")
        cur.execute("SELECT axme.register_agent(%s, 'inbox', NULL, '{\"db_role\": \"demo_approver\"}')",
                    (approvals_agent,))
        cur.execute("SELECT axme.create_api_key('demo_approver', 'the order demo''s approver')")
        key = cur.fetchone()[0]
    conn.close()
    return key


def approve(intent_id, approvals_agent, comment, say, problems):
    """Approve intent_id's task in the web inbox. Returns the screenshot paths (empty on failure)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    key = _setup(approvals_agent)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    outdir = os.environ.get("AXME_TEST_LOGDIR") or tempfile.mkdtemp(prefix="axme-demo-")
    os.makedirs(outdir, exist_ok=True)
    dsn = "host=127.0.0.1 port=%s dbname=%s user=demo_gateway password=demo-gateway" % (
        os.environ.get("PGPORT", "5432"), os.environ.get("PGDATABASE", "postgres"))
    log = open(os.path.join(outdir, "demo-gateway.log"), "w")
    gw = subprocess.Popen([_binary(), "--dsn", dsn, "--listen", "127.0.0.1:%d" % port,
                           "--www", os.path.join(ROOT, "gateway", "www")], stdout=log, stderr=log)
    profile = tempfile.mkdtemp(prefix="axme-demo-chromium-")
    driver = None
    shots = []
    try:
        for _ in range(100):
            try:
                if urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        say(f"   axme-gateway serves the web inbox on http://127.0.0.1:{port}/ (key for role {APPROVER_ROLE})")
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--user-data-dir=" + profile, "--window-size=1280,900"):
            opts.add_argument(a)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        wait = WebDriverWait(driver, 20)
        driver.get("http://127.0.0.1:%d/" % port)
        box = wait.until(EC.visibility_of_element_located((By.ID, "api-key")))
        box.send_keys(key)
        box.submit()
        item = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#tasks li[data-intent='%s'] button" % intent_id)))
        say(f"   the approver signs in and sees the task: {item.text.splitlines()[0]!r}")
        item.click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "d-payload"), "order"))
        driver.find_element(By.ID, "comment").send_keys(comment)
        path = os.path.join(outdir, "demo-web-inbox-task.png")
        driver.save_screenshot(path)
        shots.append(path)
        driver.find_element(By.ID, "approve").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "d-outcome"), "approved"))
        path = os.path.join(outdir, "demo-web-inbox-approved.png")
        driver.save_screenshot(path)
        shots.append(path)
        say("   ... opens it, writes a comment and clicks Approve in the web inbox")
        for p in shots:
            say(f"   screenshot: {p}")
    except Exception as e:  # noqa: BLE001  (the demo reports, it does not crash)
        problems.append(f"the web inbox approval failed: {type(e).__name__}: {e}")
        shots = []
    finally:
        if driver:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        gw.terminate()
        try:
            gw.wait(10)
        except subprocess.TimeoutExpired:
            gw.kill()
        log.close()
    return shots
