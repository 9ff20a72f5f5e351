/* Overview page charts: quota usage in percent (json_script "lc-quota-chart-data") and instances by state
 * (json_script "lc-state-chart-data"). static/vms/live.js keeps the doughnut current (Chart.getChart). */
(function () {
  "use strict";

  // Numbers and times in the page's language (Chart.js formats ticks and tooltips with Intl).
  var LOCALE = document.documentElement.lang || undefined;
  if (!window.Chart) {
    return;
  }
  var colours = {
    success: "#198754", warning: "#f0ad00", danger: "#dc3545", info: "#0dcaf0", secondary: "#8a93a6",
  };
  // The theme's colours (light or dark: static/portal/theme.js), as Bootstrap's variables give them.
  var theme = getComputedStyle(document.documentElement);
  var grid = theme.getPropertyValue("--bs-border-color-translucent").trim() || "#eef1f6";
  window.Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  window.Chart.defaults.color = theme.getPropertyValue("--bs-secondary-color").trim() || "#6b7488";
  window.Chart.defaults.borderColor = grid;

  function data(id) {
    var source = document.getElementById(id);
    return source ? JSON.parse(source.textContent) : null;
  }

  var canvas = document.getElementById("lc-quota-chart");
  var quota = data("lc-quota-chart-data");
  if (canvas && quota) {
    new window.Chart(canvas, {
      type: "bar",
      data: {
        labels: quota.labels,
        datasets: [{
          label: quota.title,
          data: quota.values,
          backgroundColor: quota.levels.map(function (level) { return colours[level] || colours.info; }),
          borderRadius: 6,
          maxBarThickness: 22,
        }],
      },
      options: {
        locale: LOCALE,
        indexAxis: "y",
        responsive: true,
        maintainAspectRatio: false,
        animation: { duration: 400 },
        scales: {
          x: { min: 0, max: 100, ticks: { callback: function (value) { return value + "%"; } }, grid: { color: grid } },
          y: { grid: { display: false } },
        },
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { label: function (ctx) { return " " + ctx.parsed.x + "%"; } } },
        },
      },
    });
  }

  var doughnut = document.getElementById("lc-state-chart");
  var states = data("lc-state-chart-data");
  if (doughnut && states) {
    new window.Chart(doughnut, {
      type: "doughnut",
      data: {
        labels: states.labels,
        datasets: [{
          label: states.title,
          data: states.counts,
          backgroundColor: states.tones.map(function (tone) { return colours[tone] || colours.info; }),
          borderWidth: 2,
        }],
      },
      options: {
        locale: LOCALE,
        responsive: true,
        maintainAspectRatio: false,
        cutout: "62%",
        animation: { duration: 400 },
        plugins: { legend: { display: false } },
      },
    });
  }
})();
