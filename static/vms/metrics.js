/* Instance metrics graphs (Chart.js): CPU %, memory, disk I/O and network I/O of the instance page.
 *
 * The page renders the history so far into the json_script "lc-metrics-data"
 * ({instance, points: [{at, cpu_percent, memory_used_mib, …}], keep, text}); live points arrive over the
 * /ws/live/ socket that static/vms/live.js keeps open, which re-dispatches every message as a DOM event
 * "lc:live" (detail = {"type": "metrics", "data": {id, tenant_id, point}}). At most `keep` points are shown.
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
  var instanceId = String(config.instance);
  var empty = document.getElementById("lc-metrics-empty");
  var colours = { primary: "#0d6efd", success: "#198754", warning: "#f0ad00", info: "#0dcaf0", secondary: "#8a93a6" };

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

  function dataset(name, colour, field) {
    return {
      label: name, field: field, data: [], borderColor: colour, backgroundColor: colour + "22",
      borderWidth: 2, pointRadius: 0, tension: 0.25, fill: true, spanGaps: true,
    };
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

  var charts = [
    chart("lc-metrics-cpu", [dataset(text.cpu || "CPU", colours.primary, "cpu_percent")], percentAxis,
      function (value) { return Math.round(value * 10) / 10 + "%"; }, { y: { suggestedMax: 100 } }),
    chart("lc-metrics-memory", [
      dataset(text.memoryUsed || "Used", colours.success, "memory_used_mib"),
      dataset(text.memoryAvailable || "Available", colours.secondary, "memory_available_mib"),
    ], byteAxis(1024 * 1024, ""), function (value) { return bytes((value || 0) * 1024 * 1024); }),
    chart("lc-metrics-disk", [
      dataset(text.diskRead || "Read", colours.info, "disk_read_bps"),
      dataset(text.diskWrite || "Write", colours.warning, "disk_write_bps"),
    ], byteAxis(1, text.perSecond || "/s"), perSecond),
    chart("lc-metrics-net", [
      dataset(text.netRx || "Received", colours.success, "net_rx_bps"),
      dataset(text.netTx || "Sent", colours.primary, "net_tx_bps"),
    ], byteAxis(1, text.perSecond || "/s"), perSecond),
  ].filter(Boolean);

  function push(point, update) {
    charts.forEach(function (c) {
      c.data.labels.push(label(point));
      c.data.datasets.forEach(function (ds) {
        var value = point[ds.field];
        ds.data.push(value === null || value === undefined ? null : value);
      });
      while (c.data.labels.length > keep) {
        c.data.labels.shift();
        c.data.datasets.forEach(function (ds) { ds.data.shift(); });
      }
      if (update) {
        c.update("none");
      }
    });
  }

  (config.points || []).forEach(function (point) { push(point, false); });
  charts.forEach(function (c) { c.update("none"); });

  document.addEventListener("lc:live", function (event) {
    var message = event.detail || {};
    if (message.type !== "metrics" || !message.data || String(message.data.id) !== instanceId || !message.data.point) {
      return;
    }
    if (empty) {
      empty.classList.add("d-none");
    }
    push(message.data.point, true);
  });

  // Expose the charts for tests and the browser console.
  window.lcMetricsCharts = charts;
})();
