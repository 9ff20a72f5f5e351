/* Overview page: bar chart of quota usage in percent (data from json_script "lc-quota-chart-data"). */
(function () {
  "use strict";
  var canvas = document.getElementById("lc-quota-chart");
  var source = document.getElementById("lc-quota-chart-data");
  if (!canvas || !source || !window.Chart) {
    return;
  }
  var data = JSON.parse(source.textContent);
  var colours = { success: "#198754", warning: "#f0ad00", danger: "#dc3545", info: "#0dcaf0" };
  var font = getComputedStyle(document.body).fontFamily;
  window.Chart.defaults.font.family = font;
  window.Chart.defaults.color = "#6b7488";
  new window.Chart(canvas, {
    type: "bar",
    data: {
      labels: data.labels,
      datasets: [{
        label: data.title,
        data: data.values,
        backgroundColor: data.levels.map(function (level) { return colours[level] || colours.info; }),
        borderRadius: 6,
        maxBarThickness: 22,
      }],
    },
    options: {
      indexAxis: "y",
      responsive: true,
      maintainAspectRatio: false,
      animation: { duration: 400 },
      scales: {
        x: { min: 0, max: 100, ticks: { callback: function (value) { return value + "%"; } }, grid: { color: "#eef1f6" } },
        y: { grid: { display: false } },
      },
      plugins: {
        legend: { display: false },
        tooltip: { callbacks: { label: function (ctx) { return " " + ctx.parsed.x + "%"; } } },
      },
    },
  });
})();
