#!/usr/bin/env node
// The page library's pure pieces, run in Node for tests/web/test_web_runtime.py:
//
//   node lib_check.js ONNXFIX_WEB_JS DIR [SITE]
//
// Reads DIR/cases.json ({read: [files], prepare: [{file, site}], rows: [{values, shape, op,
// group}], kernels: [{entry, parameters}], write: {file, arrays}}), writes DIR/out.json with
// what the library made of each; with SITE, also opens a training session on it and runs one
// step with wrongly shaped inputs, reporting how the WebAssembly error reads.
'use strict';
const fs = require('fs');
const path = require('path');

const [libPath, dir, site] = process.argv.slice(2);
const lib = require(path.resolve(libPath));
lib.watchWasmMemory();

const plain = (array) => ({
  dtype: array.dtype || array.type,
  shape: array.shape,
  values: Array.from(array.data, (v) => (typeof v === 'bigint' ? v.toString() : v)),
});

async function attempt(fn) {
  try {
    return await fn();
  } catch (e) {
    return { error: lib.describeError(e) };
  }
}

async function main() {
  const cases = JSON.parse(fs.readFileSync(path.join(dir, 'cases.json'), 'utf8'));
  const out = { read: {}, prepare: [], rows: [], kernels: [], write: null, session: null };
  for (const file of cases.read) {
    out.read[file] = await attempt(async () => {
      const arrays = await lib.readNpz(new Uint8Array(fs.readFileSync(path.join(dir, file))), file);
      return Object.fromEntries(Object.entries(arrays).map(([k, v]) => [k, plain(v)]));
    });
  }
  for (const c of cases.prepare) {
    out.prepare.push(await attempt(async () => {
      const npz = await lib.readNpz(new Uint8Array(fs.readFileSync(path.join(dir, c.file))), c.file);
      const prepared = lib.prepareArrays(npz, c.site, c.file);
      const plan = lib.planBatches(prepared.arrays, c.site, c.batch);
      return {
        samples: prepared.samples,
        steps: plan.steps,
        dropped: plan.dropped,
        arrays: Object.fromEntries(Object.entries(prepared.arrays).map(([k, v]) => [k, plain(v)])),
        last_batch: Object.fromEntries(Object.entries(plan.batch(plan.steps - 1)).map(
          ([k, v]) => [k, { type: v.type, dims: v.dims, values: Array.from(v.data, (x) => (typeof x === 'bigint' ? x.toString() : x)) }])),
      };
    }));
  }
  for (const c of cases.rows) {
    out.rows.push(lib.rowsView(Float32Array.from(c.values), c.shape, c.op, c.group).map((r) => Array.from(r)));
  }
  for (const c of cases.kernels) {
    out.kernels.push(await attempt(async () => {
      const parameters = Object.fromEntries(Object.entries(c.parameters).map(([k, v]) => [k, Float32Array.from(v)]));
      const rows = lib.kernelRows(c.entry, parameters).map((r) => Array.from(r));
      const tiles = lib.kernelTiles(c.entry, parameters);
      return {
        rows,
        fixed: lib.fixedChannels(c.entry),
        tiles: tiles.tiles.map((t) => ({ channel: t.channel, height: t.height, width: t.width, values: Array.from(t.values) })),
        peak: tiles.peak,
      };
    }));
  }
  if (cases.write) {
    const arrays = {};
    for (const [name, a] of Object.entries(cases.write.arrays)) arrays[name] = { data: Float32Array.from(a.values), shape: a.shape };
    fs.writeFileSync(path.join(dir, cases.write.file), lib.writeNpz(arrays));
    out.write = cases.write.file;
    // And read back by the library's own reader.
    const back = await lib.readNpz(fs.readFileSync(path.join(dir, cases.write.file)), cases.write.file);
    out.write_read_back = Object.fromEntries(Object.entries(back).map(([k, v]) => [k, plain(v)]));
  }
  if (site) {
    out.session = await attempt(async () => {
      const ortDir = path.join(path.resolve(site), 'ort');
      const ort = require(path.join(ortDir, 'ort.training.wasm.min.js'));
      ort.env.wasm.numThreads = 1;
      ort.env.wasm.wasmPaths = ortDir + path.sep;
      ort.env.logLevel = 'error';
      const info = JSON.parse(fs.readFileSync(path.join(site, 'site.json'), 'utf8'));
      const session = await lib.openSession(ort, info, (p) => new Uint8Array(fs.readFileSync(path.join(site, p))));
      const feeds = {};
      for (const spec of lib.feedSpecs(info)) {
        // Every dimension 2: the batch is dynamic, the others are wrong.
        const dims = spec.shape.map(() => 2);
        const size = dims.reduce((a, b) => a * b, 1);
        feeds[spec.name] = spec.dtype === 'int64'
          ? new ort.Tensor('int64', new BigInt64Array(size), dims)
          : new ort.Tensor(spec.dtype, new Float32Array(size), dims);
      }
      let thrown = null;
      try {
        await session.runTrainStep(feeds);
      } catch (e) {
        thrown = { type: typeof e, message: lib.describeError(e) };
      }
      return { thrown };
    });
  }
  fs.writeFileSync(path.join(dir, 'out.json'), JSON.stringify(out));
  process.exit(0);
}

main().catch((e) => {
  process.stderr.write('lib_check.js: ' + lib.describeError(e) + '\n' + (e && e.stack) + '\n');
  process.exit(1);
});
