"""The web page in a real browser: Playwright driving Debian's chromium (the system binary, never a
downloaded one) against a real server: log in, type a prompt, generate, and the result plays."""

from __future__ import annotations

import os
import shutil

import pytest

from .conftest import FAKE_API_KEY
from .serve_helpers import ARTIFACTS

pytestmark = pytest.mark.timeout(240)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="no system chromium (apt-get install chromium)")
def test_generate_in_the_browser(fake_server):
    sync_api = pytest.importorskip("playwright.sync_api")
    assert CHROMIUM, "CI must provide Debian's chromium (.ci/run installs it)"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(fake_server.url + "/", wait_until="domcontentloaded")
            # the server has an API key: the page asks for it as the password
            page.get_by_label("username").fill("tester")
            page.get_by_label("password").fill(FAKE_API_KEY)
            page.get_by_role("button", name="Login").click()
            page.wait_for_selector("#prompt textarea", timeout=60_000)
            assert "Dialogue:" in page.locator("#prompt textarea").get_attribute("placeholder")
            # Gradio loads each component type's code on its own, so the accordion may come after the textbox:
            # wait for it (a bare count() raced in CI), then require exactly one. Closed: no cue is sent.
            sync_api.expect(page.get_by_text("Later prompts (clips over 10 s)")).to_have_count(1, timeout=60_000)
            page.locator("#prompt textarea").fill("A woman in a grey coat says: \"The last train leaves soon.\"")
            page.locator("#seconds input").fill("0.4")
            page.locator("#size textarea, #size input").first.fill("64x64")
            page.locator("#generate").click()
            page.wait_for_selector("#result video", timeout=120_000)
            state = page.evaluate("""async () => {
                const video = document.querySelector('#result video');
                if (video.readyState < 1) {
                    await new Promise(done => {
                        video.addEventListener('loadedmetadata', done, {once: true});
                        video.addEventListener('error', done, {once: true});
                        setTimeout(done, 20000);
                    });
                }
                return {duration: video.duration, error: video.error ? video.error.code : null,
                        src: video.currentSrc};
            }""")
            assert state["error"] is None, state
            assert state["duration"] > 0, state
            page.wait_for_function("document.querySelector('#status').innerText.includes('completed')")
            job_id = page.locator("#status code").inner_text()
            assert job_id.startswith("video_")
            page.wait_for_function("id => document.querySelector('#history').innerText.includes(id)", arg=job_id,
                                   timeout=30_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "ui.png"), full_page=True)
        finally:
            browser.close()
    with fake_server.client() as client:
        job = client.get(f"/v1/videos/{job_id}").json()  # the page used the same queue as the API
    assert job["status"] == "completed" and job["size"] == "64x64" and job["seconds"] == "0.4"


def test_the_pages_later_prompts_become_the_jobs_schedule(inproc):
    """The page's cue rows (no browser): filled rows become ``prompt_schedule``, empty ones are left out, a half-filled
    row or a schedule the checks refuse is an error on the page, and nothing is queued then."""
    import gradio as gr

    from magihuman.serve.jobs import JobService
    from magihuman.serve.ui import _create

    service = JobService(inproc.config, inproc.store)
    args = ("A woman in a grey coat says: \"The last train leaves soon.\"", None, None, "distill")
    job = _create(service, *args, 12, "64x64", 1, [(6, "She laughs."), (None, ""), (10, "She waves.")])
    assert job.params["prompt_schedule"] == [{"start": 6.0, "prompt": "She laughs."},
                                             {"start": 10.0, "prompt": "She waves."}]
    assert "the prompt cue at 6 s takes over at 5 s (window 2 of 3)" in job.notices
    assert "prompt_schedule" not in _create(service, *args, 0.4, "64x64", 2, [(None, None)] * 3).params
    for cues, message in (([(None, "She laughs.")], "prompt 2: give both"),
                          ([(6, "She laughs."), (7, "She waves.")], "land on the same window")):
        with pytest.raises(gr.Error, match=message):
            _create(service, *args, 12, "64x64", 3, cues)
    assert len(inproc.store.list(limit=10)[0]) == 2
