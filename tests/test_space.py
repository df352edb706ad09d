"""The Spaces demo (hub_cards/space): streaming answers, the experts table, example images, the failure page, and
the whole app served on 127.0.0.1 and driven by headless Chromium (Debian's chromium + chromedriver, Selenium).

Under CI (CI=true) a missing gradio, selenium or chromium is a failure, not a skip: scripts/setup.sh installs them.
"""

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import IN_CI, make_image

from eagle_hub.hub_cards.fresh_process import PRELUDE

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "hub_cards" / "space"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
QUESTION = "What colour is the square?"
MAX_NEW_TOKENS = 12


def require(condition: bool, reason: str):
    if not condition:
        if IN_CI:
            pytest.fail(f"{reason} (CI must have it: scripts/setup.sh installs it)")
        pytest.skip(reason)


def load_app():
    require(importlib.util.find_spec("gradio") is not None, "gradio is not installed: pip install -e '.[demo]'")
    spec = importlib.util.spec_from_file_location("eagle_space_app", SPACE / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    return app


def greedy_answer(folder, image, question, max_new_tokens) -> str:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image.convert("RGB")], text=[prompt], return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return processor.post_process_image_text_to_text(new_tokens, skip_special_tokens=True)[0]


# ------------------------------------------------------------------------------------------------ in process


def test_answers_stream_and_match_greedy_generation(saved_folder, tmp_path):
    app = load_app()
    demo = app.EagleDemo(str(saved_folder))
    assert demo.error is None
    image = make_image(64, 48)
    image.save(tmp_path / "upload.png")
    chunks = list(demo.answer(str(tmp_path / "upload.png"), QUESTION, MAX_NEW_TOKENS))
    assert len(chunks) > 1  # streamed: the answer grows over several updates
    assert all(b.startswith(a) for a, b in zip(chunks, chunks[1:]))
    assert chunks[-1] == greedy_answer(saved_folder, image, QUESTION, MAX_NEW_TOKENS)
    assert list(demo.answer(None, QUESTION)) == ["Upload an image first."]
    # An upload the processor's loader refuses is reported on the page, naming the problem.
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (message,) = demo.answer(str(tmp_path / "broken.png"), QUESTION)
    assert message.startswith("That image cannot be used: the uploaded image:") and "broken.png" in message


def test_experts_examples_and_failure(saved_folder, tmp_path, model):
    app = load_app()
    rows = app.expert_rows(model.config)
    assert [name for name, _, _ in rows] == [spec["name"] for spec in model.config.vision_config.experts]
    assert ("pix2struct", "pix2struct", "64 px, 16 patches") in rows
    html = app.experts_html(model.config)
    assert all(f"<td>{name}</td>" in html for name, _, _ in rows)
    paths = app.make_examples(tmp_path / "examples")
    from PIL import Image

    assert len(paths) == 3 and all(Image.open(p).size == (320, 240) for p in paths)
    broken = app.EagleDemo(str(tmp_path / "no-such-model"))
    assert "no model folder at" in broken.error
    assert next(broken.answer(make_image(), "Hi?")).startswith("The model could not be loaded")
    assert "EAGLE_MODEL" in app.EagleDemo(None).error
    app.build_demo(broken)  # the failure page builds instead of raising


