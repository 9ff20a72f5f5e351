/* Metrics graphs (Chart.js): an instance's CPU %, memory, disk and network I/O (the instance page), or a host's
 * CPU %, memory and running instances (the host page), over a chosen time range.
 *
 * The page renders the history of the range in its URL (?range=1h|1d|1w|1mo, default 1h) into the json_script
 * "lc-metrics-data" ({kind, id, points: [{at, cpu_percent, …}], keep, range, tier, span, api, text}). The range
 * buttons ([data-lc-range]) fetch another range from the API (``api``?range=…), redraw, and put the choice in
 * the URL (history.replaceState), so a reload or a shared link shows the same range.
 *
 * Live points arrive over the /ws/live/ socket that static/vms/live.js keeps open (instance pages only), re-
 * dispatched as DOM events "lc:live" (detail = {"type": "metrics", "data": {id, tenant_id, point}}). On the
 * hour they are appended (at most `keep` points); on longer ranges they are folded into the last bucket (a
 * running average weighted by its `samples`, and the CPU peak) as the watcher folds them into its roll-ups,
 * or start a new bucket; buckets older than the range drop off.
 *
 * After each drawing the card ([data-lc-metrics]) carries data-lc-metrics-range and data-lc-metrics-points.
 */
(function () {
  "use strict";

  // Grid lines in the theme's colour (light or dark: static/portal/theme.js).
  function gridColour() {
    return getComputedStyle(document.documentElement).getPropertyValue("--bs-border-color-translucent").trim() || "#eef1f6";
  }

  // Numbers and times in the page's language (Chart.js formats ticks and tooltips with Intl).
  var LOCALE = document.documentElement.lang || undefined;

  var source = document.getElementById("lc-metrics-data");
  if (!source || !window.Chart) {
    return;
  }
  var config = JSON.parse(source.textContent);
  var text = config.text || {};
  var keep = config.keep || 240;
  var ownerId = String(config.id);
  var empty = document.getElementById("lc-metrics-empty");
  var card = document.querySelector("[data-lc-metrics]");
  var colours = { primary: "#0d6efd", success: "#198754", warning: "#f0ad00", info: "#0dcaf0", secondary: "#8a93a6", danger: "#dc3545" };
  var state = { range: config.range || "1h", tier: config.tier || null, span: config.span || 3600, points: config.points || [] };

  function bytes(value) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    var n = Math.abs(value || 0);
    var i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return (n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)) + " " + units[i];
  }

  function perSecond(value) {
    return bytes(value) + (text.perSecond || "/s");
  }

  // The decimals a tick step needs so that no two ticks read the same (at most ``most``).
  function decimals(step, most) {
    return step >= 1 || step === 0 ? 0 : Math.min(most, Math.ceil(-Math.log10(step) - 1e-9));
  }

  // An axis of byte values reads in one unit, the one of its largest tick ("1000 B/s" never stands
  // beside "2.0 KiB/s"), with the decimals its step needs (no two ticks read the same).
  function byteAxis(factor, suffix) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    return function (value, index, ticks) {
      var values = ticks.map(function (t) { return Math.abs(t.value * factor); });
      var top = Math.max.apply(null, values.concat([0]));
      var i = 0;
      var scale = 1;
      while (top / scale >= 1024 && i < units.length - 1) {
        scale *= 1024;
        i += 1;
      }
      var step = ticks.length > 1 ? Math.abs(ticks[1].value - ticks[0].value) * factor / scale : 1;
      return (value * factor / scale).toFixed(decimals(step, 3)) + " " + units[i] + suffix;
    };
  }

  function percentAxis(value, index, ticks) {
    var step = ticks.length > 1 ? Math.abs(ticks[1].value - ticks[0].value) : 1;
    return value.toFixed(decimals(step, 2)) + "%";
  }

  // Points are labelled with their time; the axis shows hours and minutes (and seconds when points come
  // less than a minute apart), the tooltip the full date and time.
  function label(point) {
    return point.at;
  }

  function when(value) {
    var at = new Date(value);
    return isNaN(at.getTime()) ? null : at;
  }

  function timeTick(value) {
    // "this": the scale (Chart.js), whose chart holds every label.
    var labels = this.chart.data.labels;
    var at = when(this.getLabelForValue(value));
    if (!at) {
      return this.getLabelForValue(value);
    }
    // Buckets spread over more than two days (a week or a month): the date, as ticks are then more than a
    // day apart; else hours and minutes.
    var first = when(labels[0]);
    var last = when(labels[labels.length - 1]);
    if (state.tier && first && last && last - first > 2 * 86400 * 1000) {
      return at.toLocaleDateString(LOCALE, { month: "short", day: "numeric" });
    }
    // Seconds when points come less than a minute apart (else two ticks could read the same minute).
    var seconds = false;
    for (var i = 1; i < labels.length && !seconds; i++) {
      var a = when(labels[i - 1]);
      var b = when(labels[i]);
      seconds = !!(a && b && Math.abs(b - a) < 60 * 1000);
    }
    var options = seconds ? { hour: "2-digit", minute: "2-digit", second: "2-digit" } : { hour: "2-digit", minute: "2-digit" };
    return at.toLocaleTimeString(LOCALE, options);
  }

  function dataset(name, colour, field, extra) {
    return Object.assign({
      label: name, field: field, data: [], borderColor: colour, backgroundColor: colour + "22",
      borderWidth: 2, pointRadius: 0, tension: 0.25, fill: true, spanGaps: true,
    }, extra || {});
  }

  function chart(id, datasets, axis, tick, options) {
    var canvas = document.getElementById(id);
    if (!canvas) {
      return null;
    }
    var scaleY = Object.assign({ beginAtZero: true, ticks: { callback: axis, maxTicksLimit: 5 }, grid: { color: gridColour() } },
      (options && options.y) || {});
    return new window.Chart(canvas, {
      type: "line",
      data: { labels: [], datasets: datasets },
      options: {
        locale: LOCALE,
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: {
            ticks: { maxTicksLimit: 6, maxRotation: 0, autoSkip: true, autoSkipPadding: 24, callback: timeTick },
            grid: { display: false },
          },
          y: scaleY,
        },
        plugins: {
          legend: { display: datasets.length > 1, labels: { boxWidth: 12 } },
          tooltip: {
            callbacks: {
              title: function (items) {
                var at = items.length ? when(items[0].label) : null;
                return at ? at.toLocaleString(LOCALE) : (items.length ? items[0].label : "");
              },
              label: function (ctx) { return " " + ctx.dataset.label + ": " + tick(ctx.parsed.y); },
            },
          },
        },
      },
    });
  }

  function percentTick(value) {
    return Math.round(value * 10) / 10 + "%";
  }

  function countAxis(value, index, ticks) {
    var step = ticks.length > 1 ? Math.abs(ticks[1].value - ticks[0].value) : 1;
    return value.toFixed(decimals(step, 1));
  }

  // The CPU graph: the average, and on the longer ranges the peak of each bucket too.
  function cpuChart() {
    var sets = [dataset(text.cpu || "CPU", colours.primary, "cpu_percent")];
    if (state.tier) {
      sets.push(dataset(text.cpuPeak || "Peak", colours.danger, "cpu_max_percent", { fill: false, borderWidth: 1, borderDash: [4, 3] }));
    }
    return chart("lc-metrics-cpu", sets, percentAxis, percentTick, { y: { suggestedMax: 100 } });
  }

  function mib(value) {
    return bytes((value || 0) * 1024 * 1024);
  }

  function build() {
    if (config.kind === "host") {
      return [
        cpuChart(),
        chart("lc-metrics-memory", [
          dataset(text.memoryUsed || "Used", colours.success, "memory_used_mib"),
          dataset(text.memoryTotal || "Total", colours.secondary, "memory_total_mib", { fill: false }),
        ], byteAxis(1024 * 1024, ""), mib),
        chart("lc-metrics-instances", [dataset(text.instances || "Running", colours.info, "instances", { stepped: !state.tier, tension: 0 })],
          countAxis, function (value) { return Math.round(value * 10) / 10; }, { y: { suggestedMax: 1 } }),
      ].filter(Boolean);
    }
    return [
      cpuChart(),
      chart("lc-metrics-memory", [
        dataset(text.memoryUsed || "Used", colours.success, "memory_used_mib"),
        dataset(text.memoryAvailable || "Available", colours.secondary, "memory_available_mib"),
      ], byteAxis(1024 * 1024, ""), mib),
      chart("lc-metrics-disk", [
        dataset(text.diskRead || "Read", colours.info, "disk_read_bps"),
        dataset(text.diskWrite || "Write", colours.warning, "disk_write_bps"),
      ], byteAxis(1, text.perSecond || "/s"), perSecond),
      chart("lc-metrics-net", [
        dataset(text.netRx || "Received", colours.success, "net_rx_bps"),
        dataset(text.netTx || "Sent", colours.primary, "net_tx_bps"),
      ], byteAxis(1, text.perSecond || "/s"), perSecond),
    ].filter(Boolean);
  }

  var charts = [];

  // Every chart shows state.points (the newest `keep` on the hour; the range's buckets beyond it).
  function draw() {
    charts.forEach(function (c) {
      c.data.labels = state.points.map(label);
      c.data.datasets.forEach(function (ds) {
        ds.data = state.points.map(function (point) {
          var value = point[ds.field];
          return value === null || value === undefined ? null : value;
        });
      });
      c.update("none");
    });
    if (empty) {
      empty.classList.toggle("d-none", state.points.length > 0);
    }
    if (card) {
      card.setAttribute("data-lc-metrics-range", state.range);
      card.setAttribute("data-lc-metrics-points", String(state.points.length));
    }
    window.lcMetricsCharts = charts;
  }

  function rebuild() {
    charts.forEach(function (c) { c.destroy(); });
    charts = build();
    draw();
  }

  // A live point: appended on the hour; folded into its bucket (or a new one) on the longer ranges.
  function add(point) {
    var points = state.points;
    if (!state.tier) {
      points.push(point);
      while (points.length > keep) {
        points.shift();
      }
      return;
    }
    var at = when(point.at);
    if (!at) {
      return;
    }
    var tier = state.tier * 1000;
    var start = Math.floor(at.getTime() / tier) * tier;
    var last = points.length ? points[points.length - 1] : null;
    var lastAt = last ? when(last.at) : null;
    if (last && lastAt && lastAt.getTime() === start) {
      var n = last.samples || 1;
      Object.keys(point).forEach(function (field) {
        var value = point[field];
        if (field === "at" || field === "interval" || typeof value !== "number") {
          return;
        }
        if (field === "vcpus") {
          last.vcpus = Math.max(last.vcpus || 0, value);
        } else {
          last[field] = typeof last[field] === "number" ? (last[field] * n + value) / (n + 1) : value;
        }
      });
      if (typeof point.cpu_percent === "number") {
        last.cpu_max_percent = Math.max(typeof last.cpu_max_percent === "number" ? last.cpu_max_percent : 0, point.cpu_percent);
      }
      last.samples = n + 1;
    } else if (!lastAt || start > lastAt.getTime()) {
      var bucket = Object.assign({}, point, { at: new Date(start).toISOString(), interval: state.tier, cpu_max_percent: point.cpu_percent, samples: 1 });
      points.push(bucket);
    }
    var oldest = at.getTime() - state.span * 1000;
    while (points.length && when(points[0].at) && when(points[0].at).getTime() < oldest) {
      points.shift();
    }
  }

  document.addEventListener("lc:live", function (event) {
    var message = event.detail || {};
    if (config.kind === "host" || message.type !== "metrics" || !message.data || String(message.data.id) !== ownerId || !message.data.point) {
      return;
    }
    add(message.data.point);
    draw();
  });

  // The range buttons: fetch the range from the API, redraw, and keep the choice in the URL.
  var ranges = {};
  (config.ranges || []).forEach(function (r) { ranges[r.key] = r; });
  var asked = 0;

  function mark(key) {
    document.querySelectorAll("[data-lc-range]").forEach(function (button) {
      var on = button.getAttribute("data-lc-range") === key;
      button.classList.toggle("active", on);
      button.setAttribute("aria-pressed", on ? "true" : "false");
    });
  }

  function choose(key) {
    var chosen = ranges[key];
    if (!chosen || !config.api) {
      return;
    }
    var ticket = ++asked;
    mark(key);
    if (card) {
      card.setAttribute("aria-busy", "true");
    }
    fetch(config.api + "?range=" + encodeURIComponent(key), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error(String(response.status));
        }
        return response.json();
      })
      .then(function (points) {
        if (ticket !== asked) {
          return;  // another range was chosen meanwhile
        }
        state = { range: key, tier: chosen.tier, span: chosen.seconds, points: points };
        var url = new URL(window.location.href);
        url.searchParams.set("range", key);
        window.history.replaceState(window.history.state, "", url.toString());
        rebuild();
      })
      .catch(function () {
        mark(state.range);  // the graphs still show the range they showed
      })
      .finally(function () {
        if (card && ticket === asked) {
          card.removeAttribute("aria-busy");
        }
      });
  }

  document.querySelectorAll("[data-lc-range]").forEach(function (button) {
    button.addEventListener("click", function () { choose(button.getAttribute("data-lc-range")); });
  });

  rebuild();
})();
