/* The usage charts of the operators' dashboard (templates/admin/dashboard.html) and of a
 * tenant's own usage page (templates/account/usage.html); a page draws the charts it has a
 * canvas for.
 *
 * The page carries its figures as JSON in #sy-chart-data, one entry per bucket of the time
 * axis, empty buckets as zeros (apps/reporting/charts.py); Chart.js, served from the project's
 * static files, draws them. Each bar has its value written on it, and hovering a bucket shows
 * its figures in #sy-tooltip. Nothing is fetched.
 */
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("sy-chart-data").textContent);
  const tooltipBox = document.getElementById("sy-tooltip");
  const css = getComputedStyle(document.documentElement);
  const colour = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
  const ink = colour("--body-fg", "#333");
  const quiet = colour("--body-quiet-color", "#666");
  const grid = colour("--hairline-color", "#e8e8e8");

  // Dollars with `digits` significant digits below $1 (spend per hour is often a fraction of a cent).
  function money(value, digits) {
    if (value === 0) return "$0";
    if (Math.abs(value) >= 100) return "$" + Math.round(value).toLocaleString("en-US");
    if (Math.abs(value) >= 1) return "$" + value.toFixed(2);
    const decimals = Math.min(10, digits - 1 - Math.floor(Math.log10(Math.abs(value))));
    return "$" + value.toFixed(decimals);
  }
  const percent = (rate) => Math.round(rate * 100) + "%";
  const count = (n, one, many) => n + " " + (n === 1 ? one : many);
  const dayOfHours = (tick) => data.step === "hour" && Boolean(tick) && !String(tick.label).includes(":");

  // Writes each bucket's value (the stack's total) above its bar, turned upright where the bar
  // is narrower than the text.
  const valueLabels = {
    id: "syValueLabels",
    afterDatasetsDraw(chart, _args, options) {
      const metas = chart.getSortedVisibleDatasetMetas();
      if (!metas.length || !options.format) return;
      const ctx = chart.ctx;
      ctx.save();
      ctx.font = "11px " + Chart.defaults.font.family;
      metas[0].data.forEach((_, index) => {
        let total = 0;
        let top = Infinity;
        for (const meta of metas) {
          total += chart.data.datasets[meta.index].data[index];
          top = Math.min(top, meta.data[index].y);
        }
        const bar = metas[0].data[index];
        const text = options.format(total);
        ctx.fillStyle = total ? ink : quiet;
        if (ctx.measureText(text).width + 4 <= bar.width) {
          ctx.textAlign = "center";
          ctx.textBaseline = "bottom";
          ctx.fillText(text, bar.x, top - 2);
        } else {
          ctx.save();
          ctx.translate(bar.x, top - 3);
          ctx.rotate(-Math.PI / 2);
          ctx.textAlign = "left";
          ctx.textBaseline = "middle";
          ctx.fillText(text, 0, 0);
          ctx.restore();
        }
      });
      ctx.restore();
    },
  };

  // The figures of bucket `index` in #sy-tooltip, beside the pointer, inside the window.
  function showTooltip(lines) {
    return function ({ chart, tooltip }) {
      if (tooltip.opacity === 0 || !tooltip.dataPoints || !tooltip.dataPoints.length) {
        tooltipBox.hidden = true;
        return;
      }
      const index = tooltip.dataPoints[0].dataIndex;
      const title = document.createElement("strong");
      title.textContent = data.titles[index];
      tooltipBox.replaceChildren(title, ...lines(index).map((line) => {
        const row = document.createElement("div");
        row.textContent = line;
        return row;
      }));
      tooltipBox.hidden = false;
      const canvas = chart.canvas.getBoundingClientRect();
      let left = canvas.left + tooltip.caretX + 14;
      if (left + tooltipBox.offsetWidth > window.innerWidth - 8) {
        left = canvas.left + tooltip.caretX - tooltipBox.offsetWidth - 14;
      }
      const top = canvas.top + tooltip.caretY - tooltipBox.offsetHeight / 2;
      tooltipBox.style.left = Math.max(4, left) + "px";
      tooltipBox.style.top = Math.max(4, Math.min(top, window.innerHeight - tooltipBox.offsetHeight - 4)) + "px";
    };
  }

  function draw(id, { datasets, format, tick, lines, max, stacked }) {
    const canvas = document.getElementById(id);
    if (!canvas) return null;
    return new Chart(canvas, {
      type: "bar",
      data: { labels: data.labels, datasets },
      plugins: [valueLabels],
      options: {
        animation: false,
        maintainAspectRatio: false,
        // Room above the tallest bar for its value.
        layout: { padding: { top: max ? 40 : 8 } },
        interaction: { mode: "index", intersect: false },
        scales: {
          x: {
            stacked: stacked,
            grid: { display: false },
            // Every bucket labelled; on an axis of hours, the days (labels without a colon) in bold.
            ticks: {
              autoSkip: false, maxRotation: 90, color: ink,
              font: (context) => ({ size: 11, weight: dayOfHours(context.tick) ? "bold" : "normal" }),
            },
          },
          y: {
            stacked: stacked,
            beginAtZero: true,
            max: max,
            grace: max ? 0 : "30%",
            grid: { color: grid },
            ticks: { color: quiet, maxTicksLimit: 5, callback: tick },
          },
        },
        plugins: {
          legend: { display: datasets.length > 1, labels: { color: ink, boxWidth: 12 } },
          tooltip: { enabled: false, external: showTooltip(lines) },
          syValueLabels: { format },
        },
      },
    });
  }

  const bars = (label, values, colour) => ({ label, data: values, backgroundColor: colour, borderRadius: 2 });
  const spent = (value) => money(value, 2);

  draw("sy-spend-chart", {
    datasets: [bars("Spend", data.spend, "#417690")],
    format: spent,
    tick: (value) => money(value, 2),
    lines: (i) => ["Spend " + money(data.spend[i], 4),
                   count(data.requests[i], "request", "requests") + ", " + count(data.errors[i], "error", "errors")],
  });
  draw("sy-savings-chart", {
    datasets: [bars("Saved by the cache", data.cache_saved, "#79aec8"),
               bars("Saved by routing", data.routing_saved, "#5b9a68")],
    stacked: true,
    format: spent,
    tick: (value) => money(value, 2),
    lines: (i) => ["Saved by the cache " + money(data.cache_saved[i], 4),
                   "Saved by routing " + money(data.routing_saved[i], 4),
                   "Together " + money(data.cache_saved[i] + data.routing_saved[i], 4)],
  });
  draw("sy-hits-chart", {
    datasets: [bars("Cache hit rate", data.hit_rate, "#e1a03a")],
    max: 1,
    format: (rate) => percent(rate),
    tick: (rate) => percent(rate),
    lines: (i) => [data.lookups[i]
      ? "Hit rate " + percent(data.hit_rate[i]) + ": " + data.hits[i] + " of " + count(data.lookups[i], "lookup", "lookups")
      : "No cache lookups"],
  });
})();