def test_eagle_demo_serves_the_space_app(saved_folder, tmp_path, capsys, monkeypatch):
    from eagle_hub.cli import main

    assert main(["demo", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "no such folder" in err and err.count("\n") == 1
    load_app()
    import gradio

    launched = []
    monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **kwargs: launched.append((self, kwargs)))
    assert main(["demo", str(saved_folder), "--port", "7999"]) == 0
    ((blocks, kwargs),) = launched
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["server_port"] == 7999 and kwargs["share"] is False
    ids = {component.get("props", {}).get("elem_id") for component in blocks.config["components"]}
    assert {"image", "question", "submit", "answer", "experts", "examples"} <= ids


def test_space_metadata_and_requirements(saved_folder):
    from huggingface_hub import SpaceCard

    card = SpaceCard.load(SPACE / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    pyproject = (ROOT / "pyproject.toml").read_text()
    low, high = re.search(r'"gradio>=([\d.]+),<([\d.]+)"', pyproject).groups()
    version = tuple(int(x) for x in card.data.sdk_version.split("."))
    assert tuple(int(x) for x in low.split(".")) <= version < tuple(int(x) for x in high.split("."))
    requirements = {
        re.split(r"[<>=\[ ]", line.strip())[0].lower()
        for line in (SPACE / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    # Every third-party module that app.py or the model's remote code (the folder's .py files) imports is
    # installed on the Space (gradio comes with the Space's SDK; the package's own modules are tried, optional).
    code = [SPACE / "app.py", *saved_folder.glob("*.py")]
    imported = set()
    for path in code:
        imported |= set(re.findall(r"^\s*(?:from|import) (\w+)", path.read_text(), flags=re.M))
    own = {p.stem for p in saved_folder.glob("*.py")} | {"eagle_hub", "gradio", "__future__"}
    needed = {{"PIL": "pillow"}.get(m, m).lower() for m in imported - set(sys.stdlib_module_names) - own}
    assert {"torch", "transformers", "pillow"} <= needed <= requirements


# --------------------------------------------------------------------------------------- in a real browser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    env["TMPDIR"] = str(log.parent)  # example images and Gradio's upload cache stay in the test's folder
    env["HF_MODULES_CACHE"] = str(log.parent / "modules")  # where the remote code is imported from
    env.pop("GRADIO_SERVER_NAME", None)
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=log.parent)


def wait_until_up(process: subprocess.Popen, url: str, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the app did not answer on {url} within {timeout} s:\n{log.read_text()[-3000:]}")


# Runs app.py as a Space does: this package is not installed, the model's own code loads (trust_remote_code).
AS_ON_A_SPACE = (
    PRELUDE
    + r"""
import runpy
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
)


@pytest.fixture(scope="module")
def servers(saved_folder, tmp_path_factory):
    """The Space app on the tiny folder (package blocked) and on a missing model, side by side."""
    load_app()
    require(importlib.util.find_spec("selenium") is not None, "selenium is not installed: pip install -e '.[test]'")
    require(CHROMIUM is not None and CHROMEDRIVER is not None, "Debian's chromium and chromium-driver are missing")
    work = tmp_path_factory.mktemp("space")
    ports = free_port(), free_port()
    ok_log, bad_log = work / "ok.log", work / "bad.log"
    app = [str(SPACE / "app.py"), "--host", "127.0.0.1", "--max-new-tokens", str(MAX_NEW_TOKENS)]
    ok = start_server(
        [sys.executable, "-c", AS_ON_A_SPACE, *app, "--model", str(saved_folder), "--port", str(ports[0])], ok_log
    )
    missing = str(work / "no-such-model")
    bad = start_server([sys.executable, *app, "--model", missing, "--port", str(ports[1])], bad_log)
    try:
        urls = f"http://127.0.0.1:{ports[0]}/", f"http://127.0.0.1:{ports[1]}/"
        wait_until_up(ok, urls[0], ok_log)
        wait_until_up(bad, urls[1], bad_log)
        yield {"ok": urls[0], "bad": urls[1], "work": work, "missing": missing}
    finally:
        for process in (ok, bad):
            process.terminate()
        for process in (ok, bad):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def browser(servers):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # nothing but this machine
        "--window-size=1280,1400",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_browser_upload_ask_and_watch_the_answer_stream(servers, browser, saved_folder, model):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image_path = servers["work"] / "upload.png"
    make_image(64, 48, colour=(30, 80, 220)).save(image_path)
    expected = greedy_answer(saved_folder, Image.open(image_path), QUESTION, MAX_NEW_TOKENS)
    expected = expected.replace("\r\n", "\n").replace("\r", "\n")  # what a textarea holds
    assert expected.strip()

    browser.get(servers["ok"])
    wait = WebDriverWait(browser, 60, poll_frequency=0.05)
    table = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#experts table"))[0]
    cells = [
        [td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in table.find_elements(By.TAG_NAME, "tr")
    ]
    for spec in model.config.vision_config.experts:
        assert [spec["name"], spec["type"]] in [row[:2] for row in cells]
        assert any(row[:1] == [spec["name"]] and row[2].startswith(f"{spec['image_size']} px") for row in cells)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#examples img")) == 3  # the example images

    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(image_path))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image img"))
    browser.find_element(By.CSS_SELECTOR, "#question textarea").send_keys(QUESTION)
    browser.find_element(By.CSS_SELECTOR, "#submit").click()
    seen = []

    def answered(driver):
        value = driver.find_element(By.CSS_SELECTOR, "#answer textarea").get_attribute("value")
        if not seen or seen[-1] != value:
            seen.append(value)
        return value == expected

    try:
        wait.until(answered)
    except Exception:
        pytest.fail(f"the answer never became {expected!r}; the page showed {seen!r}")
    assert all(expected.startswith(value) for value in seen)  # only ever a prefix of the answer on the way
    # The app ran as on a Space: the model's own code (imported from the modules cache) answered.
    assert list((servers["work"] / "modules").rglob("modeling_eagle.py"))


def test_browser_shows_the_load_failure(servers, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(servers["bad"])
    box = WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#load-error pre"))[0]
    page = browser.find_element(By.CSS_SELECTOR, "#load-error").text
    assert "The model could not be loaded" in page
    assert servers["missing"] in box.text and "FileNotFoundError" in box.text
    assert not browser.find_elements(By.CSS_SELECTOR, "#submit")
