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

  // a contingency: {rows: A's cluster ids, cols: B's, z: counts}, empty rows/columns left out
  function table(a, b) {
    var t = D.contingency[models[a].id + "__" + models[b].id];
    if (t) return t;
    var u = D.contingency[models[b].id + "__" + models[a].id];
    if (!u) return null;
    return { rows: u.cols, cols: u.rows,
             z: u.cols.map(function (_, j) { return u.z.map(function (row) { return row[j]; }); }) };
  }
  function selfTable(a) {
    var ids = {}, m = models[a];
    m.labels.forEach(function (c) { if (c >= 0) ids[c] = 1; });
    var ks = Object.keys(ids).map(Number).sort(function (p, q) { return p - q; });
    // the map sample's counts (the CSVs hold pairs of different models only)
    var z = ks.map(function (r) { return ks.map(function (c) {
      return r === c ? m.labels.filter(function (x) { return x === r; }).length : 0; }); });
    return { rows: ks, cols: ks, z: z, sample: true };
  }

  var current = { a: 0, b: 1 };
  function contingency(a, b) {
    var t = a === b ? selfTable(a) : table(a, b);
    current = { a: a, b: b, t: t };
    var big = t.rows.length * t.cols.length <= 900;  // numbers in the cells while they fit
    return Plotly.react("contingency", [{
      type: "heatmap", z: t.z, colorscale: "Blues",
      x: t.cols.map(function (c) { return "B " + c; }), y: t.rows.map(function (r) { return "A " + r; }),
      texttemplate: big ? "%{z}" : "", textfont: { size: 10 },
      reversescale: true,  // few images light, many dark
      hovertemplate: "%{y} · %{x}: %{z} images<br>click for its images<extra></extra>"
    }], { margin: { l: 60, b: 60, t: 50 }, height: 560,  // its box (.map) is 560 px
          yaxis: { autorange: "reversed", type: "category" }, xaxis: { type: "category" },
          title: { text: names[a] + " (rows) × " + names[b] + " (columns)" +
                         (t.sample ? " · the map sample" : ""), font: { size: 12 },
                   x: 0, xanchor: "left", xref: "paper", y: 1, yanchor: "bottom", yref: "paper",
                   pad: { b: 26 } } }).then(function (gd) {  // above the plot, left: clear of Plotly's toolbar
      if (!gd.dataset.clicks) {
        gd.dataset.clicks = "1";
        gd.on("plotly_click", function (ev) {
          var p = ev.points && ev.points[0];
          if (p) showCell(+String(p.y).slice(2), +String(p.x).slice(2));
        });
      }
      return gd;
    });
  }

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  var CELL = 36;  // images shown per cell
  function showCell(ca, cb) {
    var A = models[current.a], B = models[current.b], thumbs = D.thumbs || [];
    var rows = [], withThumb = [];
    A.labels.forEach(function (c, i) { if (c === ca && B.labels[i] === cb) rows.push(i); });
    rows.forEach(function (i) { if (thumbs[i]) withThumb.push(i); });
    var ri = current.t.rows.indexOf(ca), cj = current.t.cols.indexOf(cb);
    var total = ri >= 0 && cj >= 0 ? current.t.z[ri][cj] : rows.length;
    var list = (D.images ? withThumb : rows).slice(0, CELL);
    var box = document.getElementById("cells");
    box.innerHTML = "<h3>A cluster " + ca + " × B cluster " + cb + ": " + total + " images</h3>" +
      '<p class="hint">' + rows.length + " of them in the maps' sample" +
      (D.images ? ", " + withThumb.length + " with a thumbnail; " + list.length + " shown" : "; ids shown (no --images)") +
      ". A: " + esc(names[current.a]) + " · B: " + esc(names[current.b]) + "</p>" +
      '<div class="strip">' + list.map(function (i) {
        var id = D.ids[i], out = A.outlier[i] || B.outlier[i];
        var img = thumbs[i] ? '<img class="thumb-cell" src="' + esc(thumbs[i]) + '" alt="' + esc(id) + '" title="' + esc(id) + '">'
          : '<div class="ph" title="' + esc(id) + '">' + esc(id.split("/").pop()) + "</div>";
        return '<figure class="t' + (out ? " out" : "") + '" data-id="' + esc(id) + '">' + img +
          (out ? '<span class="badge">outlier</span>' : "") + "</figure>";
      }).join("") + "</div>";
    body.dataset.cell = ca + "," + cb;
    body.dataset.cellImages = list.length;
    body.dataset.cellTotal = total;
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
