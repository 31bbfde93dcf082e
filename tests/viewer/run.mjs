// Drives the viewer page (index.html + dist/) in headless Chromium, one case at a time.
//
// Usage: node run.mjs MANIFEST.json
// MANIFEST: {"data_root": DIR, "out": DIR, "cases": [{"name", "sources": [PATH...], "seg": PATH,
//            "scale": N}]}, paths relative to data_root. Serves the page and data_root on a
// loopback port, opens the page in Chromium (the system one: $CHROMIUM or /usr/bin/chromium;
// WebGL through SwiftShader, no GPU), loads each case and writes to OUT/<name>/:
//   viewer.json            what the adapters produced (segments, colours, labelmaps), the stack
//                          order, and for every screenshot the canvas position of the image
//   shots/ohif-iNN.png     stack position NN in OHIF's default segmentation style
//   shots/solid-iNN-sK.png segment K alone, opaque fill, no outline (the pixels compared)
// A case with "viewer": "dwv" is opened in dwv instead (dwv.html): OUT/<name>/dwv.json holds
// dwv's mask volume and slice positions, shots/dwv-iNN.png slice NN of the sources with the
// mask opaque.
// Exits non-zero on any page error or failed case.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const manifest = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const dataRoot = path.resolve(manifest.data_root);
const outRoot = path.resolve(manifest.out);
const chromium = process.env.CHROMIUM || '/usr/bin/chromium';
if (!fs.existsSync(chromium)) {
  console.error(`${chromium} is missing: apt-get install chromium (or set CHROMIUM)`);
  process.exit(2);
}
if (!fs.existsSync(path.join(here, 'dist', 'page.js'))) {
  console.error(`${here}/dist/page.js is missing: run \`npm ci && node build.mjs\` in ${here}`);
  process.exit(2);
}

const types = {
  '.html': 'text/html',
  '.js': 'text/javascript',
  '.wasm': 'application/wasm',
  '.dcm': 'application/dicom',
};
function serveFile(res, root, rel) {
  const file = path.resolve(root, rel);
  if (!file.startsWith(root + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, {
    'content-type': types[path.extname(file)] || 'application/octet-stream',
    'cache-control': 'no-store',
  });
  fs.createReadStream(file).pipe(res);
}
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  const p = decodeURIComponent(url.pathname);
  if (p.startsWith('/data/')) serveFile(res, dataRoot, p.slice(6));
  else if (p === '/' || p === '/index.html') serveFile(res, here, 'index.html');
  else if (p === '/dwv.html') serveFile(res, here, 'dwv.html');
  else if (p.startsWith('/dist/')) serveFile(res, here, p.slice(1));
  else if (p === '/favicon.ico') res.writeHead(204).end();
  else res.writeHead(404).end();
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const base = `http://127.0.0.1:${server.address().port}`;

const browser = await puppeteer.launch({
  executablePath: chromium,
  headless: true,
  args: [
    '--no-sandbox',
    '--use-angle=swiftshader',
    '--enable-unsafe-swiftshader',
    '--disable-dev-shm-usage',
    '--force-device-scale-factor=1',
    '--hide-scrollbars',
    '--no-first-run',
  ],
});

async function runDwv(page, c, dir, { width, height, scale }, log) {
  await page.goto(`${base}/dwv.html`, { waitUntil: 'load' });
  await page.waitForFunction(() => window.dwvCheck, { timeout: 30000 });
  const spec = {
    sources: c.sources.map((s) => `${base}/data/${s}`),
    seg: `${base}/data/${c.seg}`,
    width,
    height,
  };
  const loaded = await page.evaluate((s) => window.dwvCheck.load(s), spec);
  const element = await page.$('#layerGroup0');
  const shots = [];
  for (let i = 0; i < loaded.image.size[2]; i++) {
    const index = await page.evaluate((i) => window.dwvCheck.show(i), i);
    const file = `shots/dwv-i${String(i).padStart(2, '0')}.png`;
    await element.screenshot({ path: path.join(dir, file) });
    shots.push({ index: i, file, dwvIndex: index });
  }
  const errors = log.filter((l) => l.startsWith('error') || l.startsWith('pageerror'));
  fs.writeFileSync(
    path.join(dir, 'dwv.json'),
    JSON.stringify({ case: c.name, scale, width, height, ...loaded, shots, errors }),
  );
}

let failed = 0;
try {
  for (const c of manifest.cases) {
    const t0 = Date.now();
    const dir = path.join(outRoot, c.name);
    fs.mkdirSync(path.join(dir, 'shots'), { recursive: true });
    const log = [];
    const page = await browser.newPage();
    page.on('console', (m) => log.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => log.push(`pageerror: ${e.message}`));
    try {
      const scale = c.scale || 1;
      const { rows, columns } = c;
      const width = columns * scale;
      const height = rows * scale;
      await page.setViewport({ width, height, deviceScaleFactor: 1 });
      if (c.viewer === 'dwv') {
        await runDwv(page, c, dir, { width, height, scale }, log);
        console.log(`${c.name}: dwv, ${Date.now() - t0} ms`);
        continue;
      }
      await page.goto(`${base}/index.html`, { waitUntil: 'load' });
      await page.waitForFunction(() => window.viewerCheck, { timeout: 30000 });
      const spec = {
        sources: c.sources.map((s) => `${base}/data/${s}`),
        seg: `${base}/data/${c.seg}`,
        width,
        height,
      };
      const loaded = await page.evaluate((s) => window.viewerCheck.load(s), spec);
      const element = await page.$('#viewport');
      const shots = [];
      for (let i = 0; i < loaded.images.length; i++) {
        const nn = String(i).padStart(2, '0');
        const v = await page.evaluate((i) => window.viewerCheck.show(i, 'ohif'), i);
        const file = `shots/ohif-i${nn}.png`;
        await element.screenshot({ path: path.join(dir, file) });
        shots.push({ index: i, style: 'ohif', file, ...v });
        for (const s of loaded.segments) {
          const v2 = await page.evaluate(
            (i, k) => window.viewerCheck.show(i, 'solid', k),
            i,
            s.segmentIndex,
          );
          const f2 = `shots/solid-i${nn}-s${s.segmentIndex}.png`;
          await element.screenshot({ path: path.join(dir, f2) });
          shots.push({ index: i, style: 'solid', segmentIndex: s.segmentIndex, file: f2, ...v2 });
        }
      }
      const errors = log.filter((l) => l.startsWith('error') || l.startsWith('pageerror'));
      fs.writeFileSync(
        path.join(dir, 'viewer.json'),
        JSON.stringify({ case: c.name, scale, width, height, ...loaded, shots, errors }),
      );
      console.log(`${c.name}: ${loaded.images.length} image(s), ${shots.length} screenshots, ${Date.now() - t0} ms`);
    } catch (e) {
      failed++;
      console.error(`${c.name}: FAILED: ${e.stack || e}`);
    } finally {
      fs.writeFileSync(path.join(dir, 'console.log'), log.join('\n') + '\n');
      await page.close();
    }
  }
} finally {
  await browser.close();
  server.close();
}
process.exit(failed ? 1 : 0);
