/* zsds viewer: lightcurve and candidate pages drawn as plain SVG (no external resources).
 *
 * The page's <main> carries data-kind (index, lightcurve, candidate) and data-params (JSON).
 * Data come from /viewer/api/...; an API token typed in the header is kept in session storage
 * and sent as "Authorization: Bearer <token>". When drawing is finished, <body> gets
 * data-ready="1" (or data-error). Point markers are <circle class="pt"> filled with the exact
 * colour of their filter (FILTER_COLOURS), drawn above error bars and upper limits.
 */
(function () {
  "use strict";

  var FILTER_COLOURS = { zg: "#1f9e3a", zr: "#d62728", zi: "#7b3fa0" };
  var OTHER_COLOUR = "#4d4d4d";
  var FILTER_NAMES = { 1: "zg", 2: "zr", 3: "zi" };
  var SVGNS = "http://www.w3.org/2000/svg";
  var MJD0 = 2400000.5;

  function colour(filter) { return FILTER_COLOURS[filter] || OTHER_COLOUR; }

  function el(tag, attrs, parent, text) {
    var node = document.createElementNS(SVGNS, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function h(tag, attrs, parent, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function token() { return window.sessionStorage.getItem("zsds-token") || ""; }

  function headers() {
    var t = token();
    return t ? { Authorization: "Bearer " + t } : {};
  }

  function fetchOk(url) {
    return fetch(url, { headers: headers() }).then(function (r) {
      if (r.ok) { return r; }
      return r.json().catch(function () { return {}; }).then(function (body) {
        throw new Error(r.status + ": " + (body.detail || r.statusText));
      });
    });
  }

  function getJSON(url) { return fetchOk(url).then(function (r) { return r.json(); }); }

  function blobURL(url) {
    return fetchOk(url).then(function (r) { return r.blob(); })
      .then(function (b) { return URL.createObjectURL(b); });
  }

  function fmt(v, digits) {
    if (v === null || v === undefined) { return ""; }
    if (typeof v === "number") { return Number.isInteger(v) ? String(v) : v.toFixed(digits === undefined ? 4 : digits); }
    return String(v);
  }

  /* ---------------------------------------------------------------- axes and scales */
  function niceStep(span, n) {
    var raw = span / Math.max(1, n), mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) { if (raw <= steps[i] * mag) { return steps[i] * mag; } }
    return 10 * mag;
  }

  function extent(values, pad) {
    var v = values.filter(function (x) { return isFinite(x); });
    if (!v.length) { return [0, 1]; }
    var lo = Math.min.apply(null, v), hi = Math.max.apply(null, v);
    if (hi === lo) { lo -= 0.5; hi += 0.5; }
    var p = (hi - lo) * (pad === undefined ? 0.06 : pad);
    return [lo - p, hi + p];
  }

  /* A plot frame: returns {svg, g, x(v), y(v)} with axes, ticks and labels drawn. */
  function frame(parent, o) {
    var W = o.width || 760, H = o.height || 300, m = { l: 62, r: 16, t: 26, b: 44 };
    var svg = el("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, "class": "plot " + (o.cls || "") }, parent);
    el("rect", { x: 0, y: 0, width: W, height: H, fill: "#ffffff" }, svg);
    el("text", { x: m.l, y: 17, "class": "ptitle" }, svg, o.title || "");
    var pw = W - m.l - m.r, ph = H - m.t - m.b;
    var xd = o.xdomain, yd = o.ydomain;
    var x = function (v) { return m.l + (v - xd[0]) / (xd[1] - xd[0]) * pw; };
    var y = o.invertY
      ? function (v) { return m.t + (v - yd[0]) / (yd[1] - yd[0]) * ph; }
      : function (v) { return m.t + ph - (v - yd[0]) / (yd[1] - yd[0]) * ph; };
    var axes = el("g", { "class": "axes" }, svg);
    el("rect", { x: m.l, y: m.t, width: pw, height: ph, fill: "none", stroke: "#888" }, axes);
    var xs = niceStep(xd[1] - xd[0], 7), ys = niceStep(yd[1] - yd[0], 5);
    for (var t = Math.ceil(xd[0] / xs) * xs; t <= xd[1]; t += xs) {
      el("line", { x1: x(t), x2: x(t), y1: m.t + ph, y2: m.t + ph + 5, stroke: "#888" }, axes);
      el("text", { x: x(t), y: m.t + ph + 18, "class": "tick", "text-anchor": "middle" }, axes, +t.toPrecision(10));
    }
    for (var u = Math.ceil(yd[0] / ys) * ys; u <= yd[1]; u += ys) {
      el("line", { x1: m.l - 5, x2: m.l, y1: y(u), y2: y(u), stroke: "#888" }, axes);
      el("text", { x: m.l - 8, y: y(u) + 4, "class": "tick", "text-anchor": "end" }, axes, +u.toPrecision(10));
    }
    el("text", { x: m.l + pw / 2, y: H - 6, "class": "label", "text-anchor": "middle" }, axes, o.xlabel || "");
    el("text", { x: 14, y: m.t + ph / 2, "class": "label", "text-anchor": "middle",
                 transform: "rotate(-90 14 " + (m.t + ph / 2) + ")" }, axes, o.ylabel || "");
    var clip = "clip" + Math.random().toString(36).slice(2);
    var defs = el("defs", {}, svg), cp = el("clipPath", { id: clip }, defs);
    el("rect", { x: m.l, y: m.t, width: pw, height: ph }, cp);
    var g = el("g", { "clip-path": "url(#" + clip + ")" }, svg);
    return { svg: svg, g: g, x: x, y: y, m: m, pw: pw, ph: ph };
  }

  /* Points with error bars; layers keep markers above bars and limits. */
  function drawPoints(f, pts, cls) {
    var bars = el("g", { "class": "errbars" }, f.g), marks = el("g", { "class": "markers" }, f.g);
    pts.forEach(function (p) {
      var c = colour(p.filter), cx = f.x(p.x), cy = f.y(p.y);
      if (isFinite(p.err) && p.err > 0) {
        el("line", { "class": "err", x1: cx, x2: cx, y1: f.y(p.y - p.err), y2: f.y(p.y + p.err),
                     stroke: c, "stroke-opacity": 0.45, "stroke-width": 1.2 }, bars);
      }
      var attrs = { "class": cls + (p.flagged ? " flagged" : ""), cx: cx, cy: cy, r: 4, fill: c,
                    "data-filter": p.filter, "data-oid": p.oid, "data-x": p.x, "data-y": p.y };
      if (p.flagged) { attrs.stroke = "#000000"; attrs["stroke-width"] = 1; }
      var node = el("circle", attrs, marks);
      el("title", {}, node, p.tip || "");
    });
  }

  function drawLimits(f, lims) {
    var g = el("g", { "class": "limits" }, f.g);
    lims.forEach(function (l) {
      var c = colour(l.filter), cx = f.x(l.x), cy = f.y(l.y);
      var node = el("path", { "class": "ul", d: "M" + (cx - 5) + " " + (cy - 4) + " L" + (cx + 5) + " " + (cy - 4) +
                              " L" + cx + " " + (cy + 5) + " Z", fill: c, "fill-opacity": 0.3,
                              stroke: c, "stroke-opacity": 0.6, "data-filter": l.filter }, g);
      el("title", {}, node, l.tip || "");
    });
  }

  function legend(f, counts) {
    var g = el("g", { "class": "legend" }, f.svg), xo = f.m.l + f.pw - 10;
    Object.keys(counts).sort().reverse().forEach(function (k) {
      var t = el("text", { x: xo, y: 17, "text-anchor": "end", "class": "tick" }, g, k + " (" + counts[k] + ")");
      el("rect", { x: xo - t.getComputedTextLength() - 14, y: 8, width: 9, height: 9, fill: colour(k) }, g);
      xo -= t.getComputedTextLength() + 26;
    });
  }

  /* ---------------------------------------------------------------- lightcurve page */
  function lightcurvePage(main, params) {
    var q = params.oid !== undefined ? "oid=" + params.oid
      : "ra=" + params.ra + "&dec=" + params.dec + "&radius=" + params.radius;
    return getJSON("/viewer/api/lightcurve?" + q).then(function (data) { drawLightcurve(main, data); });
  }

  function drawLightcurve(main, data) {
    main.textContent = "";
    var filt = {};
    data.objects.forEach(function (o) { filt[o.oid] = o.filter_code; });
    var info = h("section", { "class": "objects" }, main);
    h("h2", {}, info, data.objects.length + " lightcurve objects, " + data.detections.length +
      " detections, " + data.upper_limits.length + " upper limits");
    var table = h("table", {}, info), tr = h("tr", {}, table);
    ["oid", "filter", "ra", "dec", "sep (\")", "field", "ccd", "q", "ndet"].forEach(function (c) { h("th", {}, tr, c); });
    data.objects.forEach(function (o) {
      var r = h("tr", {}, table), td = h("td", {}, r);
      h("a", { href: "/viewer/object/" + o.oid }, td, String(o.oid));
      [o.filter_code, fmt(o.ra, 6), fmt(o.dec, 6), fmt(o.sep_arcsec, 2), o.field_id, o.ccd_id, o.qid, o.ndet]
        .forEach(function (v) { h("td", {}, r, fmt(v)); });
    });
    if (!data.detections.length && !data.upper_limits.length) {
      h("p", { id: "status" }, main, "no visible epochs at this position");
      return;
    }
    var pts = data.detections.map(function (d) {
      return { x: d.mjd, y: d.mag, err: d.mag_err, filter: d.filter_code || filt[d.oid], oid: d.oid,
               flagged: d.catflags !== 0,
               tip: "oid " + d.oid + "  MJD " + fmt(d.mjd, 5) + "  " + fmt(d.mag, 3) + " \u00b1 " + fmt(d.mag_err, 3) +
                    (d.catflags ? "  catflags " + d.catflags : "") };
    });
    var lims = data.upper_limits.map(function (l) {
      return { x: l.mjd, y: l.maglim, filter: l.filter_code,
               tip: "upper limit MJD " + fmt(l.mjd, 5) + "  > " + fmt(l.maglim, 2) + " (pid " + l.pid + ")" };
    });
    var counts = {};
    pts.forEach(function (p) { counts[p.filter] = (counts[p.filter] || 0) + 1; });
    var xs = pts.map(function (p) { return p.x; }).concat(lims.map(function (l) { return l.x; }));
    var ys = [];
    pts.forEach(function (p) { ys.push(p.y - (p.err || 0), p.y + (p.err || 0)); });
    lims.forEach(function (l) { ys.push(l.y); });
    var sec = h("section", { "class": "panel", id: "lightcurve" }, main);
    var f = frame(sec, { title: "lightcurve", xlabel: "MJD", ylabel: "magnitude", invertY: true, cls: "lc",
                         xdomain: extent(xs), ydomain: extent(ys, 0.08) });
    drawLimits(f, lims);
    drawPoints(f, pts, "pt");
    legend(f, counts);
    drawPeriodicity(main, data, pts);
  }

  function drawPeriodicity(main, data, pts) {
    var pg = data.periodogram;
    if (!pg) {
      h("p", { "class": "note" }, main, "no periodogram (fewer than 5 good epochs of one object)");
      return;
    }
    var sec = h("section", { "class": "panel", id: "periodogram" }, main);
    var f = frame(sec, { title: "Lomb-Scargle periodogram of " + pg.oid + " (" + pg.filter_code + ", " + pg.n_epochs + " epochs)",
                         xlabel: "frequency (1/day)", ylabel: "power", cls: "pg", height: 220,
                         xdomain: extent(pg.frequency, 0.01), ydomain: [0, Math.max.apply(null, pg.power) * 1.08 || 1] });
    var d = pg.frequency.map(function (v, i) { return (i ? "L" : "M") + f.x(v).toFixed(2) + " " + f.y(pg.power[i]).toFixed(2); }).join(" ");
    el("path", { "class": "pgline", d: d, fill: "none", stroke: "#1f4e9e", "stroke-width": 1 }, f.g);
    var best = el("line", { "class": "best", x1: f.x(pg.best_frequency), x2: f.x(pg.best_frequency), y1: f.m.t,
                            y2: f.m.t + f.ph, stroke: "#e08a00", "stroke-dasharray": "4 3" }, f.g);
    var ctl = h("div", { "class": "controls" }, main);
    h("label", { "for": "period" }, ctl, "period (days) ");
    var input = h("input", { id: "period", type: "number", step: "any", value: pg.best_period.toPrecision(8) }, ctl);
    var button = h("button", { type: "button", id: "fold" }, ctl, "fold");
    var fold = h("section", { "class": "panel", id: "folded" }, main);
    var own = pts.filter(function (p) { return p.oid === pg.oid; });
    function refold() {
      var period = parseFloat(input.value);
      fold.textContent = "";
      if (!(period > 0)) { return; }
      best.setAttribute("x1", f.x(1 / period)); best.setAttribute("x2", f.x(1 / period));
      var t0 = Math.min.apply(null, own.map(function (p) { return p.x; }));
      var ph = own.map(function (p) {
        var phase = ((p.x - t0) / period) % 1;
        return { x: phase < 0 ? phase + 1 : phase, y: p.y, err: p.err, filter: p.filter, oid: p.oid,
                 flagged: p.flagged, tip: p.tip };
      });
      var ys = [];
      ph.forEach(function (p) { ys.push(p.y - (p.err || 0), p.y + (p.err || 0)); });
      var ff = frame(fold, { title: "phase-folded at P = " + period.toPrecision(6) + " d", xlabel: "phase",
                             ylabel: "magnitude", invertY: true, cls: "fold", height: 260,
                             xdomain: [-0.02, 1.02], ydomain: extent(ys, 0.08) });
      drawPoints(ff, ph, "pt-fold");
    }
    button.addEventListener("click", refold);
    input.addEventListener("change", refold);
    f.svg.addEventListener("click", function (ev) {
      var box = f.svg.getBoundingClientRect();
      var fx = (ev.clientX - box.left - f.m.l) / f.pw;
      var dom = extent(pg.frequency, 0.01), freq = dom[0] + fx * (dom[1] - dom[0]);
      if (freq > 0) { input.value = (1 / freq).toPrecision(8); refold(); }
    });
    refold();
  }

  /* ---------------------------------------------------------------- candidate page */
  function candidatePage(main, params) {
    return getJSON("/viewer/api/candidate/" + params.candid).then(function (data) { return drawCandidate(main, data); });
  }

  function drawCandidate(main, data) {
    main.textContent = "";
    var c = data.candidate;
    h("h2", {}, main, "candidate " + c.candid + (c.object_id ? " of " + c.object_id : ""));
    var cuts = h("section", { "class": "cutouts" }, main);
    var loads = ["science", "reference", "difference"].map(function (kind) {
      var fig = h("figure", { "class": "cutout" }, cuts);
      var img = h("img", { id: "cutout-" + kind, alt: kind + " cutout", width: 252, height: 252 }, fig);
      h("figcaption", {}, fig, kind);
      return blobURL(data.cutouts[kind]).then(function (u) {
        return new Promise(function (ok) { img.onload = ok; img.onerror = ok; img.src = u; });
      }).catch(function (e) { h("p", { "class": "error" }, fig, e.message); });
    });
    var table = h("table", { "class": "fields" }, main);
    Object.keys(c).forEach(function (k) {
      var r = h("tr", {}, table);
      h("th", {}, r, k);
      h("td", {}, r, fmt(c[k], 6));
    });
    var p = h("p", {}, main);
    h("a", { href: data.lightcurve_url, id: "lightcurve-link" }, p, "lightcurves at this position");
    if (data.history.length) {
      var pts = data.history.map(function (r) {
        return { x: r.jd - MJD0, y: r.magpsf, err: r.sigmapsf, filter: FILTER_NAMES[r.fid], oid: c.object_id,
                 flagged: false, tip: "candid " + r.candid };
      });
      var ys = [];
      pts.forEach(function (q) { ys.push(q.y - (q.err || 0), q.y + (q.err || 0)); });
      var sec = h("section", { "class": "panel", id: "history" }, main);
      var f = frame(sec, { title: "difference-image detections of " + c.object_id, xlabel: "MJD",
                           ylabel: "magpsf", invertY: true, cls: "hist", height: 240,
                           xdomain: extent(pts.map(function (q) { return q.x; })), ydomain: extent(ys, 0.1) });
      drawPoints(f, pts, "pt");
    }
    return Promise.all(loads);
  }

  /* ---------------------------------------------------------------- index page */
  function indexPage(main) {
    main.textContent = "";
    var f1 = h("form", { action: "/viewer/lightcurve", method: "get" }, main);
    h("h2", {}, f1, "lightcurves at a position");
    [["ra", "RA (deg)"], ["dec", "Dec (deg)"], ["radius", "radius (arcsec)"]].forEach(function (a) {
      var l = h("label", {}, f1, a[1] + " ");
      h("input", { name: a[0], type: "number", step: "any", value: a[0] === "radius" ? "2" : "", required: "" }, l);
    });
    h("button", { type: "submit" }, f1, "show");
    var f2 = h("form", { id: "candform" }, main);
    h("h2", {}, f2, "candidate");
    var l2 = h("label", {}, f2, "candid ");
    var cand = h("input", { name: "candid", type: "number", required: "" }, l2);
    h("button", { type: "submit" }, f2, "show");
    f2.addEventListener("submit", function (ev) { ev.preventDefault(); window.location = "/viewer/candidate/" + cand.value; });
    return Promise.resolve();
  }

  /* ---------------------------------------------------------------- start */
  function start() {
    var main = document.getElementById("main");
    var params = JSON.parse(main.getAttribute("data-params") || "{}");
    var kind = main.getAttribute("data-kind");
    var tok = document.getElementById("token");
    tok.value = token();
    function useToken(ev) {
      if (ev) { ev.preventDefault(); }
      window.sessionStorage.setItem("zsds-token", tok.value.trim());
      window.location.reload();
    }
    tok.addEventListener("change", useToken);
    document.getElementById("tokenform").addEventListener("submit", useToken);
    var run = kind === "lightcurve" ? lightcurvePage : kind === "candidate" ? candidatePage : indexPage;
    document.body.removeAttribute("data-ready");
    Promise.resolve().then(function () { return run(main, params); })
      .then(function () { document.body.setAttribute("data-ready", "1"); })
      .catch(function (e) {
        main.textContent = "";
        h("p", { id: "status", "class": "error" }, main, e.message);
        document.body.setAttribute("data-error", e.message);
        document.body.setAttribute("data-ready", "1");
      });
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
