// Screenshots of Orthanc's own pages for the viewer check (tests/python/orthanc_viewer_shot.py):
// Orthanc Explorer's study page (the study with its SEG series) and the Orthanc Web Viewer plugin
// on the study's source series and on its SEG series.
//
// Usage: node orthanc_shot.mjs TARGETS.json
// TARGETS: {"base": ORTHANC_URL, "out": DIR, "targets": [{"case", "study", "series", "segSeries"}]}
// Exits non-zero when a page does not name the SEG series.
import fs from 'node:fs';
import path from 'node:path';
import puppeteer from 'puppeteer-core';

const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--use-angle=swiftshader', '--enable-unsafe-swiftshader', '--disable-dev-shm-usage'],
});
let failed = 0;
try {
  for (const t of spec.targets) {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 800, deviceScaleFactor: 1 });
    await page.goto(`${spec.base}/app/explorer.html#study?uuid=${t.study}`, { waitUntil: 'networkidle0' });
    await new Promise((r) => setTimeout(r, 500));
    const explorer = await page.evaluate(() => document.body.innerText);
    await page.screenshot({ path: path.join(spec.out, `${t.case}-explorer-study.png`) });
    const hasSeg = /\bSEG\b/.test(explorer);
    console.log(`${t.case}: Orthanc Explorer study page lists a SEG series: ${hasSeg}`);
    if (!hasSeg) failed++;

    // The Orthanc Web Viewer plugin shows one series at a time and draws no SEG overlay: show
    // the source series, then the SEG series itself (its frames are the masks, as images).
    for (const [what, series] of [['source', t.series], ['seg', t.segSeries]]) {
      await page.goto(`${spec.base}/web-viewer/app/viewer.html?series=${series}`, {
        waitUntil: 'networkidle0',
      });
      await new Promise((r) => setTimeout(r, 1500));
      await page.screenshot({ path: path.join(spec.out, `${t.case}-web-viewer-${what}.png`) });
    }
    await page.close();
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
