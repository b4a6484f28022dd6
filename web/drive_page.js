#!/usr/bin/env node
// Drive an `onnxfix web` site in headless Chromium (puppeteer-core; no browser is downloaded):
// serve SITE on 127.0.0.1, open the page, use the bundled sample, set the epochs and batch
// size, train, read the result, download the trained parameters and take a screenshot.
//
//   node web/drive_page.js --site SITE --chromium /usr/bin/chromium --epochs 2 --batch 32 \
//       --out RESULT.json --screenshot PAGE.png --download DIR [--timeout SECONDS]
//
// RESULT.json: {state, error, losses, epoch_losses, parameters: {name: [...]}, data, status,
// download (the saved file's path), rects: {chart, kernels} (page pixels), console (the
// page's messages), harness_error (when driving the page itself failed; exit status 1)}.
'use strict';
const fs = require('fs');
const path = require('path');
const { serve } = require('./serve.js');

function parseArgs(argv) {
  const args = { epochs: '2', batch: '', timeout: '180' };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    if (!key.startsWith('--') || i + 1 >= argv.length) throw new Error(`bad argument ${JSON.stringify(key)}`);
    args[key.slice(2)] = argv[++i];
  }
  for (const required of ['site', 'out']) {
    if (!args[required]) throw new Error(`--${required} is required`);
  }
  args.chromium = args.chromium || process.env.CHROMIUM || '/usr/bin/chromium';
  return args;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitForFile(file, timeoutMs) {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (fs.existsSync(file) && !fs.existsSync(file + '.crdownload')) {
      const size = fs.statSync(file).size;
      await sleep(100);
      if (size > 0 && fs.statSync(file).size === size) return true;
    }
    await sleep(100);
  }
  return false;
}

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`drive_page.js: ${e.message}\nusage: node drive_page.js --site SITE --chromium PATH --epochs E --batch B --out RESULT.json --screenshot PAGE.png --download DIR [--timeout SECONDS]\n`);
    process.exit(2);
  }
  const puppeteer = require('puppeteer-core');
  const timeoutMs = Number(args.timeout) * 1000;
  const result = { state: null, error: null, losses: [], parameters: null, console: [] };
  let server = null;
  let browser = null;
  let status = 0;
  const write = () => fs.writeFileSync(args.out, JSON.stringify(result) + '\n');
  try {
    server = await serve(args.site);
    browser = await puppeteer.launch({
      executablePath: args.chromium,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--no-default-browser-check'],
      defaultViewport: { width: 1000, height: 900, deviceScaleFactor: 1 },
      protocolTimeout: timeoutMs + 60000,
    });
    const page = await browser.newPage();
    page.on('console', (m) => result.console.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => result.console.push(`pageerror: ${e.message}`));
    page.on('requestfailed', (r) => result.console.push(`requestfailed: ${r.url()} ${r.failure() && r.failure().errorText}`));
    page.setDefaultTimeout(timeoutMs);

    await page.goto(server.url, { waitUntil: 'load' });
    await page.waitForFunction(
      () => window.onnxfixPage && ['ready', 'error'].includes(window.onnxfixPage.state), { timeout: timeoutMs });
    let state = await page.evaluate(() => window.onnxfixPage.state);
    if (state === 'ready') {
      await page.click('#use-sample');
      await page.waitForFunction(
        () => window.onnxfixPage.state === 'error' || (window.onnxfixPage.state === 'ready' && window.onnxfixPage.data),
        { timeout: timeoutMs });
      state = await page.evaluate(() => window.onnxfixPage.state);
    }
    if (state === 'ready') {
      await page.evaluate((epochs, batch) => {
        const set = (id, value) => {
          const input = document.getElementById(id);
          if (value === '' || input.disabled) return;
          input.value = String(value);
          input.dispatchEvent(new Event('input', { bubbles: true }));
          input.dispatchEvent(new Event('change', { bubbles: true }));
        };
        set('epochs', epochs);
        set('batch-size', batch);
      }, args.epochs, args.batch);
      const started = Date.now();
      await page.click('#train');
      await page.waitForFunction(
        () => ['done', 'error'].includes(window.onnxfixPage.state), { timeout: timeoutMs, polling: 200 });
      result.train_seconds = (Date.now() - started) / 1000;
    }
    Object.assign(result, await page.evaluate(async () => {
      const p = window.onnxfixPage;
      let parameters = null;
      let parametersError = null;
      try {
        const values = await p.parameters();
        parameters = Object.fromEntries(Object.entries(values).map(([k, v]) => [k, Array.from(v)]));
      } catch (e) {
        parametersError = String(e && e.message || e);
      }
      const rect = (el) => {
        if (!el) return null;
        const r = el.getBoundingClientRect();
        return { x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height };
      };
      return {
        state: p.state,
        error: p.error,
        losses: p.losses.slice(),
        epoch_losses: p.epochLosses.slice(),
        data: p.data,
        status: document.getElementById('status').textContent,
        parameters,
        parameters_error: parametersError,
        rects: { chart: rect(document.getElementById('loss-chart')), kernels: rect(document.getElementById('kernels')) },
      };
    }));

    if (args.download && result.state === 'done') {
      fs.mkdirSync(args.download, { recursive: true });
      const cdp = await browser.target().createCDPSession();
      await cdp.send('Browser.setDownloadBehavior', { behavior: 'allow', downloadPath: path.resolve(args.download) });
      await page.click('#download');
      const file = path.join(args.download, 'trained_parameters.npz');
      if (await waitForFile(file, 30000)) result.download = file;
      else result.harness_error = `the download did not arrive in ${args.download}`;
    }
    if (args.screenshot) {
      // Encoded for speed: zlib's fast level and one PNG filter (Up), quick to decode in the tests.
      await page.screenshot({ path: args.screenshot, fullPage: true, optimizeForSpeed: true });
      result.screenshot = args.screenshot;
    }
  } catch (e) {
    result.harness_error = String((e && e.stack) || e);
    status = 1;
  } finally {
    if (browser) await browser.close().catch(() => {});
    if (server) await server.close().catch(() => {});
  }
  if (result.harness_error) status = 1;
  write();
  process.exit(status);
}

main();
