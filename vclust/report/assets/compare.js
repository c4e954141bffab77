/* vclust compare page: the agreement heatmap, the contingency of two chosen models and their
   maps side by side (Plotly, bundled). Marks the page ready (body data-ready="1") with counts,
   so a headless browser can check it. Offline: everything it reads sits beside index.html. */
(function () {
  "use strict";
  var D = window.VCLUST_COMPARE || {};
  var body = document.body;
  var errors = [];
  function mark(done) {
    body.dataset.errors = errors.length;
    if (errors.length) body.dataset.errorText = errors.join(" | ").slice(0, 500);
    if (done) body.dataset.ready = "1";
  }
  window.addEventListener("error", function (e) { errors.push(String(e.message || e)); mark(false); });

  var models = D.models || [];
  // spec, algorithm and k say what a model is; the id's last part matches it to runs.csv
  var names = models.map(function (m) {
    return m.descriptor + " · " + m.algorithm + " k=" + m.k + " · " + m.id.split("-").pop();
  });
  function colour(k) { var p = D.palette || ["#444"]; return p[((k % p.length) + p.length) % p.length]; }

  function heatmap() {
    return Plotly.newPlot("heatmap", [{
      type: "heatmap", z: D.ari, x: names, y: names, zmin: 0, zmax: 1, colorscale: "Viridis",
      hovertemplate: "%{y}<br>%{x}<br>ARI %{z:.3f}<extra></extra>"
    }], { margin: { l: 40, b: 40, t: 10 }, height: 200 + 28 * models.length,
         xaxis: { automargin: true }, yaxis: { automargin: true } },  // ids never cut off
    { responsive: true });
  }

  function table(a, b) {
    var key = models[a].id + "__" + models[b].id;
    var t = D.contingency[key];
    if (t) return t;
    var u = D.contingency[models[b].id + "__" + models[a].id];
    if (!u) return null;
    return u[0].map(function (_, j) { return u.map(function (row) { return row[j]; }); });
  }

  function contingency(a, b) {
    var t;
    if (a === b) {
      var n = models[a].n;
      t = [];
      for (var i = 0; i < n; i++) { t.push([]); for (var j = 0; j < n; j++) t[i].push(0); }
      models[a].labels.forEach(function (c) { if (c >= 0) t[c][c] += 1; });
    } else {
      t = table(a, b);
    }
    return Plotly.react("contingency", [{
      type: "heatmap", z: t, colorscale: "Blues",
      x: t[0].map(function (_, j) { return "B " + j; }), y: t.map(function (_, i) { return "A " + i; }),
      hovertemplate: "A cluster %{y} · B cluster %{x}: %{z} images<extra></extra>"
    }], { margin: { l: 60, b: 60, t: 50 }, height: 560,  // its box (.map) is 560 px
          title: { text: names[a] + " (rows) × " + names[b] + " (columns)", font: { size: 12 },
                   x: 0, xanchor: "left", xref: "paper", y: 1, yanchor: "bottom", yref: "paper",
                   pad: { b: 26 } } });  // above the plot, left: clear of Plotly's toolbar
  }

  var points = 0;
  function map(div, m) {
    var xy = D.maps[m.descriptor];
    var by = {}, outl = [];
    m.labels.forEach(function (c, i) { if (m.outlier[i]) outl.push(i); else (by[c] = by[c] || []).push(i); });
    function pick(idx, arr) { return idx.map(function (j) { return arr[j]; }); }
    var traces = Object.keys(by).map(Number).sort(function (p, q) { return p - q; }).map(function (c) {
      return { type: "scattergl", mode: "markers", name: "cluster " + c + " (" + by[c].length + ")",
               x: pick(by[c], xy.x), y: pick(by[c], xy.y), text: pick(by[c], D.ids),
               hovertemplate: "%{text}<extra>cluster " + c + "</extra>",
               marker: { color: colour(c), size: 4, opacity: 0.75 } };
    });
    if (outl.length) traces.push({ type: "scattergl", mode: "markers", name: "outliers (" + outl.length + ")",
      x: pick(outl, xy.x), y: pick(outl, xy.y), text: pick(outl, D.ids),
      hovertemplate: "%{text}<extra>outlier</extra>",
      marker: { color: "rgba(20,20,20,0.6)", size: 5, symbol: "x" } });
    points += m.labels.length;
    return Plotly.react(div, traces, { margin: { l: 30, r: 10, b: 30, t: 56 }, height: 560,
      title: { text: names[models.indexOf(m)] + " (" + xy.method + ", its own space)", font: { size: 12 },
               x: 0, xanchor: "left", xref: "paper", y: 1, yanchor: "bottom", yref: "paper",
               pad: { b: 26 } } });  // above the plot, left: clear of Plotly's toolbar
  }

  var selA = document.getElementById("model-a");
  var selB = document.getElementById("model-b");
  function pair() {
    var a = +selA.value, b = +selB.value;
    points = 0;
    return Promise.all([contingency(a, b), map("map-a", models[a]), map("map-b", models[b])]);
  }
  try {
    if (models.length > 1) selB.value = "1";
    var p = D.proposal ? models.map(function (m) { return m.id; }).indexOf(D.proposal) : -1;
    if (p >= 0) { selA.value = String(p); if (p === +selB.value) selB.value = String(p === 0 && models.length > 1 ? 1 : 0); }
    selA.addEventListener("change", pair);
    selB.addEventListener("change", pair);
    Promise.all([heatmap(), pair()]).then(function () {
      body.dataset.models = models.length;
      body.dataset.mapPoints = points;
      body.dataset.heatmapCells = (D.ari || []).length * (D.ari || []).length;
      mark(true);
    }, function (err) { errors.push(String(err)); mark(true); });
  } catch (err) {
    errors.push(String(err));
    mark(true);
  }
})();
