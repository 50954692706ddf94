"""The chat page at / in headless Chromium (driven by selenium through Debian's chromedriver),
against a tern server that requires an API key.

Usage: chat_page.py BASE_URL API_KEY WORK_DIR   (WORK_DIR: an empty directory for the browser
profile and the screenshot; the caller removes it)

Checks: the page reports the 401 until the key is typed, then fills the model picker; the key
survives a reload (localStorage); a streamed answer (max_tokens 16, temperature 0) equals the
content of the same non-streaming request made here with urllib, for two turns; an invalid
request (temperature 5) shows the server's error message in the conversation; a screenshot is a
non-empty PNG. Exits non-zero with a message on the first failure.
"""

import json
import os
import sys
import urllib.request

os.environ["SE_OFFLINE"] = "true"  # never let selenium-manager download anything

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

base, key, work = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
TIMEOUT = 120  # seconds for any one wait


def api(path, body=None):
    req = urllib.request.Request(
        base + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        return json.load(r)


def check(cond, what):
    if not cond:
        sys.exit(f"chat_page.py: {what}")


model = api("/v1/models")["data"][0]["id"]

opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for flag in [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1000,720",
    f"--user-data-dir={os.path.join(work, 'profile')}",
]:
    opts.add_argument(flag)
driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
wait = WebDriverWait(driver, TIMEOUT)
by_id = lambda i: driver.find_element(By.ID, i)  # noqa: E731


def models_listed(_):
    return [o.get_attribute("value") for o in by_id("model").find_elements(By.TAG_NAME, "option")]


def done_bubbles(_):
    return driver.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='1']")


def send(text, max_tokens, temperature):
    """Types a message with these settings, sends it, waits for its answer; the bubble."""
    before = len(done_bubbles(None))
    for field, value in (("max-tokens", max_tokens), ("temperature", temperature)):
        by_id(field).clear()
        by_id(field).send_keys(str(value))
    by_id("input").send_keys(text)
    by_id("send").click()
    wait.until(lambda d: len(done_bubbles(d)) > before)
    check(by_id("send").is_enabled() and not by_id("stop").is_enabled(), "buttons not reset")
    return done_bubbles(None)[-1]


try:
    driver.get(base + "/")
    # Without the key, /v1/models answers 401 and the page says so.
    wait.until(lambda d: "API key" in by_id("status").text)
    check(models_listed(None) == [], "models listed without the key")
    by_id("api-key").send_keys(key, Keys.TAB)  # "change" fires on leaving the field
    wait.until(lambda d: model in models_listed(d))
    check(by_id("status").text == "", "status still shows an error: " + by_id("status").text)
    driver.refresh()  # the key is kept in localStorage
    wait.until(lambda d: model in models_listed(d))

    messages = []
    for text in ["What is the state of the Union?", "And what of the future?"]:
        out = send(text, 16, 0)
        got = out.get_attribute("textContent")
        messages.append({"role": "user", "content": text})
        want = api(
            "/v1/chat/completions",
            {"model": model, "messages": messages, "max_tokens": 16, "temperature": 0},
        )["choices"][0]["message"]["content"]
        check(got.strip() != "", f"empty answer to {text!r}")
        check(got == want, f"streamed {got!r} but the non-streaming answer is {want!r}")
        check(out.get_attribute("data-finish") in ("stop", "length"), "finish not recorded")
        messages.append({"role": "assistant", "content": got})
    users = driver.find_elements(By.CSS_SELECTOR, ".msg.user")
    check([u.get_attribute("textContent") for u in users] == [m["content"] for m in messages[::2]],
          "the user bubbles do not hold the messages sent")

    # An invalid request: the server's 400 message is shown in the conversation.
    out = send("Too hot?", 16, 5)
    check("error" in out.get_attribute("class").split(), "the error bubble is not marked")
    check("temperature" in out.get_attribute("textContent"),
          "error not shown: " + out.get_attribute("textContent"))
    check(by_id("input").get_attribute("value") == "", "input not cleared")

    shot = os.path.join(work, "chat.png")
    check(driver.save_screenshot(shot), "no screenshot")
    with open(shot, "rb") as f:
        png = f.read()
    check(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000, "the screenshot is no PNG")
    print(f"chat_page.py: ok ({len(messages) // 2} turns, screenshot {len(png)} bytes)")
finally:
    driver.quit()
