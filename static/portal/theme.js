/* Colour theme: the system's (prefers-color-scheme) unless the user chose light or dark in the navbar's
 * menu; the choice is kept in localStorage ("lc-theme": auto | light | dark). Loaded in <head>, before the
 * page paints, so a dark page never flashes light. Bootstrap 5.3 reads data-bs-theme on <html>. */
(function () {
  "use strict";
  var KEY = "lc-theme";
  var system = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;

  function chosen() {
    try {
      var value = window.localStorage.getItem(KEY);
      return value === "light" || value === "dark" ? value : "auto";
    } catch (err) {
      return "auto";
    }
  }

  function apply() {
    var choice = chosen();
    var theme = choice === "auto" ? (system && system.matches ? "dark" : "light") : choice;
    document.documentElement.setAttribute("data-bs-theme", theme);
    document.documentElement.setAttribute("data-lc-theme-choice", choice);
    document.querySelectorAll("[data-lc-theme-value]").forEach(function (item) {
      var active = item.getAttribute("data-lc-theme-value") === choice;
      item.classList.toggle("active", active);
      item.setAttribute("aria-pressed", active ? "true" : "false");
    });
  }

  apply();
  if (system) {
    system.addEventListener("change", apply);
  }
  document.addEventListener("click", function (event) {
    var item = event.target.closest && event.target.closest("[data-lc-theme-value]");
    if (!item) {
      return;
    }
    event.preventDefault();
    try {
      window.localStorage.setItem(KEY, item.getAttribute("data-lc-theme-value"));
    } catch (err) {
      /* private mode: the choice lasts for this page */
    }
    apply();
  });
  document.addEventListener("DOMContentLoaded", apply);
})();
