/* The top bar's notification bell (templates/vms/_notification_bell.html), on every dashboard page.
 *
 * The count comes rendered with the page; this script keeps it current from the live socket
 * (/ws/live/, every tenant of the user: the operation events live.js shows as toasts). An operation
 * that ends (succeeded or failed) adds one, once per operation. Opening the menu loads the newest
 * notifications from the server (an HTML fragment, rendered and translated there, whose data-unread
 * is the count as of now); "Mark all read" posts without leaving the page. After a reconnect the count
 * is fetched once again (events sent while the socket was down are lost), and so it is on the first
 * connection when the page was rendered with work in progress. No polling.
 * #lc-bell[data-lc-live-state] says "connecting", "live" or "offline".
 */
(function () {
  "use strict";

  var bell = document.getElementById("lc-bell");
  if (!bell || !window.WebSocket || !window.fetch) {
    return;
  }
  var badge = document.getElementById("lc-bell-count");
  var button = document.getElementById("lc-bell-button");
  var FINISHED = { succeeded: true, failed: true };
  var LIMIT = 100; // the server's UNREAD_LIMIT: the badge says "99+" from there on
  var counted = {};
  var unread = parseInt(badge.getAttribute("data-unread"), 10) || 0;

  function setCount(count) {
    unread = count;
    badge.setAttribute("data-unread", String(count));
    badge.textContent = count >= LIMIT ? LIMIT - 1 + "+" : String(count);
    badge.classList.toggle("d-none", count === 0);
  }

  function isOpen() {
    return button.getAttribute("aria-expanded") === "true";
  }

  // The menu as the server renders it now; its data-unread is the authoritative count.
  function load() {
    var items = document.getElementById("lc-bell-items");
    return fetch(bell.getAttribute("data-lc-menu"), { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error(String(response.status));
        }
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("lc-bell-items");
        if (!fresh) {
          return;
        }
        var current = document.getElementById("lc-bell-items") || items;
        // What the server counted is not counted again when its event comes after this answer.
        fresh.querySelectorAll("[data-operation]").forEach(function (item) {
          counted[item.getAttribute("data-operation")] = true;
        });
        current.replaceWith(document.importNode(fresh, true));
        setCount(parseInt(fresh.getAttribute("data-unread"), 10) || 0);
        bell.setAttribute("data-lc-loaded", String(Date.now()));
      })
      .catch(function () {
        bell.setAttribute("data-lc-live-state", "offline");
      });
  }

  bell.addEventListener("show.bs.dropdown", load);

  var form = bell.querySelector("form.lc-bell-read");
  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      fetch(form.action, {
        method: "POST",
        credentials: "same-origin",
        headers: { Accept: "application/json" },
        body: new FormData(form),
      }).then(function (response) {
        if (!response.ok) {
          throw new Error(String(response.status));
        }
        setCount(0);
        document.querySelectorAll("#lc-bell-items .lc-unread").forEach(function (item) {
          item.classList.remove("lc-unread");
        });
      }).catch(function () {
        form.submit(); // the plain form then: it comes back to this page
      });
    });
  }

  // The page was rendered with work in progress (an instance's task, an operation queued or running):
  // what ended before this socket joined its groups sent its event to nobody here.
  function workInProgress() {
    return !!document.querySelector(
      '[data-lc-field="task"]:not([data-task=""]), [data-operation][data-state="queued"], ' +
      '[data-operation][data-state="running"]'
    );
  }

  function onOperation(data) {
    if (!FINISHED[data.state] || counted[data.id]) {
      return;
    }
    counted[data.id] = true;
    if (isOpen()) {
      load(); // the open menu shows it, and the server counts
    } else {
      setCount(unread + 1);
    }
  }

  // ------------------------------------------------------------------ socket

  var delay = 1000;
  var MAX_DELAY = 30000;
  var stopped = false;
  var everReady = false;
  var socket = null;

  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    try {
      socket = new WebSocket(scheme + window.location.host + bell.getAttribute("data-lc-socket"));
    } catch (err) {
      scheduleReconnect();
      return;
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
        delay = 1000;
        if (everReady || workInProgress()) {
          load(); // what ended while the socket was down, or before it joined while the page showed it running
        }
        everReady = true;
        bell.setAttribute("data-lc-live-state", "live");
      } else if (message.type === "operation") {
        onOperation(message.data);
      }
    });
    socket.addEventListener("close", function (event) {
      bell.setAttribute("data-lc-live-state", "offline");
      if (event.code === 4401 || event.code === 4403) {
        stopped = true; // signed out, or no tenant any more: reconnecting would not help
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

  connect();
})();
