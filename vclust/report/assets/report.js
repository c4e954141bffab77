/* vclust report: draws the 2D/3D maps (Plotly, bundled), shows an image on hover, a gallery of
   the points selected on the map (lasso or box), an enlarged image with its nearest rows on a
   click, filters by cluster, outlier reason and pixel reason, and the analysts' cluster names
   (kept in this browser, downloaded as names.csv). Marks the page ready with counts (body
   data-*), so a headless browser can check it. Offline: no network, everything it reads sits
   beside index.html. */
(function () {
  "use strict";
  var R = window.VCLUST_REPORT || {};
  var M = window.VCLUST_MAP || null;
  var ROWS = (M && M.rows) || {};
  var body = document.body;
  var errors = [];
  var state = { loaded: 0, failed: 0, total: 0, points2d: 0, points3d: 0, mapDone: !M };
  var SHOW = 60;  // images of a selection shown at once

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
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  // ---- images: count each as loaded or failed
  var imgs = Array.prototype.slice.call(document.querySelectorAll("img.thumb"));
  state.total = imgs.length;
  imgs.forEach(function (img) {
    function ok() { state.loaded += 1; mark(); }
    function bad() { state.failed += 1; img.classList.add("broken"); mark(); }
    if (img.complete) { (img.naturalWidth > 0 ? ok : bad)(); }
    else { img.addEventListener("load", ok, { once: true }); img.addEventListener("error", bad, { once: true }); }
  });

  // ---- clusters by id (a kept model's ids can have gaps) and the analysts' names
  var byId = {};
  (R.clusters || []).forEach(function (c) { byId[c.id] = c; });
  var key = "vclust-names:" + ((R.model || {}).id || "");
  var named = {};
  try { named = JSON.parse(window.localStorage.getItem(key) || "{}") || {}; } catch (e) { named = {}; }
  function nameOf(k) {
    var n = named[k] ? named[k][0] : (byId[k] || {}).name;
    return n || "";
  }
  function clusterName(k) { var n = nameOf(k); return n ? k + " · " + n : "cluster " + k; }
  function colour(k) { var p = R.palette || ["#444"]; return p[((k % p.length) + p.length) % p.length]; }

  function saveNames() {
    try { window.localStorage.setItem(key, JSON.stringify(named)); } catch (e) { /* private mode */ }
    var n = Object.keys(named).filter(function (k) { return named[k][0] || named[k][1]; }).length;
    document.getElementById("names-state").textContent =
      n ? n + " cluster(s) named in this browser" : "";
    body.dataset.named = n;
  }
  function initNames() {
    Array.prototype.forEach.call(document.querySelectorAll("input.c-name, input.c-note"), function (inp) {
      var k = inp.dataset.cluster, j = inp.classList.contains("c-name") ? 0 : 1;
      if (named[k]) inp.value = named[k][j];
      inp.addEventListener("input", function () {
        var c = byId[k] || {};
        named[k] = named[k] || [c.name || "", c.note || ""];
        named[k][j] = inp.value;
        var cell = document.querySelector('td.t-name[data-cluster="' + k + '"]');
        if (cell) cell.textContent = named[k][0];
        saveNames();
      });
    });
    Object.keys(named).forEach(function (k) {
      var cell = document.querySelector('td.t-name[data-cluster="' + k + '"]');
      if (cell) cell.textContent = named[k][0];
    });
    document.getElementById("names-download").addEventListener("click", downloadNames);
    saveNames();
  }
  function csvField(s) { s = String(s || ""); return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }
  function namesCsv() {
    var lines = ["cluster,name,note"];
    (R.clusters || []).forEach(function (c) {
      var v = named[c.id] || [c.name || "", c.note || ""];
      if (v[0] || v[1]) lines.push([c.id, csvField(v[0]), csvField(v[1])].join(","));
    });
    return lines.join("\n") + "\n";
  }
  function downloadNames() {
    var text = namesCsv();
    var a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
    a.download = "names.csv";
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
    body.dataset.namesCsv = text.split("\n").length - 2;
  }

  // ---- one image anywhere: a figure that opens the enlarged view
  function info(id) { return ROWS[id] || null; }
  // a row without an image is named on its tile by its id's last part (page.py's _tail)
  function tail(id) {
    var t = String(id).replace(/\/+$/, "").split("/").pop();
    return t.length > 24 ? t.slice(0, 23) + "\u2026" : t;
  }
  function figure(id, caption) {
    var r = info(id), thumb = r && r[3] ? "thumbs/" + r[3] : null, why = r ? r[1] : "";
    var img = thumb ? '<img class="thumb-lazy" loading="lazy" src="' + esc(thumb) + '" alt="' + esc(id) + '" title="' + esc(id) + '">'
      : '<div class="ph" title="' + esc(id) + ' (no image)">' + esc(tail(id)) + "</div>";
    return '<figure class="t' + (why ? " out" : "") + '" data-id="' + esc(id) + '" tabindex="0">' + img +
      (why ? '<span class="badge">' + esc(why) + "</span>" : "") +
      (caption ? "<figcaption>" + esc(caption) + "</figcaption>" : "") + "</figure>";
  }

  // ---- the enlarged view with the nearest rows
  var lb = document.getElementById("lightbox");
  function openImage(id) {
    var r = info(id);
    var thumb = r && r[3] ? "thumbs/" + r[3] : null;
    lb.querySelector(".lb-main").innerHTML = thumb ? '<img src="' + esc(thumb) + '" alt="' + esc(id) + '">'
      : '<div class="ph">no image for this row</div>';
    var text = id;
    if (r) {
      text += "\n" + clusterName(r[0]) + " · outlier z " + zFmt(r[2]) +
        (R.outliers && R.outliers.threshold_z === R.outliers.threshold_z && R.outliers.threshold_z !== null
          ? " (flagged at z ≥ " + R.outliers.threshold_z.toFixed(2) + ")" : "") +
        (r[1] ? "\nflagged: " + r[1] : "");
    }
    lb.querySelector(".lb-text").textContent = text;
    var near = r ? r[4] : [];
    lb.querySelector(".lb-near").innerHTML = near.length ? near.map(function (n) {
      var nr = info(n[0]);
      return figure(n[0], "d " + Number(n[1]).toFixed(3) + (nr ? " · c" + nr[0] : ""));
    }).join("") : '<p class="hint">Nearest rows are precomputed for the images of the cards and ' +
      "galleries; this one is a map point's.</p>";
    lb.hidden = false;
    body.dataset.lightbox = id;
    body.dataset.lightboxNeighbours = near.length;
  }
  function closeImage() { lb.hidden = true; body.dataset.lightbox = ""; }
  lb.addEventListener("click", function (e) { if (e.target === lb || e.target.classList.contains("lb-close")) closeImage(); });
  document.addEventListener("keydown", function (e) { if (e.key === "Escape") closeImage(); });
  document.addEventListener("click", function (e) {
    var f = e.target.closest && e.target.closest("figure.t[data-id]");
    if (f) { e.preventDefault(); openImage(f.dataset.id); }
  });
  document.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && e.target.matches && e.target.matches("figure.t[data-id]")) openImage(e.target.dataset.id);
  });

  // ---- filters
  var pixelReasons = ((R.pixels || {}).reasons) || [];
  var filt = { cluster: "", reason: "", pixel: "" };
  function keep(i) {
    var flagged = M.outlier[i], why = flagged ? ((M.reason && M.reason[i]) || "outlier") : "";
    if (filt.cluster !== "" && String(M.cluster[i]) !== filt.cluster) return false;
    if (filt.reason === "none" && flagged) return false;
    if (filt.reason && filt.reason !== "none" && why !== filt.reason) return false;
    if (filt.pixel && why !== filt.pixel) return false;
    return true;
  }
  function initFilters() {
    var selC = document.getElementById("f-cluster"), selR = document.getElementById("f-reason"),
      selP = document.getElementById("f-pixel");
    if (!selC) return;
    var reasons = {}, pix = {};
    M.outlier.forEach(function (o, i) {
      if (!o) return;
      var w = (M.reason && M.reason[i]) || "outlier";
      (pixelReasons.indexOf(w) >= 0 ? pix : reasons)[w] = (pixelReasons.indexOf(w) >= 0 ? pix : reasons)[w] + 1 || 1;
    });
    selC.innerHTML = '<option value="">all</option>' + (R.clusters || []).map(function (c) {
      return '<option value="' + c.id + '">' + esc(clusterName(c.id)) + "</option>";
    }).join("");
    selR.innerHTML = '<option value="">any</option><option value="none">not flagged</option>' +
      Object.keys(reasons).sort().map(function (w) { return '<option value="' + esc(w) + '">' + esc(w) + " (" + reasons[w] + ")</option>"; }).join("");
    selP.innerHTML = '<option value="">any</option>' +
      Object.keys(pix).sort().map(function (w) { return '<option value="' + esc(w) + '">' + esc(w) + " (" + pix[w] + ")</option>"; }).join("");
    [[selC, "cluster"], [selR, "reason"], [selP, "pixel"]].forEach(function (p) {
      p[0].addEventListener("change", function () { filt[p[1]] = p[0].value; redraw(); });
    });
  }

  // ---- the maps
  function traces(dim) {
    var byCluster = {}, out = [], i, k, n = 0;
    var outl = [];
    for (i = 0; i < M.cluster.length; i++) {
      if (!keep(i)) continue;
      n += 1;
      if (M.outlier[i]) { outl.push(i); continue; }
      k = M.cluster[i];
      (byCluster[k] = byCluster[k] || []).push(i);
    }
    state.kept = n;
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
    if (outl.length) {  // off until asked for (unless filtered to), the clusters' shapes read first
      var t = trace(outl, "outliers (" + outl.length + ")",
        { color: "rgba(20,20,20,0.7)", size: dim === 2 ? 5 : 2, symbol: "x" }, "outliers");
      if (!filt.reason && !filt.pixel) t.visible = "legendonly";
      out.push(t);
    }
    return out;
  }
  function count(gd) {
    return gd.data.reduce(function (s, t) { return s + (t.x ? t.x.length : 0); }, 0);
  }
  var hover = document.getElementById("hover-card");
  // z is NaN where it was not asked of the index: its score rounds to 1, so z lies above 14
  function zFmt(z) { return z === null || z === undefined ? "–" : (z !== z ? "> 14" : Number(z).toFixed(2)); }
  function zText(i) {
    var z = M.z ? M.z[i] : null;
    return "outlier z " + zFmt(z);
  }
  function showHover(ev) {
    var p = ev.points && ev.points[0];
    if (!p || p.customdata === undefined) return;
    var i = p.customdata;
    var thumb = M.thumb[i] >= 0 ? M.thumbs[M.thumb[i]] : null;
    hover.querySelector(".h-img").innerHTML = thumb
      ? '<img src="' + thumb + '" alt="">' : '<div class="ph">no thumbnail for this point</div>';
    hover.querySelector(".h-text").textContent =
      M.id[i] + "\n" + clusterName(M.cluster[i]) + "\n" + zText(i) +
      (M.outlier[i] ? " (outlier" + (M.reason && M.reason[i] ? ": " + M.reason[i] : "") + ")" : "");
    var e = ev.event || {};
    hover.style.left = Math.min((e.clientX || 0) + 16, window.innerWidth - 260) + "px";
    hover.style.top = Math.min((e.clientY || 0) + 16, window.innerHeight - 200) + "px";
    hover.hidden = false;
  }
  function hideHover() { hover.hidden = true; }

  function showSelection(idx) {
    var box = document.getElementById("selection");
    idx = (idx || []).filter(function (i) { return i !== undefined; });
    body.dataset.selected = idx.length;
    if (!idx.length) {
      box.innerHTML = '<p class="hint">Select points on the 2D map (lasso or box) to see their images here.</p>';
      body.dataset.selectedShown = 0;
      return;
    }
    var per = {}, outl = 0;
    idx.forEach(function (i) { per[M.cluster[i]] = (per[M.cluster[i]] || 0) + 1; if (M.outlier[i]) outl += 1; });
    var withThumb = idx.filter(function (i) { return M.thumb[i] >= 0; });
    // shared out between the selection's clusters, largest first, in turn (round robin)
    var lists = {};
    withThumb.forEach(function (i) { (lists[M.cluster[i]] = lists[M.cluster[i]] || []).push(i); });
    var order = Object.keys(lists).sort(function (a, b) { return per[b] - per[a] || a - b; });
    var shown = [], round = 0;
    while (shown.length < Math.min(SHOW, withThumb.length)) {
      order.forEach(function (k) { if (shown.length < SHOW && lists[k][round] !== undefined) shown.push(lists[k][round]); });
      round += 1;
    }
    shown.sort(function (a, b) { return per[M.cluster[b]] - per[M.cluster[a]] || M.cluster[a] - M.cluster[b] || a - b; });
    var parts = Object.keys(per).map(Number).sort(function (a, b) { return per[b] - per[a]; })
      .map(function (k) { return '<span class="swatch" style="background:' + colour(k) + '"></span>' + esc(clusterName(k)) + ": " + per[k]; });
    box.innerHTML = "<h3>" + idx.length + " points selected</h3><p class=\"hint\">" + parts.join(" · ") +
      (outl ? " · " + outl + " flagged as outliers" : "") + "<br>" + withThumb.length +
      " of them have a thumbnail" + (withThumb.length > SHOW ? "; " + SHOW + " shown, shared between their clusters" : "") +
      ". Click one to enlarge it.</p><div class=\"strip\">" +
      shown.map(function (i) { return figure(M.id[i], clusterName(M.cluster[i])); }).join("") + "</div>";
    body.dataset.selectedShown = shown.length;
  }

  var d2, d3, l2, l3, cfg;
  function redraw() {
    var t2 = traces(2);
    document.getElementById("f-count").textContent = state.kept + " of " + M.cluster.length + " points";
    body.dataset.mapKept = state.kept;
    var p = Plotly.react(d2, t2, l2, cfg).then(function (gd) { state.points2d = count(gd); showSelection([]); mark(); });
    if (d3.dataset.drawn) Plotly.react(d3, traces(3), l3, cfg);
    return p;
  }
  function drawMaps() {
    if (!M) { mark(); return; }
    if (typeof Plotly === "undefined") { errors.push("Plotly did not load"); state.mapDone = true; mark(); return; }
    // the legend starts below Plotly's toolbar (top margin), titled with what it counts
    var common = { margin: { l: 10, r: 10, t: 40, b: 10 }, paper_bgcolor: "#fff",
                   legend: { itemsizing: "constant", font: { size: 11 }, y: 1, yanchor: "top",
                             title: { text: "points on the map (outliers apart)", font: { size: 11 } } },
                   hovermode: "closest" };
    cfg = { displaylogo: false, responsive: true };
    l2 = Object.assign({}, common, { dragmode: "lasso", xaxis: { visible: false }, yaxis: { visible: false, scaleanchor: "x" } });
    l3 = Object.assign({}, common, { scene: { xaxis: { visible: false }, yaxis: { visible: false }, zaxis: { visible: false } } });
    d2 = document.getElementById("map2d"); d3 = document.getElementById("map3d");
    initFilters();
    var t2 = traces(2);
    document.getElementById("f-count").textContent = state.kept + " of " + M.cluster.length + " points";
    Plotly.newPlot(d2, t2, l2, cfg).then(function (gd) {
      state.points2d = count(gd);
      gd.on("plotly_hover", showHover); gd.on("plotly_unhover", hideHover);
      gd.on("plotly_selected", function (ev) {
        showSelection(ev && ev.points ? ev.points.map(function (p) { return p.customdata; }) : []);
      });
      gd.on("plotly_deselect", function () { showSelection([]); });
      state.mapDone = true; mark();
    }).catch(function (e) { errors.push("map: " + e); state.mapDone = true; mark(); });
    // the 3D map sits in a closed <details>, drawn when first opened: the page is usable
    // (2D map, cards, galleries) without waiting for it
    var det = d3.closest("details");
    function draw3d() {
      if (d3.dataset.drawn) { Plotly.Plots.resize(d3); return; }
      d3.dataset.drawn = "1";
      Plotly.newPlot(d3, traces(3), l3, cfg).then(function (gd) {
        state.points3d = count(gd);
        gd.on("plotly_hover", showHover); gd.on("plotly_unhover", hideHover);
        mark();
      }).catch(function (e) { errors.push("3D map: " + e); mark(); });
    }
    if (det) det.addEventListener("toggle", function () { if (det.open) draw3d(); });
  }

  window.VCLUST_PAGE = { select: showSelection, open: openImage, namesCsv: namesCsv };
  try { initNames(); } catch (e) { errors.push("names: " + e); }
  mark();
  try { drawMaps(); } catch (e) { errors.push("map: " + e); state.mapDone = true; mark(); }
})();
