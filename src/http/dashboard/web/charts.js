// Small SVG charts for the dashboard: time series, a histogram, a tornado,
// a model's realization over days.
// Drawn as SVG strings so that a frame's re-render is one innerHTML write.
"use strict";

const Charts = (() => {
  // Time series span a wide card; the histogram and tornado sit in a half
  // card, so they get a narrower view box (larger text once scaled).
  const WIDE = 600, HALF = 420, H = 150, PAD = { l: 48, r: 8, t: 8, b: 18 };
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

  function compact(v) {
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
    if (a >= 10 || v === 0) return v.toFixed(0);
    return v.toFixed(1);
  }

  function frame(W, inner, yMin, yMax, xLabels) {
    return framed(W, H, inner, yMin, yMax, xLabels);
  }

  function framed(W, H, inner, yMin, yMax, xLabels) {
    const y = (v) => PAD.t + (H - PAD.t - PAD.b) * (1 - (v - yMin) / (yMax - yMin || 1));
    let axis = `<line class="axis" x1="${PAD.l}" y1="${H - PAD.b}" x2="${W - PAD.r}" y2="${H - PAD.b}"/>`;
    for (const v of [yMin, (yMin + yMax) / 2, yMax]) {
      axis += `<line class="axis" x1="${PAD.l}" x2="${W - PAD.r}" y1="${y(v)}" y2="${y(v)}" stroke-dasharray="2 3"/>` +
        `<text x="${PAD.l - 4}" y="${y(v) + 3}" text-anchor="end">${compact(v)}</text>`;
    }
    for (const [x, label] of xLabels) axis += `<text x="${x}" y="${H - 4}" text-anchor="middle">${esc(label)}</text>`;
    return `<svg viewBox="0 0 ${W} ${H}" role="img">${axis}${inner}</svg>`;
  }

  // series: [{name, color, points: [[ms, value], ...]}]
  function lines(series, { span = 300000 } = {}) {
    const W = WIDE;
    const now = Date.now();
    const all = series.flatMap((s) => s.points.map((p) => p[1]));
    const yMax = Math.max(1, ...all) * 1.1;
    const x = (t) => PAD.l + (W - PAD.l - PAD.r) * (1 - (now - t) / span);
    const y = (v) => PAD.t + (H - PAD.t - PAD.b) * (1 - v / yMax);
    let inner = "";
    for (const s of series) {
      const pts = s.points.filter((p) => now - p[0] <= span);
      if (pts.length < 2) continue;
      const d = pts.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
      inner += `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.5"><title>${esc(s.name)}</title></path>`;
    }
    const labels = [[x(now - span) + 14, "-5 min"], [x(now - span / 2), "-2.5 min"], [x(now) - 12, "now"]];
    return frame(W, inner, 0, yMax, labels);
  }

  // edges: bins + 1 boundaries; counts: bins; markers: [{at, label, color}]
  function histogram(edges, counts, markers = []) {
    if (!edges || edges.length < 2) return "";
    const W = HALF;
    const lo = edges[0], hi = edges[edges.length - 1];
    const yMax = Math.max(1, ...counts);
    const x = (v) => PAD.l + (W - PAD.l - PAD.r) * ((v - lo) / (hi - lo || 1));
    const y = (v) => PAD.t + (H - PAD.t - PAD.b) * (1 - v / yMax);
    let inner = "";
    counts.forEach((c, i) => {
      const x0 = x(edges[i]), x1 = x(edges[i + 1]);
      const fill = edges[i + 1] <= 0 ? "#f85149" : "#58a6ff";
      inner += `<rect x="${x0.toFixed(1)}" y="${y(c).toFixed(1)}" width="${Math.max(0.5, x1 - x0 - 0.5).toFixed(1)}" height="${(H - PAD.b - y(c)).toFixed(1)}" fill="${fill}"><title>${compact(edges[i])} to ${compact(edges[i + 1])}: ${c}</title></rect>`;
    });
    for (const m of markers) {
      if (m.at < lo || m.at > hi) continue;
      inner += `<line x1="${x(m.at)}" x2="${x(m.at)}" y1="${PAD.t}" y2="${H - PAD.b}" stroke="${m.color}" stroke-dasharray="3 2"/>` +
        `<text x="${x(m.at) + 3}" y="${PAD.t + 9}">${esc(m.label)}</text>`;
    }
    return frame(W, inner, 0, yMax, [[x(lo) + 10, compact(lo)], [x((lo + hi) / 2), compact((lo + hi) / 2)], [x(hi) - 10, compact(hi)]]);
  }

  // bars: [{driver, npv_at_p10, npv_at_p90}], base: the mean NPV
  function tornado(bars, base) {
    if (!bars || !bars.length) return "";
    const W = HALF;
    const shown = [...bars].sort((a, b) => Math.abs(b.npv_at_p90 - b.npv_at_p10) - Math.abs(a.npv_at_p90 - a.npv_at_p10)).slice(0, 8);
    const values = shown.flatMap((b) => [b.npv_at_p10, b.npv_at_p90]).concat([base]);
    const lo = Math.min(...values), hi = Math.max(...values);
    const left = 140, h = Math.max(60, shown.length * 18 + 24);
    const x = (v) => left + (W - left - PAD.r) * ((v - lo) / (hi - lo || 1));
    let inner = "";
    shown.forEach((b, i) => {
      const y0 = 6 + i * 18;
      const a = x(Math.min(b.npv_at_p10, b.npv_at_p90)), z = x(Math.max(b.npv_at_p10, b.npv_at_p90));
      const xb = x(base);
      inner += `<text x="${left - 6}" y="${y0 + 11}" text-anchor="end">${esc(b.driver.length > 24 ? b.driver.slice(0, 23) + "…" : b.driver)}</text>` +
        `<rect x="${Math.min(a, xb)}" y="${y0}" width="${Math.max(1, Math.abs(xb - a))}" height="14" fill="#f85149"><title>${esc(b.driver)} at P10: ${compact(b.npv_at_p10)}</title></rect>` +
        `<rect x="${Math.min(z, xb)}" y="${y0}" width="${Math.max(1, Math.abs(z - xb))}" height="14" fill="#3fb950"><title>${esc(b.driver)} at P90: ${compact(b.npv_at_p90)}</title></rect>`;
    });
    inner += `<line x1="${x(base)}" x2="${x(base)}" y1="0" y2="${h - 16}" stroke="#d8dee6"/>` +
      `<text x="${left}" y="${h - 3}">${compact(lo)}</text><text x="${W - PAD.r}" y="${h - 3}" text-anchor="end">${compact(hi)}</text>` +
      `<text x="${x(base)}" y="${h - 3}" text-anchor="middle">mean ${compact(base)}</text>`;
    return `<svg viewBox="0 0 ${W} ${h}" role="img">${inner}</svg>`;
  }

  // points: [{day: "YYYY-MM-DD", committed, realized, realization_percent}],
  // oldest first: the gross value committed and realized to date, per day.
  // Small (two sit side by side in a half card): its own narrow view box.
  function realization(points) {
    if (!points || !points.length) return "";
    const W = 320, HR = 130;
    const t = points.map((p) => Date.parse(p.day));
    const t0 = t[0], t1 = t[t.length - 1];
    const yMax = Math.max(1, ...points.flatMap((p) => [p.committed, p.realized])) * 1.1;
    const x = (v) => (t1 === t0 ? (PAD.l + W - PAD.r) / 2 : PAD.l + (W - PAD.l - PAD.r) * ((v - t0) / (t1 - t0)));
    const y = (v) => PAD.t + (HR - PAD.t - PAD.b) * (1 - v / yMax);
    const last = points[points.length - 1];
    let inner = "";
    for (const [key, color, dash] of [["committed", "#8a96a3", ' stroke-dasharray="4 3"'], ["realized", "#3fb950", ""]]) {
      const d = points.map((p, i) => `${i ? "L" : "M"}${x(t[i]).toFixed(1)},${y(p[key]).toFixed(1)}`).join("");
      inner += `<path class="${key}" d="${d}" fill="none" stroke="${color}" stroke-width="1.5"${dash}><title>${key}</title></path>`;
    }
    // A dot a day on the realized line (hover: the day's figures), the
    // latest one larger; the committed line's latest day too.
    points.forEach((p, i) => {
      const pct = p.realization_percent == null ? "nothing committed yet" : `${p.realization_percent.toFixed(1)}%`;
      inner += `<circle class="day" cx="${x(t[i]).toFixed(1)}" cy="${y(p.realized).toFixed(1)}" r="${i === points.length - 1 ? 3 : 1.5}" fill="#3fb950"><title>${esc(p.day)}: realized ${compact(p.realized)} of ${compact(p.committed)} committed (${pct})</title></circle>`;
    });
    inner += `<circle cx="${x(t1).toFixed(1)}" cy="${y(last.committed).toFixed(1)}" r="2.5" fill="#8a96a3"><title>${esc(last.day)}: committed ${compact(last.committed)}</title></circle>`;
    const labels = t1 === t0
      ? [[x(t0), points[0].day.slice(5)]]
      : [[x(t0) + 14, points[0].day.slice(5)], [x(t1) - 14, last.day.slice(5)]];
    return framed(W, HR, inner, 0, yMax, labels);
  }

  return { lines, histogram, tornado, realization, compact, esc };
})();
