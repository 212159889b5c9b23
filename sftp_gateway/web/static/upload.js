// The upload page's tus 1.0.0 client: POST (creation) -> HEAD (where the server is)
// -> PATCH chunks with progress -> retry with backoff after a network failure.
// The server may answer a PATCH with a smaller Upload-Offset than was sent (only whole
// S3 parts are durable between requests): the next chunk starts there. Every choice of
// a file is a new POST (a new upload), unless this browser started an upload of the
// very same file (name, size, modification time) through this link and has not finished
// it: its URL is kept in localStorage (as tus-js-client does), and HEAD resumes it. The
// page says "complete" only with the SHA-256 the server answers for the stored file.
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  if (!form) { return; }
  var filesUrl = form.dataset.filesUrl;
  var chunkSize = parseInt(form.dataset.chunkSize, 10);
  var maxSize = parseInt(form.dataset.maxSize, 10);
  var input = document.getElementById("file");
  var startButton = document.getElementById("start");
  var cancelButton = document.getElementById("cancel");
  var bar = document.getElementById("bar");
  var statusLine = document.getElementById("status");
  var errorLine = document.getElementById("error");
  var doneLine = document.getElementById("done");
  var RETRIES = [1000, 2000, 4000, 8000, 16000, 30000];
  var current = null;  // {xhr, url, cancelled}

  function show(el, text) { el.textContent = text; el.hidden = false; }
  function hide(el) { el.hidden = true; }

  function human(bytes) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
    return (i ? bytes.toFixed(1) : bytes) + " " + units[i];
  }
  function duration(seconds) {
    if (!isFinite(seconds)) { return "-"; }
    seconds = Math.round(seconds);
    var m = Math.floor(seconds / 60), s = seconds % 60;
    return m ? m + " min " + s + " s" : s + " s";
  }
  function b64(text) { return btoa(unescape(encodeURIComponent(text))); }

  // One request; resolves {status, headers(name), text} or rejects on a network failure.
  function request(method, url, headers, body, onProgress) {
    return new Promise(function (resolve, reject) {
      var xhr = new XMLHttpRequest();
      if (current) { current.xhr = xhr; }
      xhr.open(method, url);
      xhr.setRequestHeader("Tus-Resumable", "1.0.0");
      Object.keys(headers || {}).forEach(function (k) { xhr.setRequestHeader(k, headers[k]); });
      if (onProgress) { xhr.upload.onprogress = onProgress; }
      xhr.onload = function () {
        resolve({ status: xhr.status, text: xhr.responseText,
                  header: function (n) { return xhr.getResponseHeader(n); } });
      };
      xhr.onerror = function () { reject(new Error("network error")); };
      xhr.onabort = function () { reject(new Error("cancelled")); };
      xhr.send(body || null);
    });
  }

  function Refused(status, text) { this.status = status; this.message = text; }

  function check(response, expected) {
    if (response.status === 408) {  // a stalled request was ended: retried like a cut one
      throw new Error("the request timed out");
    }
    if (expected.indexOf(response.status) < 0) {
      throw new Refused(response.status, (response.text || "").trim() ||
                        "the server answered " + response.status);
    }
    return response;
  }

  function confirmed(sha256) {
    if (!sha256) { throw new Refused(0, "the server did not confirm that the file was stored"); }
    return sha256;
  }

  // The upload URL of an unfinished upload of this file, kept across page loads.
  function fingerprint(file) {
    return ["tus-upload", filesUrl, file.name, file.size, file.lastModified || 0].join("::");
  }
  function recall(key) { try { return window.localStorage.getItem(key); } catch (e) { return null; } }
  function remember(key, url) { try { window.localStorage.setItem(key, url); } catch (e) {} }
  function forget(key) { try { window.localStorage.removeItem(key); } catch (e) {} }

  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }

  function upload(file) {
    var started = Date.now(), firstOffset = null, sent = 0;
    var task = { cancelled: false, key: fingerprint(file) };
    current = task;

    function progress(offset, extra) {
      var done = offset + extra;
      var percent = file.size ? Math.floor(done * 100 / file.size) : 100;
      if (firstOffset === null) { firstOffset = offset; }
      var seconds = (Date.now() - started) / 1000;
      var rate = seconds > 0 ? (done - firstOffset) / seconds : 0;
      bar.value = percent;
      statusLine.textContent = percent + " % - " + human(done) + " of " + human(file.size) +
        " - " + human(rate) + "/s - " + duration(rate > 0 ? (file.size - done) / rate : Infinity) +
        " left";
    }

    function create() {
      return request("POST", filesUrl, {
        "Upload-Length": String(file.size),
        "Upload-Metadata": "filename " + b64(file.name) + ",filetype " + b64(file.type || "")
      }).then(function (r) { return check(r, [201]).header("Location"); });
    }

    function positionOf(url) {
      return request("HEAD", url).then(function (r) {
        check(r, [200]);
        return { offset: parseInt(r.header("Upload-Offset"), 10),
                 sha256: r.header("Upload-Sha256") };
      });
    }

    function sendFrom(url, offset, sha256) {
      progress(offset, 0);
      if (offset >= file.size && file.size > 0) { return Promise.resolve(confirmed(sha256)); }
      var end = Math.min(offset + chunkSize, file.size);
      return request("PATCH", url, {
        "Upload-Offset": String(offset),
        "Content-Type": "application/offset+octet-stream"
      }, file.slice(offset, end), function (e) { progress(offset, e.loaded); })
        .then(function (r) {
          check(r, [204]);
          var next = parseInt(r.header("Upload-Offset"), 10);
          if (next >= file.size) { return confirmed(r.header("Upload-Sha256")); }
          return sendFrom(url, next, null);
        });
    }

    function attempt(url, tries) {
      return positionOf(url).then(function (at) { return sendFrom(url, at.offset, at.sha256); })
        .catch(function (err) {
          if (task.cancelled || err instanceof Refused || tries >= RETRIES.length) { throw err; }
          show(statusLine, "connection lost; retrying in " + RETRIES[tries] / 1000 + " s");
          return sleep(RETRIES[tries]).then(function () { return attempt(url, tries + 1); });
        });
    }

    function begin() {
      var saved = recall(task.key);
      var fresh = function () {
        return create().then(function (url) { remember(task.key, url); return url; });
      };
      if (!saved) { return fresh(); }
      return request("HEAD", saved).then(function (r) {
        if (r.status === 200) { return saved; }
        forget(task.key);
        return fresh();
      });
    }

    return begin().then(function (url) {
      task.url = url;
      return attempt(url, 0);
    }).then(function (sha256) {
      forget(task.key);
      return sha256;
    }, function (err) {
      if (err instanceof Refused || task.cancelled) { forget(task.key); }
      throw err;
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var file = input.files[0];
    hide(errorLine); hide(doneLine);
    if (!file) { return; }
    if (file.size > maxSize) {
      show(errorLine, "file exceeds the maximum size of " + human(maxSize));
      return;
    }
    startButton.disabled = true; input.disabled = true; cancelButton.hidden = false;
    document.getElementById("progress").hidden = false;
    bar.value = 0;
    upload(file).then(function (sha256) {
      bar.value = 100;
      statusLine.textContent = "100 % - " + human(file.size) + " of " + human(file.size);
      show(doneLine, "Upload complete: " + file.name + " (" + human(file.size) + "), SHA-256 " +
           confirmed(sha256));
    }).catch(function (err) {
      show(errorLine, "Upload refused: " + (err.message || String(err)));
    }).then(function () {
      startButton.disabled = false; input.disabled = false; cancelButton.hidden = true;
    });
  });

  cancelButton.addEventListener("click", function () {
    if (!current) { return; }
    current.cancelled = true;
    forget(current.key);
    if (current.xhr) { current.xhr.abort(); }
    if (current.url) { request("DELETE", current.url).catch(function () {}); }
  });
})();
