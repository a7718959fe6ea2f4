"""The dashboard in a real browser: headless Debian chromium, driven by Playwright, against the
engine on the simulator (the session's api engine, with its token in the page's URL).

It checks what a person would: the heatmap canvas is painted and keeps changing, the ladder
has one column per exchange, and switching an exchange off removes its liquidity from the
heatmap and the ladder (and switching it on brings it back). A screenshot is saved to
``$COBY_TEST_ARTIFACTS`` (default ``artifacts/``) as dashboard.png.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_support import AUTH, SIMULATED, get
from tests.api_support import api_engine_fixture  # noqa: F401 (the api_engine fixture)
from tests.engine_support import wait_for

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("COBY_TEST_ARTIFACTS", ROOT / "artifacts"))
BACKGROUND = (5, 7, 15)  # the heatmap's empty cells


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: bin/test installs Debian's chromium when run as root with apt-get; "
                    "elsewhere: apt-get install chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install -e .[dev]")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()


def canvas_digest(page) -> tuple[str, float]:
    """A hash of the heatmap's pixels and the share of them that are painted (not background)."""
    pixels = page.evaluate("""() => {
        const canvas = document.querySelector('#heatmap');
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let painted = 0;
        for (let i = 0; i < data.length; i += 4)
            if (data[i] !== %d || data[i + 1] !== %d || data[i + 2] !== %d) painted++;
        return [canvas.toDataURL(), painted / (data.length / 4)];
    }""" % BACKGROUND)
    return hashlib.sha256(pixels[0].encode()).hexdigest(), pixels[1]


def ladder(page) -> dict:
    return page.evaluate("""() => {
        const heads = [...document.querySelectorAll('#ladder thead th[data-exchange]')];
        const rows = [...document.querySelectorAll('#ladder tbody tr')].map((tr) => ({
            total: Number(tr.querySelector('td.total').dataset.size),
            cells: Object.fromEntries([...tr.querySelectorAll('td[data-exchange]')].map(
                (td) => [td.dataset.exchange, {size: Number(td.dataset.size), shown: !td.hidden}])),
        }));
        return {exchanges: heads.map((th) => th.dataset.exchange), shown: heads.filter((th) => !th.hidden)
                .map((th) => th.dataset.exchange), rows};
    }""")


def test_the_dashboard_paints_a_live_heatmap_and_an_exchange_toggle_removes_its_liquidity(api_engine, browser) -> None:
    wait_for(lambda: get(api_engine.base + "/health", AUTH)[0] == 200, timeout_s=60, what="a healthy engine")
    page = browser.new_page(viewport={"width": 1500, "height": 850})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{api_engine.base}/?token={api_engine.token}&instrument=BTC/USDT")
        page.wait_for_function("() => window.coby && coby.columnsShown() >= 30 && "
                               "document.querySelectorAll('#ladder tbody tr').length >= 10", timeout=30_000)
        assert page.evaluate("coby.instrument()") == "BTC/USDT"
        assert page.locator("#connection").text_content() == "live"
        first, painted = canvas_digest(page)
        assert painted > 0.05, f"only {painted:.1%} of the heatmap is painted"
        shown = page.evaluate("coby.columnsShown()")
        page.wait_for_function(f"() => coby.columnsShown() >= {shown + 10}", timeout=15_000)
        assert canvas_digest(page)[0] != first, "the heatmap changes over time"

        book = ladder(page)
        assert book["exchanges"] == list(SIMULATED) and book["shown"] == list(SIMULATED)
        for exchange in SIMULATED:
            assert any(row["cells"][exchange]["size"] > 0 for row in book["rows"]), f"{exchange} column is empty"
        for row in book["rows"]:
            assert row["total"] == pytest.approx(sum(cell["size"] for cell in row["cells"].values()), rel=1e-5)
        before = page.evaluate("coby.drawnSizeByExchange()")
        assert all(before[exchange] > 0 for exchange in SIMULATED), before
        page.wait_for_function("() => [...document.querySelectorAll('#exchanges td.status')]"
                               ".every((td) => td.textContent.startsWith('in sync'))", timeout=15_000)

        page.locator('input.toggle[data-exchange="binance"]').uncheck()
        page.wait_for_function("() => coby.drawnSizeByExchange().binance === 0", timeout=5_000)
        after = page.evaluate("coby.drawnSizeByExchange()")
        assert after["okx"] > 0 and after["bybit"] > 0, "only binance's liquidity leaves"
        page.wait_for_function("() => document.querySelector('#ladder thead th[data-exchange=binance]').hidden",
                               timeout=5_000)
        book = ladder(page)
        assert book["shown"] == ["okx", "bybit"]
        for row in book["rows"]:
            assert not row["cells"]["binance"]["shown"]
            visible = sum(cell["size"] for name, cell in row["cells"].items() if name != "binance")
            assert row["total"] == pytest.approx(visible, rel=1e-5), "totals leave binance out"
            assert visible > 0, "a level only binance quoted is gone from the ladder"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-binance-off.png"))

        page.locator('input.toggle[data-exchange="binance"]').check()
        page.wait_for_function("() => coby.drawnSizeByExchange().binance > 0", timeout=5_000)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"))
        assert errors == [], errors
    finally:
        page.close()
