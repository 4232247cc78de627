// Sceau console, "Protect a file": files are encrypted and decrypted here, in the browser,
// with WebCrypto. The service only hands out a data key per file; the file never leaves.
//
// Format (docs/format.md §4, the same bytes as `sceau file protect`):
//   header  = "SCU" 01 02 | key_id (16) | salt (16) | segment size (u32 BE)     41 bytes
//   subkey  = HKDF-SHA256(data key, salt, info = "sceau/stream/v1" || header), 32 bytes
//   segment i = AES-256-GCM(subkey, nonce = i as 11-byte BE || 01 if last else 00,
//                           no AAD); every segment but the last holds exactly S bytes
//   plaintext = "SCF" 01 | u32 BE L | canonical JSON {mtime, name, size} (L bytes) | file
// Files are read in slices (Blob.slice) one segment at a time; the output is a Blob of
// sealed segments. An opened file is offered for download only once every segment has
// authenticated, the last-segment flag was where it belongs and the size matches.
"use strict";
(function () {
  var SEGMENT = 65536;
  var TAG = 16;
  var HEADER_LEN = 41;
  var MAX_SEGMENT = 16777216;
  var MAX_INNER_JSON = 65536;
  var MAX_NAME_BYTES = 255;
  var BATCH = 64; // sealed segments gathered into one intermediate Blob (about 4 MiB)
  var TWO32 = 4294967296;
  var CORRUPTED = "corrupted or truncated (integrity check failed)";
  var NOT_SCEAU = "not a .sceau file or truncated";
  var NO_INNER = "no file header inside (not made by `sceau file protect`)";
  var BAD_INNER = "file header inside is malformed";
  var BAD_NAME = "file name not usable as a single path component";

  var encoder = new TextEncoder();
  var STREAM_INFO = encoder.encode("sceau/stream/v1");

  // A failure whose message is fit to show as is (never a secret, never a stack).
  function Failure(message) { this.message = message; }

  function concat(parts) {
    var total = 0;
    parts.forEach(function (p) { total += p.length; });
    var out = new Uint8Array(total);
    var at = 0;
    parts.forEach(function (p) { out.set(p, at); at += p.length; });
    return out;
  }

  function b64uEncode(bytes) {
    var text = "";
    for (var i = 0; i < bytes.length; i++) { text += String.fromCharCode(bytes[i]); }
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function b64uDecode(text) {
    if (typeof text !== "string" || !/^[A-Za-z0-9_-]*$/.test(text)) {
      throw new Failure("the service answered something unexpected");
    }
    var std = text.replace(/-/g, "+").replace(/_/g, "/");
    while (std.length % 4) { std += "="; }
    var raw = atob(std);
    var out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) { out[i] = raw.charCodeAt(i); }
    return out;
  }

  // Nonce of segment `index`: the counter as 11 bytes big-endian, then the last flag.
  // Indexes stay far below 2^53 (that would be a file of 2^69 bytes).
  function nonce(index, last) {
    var n = new Uint8Array(12);
    var view = new DataView(n.buffer);
    view.setUint32(7, index % TWO32);
    view.setUint32(3, Math.floor(index / TWO32));
    n[11] = last ? 1 : 0;
    return n;
  }

  function checkName(name) {
    if (!name || name === "." || name === ".." || /[\/\\\u0000-\u001f\u007f]/.test(name) ||
        encoder.encode(name).length > MAX_NAME_BYTES) {
      throw new Failure(BAD_NAME);
    }
  }

  // The segments' key; the data key itself is wiped from our buffer once imported.
  function subkey(dataKey, header, usage) {
    return crypto.subtle.importKey("raw", dataKey, "HKDF", false, ["deriveKey"])
      .then(function (base) {
        dataKey.fill(0);
        return crypto.subtle.deriveKey(
          { name: "HKDF", hash: "SHA-256", salt: header.slice(21, 37),
            info: concat([STREAM_INFO, header]) },
          base, { name: "AES-GCM", length: 256 }, false, [usage]);
      });
  }

  // POST a form to one of the console's data-key endpoints (CSRF token in the form).
  function requestKey(form, fields) {
    var body = new URLSearchParams();
    body.append("csrf", form.elements.namedItem("csrf").value);
    fields.forEach(function (f) { body.append(f[0], f[1]); });
    return fetch(form.getAttribute("data-key-url"), {
      method: "POST", body: body, credentials: "same-origin", cache: "no-store",
      redirect: "error", headers: { "Accept": "application/json" }
    }).catch(function () {
      throw new Failure("the service could not be reached");
    }).then(function (resp) {
      var type = resp.headers.get("content-type") || "";
      var parsed = type.indexOf("application/json") === 0 ? resp.json() : Promise.resolve(null);
      return parsed.then(function (data) {
        if (!resp.ok || !data) {
          throw new Failure(data && data.message ? data.message
            : "refused by the service (HTTP " + resp.status + "); reload the page");
        }
        return data;
      });
    });
  }

  function readSlice(file, start, end) {
    return file.slice(start, end).arrayBuffer().then(function (buf) {
      if (buf.byteLength !== end - start) { throw new Failure("the file changed while it was read"); }
      return new Uint8Array(buf);
    }, function () {
      throw new Failure("the file could not be read");
    });
  }

  // --- protect ---------------------------------------------------------------------------

  function innerHeader(file) {
    var mtime = Math.floor(file.lastModified / 1000);
    // Keys in sorted order and integers only: JSON.stringify is then RFC 8785 canonical.
    var json = encoder.encode(JSON.stringify({
      mtime: Number.isSafeInteger(mtime) ? mtime : null, name: file.name, size: file.size
    }));
    var out = new Uint8Array(8 + json.length);
    out.set([0x53, 0x43, 0x46, 0x01]);
    new DataView(out.buffer).setUint32(4, json.length);
    out.set(json, 8);
    return out;
  }

  // Plaintext bytes [start, end) of inner header || file.
  function plaintextRange(inner, file, start, end) {
    var fromHeader = start < inner.length ? inner.subarray(start, Math.min(end, inner.length))
      : new Uint8Array(0);
    var fileStart = Math.max(start - inner.length, 0);
    var fileEnd = end - inner.length;
    if (fileEnd <= fileStart) { return Promise.resolve(fromHeader); }
    return readSlice(file, fileStart, fileEnd).then(function (bytes) {
      return fromHeader.length ? concat([fromHeader, bytes]) : bytes;
    });
  }

  function protectFile(form, file, recipients, report) {
    checkName(file.name);
    var inner = innerHeader(file);
    var fields = [["name", file.name]].concat(recipients.map(function (r) { return ["recipient", r]; }));
    return requestKey(form, fields).then(function (answer) {
      var keyId = b64uDecode(answer.key_id);
      var dataKey = b64uDecode(answer.key);
      if (keyId.length !== 16 || dataKey.length !== 32) {
        throw new Failure("the service answered something unexpected");
      }
      var header = new Uint8Array(HEADER_LEN);
      header.set([0x53, 0x43, 0x55, 0x01, 0x02]);
      header.set(keyId, 5);
      header.set(crypto.getRandomValues(new Uint8Array(16)), 21);
      new DataView(header.buffer).setUint32(37, SEGMENT);
      return subkey(dataKey, header, "encrypt").then(function (key) {
        var total = inner.length + file.size;
        var count = Math.max(1, Math.ceil(total / SEGMENT));
        var parts = [header];
        var batch = [];
        function step(i) {
          if (i === count) {
            parts.push(new Blob(batch));
            return { blob: new Blob(parts, { type: "application/octet-stream" }),
                     keyId: answer.key_id };
          }
          var start = i * SEGMENT;
          return plaintextRange(inner, file, start, Math.min(start + SEGMENT, total))
            .then(function (plain) {
              return crypto.subtle.encrypt(
                { name: "AES-GCM", iv: nonce(i, i === count - 1), tagLength: 128 }, key, plain);
            }).then(function (sealed) {
              batch.push(sealed);
              if (batch.length === BATCH) { parts.push(new Blob(batch)); batch = []; report(i + 1, count); }
              return step(i + 1);
            });
        }
        return step(0);
      });
    });
  }

  // --- open ------------------------------------------------------------------------------

  function decodeInfo(bytes) {
    var data;
    try {
      data = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
    } catch (e) {
      throw new Failure(BAD_INNER);
    }
    if (!data || typeof data !== "object" || Array.isArray(data) ||
        Object.keys(data).sort().join(",") !== "mtime,name,size" ||
        typeof data.name !== "string" || !Number.isSafeInteger(data.size) || data.size < 0 ||
        !(data.mtime === null || Number.isSafeInteger(data.mtime))) {
      throw new Failure(BAD_INNER);
    }
    checkName(data.name);
    return data;
  }

  // Takes the inner header off the decrypted stream; keeps the rest as Blob parts.
  function Unwrapper() {
    this.head = new Uint8Array(0);
    this.need = null;
    this.info = null;
    this.parts = [];
    this.batch = [];
    this.content = 0;
  }
  Unwrapper.prototype.push = function (plain) {
    if (this.info === null) {
      this.head = concat([this.head, plain]);
      plain = new Uint8Array(0);
      if (this.need === null && this.head.length >= 8) {
        var h = this.head;
        if (h[0] !== 0x53 || h[1] !== 0x43 || h[2] !== 0x46 || h[3] !== 0x01) { throw new Failure(NO_INNER); }
        var len = new DataView(h.buffer, h.byteOffset, 8).getUint32(4);
        if (len < 2 || len > MAX_INNER_JSON) { throw new Failure(BAD_INNER); }
        this.need = 8 + len;
      }
      if (this.need !== null && this.head.length >= this.need) {
        this.info = decodeInfo(this.head.subarray(8, this.need));
        plain = this.head.slice(this.need);
        this.head = new Uint8Array(0);
      }
    }
    if (plain.length) {
      this.content += plain.length;
      if (this.content > this.info.size) { throw new Failure("content size does not match the file header inside"); }
      this.batch.push(plain);
      if (this.batch.length === BATCH) { this.parts.push(new Blob(this.batch)); this.batch = []; }
    }
  };
  Unwrapper.prototype.finish = function () {
    if (this.info === null) { throw new Failure(NO_INNER); }
    if (this.content !== this.info.size) { throw new Failure("content size does not match the file header inside"); }
    this.parts.push(new Blob(this.batch));
    return { blob: new Blob(this.parts, { type: "application/octet-stream" }), name: this.info.name };
  };

  function openFile(form, file, report) {
    if (file.size < HEADER_LEN) { return Promise.reject(new Failure(NOT_SCEAU)); }
    return readSlice(file, 0, HEADER_LEN).then(function (header) {
      if (header[0] !== 0x53 || header[1] !== 0x43 || header[2] !== 0x55 || header[3] !== 0x01 ||
          header[4] !== 0x02) {
        throw new Failure(NOT_SCEAU);
      }
      var size = new DataView(header.buffer).getUint32(37);
      if (size < 1 || size > MAX_SEGMENT) { throw new Failure(NOT_SCEAU); }
      var unit = size + TAG;
      var body = file.size - HEADER_LEN;
      var count = Math.ceil(body / unit);
      var lastLen = body - (count - 1) * unit;
      // Shapes no writer produces are refused before a key is asked for (and counted).
      if (count === 0 || lastLen < TAG || (lastLen === TAG && count > 1)) { throw new Failure(CORRUPTED); }
      var keyId = b64uEncode(header.subarray(5, 21));
      return requestKey(form, [["key_id", keyId]]).then(function (answer) {
        var dataKey = b64uDecode(answer.key);
        if (dataKey.length !== 32 || answer.key_id !== keyId) { throw new Failure("the service answered something unexpected"); }
        return subkey(dataKey, header, "decrypt");
      }).then(function (key) {
        var out = new Unwrapper();
        function step(i) {
          if (i === count) { return out.finish(); }
          var start = HEADER_LEN + i * unit;
          return readSlice(file, start, Math.min(start + unit, file.size)).then(function (sealed) {
            return crypto.subtle.decrypt(
              { name: "AES-GCM", iv: nonce(i, i === count - 1), tagLength: 128 }, key, sealed)
              .catch(function () { throw new Failure(CORRUPTED); });
          }).then(function (plain) {
            out.push(new Uint8Array(plain));
            if ((i + 1) % BATCH === 0) { report(i + 1, count); }
            return step(i + 1);
          });
        }
        return step(0);
      });
    });
  }

  // --- page ------------------------------------------------------------------------------

  function line(list, text) {
    var li = document.createElement("li");
    li.textContent = text;
    list.appendChild(li);
    return li;
  }

  function offer(li, blob, name, text) {
    var link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = name;
    link.textContent = name;
    li.textContent = text + " ";
    li.appendChild(link);
    li.className = "done";
    link.click();
  }

  function messageOf(error) {
    return error instanceof Failure ? error.message : "failed (" + (error && error.name || "error") + ")";
  }

  function setup(prefix, work) {
    var form = document.getElementById(prefix + "-form");
    var input = document.getElementById(prefix + "-files");
    var drop = document.getElementById(prefix + "-drop");
    var list = document.getElementById(prefix + "-results");
    var errorLine = document.getElementById(prefix + "-error");
    if (!form || !input) { return; }
    var queue = Promise.resolve();
    var failures = [];

    function run(files) {
      Array.prototype.forEach.call(files, function (file) {
        queue = queue.then(function () {
          var li = line(list, file.name + ": working…");
          li.className = "working";
          function report(done, count) {
            li.textContent = file.name + ": " + Math.floor(100 * done / count) + " %";
          }
          return work(form, file, report, li).catch(function (error) {
            li.textContent = file.name + ": " + messageOf(error);
            li.className = "failed";
            failures.push(file.name + ": " + messageOf(error));
            errorLine.textContent = failures.join(" · ");
            errorLine.hidden = false;
          });
        });
      });
    }

    form.addEventListener("submit", function (event) { event.preventDefault(); });
    input.addEventListener("change", function () {
      failures = [];
      errorLine.hidden = true;
      errorLine.textContent = "";
      var files = Array.prototype.slice.call(input.files);
      input.value = "";
      run(files);
    });
    drop.addEventListener("dragover", function (event) { event.preventDefault(); });
    drop.addEventListener("drop", function (event) {
      event.preventDefault();
      failures = [];
      errorLine.hidden = true;
      run(event.dataTransfer.files);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!document.getElementById("protect-form")) { return; }
    // A file dropped beside a zone must not make the browser navigate to it.
    document.addEventListener("dragover", function (event) { event.preventDefault(); });
    document.addEventListener("drop", function (event) { event.preventDefault(); });
    if (!window.isSecureContext || !window.crypto || !window.crypto.subtle) {
      document.getElementById("protect-unsupported").hidden = false;
      Array.prototype.forEach.call(document.querySelectorAll("input[type=file]"),
        function (el) { el.disabled = true; });
      return;
    }
    setup("protect", function (form, file, report, li) {
      var raw = document.getElementById("protect-recipients").value;
      var recipients = raw.split(/[\s,;]+/).filter(function (r) { return r.length > 0; });
      return protectFile(form, file, recipients, report).then(function (result) {
        offer(li, result.blob, file.name + ".sceau", file.name + ": protected (key " + result.keyId + ")");
      });
    });
    setup("open", function (form, file, report, li) {
      return openFile(form, file, report).then(function (result) {
        offer(li, result.blob, result.name, file.name + ": opened as");
      });
    });
  });
}());
