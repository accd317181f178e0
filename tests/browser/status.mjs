// Opens turnd's status page in headless Chromium, watches its numbers for a few seconds,
// runs "Test from this browser", and saves a screenshot.
//
//   node status.mjs <page URL> <screenshot path>
//
// Prints one JSON line: { status, maxPacketsPerSecond, selfTest, text }.
import { chromium } from 'playwright-core';

const [url, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--ignore-certificate-errors'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1400 } });
  const response = await page.goto(url);
  const status = response.status();
  if (status !== 200) {
    console.log(JSON.stringify({ status, text: await response.text() }));
  } else {
    let maxPacketsPerSecond = 0;
    for (let i = 0; i < 8; i++) {
      await page.waitForTimeout(1000);
      // The page's own numbers: the latest second and the chart's history.
      const h = await page.evaluate(() => window.turnd ? window.turnd.history : []);
      for (const s of h) maxPacketsPerSecond = Math.max(maxPacketsPerSecond, s.packets_per_s[0] + s.packets_per_s[1]);
    }
    await page.click('#test');
    await page.waitForFunction(() => window.selfTest && window.selfTest.done, null, { timeout: 120000 });
    const selfTest = await page.evaluate(() => window.selfTest);
    await page.screenshot({ path: shot, fullPage: true });
    const text = await page.evaluate(() => document.body.innerText);
    console.log(JSON.stringify({ status, maxPacketsPerSecond, selfTest, text }));
  }
} finally {
  await browser.close();
}
