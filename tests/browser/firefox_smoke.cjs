/* The explorer in headless Firefox, driven over WebDriver BiDi by puppeteer-core (no browser
   download, no geckodriver): load the page, plot cross_entropy and focal at two gamma values,
   print what the page shows as JSON for test_explorer.py to check against the API.
   Usage: node firefox_smoke.cjs <server url> <firefox binary> <puppeteer-core dir> <screenshot> */
"use strict";
const path = require("path");
const [url, firefox, puppeteerDir, screenshot] = process.argv.slice(2);
const puppeteer = require(path.join(puppeteerDir, "node_modules", "puppeteer-core"));

const curves = () => JSON.parse(document.getElementById("plots").dataset.curves || "[]");

(async () => {
  const browser = await puppeteer.launch({ browser: "firefox", executablePath: firefox, headless: true });
  try {
    const page = await browser.newPage();
    const console_ = [];
    page.on("console", (m) => { if (m.type() === "error" || m.type() === "warn") console_.push(`${m.type()}: ${m.text()}`); });
    page.on("pageerror", (e) => console_.push(`pageerror: ${e.message}`));
    await page.setViewport({ width: 1300, height: 1000 });
    await page.goto(url + "/");
    await page.waitForSelector("body[data-ready=true]", { timeout: 60000 });
    const names = await page.$$eval("#loss-list li", (els) => els.map((e) => e.dataset.name));
    await page.click("#loss-list li[data-name='cross_entropy']");
    await page.waitForSelector("#card[data-name='cross_entropy']");
    await page.click("#add-curve");
    await page.waitForFunction((n) => JSON.parse(document.getElementById("plots").dataset.curves || "[]").length === n, {}, 1);
    await page.click("#loss-list li[data-name='focal']");
    await page.waitForSelector("#card[data-name='focal']");
    await page.select("#compare-param", "gamma");
    await page.type("#compare-values", "2, 5");
    await page.click("#add-curve");
    await page.waitForFunction((n) => JSON.parse(document.getElementById("plots").dataset.curves || "[]").length === n, {}, 3);
    const plotted = await page.evaluate(curves);
    const canvases = await page.$$eval("#plots canvas", (els) => els.map((c) => [c.width, c.height]));
    const grid = await page.evaluate(() => ["x-start", "x-stop", "x-points"].map((id) => Number(document.getElementById(id).value)));
    await page.screenshot({ path: screenshot, fullPage: true });
    process.stdout.write(JSON.stringify({ names, curves: plotted, canvases, grid, console: console_ }));
  } finally {
    await browser.close();
  }
})().catch((err) => { process.stderr.write(String(err && err.stack || err)); process.exit(1); });
