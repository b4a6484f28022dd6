#!/usr/bin/env node
// Train an `onnxfix web` site in Node with the page's own code (the site's onnxfix-web.js) and
// the site's own onnxruntime-web files (SITE/ort/), on SITE/sample.npz.
//
//   node web/node_train.js SITE EPOCHS BATCH OUT.json
//
// OUT.json: {losses, epoch_losses, steps, dropped, batch_size, parameters: {name: [...]},
// parameters_before: {name: [...]}, training_input_names, training_output_names} or, on a
// failure, {error, stage} (and the exit status is 1).
'use strict';
const fs = require('fs');
const path = require('path');

function usage() {
  process.stderr.write('usage: node node_train.js SITE EPOCHS BATCH OUT.json\n');
  process.exit(2);
}

const [siteArg, epochsArg, batchArg, outArg] = process.argv.slice(2);
if (!siteArg || !epochsArg || !batchArg || !outArg) usage();
const siteDir = path.resolve(siteArg);
const out = path.resolve(outArg);
let lib = null;
let stage = 'start';

function finish(result, status) {
  fs.writeFileSync(out, JSON.stringify(result) + '\n');
  process.exit(status);
}

function fail(e) {
  const message = lib ? lib.describeError(e) : String((e && e.message) || e);
  process.stderr.write(`node_train.js: ${stage}: ${message}\n`);
  finish({ error: message, stage }, 1);
}

process.on('unhandledRejection', fail);
process.on('uncaughtException', fail);

const asArrays = (parameters) =>
  Object.fromEntries(Object.entries(parameters).map(([name, values]) => [name, Array.from(values)]));

async function main() {
  stage = 'loading onnxfix-web.js';
  lib = require(path.join(siteDir, 'onnxfix-web.js'));
  lib.watchWasmMemory(); // before ONNX Runtime makes its memory: bare-number errors get decoded
  stage = 'loading onnxruntime-web';
  const ortDir = path.join(siteDir, 'ort');
  // The package's exports map hides its training bundle from Node; the site's copy is loaded by path.
  const ort = require(path.join(ortDir, 'ort.training.wasm.min.js'));
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.wasmPaths = ortDir + path.sep;
  ort.env.logLevel = 'error';

  stage = 'reading site.json';
  const site = JSON.parse(fs.readFileSync(path.join(siteDir, 'site.json'), 'utf8'));
  if (!site.sample) throw new Error(`${siteDir} has no bundled sample (write it with onnxfix web --data)`);
  const read = (relative) => new Uint8Array(fs.readFileSync(path.join(siteDir, relative)));

  stage = 'opening the training session';
  const session = await lib.openSession(ort, site, read);
  const before = await lib.currentParameters(session, site);

  stage = 'reading the sample';
  const npz = await lib.readNpz(read(site.sample.file), site.sample.file);
  const { arrays } = lib.prepareArrays(npz, site, site.sample.file);

  stage = 'training';
  const result = await lib.train({
    session, site, arrays, ort,
    epochs: Number(epochsArg),
    batchSize: Number(batchArg),
  });
  stage = 'reading the parameters';
  const after = await lib.currentParameters(session, site);
  const npzBytes = lib.parametersNpz(after, site);
  finish({
    losses: result.losses,
    epoch_losses: result.epochLosses,
    steps: result.steps,
    dropped: result.dropped,
    batch_size: result.batchSize,
    training_input_names: session.trainingInputNames,
    training_output_names: session.trainingOutputNames,
    parameters_before: asArrays(before),
    parameters: asArrays(after),
    parameters_npz_b64: Buffer.from(npzBytes).toString('base64'),
  }, 0);
}

main().catch(fail);
