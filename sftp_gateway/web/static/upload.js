// The upload page's tus 1.0.0 client: POST (creation) -> HEAD (where the server is)
// -> PATCH chunks with progress -> retry with backoff after a network failure.
// The server may answer a PATCH with a smaller Upload-Offset than was sent (only whole
// S3 parts are durable between requests): the next chunk starts there.
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
    if (expected.indexOf(response.status) < 0) {
      throw new Refused(response.status, (response.text || "").trim() ||
                        "the server answered " + response.status);
    }
    return response;
  }

  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }

  function upload(file) {
    var started = Date.now(), firstOffset = null, sent = 0;
    var task = { cancelled: false };
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

    function offsetOf(url) {
      return request("HEAD", url).then(function (r) {
        return parseInt(check(r, [200]).header("Upload-Offset"), 10);
      });
    }

    function sendFrom(url, offset) {
      progress(offset, 0);
      if (offset >= file.size && file.size > 0) { return Promise.resolve(null); }
      var end = Math.min(offset + chunkSize, file.size);
      return request("PATCH", url, {
        "Upload-Offset": String(offset),
        "Content-Type": "application/offset+octet-stream"
      }, file.slice(offset, end), function (e) { progress(offset, e.loaded); })
        .then(function (r) {
          check(r, [204]);
          var next = parseInt(r.header("Upload-Offset"), 10);
          if (next >= file.size) { return r.header("Upload-Sha256"); }
          return sendFrom(url, next);
        });
    }

    function attempt(url, tries) {
      return offsetOf(url).then(function (offset) { return sendFrom(url, offset); })
        .catch(function (err) {
          if (task.cancelled || err instanceof Refused || tries >= RETRIES.length) { throw err; }
          show(statusLine, "connection lost; retrying in " + RETRIES[tries] / 1000 + " s");
          return sleep(RETRIES[tries]).then(function () { return attempt(url, tries + 1); });
        });
    }

    return create().then(function (url) {
      task.url = url;
      return attempt(url, 0);
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
      show(doneLine, "Upload complete: " + file.name + " (" + human(file.size) + ")" +
           (sha256 ? ", SHA-256 " + sha256 : ""));
    }).catch(function (err) {
      show(errorLine, "Upload refused: " + (err.message || String(err)));
    }).then(function () {
      startButton.disabled = false; input.disabled = false; cancelButton.hidden = true;
    });
  });

  cancelButton.addEventListener("click", function () {
    if (!current) { return; }
    current.cancelled = true;
    if (current.xhr) { current.xhr.abort(); }
    if (current.url) { request("DELETE", current.url).catch(function () {}); }
  });
})();
