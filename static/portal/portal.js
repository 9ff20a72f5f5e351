/* labcloud dashboard behaviour: confirmation of destructive forms and copy-to-clipboard buttons. */
(function () {
  "use strict";

  // <form data-lc-confirm="Question?">: ask before submitting.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-lc-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.appendChild(area);
      area.select();
      var ok = document.execCommand("copy");
      document.body.removeChild(area);
      (ok ? resolve : reject)();
    });
  }

  // <button data-lc-copy="#input" data-lc-copied="Copied">: copy the input's value.
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-lc-copy]");
    if (!button) {
      return;
    }
    var source = document.querySelector(button.getAttribute("data-lc-copy"));
    if (!source) {
      return;
    }
    var label = button.querySelector("span");
    var original = label ? label.textContent : "";
    copyText(source.value || source.textContent).then(function () {
      button.classList.add("lc-copied");
      if (label) {
        label.textContent = button.getAttribute("data-lc-copied") || original;
      }
      window.setTimeout(function () {
        button.classList.remove("lc-copied");
        if (label) {
          label.textContent = original;
        }
      }, 2000);
    }, function () {
      source.select && source.select();
    });
  });

  // Select the whole token on focus, so a manual copy is one keystroke.
  document.querySelectorAll("input[readonly].font-monospace").forEach(function (input) {
    input.addEventListener("focus", function () { input.select(); });
  });
})();
