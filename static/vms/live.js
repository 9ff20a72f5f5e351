/* Live instance state over the /ws/live/ websocket (channels), for the instance list and detail pages.
 *
 * The page renders everything; this script only keeps it current. It reads its configuration
 * (socket path, translated labels) from the json_script element "lc-live-config", and updates every
 * element with data-instance="<id>":
 *   [data-lc-field=state]      the state badge        [data-lc-field=task]   task label + progress bar
 *   [data-lc-field=addresses]  the addresses          [data-lc-action=…]     enabled when in allowed_actions
 * Messages: {"type": "instance", "data": payload}, {"type": "instance.deleted", "data": {"id"}},
 * {"type": "operation", "data": {id, kind, target_type, target_id, state, progress, message, error}}.
 * The socket reconnects with exponential backoff; #lc-live-indicator says "Live" or "Offline".
 */
(function () {
  "use strict";

  var source = document.getElementById("lc-live-config");
  if (!source || !window.WebSocket) {
    return;
  }
  var config = JSON.parse(source.textContent);
  var text = config.text || {};
  var detailId = config.instance ? String(config.instance) : null;
  var indicator = document.getElementById("lc-live-indicator");

  var TONES = {
    running: "success", paused: "warning", shutoff: "secondary", crashed: "danger",
    error: "danger", deleting: "warning", building: "info",
  };
  var ICONS = {
    running: "bi-play-circle-fill", paused: "bi-pause-circle-fill", shutoff: "bi-stop-circle",
    crashed: "bi-x-octagon-fill", error: "bi-x-octagon-fill", deleting: "bi-trash", building: "bi-hourglass-split",
  };
  var FINISHED = { succeeded: true, failed: true };
  // Tasks whose end changes what the detail page lists (sizes, disks, snapshots, MAC…).
  var STRUCTURAL = {
    launch: true, resize: true, set_resources: true, attach_disk: true, detach_disk: true,
    snapshot_create: true, snapshot_revert: true, snapshot_delete: true, finish_install: true,
  };

  // ------------------------------------------------------------------ indicator

  function setIndicator(state) {
    if (!indicator) {
      return;
    }
    var label = { live: text.live, offline: text.offline, connecting: text.connecting }[state] || state;
    indicator.setAttribute("data-lc-live-state", state);
    indicator.className = indicator.className.replace(/\b(bg|text)-(success|danger|secondary)-(subtle|emphasis)\b/g, "");
    var tone = state === "live" ? "success" : state === "offline" ? "danger" : "secondary";
    indicator.classList.add("bg-" + tone + "-subtle", "text-" + tone + "-emphasis");
    indicator.querySelector(".lc-live-text").textContent = label;
    var dot = indicator.querySelector(".lc-dot");
    if (dot) {
      dot.className = "lc-dot bg-" + tone;
    }
  }

  // ------------------------------------------------------------------ instance updates

  function containers(id) {
    return document.querySelectorAll('[data-instance="' + String(id) + '"]');
  }

  function renderState(badge, data) {
    var state = data.state;
    var tone = TONES[state] || "info";
    badge.className = "badge rounded-pill lc-vm-state bg-" + tone + "-subtle text-" + tone + "-emphasis";
    badge.setAttribute("data-state", state);
    if (data.state_reason) {
      badge.setAttribute("title", data.state_reason);
    } else {
      badge.removeAttribute("title");
    }
    var icon = badge.querySelector("i");
    if (icon) {
      icon.className = "bi " + (ICONS[state] || "bi-hourglass-split") + " me-1";
    }
    var label = badge.querySelector(".lc-vm-state-label");
    if (label) {
      label.textContent = (config.states && config.states[state]) || data.state_display || state;
    }
  }

  function renderTask(box, task) {
    var previous = box.getAttribute("data-task") || "";
    box.setAttribute("data-task", task || "");
    box.classList.toggle("d-none", !task);
    if (task && task !== previous) {
      var label = box.querySelector(".lc-vm-task-text");
      if (label) {
        label.textContent = (config.tasks && config.tasks[task]) || task;
      }
      setProgress(box, 0, "");
    }
  }

  function setProgress(box, percent, message) {
    var bar = box.querySelector(".progress-bar");
    var progress = box.querySelector(".progress");
    var number = box.querySelector(".lc-vm-task-percent");
    var note = box.querySelector(".lc-vm-task-message");
    if (bar) {
      bar.style.width = percent + "%";
    }
    if (progress) {
      progress.setAttribute("aria-valuenow", String(percent));
    }
    if (number) {
      number.textContent = percent + "%";
    }
    if (note && message !== undefined && message !== null) {
      note.textContent = message;
    }
  }

  function renderAddresses(cell, addresses) {
    cell.textContent = "";
    if (!addresses || !addresses.length) {
      var dash = document.createElement("span");
      dash.className = "text-body-secondary";
      dash.textContent = "—";
      cell.appendChild(dash);
      return;
    }
    addresses.forEach(function (address) {
      var line = document.createElement("div");
      line.textContent = typeof address === "string" ? address : JSON.stringify(address);
      cell.appendChild(line);
    });
  }

  // What the instance accepts now comes with every update (the server's action registry): a button is
  // enabled exactly when its action is among them.
  // (Cloud admins' updates also carry admin_actions: migrate.)
  function actionAllowed(action, data) {
    return (data.allowed_actions || []).concat(data.admin_actions || []).indexOf(action) !== -1;
  }

  function updateButtons(root, data) {
    root.querySelectorAll("[data-lc-action]").forEach(function (button) {
      var allowed = actionAllowed(button.getAttribute("data-lc-action"), data);
      if (button.hasAttribute("data-lc-needs-available")) {
        allowed = allowed && button.getAttribute("data-lc-needs-available") === "true";
      }
      button.disabled = !allowed;
    });
  }

  function onInstance(data) {
    trackState(data);
    var found = containers(data.id);
    if (!found.length) {
      if (!detailId) {
        var notice = document.getElementById("lc-new-instances");
        // Only a launch is news: other unknown instances are simply on another page or filtered out.
        if (notice && data.task === "launch") {
          notice.classList.remove("d-none");
        }
      }
      return;
    }
    found.forEach(function (root) {
      var previousTask = root.getAttribute("data-task");
      root.setAttribute("data-state", data.state);
      root.setAttribute("data-task", data.task || "");
      root.setAttribute("data-allowed", (data.allowed_actions || []).join(" "));
      root.querySelectorAll('[data-lc-field="state"]').forEach(function (badge) { renderState(badge, data); });
      root.querySelectorAll('[data-lc-field="task"]').forEach(function (box) { renderTask(box, data.task); });
      root.querySelectorAll('[data-lc-field="addresses"]').forEach(function (cell) {
        renderAddresses(cell, data.addresses);
      });
      root.querySelectorAll('[data-lc-field="installing"]').forEach(function (badge) {
        badge.classList.toggle("d-none", !data.installing);
      });
      if (detailId && root.id === "lc-instance") {
        updateButtons(document, data);
        if (previousTask && !data.task && STRUCTURAL[previousTask]) {
          refreshSections();
        }
      }
    });
  }

  // After a task that changes what the page lists (sizes, disks, snapshots…), fetch the page again
  // and swap those sections in place; the console and the graphs keep running. On failure, say so.
  var SECTIONS = ["lc-instance-badges", "lc-instance-actions", "lc-instance-facts", "lc-instance-snapshots", "lc-instance-disks",
    "lc-instance-resize", "lc-instance-resources", "lc-instance-capture"];

  // This page as the server renders it now, parsed. X-LC-Refresh: the page leaves the flash messages for
  // the next real page view (templates/base.html).
  function freshPage() {
    return fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html", "X-LC-Refresh": "1" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error(String(response.status));
        }
        return response.text();
      })
      .then(function (html) {
        return new DOMParser().parseFromString(html, "text/html");
      });
  }

  function refreshSections() {
    freshPage()
      .then(function (fresh) {
        SECTIONS.forEach(function (id) {
          var current = document.getElementById(id);
          var next = fresh.getElementById(id);
          if (current && next) {
            var imported = document.importNode(next, true);
            var focused = current.contains(document.activeElement) ? document.activeElement : null;
            keepUserInput(current, imported);
            current.replaceWith(imported);
            if (focused && focused.name) {
              var twin = imported.querySelector('[name="' + CSS.escape(focused.name) + '"]');
              if (twin) {
                twin.focus();
              }
            }
          }
        });
        var root = document.getElementById("lc-instance");
        var freshRoot = fresh.getElementById("lc-instance");
        if (root && freshRoot) {
          ["data-state", "data-task", "data-installing", "data-allowed"].forEach(function (name) {
            root.setAttribute(name, freshRoot.getAttribute(name) || "");
          });
          // The buttons outside the redrawn sections (Delete in the page header) follow the fresh page too.
          updateButtons(document, { allowed_actions: (root.getAttribute("data-allowed") || "").split(" ") });
          root.setAttribute("data-refreshed", String(Date.now()));
        }
      })
      .catch(showChanged);
  }

  // ------------------------------------------------------------------ catching up (list pages)

  // A row with a task, or an operation not finished, as the page was rendered.
  function workInProgress() {
    return !!document.querySelector(
      '#lc-instance-rows [data-lc-field="task"]:not([data-task=""]), ' +
      '#lc-recent-operations [data-state="queued"], #lc-recent-operations [data-state="running"]'
    );
  }

  // Fetch the page again and take from it what this page shows live: the instance rows (a row the fresh
  // page lacks is gone; a row keeps its checkbox), the overview's state counts and recent operations.
  function catchUp() {
    freshPage()
      .then(function (fresh) {
        var rows = document.getElementById("lc-instance-rows");
        var freshRows = fresh.getElementById("lc-instance-rows");
        if (rows && freshRows) {
          rows.querySelectorAll("tr[data-instance]").forEach(function (row) {
            var id = row.getAttribute("data-instance");
            var next = freshRows.querySelector('tr[data-instance="' + CSS.escape(id) + '"]');
            if (!next) {
              untrackState(id);
              row.parentNode.removeChild(row);
              return;
            }
            var imported = document.importNode(next, true);
            var box = row.querySelector(".lc-select");
            var twin = imported.querySelector(".lc-select");
            if (box && twin) {
              twin.checked = box.checked;
            }
            row.replaceWith(imported);
          });
          updateBulk();
        }
        var freshStates = fresh.getElementById("lc-state-chart-data");
        if (stateData && freshStates) {
          stateData.instances = JSON.parse(freshStates.textContent).instances;
          recountStates();
        }
        ["lc-recent-operations", "lc-recent-none"].forEach(function (id) {
          var current = document.getElementById(id);
          var next = fresh.getElementById(id);
          if (current && next) {
            current.replaceWith(document.importNode(next, true));
          }
        });
        document.documentElement.setAttribute("data-lc-caught-up", String(Date.now()));
      })
      .catch(function () {
        setIndicator("offline");
      });
  }

  // What the user typed or chose in a section's forms survives its redraw: fields they changed keep
  // their value (the others take the fresh page's, e.g. a new vCPU count).
  function keepUserInput(current, next) {
    current.querySelectorAll("input[name], textarea[name], select[name]").forEach(function (field) {
      if (field.type === "hidden" || field.type === "submit" || field.type === "button") {
        return;
      }
      var selector = '[name="' + CSS.escape(field.name) + '"]';
      if (field.type === "checkbox" || field.type === "radio") {
        if (field.checked !== field.defaultChecked) {
          var option = next.querySelector(selector + '[value="' + CSS.escape(field.value) + '"]');
          if (option) {
            option.checked = field.checked;
          }
        }
        return;
      }
      var changed = field.tagName === "SELECT"
        ? Array.prototype.some.call(field.options, function (o) { return o.selected !== o.defaultSelected; })
        : field.value !== field.defaultValue;
      var twin = next.querySelector(selector);
      if (changed && twin) {
        twin.value = field.value;
      }
    });
  }

  function showChanged() {
    var box = document.getElementById("lc-instance-changed");
    if (box) {
      box.querySelector("span").textContent = text.changed || "";
      box.classList.remove("d-none");
    }
  }

  function onDeleted(data) {
    var id = String(data.id);
    untrackState(id);
    if (detailId === id) {
      var gone = document.getElementById("lc-instance-gone");
      if (gone) {
        gone.textContent = text.deleted || "";
        gone.classList.remove("d-none");
      }
      document.querySelectorAll("[data-lc-action]").forEach(function (button) { button.disabled = true; });
      return;
    }
    document.querySelectorAll('tr[data-instance="' + id + '"]').forEach(function (row) {
      row.parentNode.removeChild(row);
    });
    updateBulk();
  }

  // ------------------------------------------------------------------ operations

  // Steps and errors arrive in the page's language (the socket translates what the portal stores untranslated).
  function onOperation(data) {
    notify(data);
    renderRecent(data);
    if (data.target_type !== "vms.instance") {
      return;
    }
    var finished = !!FINISHED[data.state];
    containers(data.target_id).forEach(function (root) {
      root.querySelectorAll('[data-lc-field="task"]').forEach(function (box) {
        if (!finished) {
          box.setAttribute("data-operation", String(data.id));
          setProgress(box, data.progress || 0, data.message || "");
        }
      });
    });
    if (detailId && String(data.target_id) === detailId) {
      renderOperation(data);
    }
  }

  function renderOperation(data) {
    var list = document.getElementById("lc-operation-list");
    if (!list) {
      return;
    }
    var item = list.querySelector('[data-operation="' + data.id + '"]');
    if (!item) {
      var empty = document.getElementById("lc-operations-none");
      if (empty) {
        empty.parentNode.removeChild(empty);
      }
      item = document.createElement("li");
      item.className = "lc-operation";
      item.setAttribute("data-operation", String(data.id));
      var head = document.createElement("div");
      head.className = "d-flex flex-wrap justify-content-between align-items-baseline gap-2 mb-1";
      var title = document.createElement("div");
      title.className = "fw-semibold";
      var kind = document.createElement("span");
      kind.className = "lc-op-kind";
      var action = (data.kind || "").replace(/^instance\./, "");
      kind.textContent = (config.tasks && config.tasks[action]) || data.kind || text.operation;
      var badge = document.createElement("span");
      badge.className = "badge rounded-pill ms-1 lc-op-state";
      title.appendChild(kind);
      title.appendChild(document.createTextNode(" "));
      title.appendChild(badge);
      head.appendChild(title);
      fillOperationItem(item, head, kind.textContent);
      list.insertBefore(item, list.firstChild);
    }
    updateOperationItem(item, data);
  }

  // The body of an operation entry (detail page and overview): its head, a progress bar, a message line;
  // updateOperationItem fills them in.
  function fillOperationItem(item, head, label) {
    var progress = document.createElement("div");
    progress.className = "progress lc-progress";
    progress.setAttribute("role", "progressbar");
    progress.setAttribute("aria-label", label);
    progress.setAttribute("aria-valuemin", "0");
    progress.setAttribute("aria-valuemax", "100");
    var bar = document.createElement("div");
    bar.className = "progress-bar";
    progress.appendChild(bar);
    var message = document.createElement("div");
    message.className = "small mt-1 lc-op-message";
    item.appendChild(head);
    item.appendChild(progress);
    item.appendChild(message);
  }

  function updateOperationItem(item, data) {
    item.setAttribute("data-state", data.state);
    var stateBadge = item.querySelector(".lc-op-state");
    var tone = { succeeded: "success", failed: "danger", running: "info" }[data.state] || "secondary";
    if (stateBadge) {
      stateBadge.className = "badge rounded-pill ms-1 lc-op-state bg-" + tone + "-subtle text-" + tone + "-emphasis";
      stateBadge.textContent = (config.operationStates || {})[data.state] || data.state;
    }
    var fill = item.querySelector(".progress-bar");
    var percent = data.state === "failed" ? 100 : data.progress || 0;
    if (fill) {
      fill.style.width = percent + "%";
      fill.className = "progress-bar" + (data.state === "failed" ? " bg-danger" : data.state === "succeeded"
        ? " bg-success" : " progress-bar-striped progress-bar-animated");
    }
    var holder = item.querySelector(".progress");
    if (holder) {
      holder.setAttribute("aria-valuenow", String(percent));
    }
    var note = item.querySelector(".lc-op-message");
    if (note) {
      note.className = "small mt-1 lc-op-message " + (data.state === "failed" ? "text-danger-emphasis" : "text-body-secondary");
      note.textContent = data.state === "failed" ? data.error || "" : FINISHED[data.state] ? data.message || ""
        : (data.progress || 0) + "%" + (data.message ? " · " + data.message : "");
    }
  }

  // ------------------------------------------------------------------ overview: instances by state, recent operations

  var stateSource = document.getElementById("lc-state-chart-data");
  var stateData = stateSource ? JSON.parse(stateSource.textContent) : null;

  function ofThisTenant(data) {
    return !config.tenant || data.tenant_id === undefined || data.tenant_id === config.tenant;
  }

  function recountStates() {
    var counts = {};
    var ids = Object.keys(stateData.instances);
    ids.forEach(function (id) {
      var state = stateData.instances[id];
      counts[state] = (counts[state] || 0) + 1;
    });
    document.querySelectorAll("#lc-state-counts [data-state]").forEach(function (line) {
      var count = counts[line.getAttribute("data-state")] || 0;
      line.querySelector(".lc-state-count").textContent = String(count);
      line.classList.toggle("text-body-tertiary", !count);
    });
    var total = document.getElementById("lc-instance-total");
    if (total) {
      total.textContent = String(ids.length);
    }
    var box = document.getElementById("lc-state-chart-box");
    var empty = document.getElementById("lc-state-chart-empty");
    if (box && empty) {
      box.classList.toggle("d-none", !ids.length);
      empty.classList.toggle("d-none", !!ids.length);
    }
    var chart = window.Chart && window.Chart.getChart(document.getElementById("lc-state-chart"));
    if (chart) {
      chart.data.datasets[0].data = stateData.states.map(function (state) { return counts[state] || 0; });
      chart.update();
    }
  }

  function trackState(data) {
    if (!stateData || !ofThisTenant(data) || stateData.instances[String(data.id)] === data.state) {
      return;
    }
    stateData.instances[String(data.id)] = data.state;
    recountStates();
  }

  function untrackState(id) {
    if (stateData && Object.prototype.hasOwnProperty.call(stateData.instances, id)) {
      delete stateData.instances[id];
      recountStates();
    }
  }

  function targetUrl(data) {
    var url = (config.targetUrls || {})[data.target_type];
    return url && data.target_id ? url.replace("{id}", encodeURIComponent(String(data.target_id))) : "";
  }

  function operationLabel(data) {
    return (config.operations || {})[data.kind] || data.kind || text.operation || "";
  }

  function renderRecent(data) {
    var list = document.getElementById("lc-recent-operations");
    if (!list || !ofThisTenant(data)) {
      return;
    }
    var item = list.querySelector('[data-operation="' + data.id + '"]');
    if (!item) {
      item = document.createElement("li");
      item.className = "lc-recent-op";
      item.setAttribute("data-operation", String(data.id));
      var head = document.createElement("div");
      head.className = "d-flex flex-wrap justify-content-between align-items-baseline gap-2 mb-1";
      var title = document.createElement("div");
      title.className = "min-w-0 text-truncate";
      var kind = document.createElement("span");
      kind.className = "fw-semibold lc-op-kind";
      kind.textContent = operationLabel(data);
      var url = targetUrl(data);
      var target = document.createElement(url ? "a" : "span");
      target.className = "lc-op-target";
      target.textContent = data.target || "";
      if (url) {
        target.href = url;
      }
      var badge = document.createElement("span");
      badge.className = "badge rounded-pill ms-1 lc-op-state";
      title.appendChild(kind);
      title.appendChild(document.createTextNode(" "));
      title.appendChild(target);
      title.appendChild(document.createTextNode(" "));
      title.appendChild(badge);
      var time = document.createElement("time");
      time.className = "small text-body-secondary lc-op-time";
      time.setAttribute("datetime", new Date().toISOString());
      time.textContent = text.justNow || "";
      head.appendChild(title);
      head.appendChild(time);
      fillOperationItem(item, head, kind.textContent);
      list.insertBefore(item, list.firstChild);
      var limit = config.recentLimit || 8;
      while (list.children.length > limit) {
        list.removeChild(list.lastElementChild);
      }
      var none = document.getElementById("lc-recent-none");
      if (none) {
        none.classList.add("d-none");
      }
    }
    updateOperationItem(item, data);
  }

  // ------------------------------------------------------------------ toasts of finished and failed operations

  var toasted = {};

  function notify(data) {
    var texts = config.toast;
    if (!texts || !FINISHED[data.state] || !window.bootstrap || toasted[data.id + ":" + data.state]) {
      return;
    }
    toasted[data.id + ":" + data.state] = true;
    var failed = data.state === "failed";
    var region = document.getElementById(failed ? "lc-toasts-alert" : "lc-toasts-status");
    if (!region) {
      return;
    }
    var values = { what: operationLabel(data), target: data.target || String(data.target_id || ""), error: data.error || "" };
    var template = failed ? (data.error ? texts.failed : texts.failedNoError) : texts.succeeded;
    var toast = document.createElement("div");
    toast.className = "toast align-items-center border-0 lc-toast " + (failed ? "text-bg-danger" : "text-bg-success");
    toast.setAttribute("role", failed ? "alert" : "status");
    toast.setAttribute("aria-live", failed ? "assertive" : "polite");
    toast.setAttribute("aria-atomic", "true");
    toast.setAttribute("data-operation", String(data.id));
    toast.setAttribute("data-state", data.state);
    var row = document.createElement("div");
    row.className = "d-flex align-items-start";
    var body = document.createElement("div");
    body.className = "toast-body";
    var icon = document.createElement("i");
    icon.className = "bi " + (failed ? "bi-x-octagon-fill" : "bi-check-circle-fill") + " me-2";
    icon.setAttribute("aria-hidden", "true");
    var message = document.createElement("span");
    message.className = "lc-toast-text";
    message.textContent = (template || "").replace(/\{(what|target|error)\}/g, function (match, key) { return values[key]; });
    body.appendChild(icon);
    body.appendChild(message);
    var url = targetUrl(data);
    if (url && url !== window.location.pathname) {
      var link = document.createElement("a");
      link.className = "link-light ms-2 lc-toast-link";
      link.href = url;
      link.textContent = texts.open || "";
      body.appendChild(link);
    }
    var close = document.createElement("button");
    close.type = "button";
    close.className = "btn-close btn-close-white me-2 mt-2 ms-auto flex-none";
    close.setAttribute("data-bs-dismiss", "toast");
    close.setAttribute("aria-label", texts.close || "");
    row.appendChild(body);
    row.appendChild(close);
    toast.appendChild(row);
    toast.addEventListener("hidden.bs.toast", function () {
      if (toast.parentNode) {
        toast.parentNode.removeChild(toast);
      }
    });
    region.appendChild(toast);
    // Success fades away on its own; a failure stays until it is closed.
    window.bootstrap.Toast.getOrCreateInstance(toast, { autohide: !failed, delay: 6000 }).show();
  }

  // ------------------------------------------------------------------ socket

  var delay = 1000;
  var MAX_DELAY = 30000;
  var socket = null;
  var stopped = false;
  var everOpened = false;

  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    setIndicator("connecting");
    try {
      socket = new WebSocket(scheme + window.location.host + config.socket);
    } catch (err) {
      scheduleReconnect();
      return;
    }
    // "ready": the server joined this socket to its groups (a refused socket opens too, then closes).
    function onReady() {
      delay = 1000;
      setIndicator("live");
      // Events sent before this socket joined its groups are lost: after a reconnect, or when the page
      // was rendered while a task ran (it may have ended meanwhile), the page catches up once.
      var root = detailId && document.getElementById("lc-instance");
      if (root && (everOpened || root.getAttribute("data-task"))) {
        refreshSections();
      } else if (!detailId && (everOpened || workInProgress())) {
        catchUp();
      }
      everOpened = true;
    }
    socket.addEventListener("message", function (event) {
      var message;
      try {
        message = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      if (!message || !message.data) {
        return;
      }
      if (message.type === "ready") {
        onReady();
        return;
      }
      // Other scripts of the page (metrics.js) listen to the same socket through this event.
      document.dispatchEvent(new CustomEvent("lc:live", { detail: message }));
      if (message.type === "instance") {
        onInstance(message.data);
      } else if (message.type === "instance.deleted") {
        onDeleted(message.data);
      } else if (message.type === "operation") {
        onOperation(message.data);
      }
    });
    socket.addEventListener("close", function (event) {
      setIndicator("offline");
      // 4401/4403: signed out or no access any more; reconnecting would not help.
      if (event.code === 4401 || event.code === 4403) {
        stopped = true;
        return;
      }
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    if (stopped) {
      return;
    }
    window.setTimeout(connect, delay + Math.floor(Math.random() * 500));
    delay = Math.min(MAX_DELAY, delay * 2);
  }

  window.addEventListener("beforeunload", function () {
    stopped = true;
    if (socket) {
      socket.close();
    }
  });

  // ------------------------------------------------------------------ bulk selection (list page)

  var bulkForm = document.getElementById("lc-bulk-form");

  function updateBulk() {
    if (!bulkForm) {
      return;
    }
    var boxes = bulkForm.querySelectorAll(".lc-select");
    var chosen = bulkForm.querySelectorAll(".lc-select:checked").length;
    bulkForm.querySelectorAll(".lc-bulk-button").forEach(function (button) { button.disabled = chosen === 0; });
    var all = document.getElementById("lc-select-all");
    if (all) {
      all.checked = chosen > 0 && chosen === boxes.length;
      all.indeterminate = chosen > 0 && chosen < boxes.length;
    }
    var count = document.getElementById("lc-bulk-count");
    if (count) {
      if (!count.hasAttribute("data-lc-initial")) {
        count.setAttribute("data-lc-initial", count.textContent);
      }
      count.textContent = chosen ? count.getAttribute("data-lc-template").replace("{n}", chosen)
        : count.getAttribute("data-lc-initial");
    }
  }

  if (bulkForm) {
    bulkForm.addEventListener("change", function (event) {
      if (event.target.id === "lc-select-all") {
        bulkForm.querySelectorAll(".lc-select").forEach(function (box) { box.checked = event.target.checked; });
      }
      updateBulk();
    });
    bulkForm.addEventListener("submit", function (event) {
      var submitter = event.submitter;
      if (submitter && submitter.value === "delete" && !window.confirm(bulkForm.getAttribute("data-lc-bulk-confirm"))) {
        event.preventDefault();
      }
    });
    updateBulk();
  }

  connect();
})();
