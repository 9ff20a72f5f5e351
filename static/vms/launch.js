/* Launch form: keeps the quota impact (used + flavor × count vs limit) and the flavor hints current
 * as the flavor, the count and the source change. The server computed the same numbers for the first
 * render and the service refuses an over-quota launch anyway. Data: json_script "lc-launch-data". */
(function () {
  "use strict";

  var source = document.getElementById("lc-launch-data");
  var form = document.getElementById("lc-launch-form");
  if (!source || !form) {
    return;
  }
  var data = JSON.parse(source.textContent);
  var countInput = form.querySelector('[name="count"]');
  var filter = document.getElementById("lc-source-filter");

  function chosenImage() {
    var radio = form.querySelector('input[name="image"]:checked');
    return radio ? data.images[radio.value] : null;
  }

  function chosenFlavor() {
    var radio = form.querySelector('input[name="flavor"]:checked');
    return radio ? data.flavors[radio.value] : null;
  }

  function count() {
    var value = parseInt(countInput && countInput.value, 10);
    return isNaN(value) || value < 1 ? 1 : value;
  }

  var submit = document.getElementById("lc-launch-submit");

  function updateImpact() {
    var flavor = chosenFlavor();
    var n = count();
    var anyOver = false;
    var per = { instances: 1, vcpus: flavor ? flavor.vcpus : 0, ram_mib: flavor ? flavor.ram_mib : 0,
      disk_gib: flavor ? flavor.disk_gib : 0 };
    Object.keys(data.quota).forEach(function (resource) {
      var line = form.querySelector('#lc-quota-impact [data-resource="' + resource + '"]');
      if (!line) {
        return;
      }
      var entry = data.quota[resource];
      var add = (per[resource] || 0) * n;
      var after = entry.used + add;
      var unlimited = entry.limit < 0;
      var over = !unlimited && after > entry.limit;
      var percent = unlimited ? 0 : entry.limit === 0 ? (after ? 100 : 0) : Math.min(100, Math.ceil(100 * after / entry.limit));
      line.querySelector(".lc-add").textContent = add;
      line.querySelector(".lc-after").textContent = after;
      line.classList.toggle("lc-over", over);
      var bar = line.querySelector(".progress-bar");
      bar.style.width = percent + "%";
      bar.className = "progress-bar " + (over ? "bg-danger" : percent >= 90 ? "bg-warning" : "bg-success");
      line.querySelector(".progress").setAttribute("aria-valuenow", String(percent));
      line.querySelector(".lc-over-note").classList.toggle("d-none", !over);
      anyOver = anyOver || over;
    });
    // Launch is offered only when the service would take it: not over a quota (the note says which).
    if (submit) {
      submit.disabled = anyOver || submit.getAttribute("data-lc-can-launch") !== "true";
    }
  }

  function updateFlavorHints() {
    var image = chosenImage();
    form.querySelectorAll("#lc-launch-flavors tbody tr").forEach(function (row) {
      var flavor = data.flavors[row.getAttribute("data-flavor")];
      var radio = row.querySelector('input[type="radio"]');
      row.classList.toggle("lc-selected", !!(radio && radio.checked));
      var small = !!(image && flavor && ((image.kind === "disk" && image.min_disk_gib > flavor.disk_gib) ||
        image.min_ram_mib > flavor.ram_mib));
      row.classList.toggle("lc-row-muted", small);
      var note = row.querySelector(".lc-flavor-note");
      if (note) {
        note.textContent = small ? data.text.tooSmall : "";
      }
    });
  }

  // A click anywhere on a flavor row chooses it.
  form.addEventListener("click", function (event) {
    var row = event.target.closest && event.target.closest("#lc-launch-flavors tbody tr");
    if (!row || event.target.matches("input, label")) {
      return;
    }
    var radio = row.querySelector('input[type="radio"]');
    if (radio && !radio.checked) {
      radio.checked = true;
      radio.dispatchEvent(new Event("change", { bubbles: true }));
    }
  });
  form.addEventListener("change", function () {
    updateImpact();
    updateFlavorHints();
  });
  // The source filter hides the cards whose name does not match (the chosen one stays visible).
  if (filter) {
    filter.addEventListener("input", function () {
      var needle = filter.value.trim().toLowerCase();
      var shown = 0;
      form.querySelectorAll("#lc-source-picker .lc-source").forEach(function (card) {
        var checked = card.querySelector("input").checked;
        var visible = !needle || checked || card.getAttribute("data-name").indexOf(needle) !== -1;
        card.classList.toggle("d-none", !visible);
        shown += visible ? 1 : 0;
      });
      form.querySelectorAll("#lc-source-picker .lc-source-group").forEach(function (group) {
        group.classList.toggle("d-none", !group.querySelector(".lc-source:not(.d-none)"));
      });
      document.getElementById("lc-source-none").classList.toggle("d-none", shown > 0);
    });
    // Enter in the filter must not submit the form.
    filter.addEventListener("keydown", function (event) {
      if (event.key === "Enter") {
        event.preventDefault();
      }
    });
  }
  if (countInput) {
    countInput.addEventListener("input", updateImpact);
  }
  updateImpact();
  updateFlavorHints();
})();
