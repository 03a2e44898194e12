// The operator dashboard: re-fetch the panel every few seconds and swap it in; turn the
// per-tier "sent" totals of two consecutive refreshes into a rate.
(function () {
  "use strict";
  const panel = document.getElementById("mailq-dashboard");
  const status = document.getElementById("mailq-refresh-status");
  if (!panel) return;
  const every = Math.max(Number(panel.dataset.every) || 5, 1) * 1000;
  let previous = null; // {time, sent: {tier: total}}

  function sentTotals() {
    const totals = {};
    panel.querySelectorAll("tr[data-tier]").forEach(function (row) {
      totals[row.dataset.tier] = Number(row.dataset.sent);
    });
    return totals;
  }

  function showRates() {
    const now = {time: Date.now(), sent: sentTotals()};
    if (previous) {
      const seconds = (now.time - previous.time) / 1000;
      panel.querySelectorAll("tr[data-tier]").forEach(function (row) {
        const before = previous.sent[row.dataset.tier];
        const cell = row.querySelector(".mailq-throughput");
        if (cell && before !== undefined && seconds > 0) {
          const rate = Math.max(now.sent[row.dataset.tier] - before, 0) / seconds;
          cell.textContent = rate.toFixed(1) + " /s";
        }
      });
    }
    previous = now;
  }

  async function refresh() {
    try {
      const response = await fetch(panel.dataset.url, {credentials: "same-origin"});
      if (!response.ok) {
        status.textContent = "Refresh failed (HTTP " + response.status + "); retrying.";
        return;
      }
      panel.innerHTML = await response.text();
      showRates();
      status.textContent = "Refreshed at " + new Date().toLocaleTimeString() + ".";
    } catch (error) {
      status.textContent = "Refresh failed (" + error + "); retrying.";
    }
  }

  showRates();
  setInterval(refresh, every);
})();
