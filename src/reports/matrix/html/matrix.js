// The rule table: sort by a column (a click on its header: ascending, then descending; numeric
// columns numerically), filter by text, both also from the URL fragment at load and when it
// changes (`#sort=hits`, `#sort=-hits`, `#filter=stripe`, `#sort=-hits&filter=stripe`), so a link
// or a headless browser can ask for a view without clicking. When set up, <body> carries
// data-ready="true" and data-rows (the number of visible rows).
(function () {
  "use strict";
  const table = document.getElementById("rules");
  const body = table.tBodies[0];
  const headers = Array.from(table.tHead.rows[0].cells);
  const rows = Array.from(body.rows);
  const texts = rows.map((row) => Array.from(row.cells, (c) => c.textContent.toLowerCase()).join("\n"));
  const filter = document.getElementById("filter");
  const shown = document.getElementById("shown");
  let current = { key: null, descending: false };

  function cellValue(row, index, numeric) {
    const cell = row.cells[index];
    const raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent;
    if (!numeric) {
      return raw.toLowerCase();
    }
    const n = Number.parseFloat(raw);
    return Number.isNaN(n) ? -Infinity : n;
  }

  function sortBy(key, descending) {
    const index = headers.findIndex((h) => h.dataset.key === key);
    if (index < 0) {
      return;
    }
    const numeric = headers[index].dataset.type === "num";
    const keyed = rows.map((row) => ({ row: row, value: cellValue(row, index, numeric), at: Number(row.dataset.index) }));
    keyed.sort((a, b) => {
      const order = a.value < b.value ? -1 : a.value > b.value ? 1 : 0;
      return (descending ? -order : order) || a.at - b.at;
    });
    const fragment = document.createDocumentFragment();
    keyed.forEach((k) => fragment.appendChild(k.row));
    body.appendChild(fragment);
    headers.forEach((h) => h.removeAttribute("aria-sort"));
    headers[index].setAttribute("aria-sort", descending ? "descending" : "ascending");
    current = { key: key, descending: descending };
  }

  function applyFilter(text) {
    const needle = text.trim().toLowerCase();
    let visible = 0;
    rows.forEach((row, i) => {
      const show = needle === "" || texts[i].includes(needle);
      row.hidden = !show;
      visible += show ? 1 : 0;
    });
    shown.textContent = visible + " of " + rows.length + " rule(s)";
    document.body.dataset.rows = String(visible);
  }

  function fromFragment() {
    const params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    const sort = params.get("sort");
    if (sort) {
      sortBy(sort.replace(/^-/, ""), sort.startsWith("-"));
    }
    const text = params.get("filter");
    if (text !== null) {
      filter.value = text;
    }
    applyFilter(filter.value);
  }

  function clicked(header) {
    const key = header.dataset.key;
    sortBy(key, current.key === key && !current.descending);
  }

  headers.forEach((h) => {
    h.addEventListener("click", () => clicked(h));
    h.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        clicked(h);
      }
    });
  });
  filter.addEventListener("input", () => applyFilter(filter.value));
  document.querySelectorAll("#diagram .node").forEach((node) => {
    node.addEventListener("click", () => {
      filter.value = node.dataset.filter || "";
      applyFilter(filter.value);
      table.scrollIntoView({ behavior: "smooth" });
    });
  });
  window.addEventListener("hashchange", fromFragment);
  fromFragment();
  document.body.dataset.ready = "true";
})();
