/*
 * onnxfix-web.js: the training page that `onnxfix web` writes, and the library it runs on.
 *
 * One file for the browser and for Node: in Node, require() it and get the library (the page's
 * code is not started); in the browser it defines the global `OnnxfixWeb` and starts the page
 * (index.html). The training loop, the .npz reader and writer and the parameter handling are
 * the same code in both, so the Node harness (web/node_train.js) trains exactly as the page.
 *
 * The library needs onnxruntime-web 1.19.2's training bundle (ort.training.wasm.min.js): the
 * global `ort` in the browser, passed in as `ort` in Node.
 */
(function (root, factory) {
  'use strict';
  var lib = factory(root);
  if (typeof module === 'object' && module && module.exports) {
    module.exports = lib;
  } else {
    root.OnnxfixWeb = lib;
    if (root.document) lib.startPage(root);
  }
})(typeof globalThis !== 'undefined' ? globalThis : this, function (root) {
  'use strict';

  // ---------------------------------------------------------------------------------------
  // Errors. ONNX Runtime's WebAssembly throws some failures as bare numbers: the address of
  // the C++ exception object in the module's memory. The memory is recorded as it is made, so
  // the strings the exception points at (its what() message) can be shown.

  var memories = [];

  function watchWasmMemory() {
    var wa = root.WebAssembly;
    if (!wa || wa.__onnxfixWatched) return;
    try {
      var Original = wa.Memory;
      var Watched = function Memory(descriptor) {
        var memory = new Original(descriptor);
        memories.push(memory);
        return memory;
      };
      Watched.prototype = Original.prototype;
      wa.Memory = Watched;
      var keep = function (result) {
        var instance = result && (result.instance || result);
        var exported = instance && instance.exports && instance.exports.memory;
        if (exported instanceof Original && memories.indexOf(exported) < 0) memories.push(exported);
        return result;
      };
      ['instantiate', 'instantiateStreaming'].forEach(function (name) {
        var original = wa[name];
        if (typeof original !== 'function') return;
        wa[name] = function () {
          return original.apply(wa, arguments).then(keep);
        };
      });
      Object.defineProperty(wa, '__onnxfixWatched', { value: true });
    } catch (e) {
      // Not fatal: errors are then shown without their decoded text.
    }
  }

  function utf8(bytes) {
    // Copied first: TextDecoder refuses views of a SharedArrayBuffer (the threaded build's heap).
    var copy = new Uint8Array(bytes.length);
    copy.set(bytes);
    if (typeof TextDecoder !== 'undefined') return new TextDecoder('utf-8').decode(copy);
    var s = '';
    for (var i = 0; i < copy.length; i++) s += String.fromCharCode(copy[i]);
    return s;
  }

  /** Printable strings that the words around `address` point at, longest first kept. */
  function stringsNear(address) {
    var found = [];
    memories.forEach(function (memory) {
      var heap = new Uint8Array(memory.buffer);
      if (!(address > 0 && address < heap.length)) return;
      var view = new DataView(memory.buffer);
      var readString = function (at) {
        if (!(at > 0 && at < heap.length)) return null;
        var end = at;
        while (end < heap.length && end - at < 4096 && heap[end] !== 0) {
          var c = heap[end];
          if (!(c === 9 || c === 10 || c === 13 || (c >= 32 && c < 127) || c >= 128)) return null;
          end++;
        }
        if (end - at < 8) return null;
        return utf8(heap.subarray(at, end));
      };
      for (var offset = -16; offset < 160; offset += 4) {
        var at = address + offset;
        if (at < 0 || at + 4 > heap.length) continue;
        var text = readString(view.getUint32(at, true));
        if (text && found.indexOf(text) < 0) found.push(text);
      }
    });
    return found.filter(function (a) {
      return !found.some(function (b) {
        return b !== a && b.indexOf(a) >= 0;
      });
    });
  }

  /** A readable message for anything thrown, a bare WebAssembly number included. */
  function describeError(error) {
    if (typeof error === 'number') {
      var decoded = stringsNear(error);
      return (
        'ONNX Runtime failed inside WebAssembly (C++ exception at ' +
        error +
        ')' +
        (decoded.length ? ': ' + decoded.join(' | ') : '; its message could not be read')
      );
    }
    if (error instanceof Error) return error.message || String(error);
    if (error && typeof error === 'object') {
      try {
        return JSON.stringify(error);
      } catch (e) {
        /* fall through */
      }
    }
    return String(error);
  }

  function failure(message, cause) {
    var error = new Error(message);
    if (cause !== undefined) error.cause = cause;
    return error;
  }

  /** Runs `fn`, turning whatever it throws into an Error saying what was being done. */
  async function doing(what, fn) {
    try {
      return await fn();
    } catch (e) {
      if (e && e.onnxfixContext) throw e;
      var error = failure(what + ': ' + describeError(e), e);
      error.onnxfixContext = true;
      throw error;
    }
  }

  // ---------------------------------------------------------------------------------------
  // CRC-32 (zip's, polynomial 0xEDB88320).

  var crcTable = null;

  function crc32(bytes) {
    if (!crcTable) {
      crcTable = new Uint32Array(256);
      for (var n = 0; n < 256; n++) {
        var c = n;
        for (var k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
        crcTable[n] = c >>> 0;
      }
    }
    var crc = 0xffffffff;
    for (var i = 0; i < bytes.length; i++) crc = crcTable[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
    return (crc ^ 0xffffffff) >>> 0;
  }

  // ---------------------------------------------------------------------------------------
  // .npz reading: a zip archive of .npy files, members stored or deflated.

  function asBytes(data) {
    // A plain Uint8Array view (a Node Buffer's slice() would not copy).
    if (data instanceof ArrayBuffer) return new Uint8Array(data);
    if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    throw new TypeError('expected bytes (Uint8Array or ArrayBuffer)');
  }

  function u64(view, at) {
    var value = view.getUint32(at, true) + view.getUint32(at + 4, true) * 4294967296;
    if (!Number.isSafeInteger(value)) throw new Error('a zip64 size or offset is too large');
    return value;
  }

  /** The members of a zip archive, from its central directory. */
  function zipEntries(data, what) {
    var bytes = asBytes(data);
    var view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    var bad = function (why) {
      return new Error(what + ' is not a readable .npz (a zip archive of .npy files): ' + why);
    };
    if (bytes.length < 22) throw bad('it is too short');
    var eocd = -1;
    for (var i = bytes.length - 22; i >= Math.max(0, bytes.length - 22 - 65535); i--) {
      if (view.getUint32(i, true) === 0x06054b50) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) throw bad('no zip directory at its end (truncated, or not a zip file)');
    var count = view.getUint16(eocd + 10, true);
    var dirSize = view.getUint32(eocd + 12, true);
    var dirOffset = view.getUint32(eocd + 16, true);
    if (count === 0xffff || dirSize === 0xffffffff || dirOffset === 0xffffffff) {
      var locator = eocd - 20;
      if (locator < 0 || view.getUint32(locator, true) !== 0x07064b50) throw bad('a zip64 archive without its locator');
      var record = u64(view, locator + 8);
      if (record + 56 > bytes.length || view.getUint32(record, true) !== 0x06064b50) throw bad('a broken zip64 directory record');
      count = u64(view, record + 32);
      dirSize = u64(view, record + 40);
      dirOffset = u64(view, record + 48);
    }
    if (dirOffset + dirSize > bytes.length) throw bad('its directory lies past its end (truncated?)');
    var entries = [];
    var at = dirOffset;
    for (var e = 0; e < count; e++) {
      if (at + 46 > bytes.length || view.getUint32(at, true) !== 0x02014b50) throw bad('a broken directory entry');
      var flags = view.getUint16(at + 8, true);
      var method = view.getUint16(at + 10, true);
      var crc = view.getUint32(at + 16, true);
      var compressed = view.getUint32(at + 20, true);
      var size = view.getUint32(at + 24, true);
      var nameLength = view.getUint16(at + 28, true);
      var extraLength = view.getUint16(at + 30, true);
      var commentLength = view.getUint16(at + 32, true);
      var local = view.getUint32(at + 42, true);
      var name = utf8(bytes.subarray(at + 46, at + 46 + nameLength));
      // zip64: the sizes and offset that do not fit are in extra field 0x0001, in this order.
      var extra = at + 46 + nameLength;
      var extraEnd = extra + extraLength;
      while (extra + 4 <= extraEnd) {
        var id = view.getUint16(extra, true);
        var length = view.getUint16(extra + 2, true);
        if (id === 0x0001) {
          var p = extra + 4;
          if (size === 0xffffffff) { size = u64(view, p); p += 8; }
          if (compressed === 0xffffffff) { compressed = u64(view, p); p += 8; }
          if (local === 0xffffffff) { local = u64(view, p); p += 8; }
        }
        extra += 4 + length;
      }
      entries.push({ name: name, flags: flags, method: method, crc: crc, compressed: compressed, size: size, local: local });
      at = extraEnd + commentLength;
    }
    return { bytes: bytes, view: view, entries: entries };
  }

  async function inflateRaw(bytes) {
    if (typeof DecompressionStream === 'undefined') {
      throw new Error('this browser cannot decompress (no DecompressionStream); save the .npz with numpy.savez, not savez_compressed');
    }
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate-raw'));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  /** The bytes of every member of a zip archive: {name: Uint8Array}. */
  async function readZip(data, what) {
    what = what || 'the file';
    var zip = zipEntries(data, what);
    var bytes = zip.bytes;
    var view = zip.view;
    var out = {};
    for (var i = 0; i < zip.entries.length; i++) {
      var entry = zip.entries[i];
      var where = what + ', member ' + JSON.stringify(entry.name);
      if (entry.flags & 1) throw new Error(where + ' is encrypted; the page reads plain .npz files');
      if (entry.local + 30 > bytes.length || view.getUint32(entry.local, true) !== 0x04034b50) {
        throw new Error(where + ': its local header is missing (a damaged zip)');
      }
      var start = entry.local + 30 + view.getUint16(entry.local + 26, true) + view.getUint16(entry.local + 28, true);
      if (start + entry.compressed > bytes.length) throw new Error(where + ' is truncated');
      var raw = bytes.subarray(start, start + entry.compressed);
      var content;
      if (entry.method === 0) content = raw;
      else if (entry.method === 8) content = await inflateRaw(raw);
      else throw new Error(where + ' is compressed with zip method ' + entry.method + '; the page reads stored or deflated members (numpy.savez or numpy.savez_compressed)');
      if (content.length !== entry.size) throw new Error(where + ' has ' + content.length + ' bytes, its directory says ' + entry.size + ' (damaged)');
      if (crc32(content) !== entry.crc) throw new Error(where + ' fails its CRC-32 check (damaged)');
      out[entry.name] = content;
    }
    return out;
  }

  // The .npy dtypes the page reads: numpy's descr -> how to read it.
  var NPY_DTYPES = {
    '<f4': { name: 'float32', size: 4, array: Float32Array },
    '<f8': { name: 'float64', size: 8, array: Float64Array },
    '<i8': { name: 'int64', size: 8, array: typeof BigInt64Array !== 'undefined' ? BigInt64Array : null },
    '<i4': { name: 'int32', size: 4, array: Int32Array },
    '|u1': { name: 'uint8', size: 1, array: Uint8Array },
    '|b1': { name: 'bool', size: 1, array: Uint8Array },
  };
  var NPY_SUPPORTED = 'float32 (<f4), float64 (<f8), int64 (<i8), int32 (<i4), uint8 (|u1) or bool (|b1)';

  /** One .npy file: {dtype, shape, data (a typed array; int64 as BigInt64Array)}. */
  function parseNpy(data, name) {
    var bytes = asBytes(data);
    var label = 'array ' + JSON.stringify(name);
    var magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];
    if (bytes.length < 10 || magic.some(function (b, i) { return bytes[i] !== b; })) {
      throw new Error(label + ' is not an .npy array (no \\x93NUMPY header)');
    }
    var major = bytes[6];
    var view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    var headerLength, headerStart;
    if (major === 1) { headerLength = view.getUint16(8, true); headerStart = 10; }
    else if (major === 2 || major === 3) {
      if (bytes.length < 12) throw new Error(label + ': its .npy header is truncated');
      headerLength = view.getUint32(8, true); headerStart = 12;
    } else throw new Error(label + ' uses .npy format version ' + major + '; the page reads versions 1 to 3');
    if (headerStart + headerLength > bytes.length) throw new Error(label + ': its .npy header is truncated');
    var header = utf8(bytes.subarray(headerStart, headerStart + headerLength));
    var descr = /['"]descr['"]\s*:\s*['"]([^'"]*)['"]/.exec(header);
    if (!descr) {
      if (/['"]descr['"]\s*:\s*\[/.test(header)) throw new Error(label + ' has a structured dtype (fields); save a plain numeric array');
      throw new Error(label + ': its .npy header has no dtype');
    }
    var fortran = /['"]fortran_order['"]\s*:\s*(True|False)/.exec(header);
    var shapeMatch = /['"]shape['"]\s*:\s*\(([^)]*)\)/.exec(header);
    if (!fortran || !shapeMatch) throw new Error(label + ': its .npy header is malformed: ' + header.trim());
    if (fortran[1] === 'True') {
      throw new Error(label + ' is stored in Fortran order; save it in C order (numpy.ascontiguousarray(a)) and try again');
    }
    var shape = shapeMatch[1].split(',').map(function (s) { return s.trim().replace(/L$/, ''); })
      .filter(function (s) { return s.length; })
      .map(function (s) {
        var n = Number(s);
        if (!Number.isSafeInteger(n) || n < 0) throw new Error(label + ': its shape (' + shapeMatch[1] + ') is not a shape');
        return n;
      });
    var code = descr[1];
    var dtype = NPY_DTYPES[code];
    if (!dtype || !dtype.array) {
      var why = code.indexOf('O') >= 0 ? 'holds Python objects (pickled), which the page never loads'
        : code[0] === '>' ? 'is big-endian (' + code + ')'
        : 'has dtype ' + code;
      throw new Error(label + ' ' + why + '; the page reads ' + NPY_SUPPORTED);
    }
    var count = shape.reduce(function (a, b) { return a * b; }, 1);
    var start = headerStart + headerLength;
    var length = count * dtype.size;
    if (bytes.length - start < length) {
      throw new Error(label + ' is truncated: its shape (' + shape.join(', ') + ') needs ' + length + ' bytes, it holds ' + (bytes.length - start));
    }
    // Copied into its own buffer: aligned for the typed array, independent of the archive.
    var copy = new Uint8Array(length);
    copy.set(bytes.subarray(start, start + length));
    var buffer = copy.buffer;
    return { dtype: dtype.name, shape: shape, data: new dtype.array(buffer) };
  }

  /** The arrays of an .npz file: {name: {dtype, shape, data}}, names without ".npy". */
  async function readNpz(data, what) {
    what = what || 'the .npz file';
    var members = await readZip(data, what);
    var arrays = {};
    Object.keys(members).forEach(function (member) {
      var name = member.replace(/\.npy$/, '');
      arrays[name] = parseNpy(members[member], name);
    });
    return arrays;
  }

  // ---------------------------------------------------------------------------------------
  // .npz writing: stored members with a CRC-32, as numpy.savez writes them (numpy.load reads it).

  function npyHeader(descr, shape) {
    var shapeText = shape.length === 1 ? '(' + shape[0] + ',)' : '(' + shape.join(', ') + ')';
    var dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shapeText + ', }';
    // Version 1: magic, 2 version bytes, 2 length bytes, the dict padded with spaces to a
    // multiple of 64 bytes in all, ending with a newline (numpy's own layout).
    var total = 10 + dict.length + 1;
    var padded = Math.ceil(total / 64) * 64;
    dict += ' '.repeat(padded - total) + '\n';
    if (dict.length > 65535) throw new Error('an .npy header this long needs format version 2');
    var header = new Uint8Array(10 + dict.length);
    header.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
    header[8] = dict.length & 0xff;
    header[9] = dict.length >> 8;
    for (var i = 0; i < dict.length; i++) header[10 + i] = dict.charCodeAt(i);
    return header;
  }

  function littleEndianBytes(array) {
    var bytes = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
    if (new Uint8Array(new Uint16Array([1]).buffer)[0] === 1) return bytes;
    var out = new Uint8Array(bytes.length);
    var size = array.BYTES_PER_ELEMENT;
    for (var i = 0; i < bytes.length; i += size) for (var k = 0; k < size; k++) out[i + k] = bytes[i + size - 1 - k];
    return out;
  }

  /** An .npy file of a float32 array. */
  function writeNpy(data, shape) {
    var values = data instanceof Float32Array ? data : Float32Array.from(data);
    var count = shape.reduce(function (a, b) { return a * b; }, 1);
    if (count !== values.length) throw new Error('shape (' + shape.join(', ') + ') does not hold ' + values.length + ' values');
    var header = npyHeader('<f4', shape);
    var out = new Uint8Array(header.length + values.byteLength);
    out.set(header);
    out.set(littleEndianBytes(values), header.length);
    return out;
  }

  function encodeUtf8(text) {
    if (typeof TextEncoder !== 'undefined') return new TextEncoder().encode(text);
    return Uint8Array.from(unescape(encodeURIComponent(text)), function (c) { return c.charCodeAt(0); });
  }

  /** A zip archive (members stored, not compressed) of {name: Uint8Array}, in key order. */
  function writeZip(members) {
    var names = Object.keys(members);
    var parts = [];
    var directory = [];
    var offset = 0;
    var dosTime = 0;
    var dosDate = (0 << 9) | (1 << 5) | 1; // 1980-01-01, zip's earliest date
    names.forEach(function (name) {
      var nameBytes = encodeUtf8(name);
      var content = members[name];
      var crc = crc32(content);
      var local = new Uint8Array(30 + nameBytes.length);
      var lv = new DataView(local.buffer);
      lv.setUint32(0, 0x04034b50, true);
      lv.setUint16(4, 20, true); // version needed: 2.0
      lv.setUint16(6, 0x0800, true); // names in UTF-8
      lv.setUint16(8, 0, true); // stored
      lv.setUint16(10, dosTime, true);
      lv.setUint16(12, dosDate, true);
      lv.setUint32(14, crc, true);
      lv.setUint32(18, content.length, true);
      lv.setUint32(22, content.length, true);
      lv.setUint16(26, nameBytes.length, true);
      lv.setUint16(28, 0, true);
      local.set(nameBytes, 30);
      var central = new Uint8Array(46 + nameBytes.length);
      var cv = new DataView(central.buffer);
      cv.setUint32(0, 0x02014b50, true);
      cv.setUint16(4, (3 << 8) | 20, true); // made by: Unix, zip 2.0
      cv.setUint16(6, 20, true);
      cv.setUint16(8, 0x0800, true);
      cv.setUint16(10, 0, true);
      cv.setUint16(12, dosTime, true);
      cv.setUint16(14, dosDate, true);
      cv.setUint32(16, crc, true);
      cv.setUint32(20, content.length, true);
      cv.setUint32(24, content.length, true);
      cv.setUint16(28, nameBytes.length, true);
      cv.setUint32(38, (0x81a4 << 16) >>> 0, true); // a regular file, rw-r--r--
      cv.setUint32(42, offset, true);
      central.set(nameBytes, 46);
      parts.push(local, content);
      directory.push(central);
      offset += local.length + content.length;
      if (offset > 0xffffffff) throw new Error('the parameters are over 4 GB, more than a plain zip holds');
    });
    var dirSize = directory.reduce(function (n, c) { return n + c.length; }, 0);
    var end = new Uint8Array(22);
    var ev = new DataView(end.buffer);
    ev.setUint32(0, 0x06054b50, true);
    ev.setUint16(8, names.length, true);
    ev.setUint16(10, names.length, true);
    ev.setUint32(12, dirSize, true);
    ev.setUint32(16, offset, true);
    var all = parts.concat(directory, [end]);
    var out = new Uint8Array(all.reduce(function (n, p) { return n + p.length; }, 0));
    var at = 0;
    all.forEach(function (p) { out.set(p, at); at += p.length; });
    return out;
  }

  /** An .npz of float32 arrays: arrays = {name: {data: Float32Array, shape: [...]}}. */
  function writeNpz(arrays) {
    var members = {};
    Object.keys(arrays).forEach(function (name) {
      members[name + '.npy'] = writeNpy(arrays[name].data, arrays[name].shape);
    });
    return writeZip(members);
  }

  // ---------------------------------------------------------------------------------------
  // Data: the arrays the training graph takes, checked and in the model's dtypes.

  var MODEL_ARRAYS = {
    float32: Float32Array,
    float64: Float64Array,
    int32: Int32Array,
    int64: typeof BigInt64Array !== 'undefined' ? BigInt64Array : null,
  };

  function isIntegerType(type) {
    return type === 'int32' || type === 'int64';
  }

  /** The feeds the training graph takes: the inputs, then the target (when it has one). */
  function feedSpecs(site) {
    var specs = site.inputs.map(function (s) { return { name: s.name, shape: s.shape, dtype: s.dtype, role: 'input' }; });
    if (site.target) specs.push({ name: site.target.name, shape: site.target.shape, dtype: site.target.dtype, role: 'target' });
    return specs;
  }

  function shapeText(shape) {
    return '(' + shape.join(', ') + (shape.length === 1 ? ',)' : ')');
  }

  function positionOf(index, shape) {
    var position = [];
    for (var d = shape.length - 1; d >= 0; d--) {
      position.unshift(index % shape[d]);
      index = Math.floor(index / shape[d]);
    }
    return '[' + position.join(', ') + ']';
  }

  /** `array` (from readNpz) converted to the model's dtype `type`, its values checked. */
  function toModelType(array, spec, site, what) {
    var type = spec.dtype;
    var Out = MODEL_ARRAYS[type];
    var label = what + ': ' + JSON.stringify(spec.name);
    if (!Out) throw new Error('the model takes ' + JSON.stringify(spec.name) + ' as ' + type + ', which the page cannot feed (float32, float64, int32 or int64)');
    var source = array.data;
    var n = source.length;
    var labels = spec.role === 'target' && site.loss === 'cross-entropy';
    // The number of classes, when site.json states it (target.classes): a label beyond it
    // would make ONNX Runtime read out of bounds.
    var classes = labels && Number.isInteger(site.target.classes) ? site.target.classes : null;
    var fromBig = array.dtype === 'int64';
    var fromFloat = array.dtype === 'float32' || array.dtype === 'float64';
    var out;
    var i, v;
    if (isIntegerType(type)) {
      out = new Out(n);
      for (i = 0; i < n; i++) {
        v = source[i];
        if (fromFloat) {
          if (!Number.isFinite(v) || Math.floor(v) !== v) {
            throw new Error(label + ' holds ' + v + ' at ' + positionOf(i, array.shape) + ', not a whole number; ' + JSON.stringify(spec.name) + ' takes whole numbers (' + type + ')');
          }
        }
        if (labels && (fromBig ? v < 0n : v < 0)) {
          throw new Error(label + ' holds ' + v + ' at ' + positionOf(i, array.shape) + '; cross-entropy labels are class indices from 0');
        }
        if (classes !== null && Number(v) >= classes) {
          throw new Error(label + ' holds ' + v + ' at ' + positionOf(i, array.shape) + ', outside 0 to ' + (classes - 1) + '; cross-entropy labels are class indices below the model\'s ' + classes + ' classes');
        }
        if (type === 'int32' && (Number(v) > 2147483647 || Number(v) < -2147483648)) {
          throw new Error(label + ' holds ' + v + ' at ' + positionOf(i, array.shape) + ', beyond the int32 values ' + JSON.stringify(spec.name) + ' takes');
        }
        out[i] = type === 'int64' ? (fromBig ? v : BigInt(v)) : Number(v);
      }
    } else {
      if (array.dtype === type) out = source;
      else {
        out = new Out(n);
        for (i = 0; i < n; i++) out[i] = Number(source[i]);
      }
      for (i = 0; i < n; i++) {
        v = out[i];
        if (!Number.isFinite(v)) {
          var stored = Number(source[i]);
          throw new Error(
            label + ' holds ' + v + ' at ' + positionOf(i, array.shape) +
            (Number.isFinite(stored) ? ', beyond the largest ' + type + ' value; scale the data down' : '; training data must be finite: repair or drop the samples that hold NaN or infinity'));
        }
        if (spec.role === 'target' && site.loss === 'bce' && (v < 0 || v > 1)) {
          throw new Error(label + ' holds ' + v + ' at ' + positionOf(i, array.shape) + '; bce compares each output with a target from 0 to 1');
        }
      }
    }
    return { name: spec.name, type: type, shape: array.shape.slice(), data: out };
  }

  /**
   * The arrays of a data file checked against the site: {arrays: {name: {type, shape, data}},
   * samples}. `npz` is what readNpz returned; `what` names the file in messages.
   */
  function prepareArrays(npz, site, what) {
    what = what || 'the data file';
    var specs = feedSpecs(site);
    var names = Object.keys(npz);
    var missing = specs.filter(function (s) { return !(s.name in npz); }).map(function (s) { return JSON.stringify(s.name); });
    if (missing.length) {
      throw new Error(what + ' lacks ' + missing.join(', ') + '; it needs one array per model input and the target: ' +
        specs.map(function (s) { return s.name; }).join(', ') + ' (it has: ' + (names.join(', ') || 'nothing') + ')');
    }
    var samples = null;
    var arrays = {};
    specs.forEach(function (spec, index) {
      var array = npz[spec.name];
      var label = what + ': ' + JSON.stringify(spec.name);
      if (array.shape.length === 0) throw new Error(label + ' is a single value (shape ()); it needs one entry per sample, the samples along its first axis');
      if (index === 0) {
        samples = array.shape[0];
        if (samples === 0) throw new Error(what + ' holds no samples (' + JSON.stringify(spec.name) + ' has shape ' + shapeText(array.shape) + '); training needs at least one');
      } else if (array.shape[0] !== samples) {
        throw new Error(label + ' has ' + array.shape[0] + ' samples but ' + JSON.stringify(specs[0].name) + ' has ' + samples + '; every array needs one entry per sample');
      }
      var expected = spec.shape;
      var mismatch = array.shape.length !== expected.length || expected.slice(1).some(function (d, i) {
        return typeof d === 'number' && d > 0 && d !== array.shape[i + 1];
      });
      if (mismatch) {
        var want = ['N'].concat(expected.slice(1).map(function (d) { return typeof d === 'number' && d > 0 ? d : '?'; }));
        throw new Error(label + ' has shape ' + shapeText(array.shape) + '; the model takes ' + shapeText(want) + ' per batch');
      }
      arrays[spec.name] = toModelType(array, spec, site, what);
    });
    return { arrays: arrays, samples: samples };
  }

  // ---------------------------------------------------------------------------------------
  // Batches: in file order, no shuffling, the last partial batch dropped.

  /** The model's fixed batch size (the first input's first dimension when it is a number). */
  function fixedBatch(site) {
    var first = site.inputs.length ? site.inputs[0].shape[0] : null;
    return typeof first === 'number' && first > 0 ? first : null;
  }

  function defaultBatchSize(site, samples) {
    return fixedBatch(site) || Math.max(1, Math.min(32, samples || 32));
  }

  /** {batchSize, samples, steps, dropped, batch(i) -> {name: {type, data, dims}}}. */
  function planBatches(arrays, site, batchSize) {
    var specs = feedSpecs(site);
    var first = arrays[specs[0].name];
    var samples = first.shape[0];
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error('the batch size must be a whole number, 1 or more (got ' + batchSize + ')');
    var fixed = fixedBatch(site);
    if (fixed !== null && batchSize !== fixed) {
      throw new Error('the model was exported with a fixed batch size of ' + fixed + '; use batch size ' + fixed);
    }
    var steps = Math.floor(samples / batchSize);
    if (steps < 1) throw new Error('the data has ' + samples + ' samples, fewer than one batch of ' + batchSize + '; choose a smaller batch size');
    return {
      batchSize: batchSize,
      samples: samples,
      steps: steps,
      dropped: samples - steps * batchSize,
      batch: function (index) {
        var feeds = {};
        specs.forEach(function (spec) {
          var array = arrays[spec.name];
          var row = array.shape.slice(1).reduce(function (a, b) { return a * b; }, 1);
          feeds[spec.name] = {
            type: array.type,
            data: array.data.slice(index * batchSize * row, (index + 1) * batchSize * row),
            dims: [batchSize].concat(array.shape.slice(1)),
          };
        });
        return feeds;
      },
    };
  }

  // ---------------------------------------------------------------------------------------
  // The runtime: one training session on the site's files.

  function getOrt(given) {
    var ort = given || root.ort;
    if (!ort || !ort.TrainingSession) {
      throw new Error("onnxruntime-web's training bundle is not loaded (ort/ort.training.wasm.min.js): the global 'ort' has no TrainingSession");
    }
    return ort;
  }

  /**
   * A TrainingSession on the site's artifacts. `read(path)` gives a file of the site (a path
   * relative to it) as a Uint8Array, or a Promise of one.
   */
  async function openSession(ort, site, read) {
    ort = getOrt(ort);
    var files = site.artifacts;
    var bytes = {};
    var keys = ['checkpoint', 'training_model', 'eval_model', 'optimizer_model'];
    for (var i = 0; i < keys.length; i++) {
      var path = files[keys[i]];
      bytes[keys[i]] = await doing('reading ' + path, function () { return read(path); });
    }
    var session = await doing('ONNX Runtime could not open the training artifacts', function () {
      return ort.TrainingSession.create(
        { checkpointState: bytes.checkpoint, trainModel: bytes.training_model, evalModel: bytes.eval_model, optimizerModel: bytes.optimizer_model },
        { executionProviders: ['wasm'] });
    });
    var expected = site.parameters.reduce(function (n, p) { return n + p.size; }, 0);
    var size = await doing('reading the number of parameters', function () { return session.getParametersSize(true); });
    if (Number(size) !== expected) {
      throw new Error('the training session has ' + size + ' trainable values, site.json lists ' + expected + ': the site\'s files do not belong together; write the site again with onnxfix web');
    }
    var fed = feedSpecs(site).map(function (s) { return s.name; });
    var unfed = session.trainingInputNames.filter(function (n) { return fed.indexOf(n) < 0; });
    if (unfed.length) {
      throw new Error('the training model takes ' + unfed.map(function (n) { return JSON.stringify(n); }).join(', ') + ', which site.json does not describe; write the site again with onnxfix web');
    }
    return session;
  }

  function toTensors(ort, feeds) {
    var tensors = {};
    Object.keys(feeds).forEach(function (name) {
      var f = feeds[name];
      tensors[name] = new ort.Tensor(f.type, f.data, f.dims);
    });
    return tensors;
  }

  /**
   * The training loop, the same in the browser and in Node: for each epoch, the batches in
   * file order (no shuffling, the last partial batch dropped); each step runs the training
   * model, then the optimizer, then resets the gradients, as onnxfix train does.
   *
   * options: {session, site, arrays (prepareArrays().arrays), epochs, batchSize, onStep,
   * onEpoch, ort, shouldStop}. onStep({epoch, epochs, step, steps, loss, losses}) and
   * onEpoch({epoch, epochs, mean, epochLosses}) may return Promises (awaited).
   * Returns {losses, epochLosses, steps, dropped, batchSize, stopped}.
   */
  async function train(options) {
    var ort = getOrt(options.ort);
    var session = options.session;
    var site = options.site;
    var epochs = options.epochs;
    if (!Number.isInteger(epochs) || epochs < 1) throw new Error('the number of epochs must be a whole number, 1 or more (got ' + epochs + ')');
    var plan = planBatches(options.arrays, site, options.batchSize);
    var lossName = session.trainingOutputNames[0];
    var losses = [];
    var epochLosses = [];
    var stopped = false;
    for (var epoch = 1; epoch <= epochs && !stopped; epoch++) {
      var total = 0;
      for (var step = 1; step <= plan.steps; step++) {
        var where = 'epoch ' + epoch + ', step ' + step + ' of ' + plan.steps;
        var feeds = toTensors(ort, plan.batch(step - 1));
        var outputs = await doing('the training step failed at ' + where, function () { return session.runTrainStep(feeds); });
        var loss = Number(outputs[lossName].data[0]);
        // Checked before the optimizer step, which would spread a NaN to every weight.
        if (!Number.isFinite(loss)) {
          throw new Error('training diverged at ' + where + ': the loss is ' + loss + '. Reload the page to start again from the artifacts\' values');
        }
        await doing('the optimizer step failed at ' + where, function () { return session.runOptimizerStep(); });
        await doing('resetting the gradients failed at ' + where, function () { return session.lazyResetGrad(); });
        losses.push(loss);
        total += loss;
        if (options.onStep) await options.onStep({ epoch: epoch, epochs: epochs, step: step, steps: plan.steps, loss: loss, losses: losses });
        if (options.shouldStop && options.shouldStop()) { stopped = true; break; }
      }
      if (!stopped) {
        epochLosses.push(total / plan.steps);
        if (options.onEpoch) await options.onEpoch({ epoch: epoch, epochs: epochs, mean: total / plan.steps, epochLosses: epochLosses });
      }
    }
    return { losses: losses, epochLosses: epochLosses, steps: plan.steps, dropped: plan.dropped, batchSize: plan.batchSize, stopped: stopped };
  }

  // ---------------------------------------------------------------------------------------
  // Parameters: the contiguous buffer of getContiguousParameters(true), split by site.parameters.

  /** {name: Float32Array} (copies) from the flat buffer, in site.parameters' layout. */
  function splitParameters(flat, site) {
    var values = flat && flat.data ? flat.data : flat;
    var expected = site.parameters.reduce(function (n, p) { return n + p.size; }, 0);
    if (values.length !== expected) {
      throw new Error('the session returned ' + values.length + ' parameter values, site.json lists ' + expected);
    }
    var out = {};
    site.parameters.forEach(function (p) {
      out[p.name] = Float32Array.from(values.subarray(p.offset, p.offset + p.size));
    });
    return out;
  }

  async function currentParameters(session, site) {
    var flat = await doing('reading the parameters', function () { return session.getContiguousParameters(true); });
    return splitParameters(flat.data, site);
  }

  /** The .npz the page downloads: every trainable parameter by name, in its shape. */
  function parametersNpz(parameters, site) {
    var arrays = {};
    site.parameters.forEach(function (p) {
      if (!parameters[p.name]) throw new Error('no values for parameter ' + JSON.stringify(p.name));
      arrays[p.name] = { data: parameters[p.name], shape: p.shape };
    });
    return writeNpz(arrays);
  }

  // ---------------------------------------------------------------------------------------
  // Kernels: each conv's weight as rows (one per output channel), for the pictures.

  function product(values) {
    return values.reduce(function (a, b) { return a * b; }, 1);
  }

  function decodeFloat32(base64) {
    var binary;
    if (typeof atob === 'function') binary = atob(base64);
    else binary = Buffer.from(base64, 'base64').toString('binary');
    var view = new DataView(new ArrayBuffer(binary.length));
    for (var i = 0; i < binary.length; i++) view.setUint8(i, binary.charCodeAt(i));
    var out = new Float32Array(binary.length / 4);
    for (var k = 0; k < out.length; k++) out[k] = view.getFloat32(4 * k, true);
    return out;
  }

  /**
   * The "row view" of a conv weight: one Float32Array per output channel o holding its
   * (I/group, *k) values. Conv weights (O, I/g, *k) are their own rows; ConvTranspose weights
   * (I, O/g, *k) give output channel o = gi*(O/g)+j the values W[gi*(I/g):(gi+1)*(I/g), j].
   */
  function rowsView(values, shape, op, group) {
    group = group || 1;
    var spatial = product(shape.slice(2));
    var rows = [];
    if (op !== 'ConvTranspose') {
      var rowLength = product(shape.slice(1));
      for (var o = 0; o < shape[0]; o++) rows.push(values.subarray(o * rowLength, (o + 1) * rowLength));
      return rows;
    }
    var inputs = shape[0];
    var perGroupOut = shape[1];
    var perGroupIn = inputs / group;
    for (var g = 0; g < group; g++) {
      for (var j = 0; j < perGroupOut; j++) {
        var row = new Float32Array(perGroupIn * spatial);
        for (var c = 0; c < perGroupIn; c++) {
          var from = ((g * perGroupIn + c) * perGroupOut + j) * spatial;
          row.set(values.subarray(from, from + spatial), c * spatial);
        }
        rows.push(row);
      }
    }
    return rows;
  }

  /** The channels onnxfix fixed in a kernel entry (all of them for a whole fixed kernel). */
  function fixedChannels(entry) {
    var outputs = entry.op === 'ConvTranspose' ? entry.shape[1] * (entry.group || 1) : entry.shape[0];
    if (!entry.fixed) return [];
    if (entry.parts && entry.parts.fixed_channels) return entry.parts.fixed_channels.slice();
    if (entry.fixed.channels) return entry.fixed.channels.slice();
    var all = [];
    for (var o = 0; o < outputs; o++) all.push(o);
    return all;
  }

  /** The rows of a kernel entry's weight given the current parameters ({name: Float32Array}). */
  function kernelRows(entry, parameters) {
    var shape = entry.shape;
    var group = entry.group || 1;
    if (entry.param) {
      var values = parameters && parameters[entry.param];
      if (!values) throw new Error('no values for parameter ' + JSON.stringify(entry.param) + ' of layer ' + entry.layer);
      return rowsView(values, shape, entry.op, group);
    }
    if (!entry.values_b64) throw new Error('site.json gives no values for layer ' + entry.layer);
    var rows = rowsView(decodeFloat32(entry.values_b64), shape, entry.op, group).map(function (r) { return Float32Array.from(r); });
    var trained = entry.parts && entry.parts.train ? parameters && parameters[entry.parts.train] : null;
    if (trained) {
      var fixed = entry.parts.fixed_channels;
      var rowLength = rows.length ? rows[0].length : 0;
      var k = 0;
      for (var o = 0; o < rows.length; o++) {
        if (fixed.indexOf(o) >= 0) continue;
        rows[o] = trained.subarray(k * rowLength, (k + 1) * rowLength);
        k++;
      }
      if (k * rowLength !== trained.length) throw new Error('parameter ' + JSON.stringify(entry.parts.train) + ' does not fit the trainable channels of layer ' + entry.layer);
    }
    return rows;
  }

  /**
   * What a tile shows for each output channel: the kernel averaged over its input channels;
   * 2-D as is, 1-D as a strip, 3-D (and more) its middle slice. [{channel, height, width,
   * values}], and the largest magnitude.
   */
  function kernelTiles(entry, parameters) {
    var rows = kernelRows(entry, parameters);
    var spatialShape = entry.shape.slice(2);
    var spatial = product(spatialShape);
    var inputs = spatial ? rows[0].length / spatial : 0;
    var height, width, offset = 0;
    if (spatialShape.length === 0) { height = 1; width = 1; }
    else if (spatialShape.length === 1) { height = 1; width = spatialShape[0]; }
    else {
      height = spatialShape[spatialShape.length - 2];
      width = spatialShape[spatialShape.length - 1];
      // The middle slice of the leading spatial axes (3-D: the middle depth).
      var lead = spatialShape.slice(0, -2);
      var index = 0;
      lead.forEach(function (d) { index = index * d + Math.floor(d / 2); });
      offset = index * height * width;
    }
    var size = height * width;
    var peak = 0;
    var tiles = rows.map(function (row, channel) {
      var values = new Float32Array(size);
      for (var c = 0; c < inputs; c++) {
        for (var i = 0; i < size; i++) values[i] += row[c * spatial + offset + i];
      }
      for (var k = 0; k < size; k++) {
        values[k] /= inputs || 1;
        if (Math.abs(values[k]) > peak) peak = Math.abs(values[k]);
      }
      return { channel: channel, height: height, width: width, values: values };
    });
    return { tiles: tiles, peak: peak, averaged: inputs > 1 };
  }

  // ---------------------------------------------------------------------------------------
  // Drawing.

  /** Blue-white-red for v in [-1, 1]: [r, g, b]. */
  function diverging(v) {
    v = Math.max(-1, Math.min(1, v || 0));
    var blue = [33, 102, 172];
    var white = [247, 247, 247];
    var red = [178, 24, 43];
    var to = v < 0 ? blue : red;
    var t = Math.abs(v);
    return [0, 1, 2].map(function (i) { return Math.round(white[i] + (to[i] - white[i]) * t); });
  }

  function rgb(c) {
    return 'rgb(' + c[0] + ',' + c[1] + ',' + c[2] + ')';
  }

  /** Round numbers from lo to hi, about `count` of them. */
  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) { hi = lo + 1; }
    var raw = (hi - lo) / Math.max(1, count);
    var power = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * power; }).find(function (s) { return s >= raw; }) || 10 * power;
    var ticks = [];
    for (var t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Math.abs(t) < step * 1e-9 ? 0 : t);
    return { ticks: ticks, step: step };
  }

  function formatNumber(value, step) {
    if (value === 0) return '0';
    var digits = Math.max(0, Math.min(6, -Math.floor(Math.log10(step || Math.abs(value)))));
    var abs = Math.abs(value);
    if (abs >= 1e5 || abs < 1e-4) return value.toExponential(1);
    return value.toFixed(digits);
  }

  /** A canvas's 2-D context set up for CSS-pixel drawing at width x height. */
  function prepareCanvas(canvas, width, height) {
    var ratio = (root.devicePixelRatio || 1);
    canvas.style.width = width + 'px';
    canvas.style.height = height + 'px';
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    var ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    return ctx;
  }

  var FONT = '12px system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif';
  var SMALL_FONT = '10px system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif';

  /**
   * The loss chart: each step's loss (a thin line) and each epoch's mean (dots joined, at the
   * epoch's last step), over the planned steps. chart = {losses, epochLosses, epochEnds (the
   * step each mean belongs to), boundaries (planned epoch ends), totalSteps}.
   */
  function drawLossChart(canvas, chart) {
    var width = Math.max(260, Math.min(920, (canvas.parentElement && canvas.parentElement.clientWidth) || 860));
    var height = 300;
    var ctx = prepareCanvas(canvas, width, height);
    var m = { left: 64, right: 16, top: 30, bottom: 42 };
    var w = width - m.left - m.right;
    var h = height - m.top - m.bottom;
    ctx.fillStyle = '#ffffff';
    ctx.fillRect(0, 0, width, height);
    ctx.font = FONT;
    var losses = chart.losses || [];
    if (!losses.length) {
      ctx.strokeStyle = '#d0d5dd';
      ctx.strokeRect(m.left + 0.5, m.top + 0.5, w, h);
      ctx.fillStyle = '#667085';
      ctx.textAlign = 'center';
      ctx.textBaseline = 'middle';
      ctx.fillText(chart.message || 'The loss appears here as the model trains.', m.left + w / 2, m.top + h / 2);
      return;
    }
    var total = Math.max(chart.totalSteps || 0, losses.length, 2);
    var lo = Math.min.apply(null, losses);
    var hi = Math.max.apply(null, losses);
    var pad = (hi - lo) * 0.08 || Math.abs(hi) * 0.1 || 1;
    lo -= pad; hi += pad;
    if (lo < 0 && Math.min.apply(null, losses) >= 0) lo = 0;
    var y = niceTicks(lo, hi, 5);
    lo = Math.min(lo, y.ticks[0]);
    hi = Math.max(hi, y.ticks[y.ticks.length - 1]);
    var px = function (step) { return m.left + ((step - 1) / (total - 1)) * w; };
    var py = function (value) { return m.top + (1 - (value - lo) / (hi - lo)) * h; };
    // Grid and axes.
    ctx.strokeStyle = '#eaecf0';
    ctx.lineWidth = 1;
    ctx.fillStyle = '#475467';
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    y.ticks.forEach(function (t) {
      if (t < lo || t > hi) return;
      var yy = Math.round(py(t)) + 0.5;
      ctx.beginPath(); ctx.moveTo(m.left, yy); ctx.lineTo(m.left + w, yy); ctx.stroke();
      ctx.fillText(formatNumber(t, y.step), m.left - 8, yy);
    });
    var x = niceTicks(1, total, 8);
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    x.ticks.forEach(function (t) {
      if (t < 1 || t > total || Math.round(t) !== t) return;
      var xx = Math.round(px(t)) + 0.5;
      ctx.beginPath(); ctx.moveTo(xx, m.top + h); ctx.lineTo(xx, m.top + h + 4); ctx.stroke();
      ctx.fillText(String(t), xx, m.top + h + 7);
    });
    // Epoch boundaries.
    ctx.strokeStyle = '#d0d5dd';
    ctx.setLineDash([3, 4]);
    var boundaries = chart.boundaries || [];
    if (boundaries.length && w / boundaries.length < 14) boundaries = []; // too many to help
    boundaries.forEach(function (b) {
      if (b >= total) return;
      var bx = Math.round(px(b + 0.5)) + 0.5;
      ctx.beginPath(); ctx.moveTo(bx, m.top); ctx.lineTo(bx, m.top + h); ctx.stroke();
    });
    ctx.setLineDash([]);
    ctx.strokeStyle = '#98a2b3';
    ctx.beginPath();
    ctx.moveTo(m.left + 0.5, m.top); ctx.lineTo(m.left + 0.5, m.top + h + 0.5); ctx.lineTo(m.left + w, m.top + h + 0.5);
    ctx.stroke();
    ctx.fillStyle = '#344054';
    ctx.textAlign = 'center';
    ctx.textBaseline = 'bottom';
    ctx.fillText('step', m.left + w / 2, height - 4);
    ctx.save();
    ctx.translate(14, m.top + h / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textBaseline = 'middle';
    ctx.fillText('loss', 0, 0);
    ctx.restore();
    // Per-step losses.
    ctx.strokeStyle = '#5b8fd6';
    ctx.lineWidth = 1.25;
    ctx.beginPath();
    losses.forEach(function (v, i) {
      if (i === 0) ctx.moveTo(px(1), py(v)); else ctx.lineTo(px(i + 1), py(v));
    });
    ctx.stroke();
    if (losses.length === 1) {
      ctx.fillStyle = '#5b8fd6';
      ctx.beginPath(); ctx.arc(px(1), py(losses[0]), 2.5, 0, 2 * Math.PI); ctx.fill();
    }
    // Per-epoch means, at each epoch's last step.
    var means = chart.epochLosses || [];
    var ends = chart.epochEnds || [];
    if (means.length) {
      ctx.strokeStyle = '#d9480f';
      ctx.fillStyle = '#d9480f';
      ctx.lineWidth = 2;
      ctx.beginPath();
      means.forEach(function (v, i) {
        if (i === 0) ctx.moveTo(px(ends[i]), py(v)); else ctx.lineTo(px(ends[i]), py(v));
      });
      ctx.stroke();
      means.forEach(function (v, i) {
        ctx.beginPath(); ctx.arc(px(ends[i]), py(v), 3.5, 0, 2 * Math.PI); ctx.fill();
      });
    }
    // Legend.
    ctx.font = FONT;
    ctx.textBaseline = 'middle';
    ctx.textAlign = 'left';
    var lx = m.left + 8;
    var ly = 14;
    ctx.strokeStyle = '#5b8fd6'; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.moveTo(lx, ly); ctx.lineTo(lx + 22, ly); ctx.stroke();
    ctx.fillStyle = '#344054';
    ctx.fillText('loss per step', lx + 28, ly);
    lx += 28 + ctx.measureText('loss per step').width + 22;
    ctx.strokeStyle = '#d9480f'; ctx.fillStyle = '#d9480f';
    ctx.beginPath(); ctx.moveTo(lx, ly); ctx.lineTo(lx + 22, ly); ctx.stroke();
    ctx.beginPath(); ctx.arc(lx + 11, ly, 3.5, 0, 2 * Math.PI); ctx.fill();
    ctx.fillStyle = '#344054';
    ctx.fillText('mean per epoch', lx + 28, ly);
    var legendEnd = lx + 28 + ctx.measureText('mean per epoch').width;
    var last = 'last: ' + formatNumber(losses[losses.length - 1], Math.abs(losses[losses.length - 1]) / 1000);
    if (legendEnd + 16 + ctx.measureText(last).width < m.left + w) {
      ctx.textAlign = 'right';
      ctx.fillText(last, m.left + w, ly);
    }
  }

  /** Short text for a tile's label, or null when the kernel text is too long for a tile. */
  function tileLabel(ctx, text, room) {
    if (!text) return null;
    return ctx.measureText(text).width <= room ? text : null;
  }

  /**
   * One layer's picture: a "before" and an "after" grid, one tile per output channel, one
   * symmetric colour scale for both; fixed channels outlined and labelled.
   */
  function drawKernelLayer(canvas, entry, before, after, maxWidth) {
    var fixedSet = fixedChannels(entry);
    var count = before.tiles.length;
    var th = before.tiles[0] ? before.tiles[0].height : 1;
    var tw = before.tiles[0] ? before.tiles[0].width : 1;
    var longest = Math.max(th, tw);
    var pixel = Math.max(2, Math.min(14, Math.floor(40 / longest)));
    if (th === 1) pixel = Math.max(pixel, Math.min(14, Math.floor(60 / tw)));
    var tileW = tw * pixel;
    var tileH = th * pixel;
    var labelWidth = 58;
    var gapX = 8;
    var scratch = canvas.getContext('2d');
    scratch.font = SMALL_FONT;
    var kernelText = entry.fixed ? entry.fixed.kernel : null;
    var label = tileLabel(scratch, kernelText, Math.max(tileW, 44) + gapX - 2);
    var cellW = Math.max(tileW, label ? Math.ceil(scratch.measureText(label).width) : 16, 16) + gapX;
    var columns = Math.max(1, Math.min(count, Math.floor((maxWidth - labelWidth) / cellW)));
    var gridRows = Math.ceil(count / columns);
    var cellH = 14 + tileH + (fixedSet.length ? 14 : 4) + 4;
    var blockH = gridRows * cellH;
    var legendH = 44;
    var width = Math.min(maxWidth, labelWidth + columns * cellW);
    width = Math.max(width, Math.min(maxWidth, 300));
    var height = legendH + 2 * blockH + 12;
    var ctx = prepareCanvas(canvas, width, height);
    ctx.fillStyle = '#ffffff';
    ctx.fillRect(0, 0, width, height);
    var peak = Math.max(before.peak, after.peak) || 1;
    // Colour legend.
    ctx.font = SMALL_FONT;
    ctx.textBaseline = 'middle';
    var barX = labelWidth, barW = 160, barY = 8, barH = 10;
    for (var i = 0; i < barW; i++) {
      ctx.fillStyle = rgb(diverging((i / (barW - 1)) * 2 - 1));
      ctx.fillRect(barX + i, barY, 1, barH);
    }
    ctx.strokeStyle = '#98a2b3';
    ctx.strokeRect(barX + 0.5, barY + 0.5, barW - 1, barH - 1);
    ctx.fillStyle = '#344054';
    ctx.textAlign = 'right';
    ctx.fillText(formatNumber(-peak, peak / 100), barX - 6, barY + barH / 2);
    ctx.textAlign = 'left';
    ctx.fillText('+' + formatNumber(peak, peak / 100), barX + barW + 6, barY + barH / 2);
    ctx.textAlign = 'center';
    ctx.fillText('0', barX + barW / 2, barY + barH + 8);
    [['before', before], ['after', after]].forEach(function (pair, r) {
      var top = legendH + r * (blockH + 12);
      ctx.font = FONT;
      ctx.fillStyle = '#101828';
      ctx.textAlign = 'left';
      ctx.textBaseline = 'top';
      ctx.fillText(pair[0], 0, top + 14);
      if (r === 1) {
        ctx.strokeStyle = '#eaecf0';
        ctx.beginPath(); ctx.moveTo(0, top - 6.5); ctx.lineTo(width, top - 6.5); ctx.stroke();
      }
      pair[1].tiles.forEach(function (tile, index) {
        var col = index % columns;
        var row = Math.floor(index / columns);
        var x0 = labelWidth + col * cellW;
        var y0 = top + row * cellH;
        var fixed = fixedSet.indexOf(tile.channel) >= 0;
        ctx.font = SMALL_FONT;
        ctx.fillStyle = '#667085';
        ctx.textAlign = 'left';
        ctx.textBaseline = 'top';
        ctx.fillText(String(tile.channel), x0, y0);
        var ty = y0 + 13;
        for (var yy = 0; yy < tile.height; yy++) {
          for (var xx = 0; xx < tile.width; xx++) {
            ctx.fillStyle = rgb(diverging(tile.values[yy * tile.width + xx] / peak));
            ctx.fillRect(x0 + xx * pixel, ty + yy * pixel, pixel, pixel);
          }
        }
        if (fixed) {
          ctx.strokeStyle = '#111111';
          ctx.lineWidth = 2;
          ctx.strokeRect(x0 - 1, ty - 1, tileW + 2, tileH + 2);
          ctx.lineWidth = 1;
          ctx.fillStyle = '#111111';
          ctx.font = SMALL_FONT;
          ctx.fillText(label || 'fixed', x0, ty + tileH + 3);
        } else {
          ctx.strokeStyle = '#d0d5dd';
          ctx.lineWidth = 1;
          ctx.strokeRect(x0 - 0.5, ty - 0.5, tileW + 1, tileH + 1);
        }
      });
    });
  }

  // ---------------------------------------------------------------------------------------
  // The page.

  function startPage(win) {
    watchWasmMemory();
    var doc = win.document;
    var page = {
      state: 'loading',
      error: null,
      losses: [],
      epochLosses: [],
      data: null,
      parameters: async function () {
        if (!session) throw new Error('the training session is not open');
        return currentParameters(session, site);
      },
    };
    win.onnxfixPage = page;
    var site = null;
    var session = null;
    var ort = null;
    var arrays = null;
    var before = null;
    var batchTouched = false;
    var chart = { losses: page.losses, epochLosses: page.epochLosses, epochEnds: [], boundaries: [], totalSteps: 0 };
    var $ = function (id) { return doc.getElementById(id); };
    var els = {
      status: $('status'), file: $('data-file'), sample: $('use-sample'),
      epochs: $('epochs'), batch: $('batch-size'), batchNote: $('batch-note'), train: $('train'),
      download: $('download'), dataInfo: $('data-info'), chart: $('loss-chart'), kernels: $('kernels'),
      model: $('model'), chartNote: $('chart-note'),
    };

    function setStatus(text, kind) {
      els.status.textContent = text;
      els.status.className = 'status' + (kind ? ' ' + kind : '');
    }

    // Every error ends up here: in the status line (not only in the console) and in
    // onnxfixPage.error. `what` says what failed, e.g. "Training failed".
    function showError(error, what) {
      var message = (what ? what + ': ' : '') + describeError(error);
      page.state = 'error';
      page.error = message;
      setStatus(message, 'error');
      updateControls();
    }

    function updateControls() {
      var busy = page.state === 'loading' || page.state === 'training';
      var usable = !!session && page.state !== 'loading' && page.state !== 'training';
      els.file.disabled = !usable;
      els.sample.disabled = !usable || !(site && site.sample);
      els.epochs.disabled = !usable;
      els.batch.disabled = !usable || (site && fixedBatch(site) !== null);
      els.train.disabled = !usable || !arrays;
      els.download.disabled = busy || !session;
    }

    function redrawChart() {
      drawLossChart(els.chart, chart);
    }

    var kernelCanvases = [];

    function buildKernelSection() {
      els.kernels.textContent = '';
      if (!site.kernels.length) {
        var none = doc.createElement('p');
        none.textContent = 'This model has no convolution kernels to draw.';
        els.kernels.appendChild(none);
        return;
      }
      site.kernels.forEach(function (entry) {
        var figure = doc.createElement('figure');
        figure.className = 'kernel';
        var caption = doc.createElement('figcaption');
        var name = doc.createElement('strong');
        name.textContent = entry.layer;
        caption.appendChild(name);
        var channels = fixedChannels(entry);
        var what;
        if (entry.fixed && entry.fixed.channels) {
          what = 'fixed: ' + entry.fixed.kernel + ' on output channel' + (channels.length > 1 ? 's ' : ' ') + channelRanges(channels) + '; the others train';
        } else if (entry.fixed) {
          what = 'fixed: ' + entry.fixed.kernel + ' (the whole kernel)';
        } else if (entry.param) {
          what = 'trains';
        } else {
          what = 'frozen';
        }
        var detail = doc.createElement('span');
        detail.className = 'detail';
        detail.textContent = ' ' + entry.op + (entry.group > 1 ? ' (group ' + entry.group + ')' : '') + ', weight ' + entry.weight + ' ' + entry.shape.join('\u00d7') + ' \u2014 ' + what;
        caption.appendChild(detail);
        var inputs = entry.op === 'ConvTranspose' ? entry.shape[0] / (entry.group || 1) : entry.shape[1];
        var notes = [];
        if (inputs > 1) notes.push('each tile is the mean over its ' + inputs + ' input channels');
        if (entry.shape.length > 4) notes.push('the middle slice of each ' + (entry.shape.length - 2) + '-D kernel');
        if (entry.shape.length === 3) notes.push('1-D kernels, drawn as strips');
        if (notes.length) {
          var note = doc.createElement('div');
          note.className = 'note';
          var text = notes.join('; ') + '.';
          note.textContent = text.charAt(0).toUpperCase() + text.slice(1);
          caption.appendChild(note);
        }
        figure.appendChild(caption);
        var canvas = doc.createElement('canvas');
        canvas.setAttribute('role', 'img');
        canvas.setAttribute('aria-label', 'kernels of ' + entry.layer + ' before and after training');
        figure.appendChild(canvas);
        els.kernels.appendChild(figure);
        kernelCanvases.push({ entry: entry, canvas: canvas });
      });
    }

    function channelRanges(channels) {
      var runs = [];
      var sorted = channels.slice().sort(function (a, b) { return a - b; });
      for (var i = 0; i < sorted.length; i++) {
        var start = sorted[i];
        while (i + 1 < sorted.length && sorted[i + 1] === sorted[i] + 1) i++;
        runs.push(start === sorted[i] ? String(start) : start + '\u2013' + sorted[i]);
      }
      return runs.join(', ');
    }

    function drawKernels(current) {
      var width = Math.max(260, Math.min(920, els.kernels.clientWidth || 860));
      kernelCanvases.forEach(function (k) {
        try {
          drawKernelLayer(k.canvas, k.entry, kernelTiles(k.entry, before), kernelTiles(k.entry, current), width);
        } catch (e) {
          showError(e, 'Could not draw the kernels of ' + k.entry.layer);
        }
      });
    }

    function describeModel() {
      var lines = [];
      var inputs = site.inputs.map(function (s) { return s.name + ' ' + s.dtype + ' [' + s.shape.join(', ') + ']'; }).join('; ');
      var count = site.parameters.reduce(function (n, p) { return n + p.size; }, 0);
      lines.push(['Model', site.source_model || '(unnamed)']);
      lines.push(['Inputs', inputs]);
      lines.push(['Target', site.target ? site.target.name + ' ' + site.target.dtype + ' [' + site.target.shape.join(', ') + ']' : 'none']);
      lines.push(['Training', site.loss + ' loss, ' + ({ 'adamw': 'AdamW', 'torch-adamw': 'AdamW (PyTorch form)', 'sgd': 'SGD' }[site.optimizer] || site.optimizer) + ', learning rate ' + site.learning_rate]);
      lines.push(['Trainable', site.parameters.length + ' tensors, ' + count.toLocaleString('en-US') + ' values']);
      els.model.textContent = '';
      lines.forEach(function (pair) {
        var dt = doc.createElement('dt');
        dt.textContent = pair[0];
        var dd = doc.createElement('dd');
        dd.textContent = pair[1];
        els.model.appendChild(dt);
        els.model.appendChild(dd);
      });
    }

    async function fetchBytes(path) {
      var response;
      try {
        response = await win.fetch(path, { cache: 'no-store' });
      } catch (e) {
        throw new Error('could not fetch ' + path + ' (' + describeError(e) + ')' +
          (win.location.protocol === 'file:' ? '; the page must be served over HTTP: python -m http.server --bind 127.0.0.1 --directory SITE 8000' : ''));
      }
      if (!response.ok) throw new Error('could not fetch ' + path + ': HTTP ' + response.status);
      return new Uint8Array(await response.arrayBuffer());
    }

    async function useData(bytes, source) {
      page.state = 'loading';
      updateControls();
      setStatus('Reading ' + source + '\u2026');
      try {
        var npz = await readNpz(bytes, source);
        var prepared = prepareArrays(npz, site, source);
        arrays = prepared.arrays;
        page.data = { source: source, samples: prepared.samples };
        if (!batchTouched) els.batch.value = String(defaultBatchSize(site, prepared.samples));
        els.dataInfo.textContent = source + ': ' + prepared.samples + ' samples';
        page.state = page.losses.length ? 'done' : 'ready';
        page.error = null;
        setStatus('Data ready: ' + prepared.samples + ' samples from ' + source + '. Choose the epochs and batch size, then Train.');
      } catch (e) {
        arrays = null;
        page.data = null;
        els.dataInfo.textContent = '';
        showError(e, 'Could not use ' + source);
        // The session still works: another file may be chosen.
        page.state = 'error';
      }
      updateControls();
    }

    function readInt(input, what) {
      var value = Number(input.value);
      if (!Number.isInteger(value) || value < 1) throw new Error(what + ' must be a whole number, 1 or more (got ' + JSON.stringify(input.value) + ')');
      return value;
    }

    async function runTraining() {
      var epochs, batchSize, plan;
      try {
        epochs = readInt(els.epochs, 'Epochs');
        batchSize = readInt(els.batch, 'Batch size');
        plan = planBatches(arrays, site, batchSize);
      } catch (e) {
        showError(e, 'Cannot train');
        return;
      }
      page.state = 'training';
      page.error = null;
      updateControls();
      var offset = page.losses.length;
      chart.totalSteps = offset + epochs * plan.steps;
      for (var b = 1; b <= epochs; b++) chart.boundaries.push(offset + b * plan.steps);
      var started = Date.now();
      var lastDraw = 0;
      var dropped = plan.dropped ? ' (' + plan.dropped + ' samples dropped: the last partial batch)' : '';
      setStatus('Training: ' + epochs + ' epoch' + (epochs > 1 ? 's' : '') + ' of ' + plan.steps + ' steps, batch size ' + batchSize + dropped + '\u2026');
      redrawChart();
      try {
        var result = await train({
          session: session, site: site, arrays: arrays, epochs: epochs, batchSize: batchSize, ort: ort,
          onStep: async function (s) {
            page.losses.push(s.loss);
            var now = Date.now();
            if (now - lastDraw > 80 || s.step === s.steps) {
              lastDraw = now;
              setStatus('Training: epoch ' + s.epoch + ' of ' + s.epochs + ', step ' + s.step + ' of ' + s.steps + ', loss ' + s.loss.toFixed(4) + dropped);
              redrawChart();
            }
            await nextTask();
          },
          onEpoch: async function (e) {
            page.epochLosses.push(e.mean);
            chart.epochEnds.push(page.losses.length);
            redrawChart();
            drawKernels(await currentParameters(session, site));
            await nextTask();
          },
        });
        var seconds = ((Date.now() - started) / 1000).toFixed(1);
        page.state = 'done';
        setStatus('Done: ' + result.losses.length + ' steps in ' + seconds + ' s; the last epoch\'s mean loss is ' +
          result.epochLosses[result.epochLosses.length - 1].toFixed(4) + dropped + '. Download the trained parameters to export the model.', 'done');
      } catch (e) {
        showError(e, 'Training failed');
        chart.totalSteps = page.losses.length;
        chart.boundaries = chart.boundaries.filter(function (b) { return b <= page.losses.length; });
      }
      redrawChart();
      try {
        drawKernels(await currentParameters(session, site));
      } catch (e) {
        showError(e, 'Could not read the trained parameters');
      }
      updateControls();
    }

    function nextTask() {
      return new Promise(function (resolve) { win.setTimeout(resolve, 0); });
    }

    async function download() {
      try {
        var parameters = await currentParameters(session, site);
        var bytes = parametersNpz(parameters, site);
        var blob = new win.Blob([bytes], { type: 'application/octet-stream' });
        var url = win.URL.createObjectURL(blob);
        var a = doc.createElement('a');
        a.href = url;
        a.download = 'trained_parameters.npz';
        doc.body.appendChild(a);
        a.click();
        a.remove();
        win.setTimeout(function () { win.URL.revokeObjectURL(url); }, 60000);
      } catch (e) {
        showError(e, 'Could not download the parameters');
      }
    }

    async function load() {
      setStatus('Loading the training artifacts and ONNX Runtime\u2026');
      redrawChart();
      ort = getOrt(win.ort);
      ort.env.wasm.numThreads = 1; // the threaded build needs cross-origin isolation for more
      ort.env.wasm.wasmPaths = new URL('ort/', win.location.href).href;
      ort.env.logLevel = 'error';
      var text = new TextDecoder().decode(await fetchBytes('site.json'));
      try {
        site = JSON.parse(text);
      } catch (e) {
        throw new Error('site.json is not valid JSON: ' + describeError(e));
      }
      if (site.ort_web_version && ort.env.versions && ort.env.versions.web && ort.env.versions.web !== site.ort_web_version) {
        throw new Error('ort/ holds onnxruntime-web ' + ort.env.versions.web + ', the artifacts need ' + site.ort_web_version);
      }
      describeModel();
      buildKernelSection();
      session = await openSession(ort, site, fetchBytes);
      before = await currentParameters(session, site);
      drawKernels(before);
      var fixed = fixedBatch(site);
      if (fixed !== null) {
        els.batch.value = String(fixed);
        if (els.batchNote) els.batchNote.textContent = 'fixed by the model';
      } else {
        els.batch.value = String(defaultBatchSize(site, site.sample ? site.sample.samples : 32));
      }
      els.sample.hidden = !site.sample;
      if (site.sample) els.sample.textContent = 'Use the bundled sample (' + site.sample.samples + ' samples)';
      page.state = 'ready';
      setStatus('Ready. ' + (site.sample ? 'Use the bundled sample or choose' : 'Choose') + ' an .npz file with the arrays ' +
        feedSpecs(site).map(function (s) { return s.name; }).join(', ') + '.');
      updateControls();
    }

    els.file.addEventListener('change', function () {
      var file = els.file.files && els.file.files[0];
      if (!file) return;
      els.file.value = ''; // choosing the same file again reads it again
      file.arrayBuffer().then(function (buffer) {
        return useData(new Uint8Array(buffer), file.name);
      }, function (e) { showError(e, 'Could not read ' + file.name); });
    });
    els.sample.addEventListener('click', function () {
      fetchBytes(site.sample.file).then(function (bytes) {
        return useData(bytes, 'the bundled sample');
      }).catch(function (e) { showError(e, 'Could not use the bundled sample'); });
    });
    els.batch.addEventListener('input', function () { batchTouched = true; });
    els.train.addEventListener('click', function () { runTraining(); });
    els.download.addEventListener('click', function () { download(); });
    win.addEventListener('error', function (event) { showError(event.error || event.message); });
    win.addEventListener('unhandledrejection', function (event) { showError(event.reason); });
    var resizeTimer = null;
    win.addEventListener('resize', function () {
      win.clearTimeout(resizeTimer);
      resizeTimer = win.setTimeout(function () {
        redrawChart();
        if (session && before && page.state !== 'training') currentParameters(session, site).then(drawKernels, function () {});
      }, 150);
    });

    updateControls();
    load().catch(function (e) {
      showError(e, 'Could not load the page');
    });
    return page;
  }

  return {
    version: '1',
    // errors
    describeError: describeError,
    watchWasmMemory: watchWasmMemory,
    // files
    crc32: crc32,
    readZip: readZip,
    parseNpy: parseNpy,
    readNpz: readNpz,
    writeNpy: writeNpy,
    writeZip: writeZip,
    writeNpz: writeNpz,
    // data and training
    feedSpecs: feedSpecs,
    prepareArrays: prepareArrays,
    fixedBatch: fixedBatch,
    defaultBatchSize: defaultBatchSize,
    planBatches: planBatches,
    openSession: openSession,
    train: train,
    // parameters and kernels
    splitParameters: splitParameters,
    currentParameters: currentParameters,
    parametersNpz: parametersNpz,
    rowsView: rowsView,
    fixedChannels: fixedChannels,
    kernelRows: kernelRows,
    kernelTiles: kernelTiles,
    diverging: diverging,
    // the page
    drawLossChart: drawLossChart,
    drawKernelLayer: drawKernelLayer,
    startPage: startPage,
  };
});
