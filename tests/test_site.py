"The docs site as a reader opens it: built once from the committed outputs, served on loopback, every page in headless Chromium with every other host blocked."
import functools, http.server, json, os, threading, time
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pytest

from conftest import ROOT

CHROMIUM = Path(os.environ.get("RANDSAE_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = ROOT/"test-artifacts"/"site"   # screenshots (gitignored)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]   # every other host blocked: its requests fail, and are counted
CHART_TIMEOUT_MS = 60_000
PAGE_TIMEOUT_MS = 180_000   # generous: on a loaded 2-core machine a notebook page has taken over 30 s to load


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    "The site built from the committed outputs (and the module and course notebooks), once per test session (RANDSAE_TEST_SITE: test that built site instead)."
    if given := os.environ.get("RANDSAE_TEST_SITE"): return Path(given)
    from randsae.docs import build_site
    t0 = time.perf_counter(); site = build_site(tmp_path_factory.mktemp("site")/"site", ROOT/"outputs")
    print(f"\ndocs site built in {time.perf_counter() - t0:.1f} s: {site}")
    return site


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.fixture(scope="session")
def served(site):
    "The site on a loopback port: its base URL."
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown(); httpd.server_close()


@pytest.fixture(scope="session")
def browser():
    "Debian's headless Chromium driven by playwright; missing, it fails (never skips) saying how to install it."
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser test needs Debian's chromium. Install it with `apt-get install -y chromium` "
                    "(as root, `make test` does it), or point RANDSAE_CHROMIUM at a Chromium binary")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


class PageProblems:
    "A browser context on `base` (Chromium resolves no other host) that records its page's failed requests and console errors."
    def __init__(self, browser, base: str):
        self.base = urlparse(base).netloc; self.problems: list[str] = []
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.set_default_timeout(PAGE_TIMEOUT_MS)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console error: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", self._failed)
        self.page.on("response", lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"))

    def _failed(self, request):
        if request.failure != "net::ERR_ABORTED":   # aborted: a request of the previous page, cancelled by the next navigation
            self.problems.append(f"request failed: {request.url} ({request.failure})")

    def start(self, url: str) -> None:
        "Begin loading `url` (returns once the navigation is committed, so several tabs load at once)."
        self.problems = []; self.page.goto(url, wait_until="commit")

    def finish(self) -> list[str]:
        "Wait for the page's load event and its charts; return what went wrong on it."
        page = self.page; page.wait_for_load_state("load")
        if page.locator("div.vega-chart").count():
            try: page.wait_for_function("() => [...document.querySelectorAll('div.vega-chart')].every(d => d.dataset.rendered)", timeout=CHART_TIMEOUT_MS)
            except Exception as e: self.problems.append(f"charts still rendering after {CHART_TIMEOUT_MS} ms: {e}")
        bad_imgs = page.evaluate("() => [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src'))")
        self.problems += [f"image did not load: {s}" for s in bad_imgs]
        blank = page.evaluate("() => [...document.querySelectorAll('div.vega-chart')].filter(d => !d.querySelector('svg, canvas')).map(d => d.dataset.spec || 'inline spec')")
        self.problems += [f"chart did not render: {s}" for s in blank]
        return list(self.problems)

    def open(self, url: str) -> list[str]:
        "Load `url`, wait for its charts, and return what went wrong on it."
        self.start(url); return self.finish()


def check_pages(browser, base: str, pages: list[str], n_tabs: int = 2) -> dict[str, list[str]]:
    "Open `pages` (relative to `base`) `n_tabs` at a time, each tab its own context; the problems of each page that had any."
    tabs = [PageProblems(browser, base) for _ in range(n_tabs)]; problems = {}
    try:
        for i in range(0, len(pages), n_tabs):
            batch = list(zip(tabs, pages[i:i + n_tabs]))
            for tab, rel in batch: tab.start(f"{base}/{rel}")
            for tab, rel in batch:
                if found := tab.finish(): problems[rel] = found
    finally:
        for tab in tabs: tab.context.close()
    return problems


def site_pages(site: Path) -> list[str]:
    "Every HTML page of the site (the theme's assets aside), as paths relative to it."
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html") if "assets" not in p.relative_to(site).parts)


def test_site_is_organised_by_question(site):
    "Start here, then one section per question that has run, the API reference and results by preset; no raw front matter; code folded."
    index = (site/"index.html").read_text()
    for title in ("Start here", "The paper in five minutes", "What randsae found", "How to rerun", "Auto-interpretability and its null model",
                  "Random transformers and their SAEs", "Superposition in toy models", "Across models", "Deviations from the paper",
                  "API reference", "Results by preset"):
        assert title in index, title
    mods = sorted(p.stem for p in (ROOT/"nbs").glob("[0-9][0-9]_*.ipynb"))
    assert mods and all((site/"modules"/f"{m}.html").exists() for m in mods)
    for folder, nbs in {"toy": ["toy_superposition", "toy_glove"], "tiny": ["sae_pipeline", "autointerp"]}.items():
        page = (site/"results"/folder/"index.html").read_text()
        assert "fig0" in page and "<img" in page
        for nb in nbs:
            html = (site/"results"/folder/f"{nb}.html").read_text()
            assert "skip_exec" not in html and '<details class="randsae-code">' in html, nb
    course = sorted((ROOT/"nbs"/"course").glob("*.ipynb")) if (ROOT/"nbs"/"course").is_dir() else []
    assert ("Course" in index) == bool(course) and all((site/"course"/f"{nb.stem}.html").exists() for nb in course)
    found = (site/"start"/"found.html").read_text()
    assert "auroc_close" in found and "results/ledger/ledger.html" in found   # the committed claims ledger


def test_every_page_renders_offline(site, served, browser):
    "Each page loads with no failed request, no request to another host, no console error, every image loaded and every chart drawn."
    t0 = time.perf_counter(); pages = site_pages(site)
    assert len(pages) > 40, pages   # the README, start pages, sections, modules, results
    problems = check_pages(browser, served, pages)
    print(f"\n{len(pages)} pages opened in {time.perf_counter() - t0:.1f} s")
    assert not problems, json.dumps(problems, indent=1)[:6000]


def test_screenshots_of_the_front_page_and_each_section(site, served, browser):
    "Screenshots, saved under test-artifacts/site/: the front page and the first page of every section of the navigation."
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"): old.unlink()
    shots = {"front": "index.html"} | {p.parent.name + "-" + p.stem: p.relative_to(site).as_posix() for p in sorted((site/"sections").glob("*.html"))}
    shots |= {"start-found": "start/found.html", "deviations": "deviations.html", "api-reference": "modules/00_config.html"}
    shots |= {f"quiz-{p.stem}": p.relative_to(site).as_posix() for p in sorted((site/"quiz").glob("*.html"))[:1]} if (site/"quiz").exists() else {}
    shots |= {f"results-{p.parent.name}": p.relative_to(site).as_posix() for p in sorted((site/"results").glob("*/autointerp.html"))[:1]}
    tab = PageProblems(browser, served)
    for name, rel in shots.items():
        assert not tab.open(f"{served}/{rel}"), rel
        tab.page.screenshot(path=str(ARTIFACTS/f"{name}.png"))
    tab.context.close()
    print(f"\n{len(shots)} screenshots in {ARTIFACTS}")
    assert all((ARTIFACTS/f"{n}.png").stat().st_size > 10_000 for n in shots)


def _answer(page, choice: str, next_card: bool = True):
    page.click(f"button.quiz-choice:has-text('{choice}')")
    if next_card: page.click("button.quiz-next")


def test_quiz_scores_the_reader_like_randsae_quiz(browser, tmp_path):
    "Known answers: four constructed cards, four clicks; the page's running score and final accuracy and AUROCs are the Python module's numbers."
    from randsae.quiz import QUIZ_CHOICES, quiz_auroc, quiz_html, reader_scores
    ex = json.dumps([{"tokens": [" the", " cat", " sat"], "activations": [0.0, 2.0, 0.5]}])
    cards = pd.DataFrame({"card": range(4), "variant": ["trained", "step0", "trained", "rerandomized_incl_emb"], "answer": ["trained", "random", "trained", "random"],
                          "seed": 0, "layer": 1, "latent": [5, 6, 7, 8], "examples": ex, "auroc_null": [0.9, 0.6, 0.7, 0.8],
                          "auroc_llm": [0.55, float("nan"), 0.5, 0.6], "llm": "some-llm"})
    (tmp_path/"quiz.html").write_text(f'<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head><body>{quiz_html(cards)}</body></html>')
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(tmp_path)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"; tab = PageProblems(browser, base); page = tab.page
        assert not tab.open(f"{base}/quiz.html")
        assert page.locator(".quiz-example span[title]").count() == 2 and page.inner_text(".quiz-progress") == "Latent 1 of 4"
        assert page.inner_text(".quiz-reveal") == ""   # nothing says the variant before the answer
        guesses = ["Surely trained", "Maybe trained", "Maybe random", "Surely random"]   # right, wrong, wrong, right
        _answer(page, guesses[0], next_card=False)
        assert page.inner_text(".quiz-score") == "1 of 1 right" and "trained" in page.inner_text(".quiz-reveal")
        assert page.locator("button.quiz-choice").first.is_disabled()   # one answer per latent
        page.click("button.quiz-next"); _answer(page, guesses[1])
        assert page.inner_text(".quiz-score") == "1 of 2 right"
        _answer(page, guesses[2]); _answer(page, guesses[3], next_card=False)
        assert page.inner_text(".quiz-score") == "2 of 4 right" and page.get_attribute(".randsae-quiz", "data-finished") == "1"
        got = page.evaluate("() => ({...document.querySelector('.randsae-quiz').dataset})")
        p = [QUIZ_CHOICES[g] for g in guesses]; want = reader_scores(cards.answer, p)
        assert abs(float(got["readerAccuracy"]) - want["accuracy"]) < 1e-9 and want["accuracy"] == 0.5
        assert abs(float(got["readerAuroc"]) - want["auroc"]) < 1e-9 and want["auroc"] == 0.75   # trained (1, 1/3) vs random (2/3, 0): 3 of 4 pairs
        y = cards.answer == "trained"
        assert abs(float(got["nullDiscrimination"]) - quiz_auroc(y, cards.auroc_null)) < 1e-9   # 0.75: (0.9, 0.7) vs (0.6, 0.8)
        assert abs(float(got["llmDiscrimination"]) - quiz_auroc(y, cards.auroc_llm)) < 1e-9      # the NaN card left out: 0.25
        assert "some-llm" in page.inner_text(".quiz-result") and not tab.problems
        tab.context.close()
    finally:
        httpd.shutdown(); httpd.server_close()


def test_the_site_quiz_pages_work(site, served, browser):
    "Each run with quiz cards has a quiz page; on it, answering updates the score and finishing reports the reader next to the scorers."
    runs = sorted(p.parent.parent.name for p in (ROOT/"outputs").glob("*/tables/quiz_cards.parquet"))
    assert sorted(p.stem for p in (site/"quiz").glob("*.html")) == runs if runs else not (site/"quiz").exists()
    tab = PageProblems(browser, served); page = tab.page
    for run in runs:
        cards = pd.read_parquet(ROOT/"outputs"/run/"tables"/"quiz_cards.parquet")
        assert not tab.open(f"{served}/quiz/{run}.html")
        assert page.inner_text(".quiz-progress") == f"Latent 1 of {len(cards)}" and page.locator(".quiz-example").count() >= 1
        _answer(page, "Surely trained"); _answer(page, "Surely random", next_card=False)
        assert page.inner_text(".quiz-score").endswith("of 2 right")
        page.click("button.quiz-finish")
        first = cards.sort_values("card").head(2)
        assert abs(float(page.get_attribute(".randsae-quiz", "data-reader-accuracy")) - ((first.answer == ["trained", "random"]).mean())) < 1e-9
        assert "null model" in page.inner_text(".quiz-result")
    tab.context.close()


def test_a_request_to_another_host_is_blocked_and_reported(browser, tmp_path):
    "The instrument: a page that asks another host for an image gets a failed request and a missing image, both reported."
    (tmp_path/"p.html").write_text('<!doctype html><html><head><link rel="icon" href="data:,"></head><body><img src="https://example.org/x.png"></body></html>')
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(tmp_path)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        tab = PageProblems(browser, f"http://127.0.0.1:{httpd.server_address[1]}")
        found = tab.open(f"http://127.0.0.1:{httpd.server_address[1]}/p.html"); tab.context.close()
    finally:
        httpd.shutdown(); httpd.server_close()
    assert any("request failed: https://example.org/x.png" in p for p in found) and "image did not load: https://example.org/x.png" in found, found
