// Drives the admin dashboard in headless Chromium for the end-to-end test
// `dashboard_in_a_real_browser`. Talks to the test over stdin/stdout, one
// word per line: prints `ready` once the page shows the backends, waits for
// `traffic` and then for a backend's rate to rise, prints `traffic-seen`,
// waits for `breaker` and then for an open breaker, prints `breaker-seen`,
// saves a screenshot, and finally prints a JSON report.
//
//   node dashboard.mjs http://ADMIN/dashboard pool/b0,pool/b1 screenshot.png

import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [url, expected, screenshot] = process.argv.slice(2);
const input = createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();
const say = (word) => process.stdout.write(word + "\n");
const next = async (word) => {
  const { value } = await lines.next();
  if (value?.trim() !== word) throw new Error(`expected ${word}, got ${value}`);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const errors = [];
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  for (const key of expected.split(",")) {
    await page.locator(`[data-backend="${key}"]`).waitFor({ timeout: 10000 });
  }
  say("ready");

  await next("traffic");
  await page.waitForFunction(() =>
    [...document.querySelectorAll('[data-backend] [data-role="rps"]')]
      .some((e) => parseFloat(e.textContent) > 0), null, { timeout: 15000 });
  say("traffic-seen");

  await next("breaker");
  await page.locator('[data-breaker="open"]').first().waitFor({ timeout: 15000 });
  const open = await page.locator('[data-breaker="open"]').first().getAttribute("data-backend");
  say("breaker-seen");
  await page.screenshot({ path: screenshot, fullPage: true });
  const routes = await page.locator("[data-route]").count();
  const jobs = await page.locator('[data-job-route="long"] [data-role="jobs-running"]').textContent();
  const shadow = await page.locator('[data-rollout="chat/shadow"] [data-role="agreement"]').textContent();
  say(JSON.stringify({ errors, open, routes, jobs, shadow }));
} finally {
  await browser.close();
  input.close();
}
