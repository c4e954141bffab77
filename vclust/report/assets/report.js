/* vclust report: draws the 2D/3D maps (Plotly, bundled), shows an image on hover, and marks
   the page ready with counts (body data-*), so a headless browser can check it. Offline: no
   network, everything it reads sits beside index.html. */
(function () {
  "use strict";
  var R = window.VCLUST_REPORT || {};
  var M = window.VCLUST_MAP || null;
  var body = document.body;
  var errors = [];
  var state = { loaded: 0, failed: 0, total: 0, points2d: 0, points3d: 0, mapDone: !M };

  function mark() {
    body.dataset.imagesLoaded = state.loaded;
    body.dataset.imagesFailed = state.failed;
    body.dataset.imagesTotal = state.total;
    body.dataset.mapPoints = state.points2d;
    body.dataset.mapPoints3d = state.points3d;
    body.dataset.errors = errors.length;
    if (errors.length) body.dataset.errorText = errors.join(" | ").slice(0, 500);
    if (state.mapDone && state.loaded + state.failed >= state.total) body.dataset.ready = "1";
  }
  window.addEventListener("error", function (e) { errors.push(String(e.message || e)); mark(); });

  // ---- images: count each as loaded or failed
  var imgs = Array.prototype.slice.call(document.querySelectorAll("img.thumb"));
  state.total = imgs.length;
  imgs.forEach(function (img) {
    function ok() { state.loaded += 1; mark(); }
    function bad() { state.failed += 1; img.classList.add("broken"); mark(); }
    if (img.complete) { (img.naturalWidth > 0 ? ok : bad)(); }
    else { img.addEventListener("load", ok, { once: true }); img.addEventListener("error", bad, { once: true }); }
  });

  // ---- the maps
  function colour(k) { var p = R.palette || ["#444"]; return p[k % p.length]; }
  function clusterName(k) {
    var c = (R.clusters || [])[k];
    return c && c.name ? k + " · " + c.name : "cluster " + k;
  }
  function traces(dim) {
    var byCluster = {}, out = [], i, k;
    var outl = { idx: [] };
    for (i = 0; i < M.cluster.length; i++) {
      if (M.outlier[i]) { outl.idx.push(i); continue; }
      k = M.cluster[i];
      (byCluster[k] = byCluster[k] || []).push(i);
    }
    function pick(idx, arr) { return idx.map(function (j) { return arr[j]; }); }
    function trace(idx, name, marker, group) {
      var t = { name: name, legendgroup: group, customdata: idx, hoverinfo: "none",
                mode: "markers", marker: marker };
      if (dim === 2) { t.type = "scattergl"; t.x = pick(idx, M.x); t.y = pick(idx, M.y); }
      else { t.type = "scatter3d"; t.x = pick(idx, M.x3); t.y = pick(idx, M.y3); t.z = pick(idx, M.z3); }
      return t;
    }
    Object.keys(byCluster).map(Number).sort(function (a, b) { return a - b; }).forEach(function (k) {
      out.push(trace(byCluster[k], clusterName(k) + " (" + byCluster[k].length + ")",
        { color: colour(k), size: dim === 2 ? 5 : 2, opacity: 0.75 }, "c" + k));
    });
    if (outl.idx.length) {  // off until asked for: the clusters' shapes read first
      var t = trace(outl.idx, "outliers (" + outl.idx.length + ") — click to show",
        { color: "rgba(20,20,20,0.7)", size: dim === 2 ? 5 : 2, symbol: "x" }, "outliers");
      t.visible = "legendonly";
      out.push(t);
    }
    return out;
  }
  function count(gd) {
    return gd.data.reduce(function (s, t) { return s + (t.x ? t.x.length : 0); }, 0);
  }
  var hover = document.getElementById("hover-card");
  function showHover(ev) {
    var p = ev.points && ev.points[0];
    if (!p || p.customdata === undefined) return;
    var i = p.customdata;
    var thumb = M.thumb[i] >= 0 ? M.thumbs[M.thumb[i]] : null;
    var k = M.cluster[i];
    hover.querySelector(".h-img").innerHTML = thumb
      ? '<img src="' + thumb + '" alt="">' : '<div class="ph">no thumbnail for this point</div>';
    hover.querySelector(".h-text").textContent =
      M.id[i] + "\n" + clusterName(k) + "\noutlier score " + M.score[i].toFixed(3) +
      (M.outlier[i] ? " (outlier" + (M.reason && M.reason[i] ? ": " + M.reason[i] : "") + ")" : "");
    var e = ev.event || {};
    hover.style.left = Math.min((e.clientX || 0) + 16, window.innerWidth - 260) + "px";
    hover.style.top = Math.min((e.clientY || 0) + 16, window.innerHeight - 200) + "px";
    hover.hidden = false;
  }
  function hideHover() { hover.hidden = true; }

  function drawMaps() {
    if (!M) { mark(); return; }
    if (typeof Plotly === "undefined") { errors.push("Plotly did not load"); state.mapDone = true; mark(); return; }
    var common = { margin: { l: 10, r: 10, t: 10, b: 10 }, paper_bgcolor: "#fff",
                   legend: { itemsizing: "constant", font: { size: 11 } }, hovermode: "closest" };
    var cfg = { displaylogo: false, responsive: true };
    var l2 = Object.assign({}, common, { xaxis: { visible: false }, yaxis: { visible: false, scaleanchor: "x" } });
    var l3 = Object.assign({}, common, { scene: { xaxis: { visible: false }, yaxis: { visible: false }, zaxis: { visible: false } } });
    var d2 = document.getElementById("map2d"), d3 = document.getElementById("map3d");
    Plotly.newPlot(d2, traces(2), l2, cfg).then(function (gd) {
      state.points2d = count(gd);
      gd.on("plotly_hover", showHover); gd.on("plotly_unhover", hideHover);
      mark();
      return Plotly.newPlot(d3, traces(3), l3, cfg);
    }).then(function (gd) {
      state.points3d = count(gd);
      gd.on("plotly_hover", showHover); gd.on("plotly_unhover", hideHover);
      state.mapDone = true; mark();
    }).catch(function (e) { errors.push("map: " + e); state.mapDone = true; mark(); });
  }

  mark();
  try { drawMaps(); } catch (e) { errors.push("map: " + e); state.mapDone = true; mark(); }
})();
