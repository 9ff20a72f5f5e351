/* Image upload page: create the image through the REST API, then send the file in resumable chunks.
 *
 * POST {data-api-url} (JSON metadata with the file's size) -> 201 image with upload_url and received_bytes.
 * PUT {upload_url} with Content-Range "bytes START-END/TOTAL" per chunk (File.slice, never the whole file in
 * memory) -> 200 {received_bytes} while more is expected, 202 after the last byte, 409 with received_bytes
 * when the offset is wrong (we resume from there). A failed chunk is retried up to 3 times.
 * Cancel deletes the image (DELETE {data-api-url}{id}/). Progress comes from XHR upload events, so the bar
 * moves within a chunk. Without JavaScript the form posts the file in one piece (see images/views.py).
 */
(function () {
  "use strict";

  var form = document.getElementById("lc-upload-form");
  var textSource = document.getElementById("lc-upload-text");
  if (!form || !textSource || !window.XMLHttpRequest || !window.File || !File.prototype.slice) {
    return;
  }
  var TEXT = JSON.parse(textSource.textContent);
  var MAX_RETRIES = 3;
  var apiUrl = form.getAttribute("data-api-url");
  var detailUrl = form.getAttribute("data-detail-url");
  var activeTenant = form.getAttribute("data-tenant");
  var csrfToken = form.querySelector("input[name=csrfmiddlewaretoken]").value;

  var fileInput = form.querySelector("input[type=file]");
  var fields = document.getElementById("lc-upload-fields");
  var errorBox = document.getElementById("lc-upload-error");
  var noticeBox = document.getElementById("lc-upload-notice");
  var panel = document.getElementById("lc-upload-progress");
  var bar = document.getElementById("lc-upload-bar");
  var barFill = bar.querySelector(".progress-bar");
  var percentLabel = document.getElementById("lc-upload-percent");
  var bytesLabel = document.getElementById("lc-upload-bytes");
  var speedLabel = document.getElementById("lc-upload-speed");
  var etaLabel = document.getElementById("lc-upload-eta");
  var stateLabel = document.getElementById("lc-upload-state");
  var submitButton = document.getElementById("lc-upload-submit");
  var cancelButton = document.getElementById("lc-upload-cancel");
  var backLink = document.getElementById("lc-upload-back");

  // One upload at a time: its image, the request in flight and whether the user cancelled.
  var upload = null;

  function format(template, values) {
    return template.replace(/\{(\w+)\}/g, function (match, key) {
      return Object.prototype.hasOwnProperty.call(values, key) ? values[key] : match;
    });
  }

  function humanSize(bytes) {
    // Like Django's filesizeformat: binary multiples, one decimal.
    var units = TEXT.units;
    var value = bytes;
    var unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit === 0 ? String(value) : value.toFixed(1)) + "\u00a0" + units[unit];
  }

  function humanTime(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    var h = Math.floor(seconds / 3600);
    var m = Math.floor((seconds % 3600) / 60);
    var s = seconds % 60;
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    return h ? h + ":" + pad(m) + ":" + pad(s) : m + ":" + pad(s);
  }

  // ---------------------------------------------------------------- form helpers

  var EXTENSIONS = { qcow2: "qcow2", img: "raw", raw: "raw", vmdk: "vmdk", vhd: "vhd", vpc: "vhd", vdi: "vdi", iso: "iso" };

  fileInput.addEventListener("change", function () {
    var file = fileInput.files[0];
    if (!file) {
      return;
    }
    var match = /^(.*?)(?:\.([A-Za-z0-9]+))?$/.exec(file.name);
    var nameInput = form.elements.name;
    if (nameInput && !nameInput.value.trim()) {
      nameInput.value = match[1].slice(0, 100);
    }
    var format = EXTENSIONS[(match[2] || "").toLowerCase()];
    if (format && form.elements.disk_format) {
      form.elements.disk_format.value = format;
    }
    clearFieldError(fileInput);
  });

  // Server field names (API) -> inputs of this form.
  var FIELD_ALIASES = { size: "file", kind: "disk_format", tenant: "owner" };

  function inputFor(field) {
    var name = FIELD_ALIASES[field] || field;
    var element = form.elements[name];
    return element && element.nodeType === 1 ? element : null;
  }

  function clearFieldError(input) {
    input.classList.remove("is-invalid");
    var holder = input.closest(".mb-0, .mb-3, .lc-dropzone, .form-check") || input.parentNode;
    holder.querySelectorAll(".lc-js-error").forEach(function (node) { node.remove(); });
  }

  function clearErrors() {
    noticeBox.classList.add("d-none");
    errorBox.classList.add("d-none");
    errorBox.textContent = "";
    form.querySelectorAll(".is-invalid").forEach(clearFieldError);
    form.querySelectorAll(".lc-js-error").forEach(function (node) { node.remove(); });
  }

  function showFieldError(input, message) {
    input.classList.add("is-invalid");
    var feedback = document.createElement("div");
    feedback.className = "invalid-feedback d-block lc-js-error";
    feedback.textContent = message;
    input.insertAdjacentElement("afterend", feedback);
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.classList.remove("d-none");
    errorBox.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  /* A problem+json answer: field errors go next to their input, the rest above the form. */
  function showProblem(problem, fallback) {
    var shown = false;
    var errors = (problem && problem.errors) || {};
    Object.keys(errors).forEach(function (field) {
      var input = inputFor(field);
      var messages = [].concat(errors[field]).map(function (m) { return typeof m === "string" ? m : JSON.stringify(m); });
      if (input && messages.length) {
        showFieldError(input, messages.join(" "));
        shown = true;
      }
    });
    var detail = (problem && problem.detail) || fallback;
    if (!shown || (problem && problem.detail && !problem.errors)) {
      showError(detail);
    }
  }

  function setBusy(busy) {
    fields.disabled = busy;
    fileInput.disabled = busy;
    submitButton.disabled = busy;
    submitButton.classList.toggle("d-none", busy);
    backLink.classList.toggle("d-none", busy);
    cancelButton.classList.toggle("d-none", !busy);
    cancelButton.disabled = false;
  }

  // ---------------------------------------------------------------- progress

  var progress = { total: 0, samples: [], lastText: 0 };

  function startProgress(file) {
    progress = { total: file.size, samples: [], lastText: 0 };
    document.getElementById("lc-upload-file").textContent = file.name;
    panel.classList.remove("d-none");
    barFill.classList.remove("bg-success", "bg-danger");
    barFill.classList.add("progress-bar-striped", "progress-bar-animated");
    showProgress(0, true);
  }

  function showProgress(sent, forceText) {
    var total = progress.total || 1;
    var percent = Math.min(100, Math.floor((sent * 100) / total));
    barFill.style.width = ((sent * 100) / total).toFixed(2) + "%";
    bar.setAttribute("aria-valuenow", String(percent));
    percentLabel.textContent = percent + "%";

    var now = performance.now();
    progress.samples.push([now, sent]);
    // Speed over the last 5 seconds: smooth, yet quick to follow a changing connection.
    while (progress.samples.length > 2 && now - progress.samples[0][0] > 5000) {
      progress.samples.shift();
    }
    if (!forceText && now - progress.lastText < 250) {
      return;
    }
    progress.lastText = now;
    bytesLabel.textContent = format(TEXT.bytes, { sent: humanSize(sent), total: humanSize(progress.total) });
    var first = progress.samples[0];
    var seconds = (now - first[0]) / 1000;
    var speed = seconds > 0.3 ? (sent - first[1]) / seconds : 0;
    if (speed > 0) {
      speedLabel.textContent = format(TEXT.speed, { speed: humanSize(Math.round(speed)) });
      etaLabel.textContent = sent < progress.total ? format(TEXT.eta, { time: humanTime((progress.total - sent) / speed) }) : "";
    }
  }

  function setState(message, tone) {
    stateLabel.textContent = message || "";
    stateLabel.className = "small mt-1" + (tone ? " text-" + tone + "-emphasis" : " text-body-secondary");
  }

  // ---------------------------------------------------------------- API calls

  function parseJson(text) {
    try {
      return text ? JSON.parse(text) : {};
    } catch (error) {
      return {};
    }
  }

  function api(method, url, body) {
    return fetch(url, {
      method: method,
      credentials: "same-origin",
      headers: { "Accept": "application/json", "Content-Type": "application/json", "X-CSRFToken": csrfToken },
      body: body === undefined ? undefined : JSON.stringify(body),
    }).then(function (response) {
      return response.text().then(function (text) {
        return { status: response.status, body: parseJson(text) };
      });
    });
  }

  /* PUT one chunk [start, end) of the file; resolves with the answer, rejects on network errors and aborts. */
  function putChunk(url, file, start, end) {
    return new Promise(function (resolve, reject) {
      var xhr = new XMLHttpRequest();
      upload.xhr = xhr;
      xhr.open("PUT", url);
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      xhr.setRequestHeader("Content-Range", "bytes " + start + "-" + (end - 1) + "/" + file.size);
      xhr.setRequestHeader("X-CSRFToken", csrfToken);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", function (event) {
        showProgress(start + Math.min(event.loaded, end - start));
      });
      xhr.addEventListener("load", function () {
        upload.xhr = null;
        resolve({ status: xhr.status, body: parseJson(xhr.responseText) });
      });
      xhr.addEventListener("error", function () {
        upload.xhr = null;
        reject(new Error(TEXT.network));
      });
      xhr.addEventListener("abort", function () {
        upload.xhr = null;
        reject(new Error("aborted"));
      });
      xhr.send(file.slice(start, end));
    });
  }

  function wait(ms) {
    return new Promise(function (resolve) { window.setTimeout(resolve, ms); });
  }

  function payload(file) {
    var elements = form.elements;
    var data = {
      name: elements.name.value.trim(),
      disk_format: elements.disk_format.value,
      size: file.size,
      visibility: elements.visibility.value,
      os_type: elements.os_type.value,
      min_disk_gib: parseInt(elements.min_disk_gib.value, 10) || 0,
      min_ram_mib: parseInt(elements.min_ram_mib.value, 10) || 0,
      cloud_init: elements.cloud_init.checked,
      description: elements.description.value.trim(),
      tenant: activeTenant ? parseInt(activeTenant, 10) : null,
    };
    if (elements.owner) {
      data.tenant = elements.owner.value === "cloud" ? null : parseInt(elements.owner.value, 10);
    }
    return data;
  }

  class UploadError extends Error {
    constructor(message, problem) {
      super(message);
      this.problem = problem || null;
    }
  }

  async function sendFile(image, file) {
    // Read at each upload, so tests (and admins debugging a proxy) can change it on the page.
    var chunkSize = parseInt(form.getAttribute("data-chunk-size"), 10) || 8 * 1024 * 1024;
    var url = image.upload_url;
    var offset = image.received_bytes || 0;
    var retries = 0;
    showProgress(offset, true);
    while (true) {
      if (upload.cancelled) {
        throw new Error("aborted");
      }
      var end = Math.min(offset + chunkSize, file.size);
      var answer;
      try {
        answer = await putChunk(url, file, offset, end);
      } catch (error) {
        if (upload.cancelled) {
          throw error;
        }
        answer = { status: 0, body: { detail: error.message } };
      }
      if (answer.status === 200) {
        offset = typeof answer.body.received_bytes === "number" ? answer.body.received_bytes : end;
        retries = 0;
        setState("");
        showProgress(offset, true);
        continue;
      }
      if (answer.status === 202 || answer.status === 201) {
        return answer.body;
      }
      var resumeAt = answer.body && answer.body.received_bytes;
      if (answer.status === 409 && typeof resumeAt === "number" && resumeAt >= file.size) {
        return answer.body; // the last chunk arrived, only its answer was lost
      }
      var retryable = answer.status === 0 || answer.status === 409 || answer.status === 429 || answer.status >= 500;
      if (!retryable || retries >= MAX_RETRIES) {
        throw new UploadError((answer.body && answer.body.detail) || TEXT.network, answer.body);
      }
      retries += 1;
      if (answer.status === 409 && typeof resumeAt === "number") {
        offset = resumeAt; // the server tells us where to continue
        setState(format(TEXT.resuming, { sent: humanSize(offset) }), "warning");
      } else {
        setState(format(TEXT.retrying, { attempt: retries, max: MAX_RETRIES }), "warning");
        await wait(1000 * retries);
      }
      showProgress(offset, true);
    }
  }

  function warnBeforeLeaving(event) {
    event.preventDefault();
    event.returnValue = TEXT.leave;
    return TEXT.leave;
  }

  /* After a failed chunk the created image is kept: "Resume upload" continues it, "Cancel upload" deletes it. */
  function offerResume(message) {
    barFill.classList.remove("progress-bar-animated");
    barFill.classList.add("bg-danger");
    showError(message);
    setState("");
    upload.xhr = null;
    upload.running = false;
    submitButton.disabled = false;
    submitButton.classList.remove("d-none");
    submitButton.querySelector("span").textContent = TEXT.resume;
    cancelButton.disabled = false;
  }

  async function run(file) {
    upload.running = true;
    window.addEventListener("beforeunload", warnBeforeLeaving);
    barFill.classList.remove("bg-danger");
    barFill.classList.add("progress-bar-animated");
    submitButton.classList.add("d-none");
    try {
      if (!upload.image) {
        setState(TEXT.creating);
        var created = await api("POST", apiUrl, payload(file));
        if (created.status !== 201) {
          throw new UploadError((created.body && created.body.detail) || TEXT.network, created.body);
        }
        upload.image = created.body;
      } else {
        // Resuming: ask where the server stands.
        var current = await api("GET", imageUrl(upload.image));
        if (current.status === 200) {
          upload.image = current.body;
        }
        setState(format(TEXT.resuming, { sent: humanSize(upload.image.received_bytes || 0) }), "warning");
      }
      setState(TEXT.uploading);
      var finished = await sendFile(upload.image, file);
      window.removeEventListener("beforeunload", warnBeforeLeaving);
      showProgress(file.size, true);
      barFill.classList.remove("progress-bar-animated", "progress-bar-striped");
      barFill.classList.add("bg-success");
      cancelButton.classList.add("d-none");
      setState(TEXT.finishing, "success");
      window.location.assign(detailUrl.replace(/0\/$/, (finished.id || upload.image.id) + "/"));
    } catch (error) {
      window.removeEventListener("beforeunload", warnBeforeLeaving);
      if (!upload || upload.cancelled) {
        return; // the cancel button reports
      }
      var message = format(TEXT.failed, { error: error.message });
      if (upload.image) {
        offerResume(message);
      } else {
        panel.classList.add("d-none");
        upload = null;
        setBusy(false);
        showProblem(error.problem, message);
      }
    }
  }

  function imageUrl(image) {
    return apiUrl.replace(/\/?$/, "/") + image.id + "/";
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (upload && upload.running) {
      return;
    }
    clearErrors();
    var file = fileInput.files[0];
    if (!file) {
      showFieldError(fileInput, TEXT.chooseFile);
      fileInput.focus();
      return;
    }
    if (!upload) {
      upload = { image: null, xhr: null, cancelled: false, running: false };
      setBusy(true);
      startProgress(file);
    }
    run(file);
  });

  cancelButton.addEventListener("click", async function () {
    if (!upload || upload.cancelled) {
      return;
    }
    upload.cancelled = true;
    cancelButton.disabled = true;
    setState(TEXT.cancelling, "warning");
    if (upload.xhr) {
      upload.xhr.abort();
    }
    if (upload.image && upload.image.id !== undefined) {
      try {
        await api("DELETE", imageUrl(upload.image));
      } catch (error) {
        // Not reachable: the image stays in "uploading" and is removed later as an abandoned upload.
      }
    }
    window.removeEventListener("beforeunload", warnBeforeLeaving);
    panel.classList.add("d-none");
    upload = null;
    setBusy(false);
    submitButton.querySelector("span").textContent = TEXT.upload;
    clearErrors();
    noticeBox.textContent = TEXT.cancelled;
    noticeBox.classList.remove("d-none");
  });
})();
