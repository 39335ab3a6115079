// The dashboard's charts, drawn with the vendored uPlot from data the page carries (no requests of its own).
"use strict";
(function () {
  const COLORS = {eligible: "#2e7d32", working: "#1565c0", driving: "#ef6c00", charging: "#6a1b9a",
                  parked: "#757575", offline: "#c62828"};

  function stateChart() {
    const el = document.getElementById("state-chart");
    const data = document.getElementById("state-history");
    if (!el || !data) return;
    const h = JSON.parse(data.textContent);
    const states = Object.keys(COLORS);
    const series = [{}].concat(states.map((s) => ({label: s, stroke: COLORS[s], width: 2})));
    new uPlot({width: Math.max(320, el.clientWidth), height: 260, series: series,
               scales: {x: {time: true, range: [h.now - 86400, h.now]}, y: {range: (u, lo, hi) => [0, Math.max(1, hi)]}},
               axes: [{}, {label: "cars"}]},
              [h.t].concat(states.map((s) => h[s])), el);
    el.dataset.drawn = "true";
  }

  function sparklines() {
    for (const el of document.querySelectorAll(".spark[data-series]")) {
      const points = JSON.parse(el.dataset.series);
      if (points.length < 2) continue;
      new uPlot({width: 160, height: 40, legend: {show: false}, cursor: {show: false},
                 axes: [{show: false}, {show: false}], scales: {x: {time: false}, y: {range: [0, 1]}},
                 series: [{}, {stroke: "#1565c0", width: 1.5}]},
                [points.map((p) => p[0]), points.map((p) => p[1])], el);
      el.dataset.drawn = "true";
    }
  }

  stateChart();
  sparklines();
  document.body.dataset.chartsReady = "true";
})();
