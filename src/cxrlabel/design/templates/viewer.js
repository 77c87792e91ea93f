// Annotator work page behaviour: a per-image viewer (zoom, pan, brightness, contrast, invert,
// reset) and keyboard answering. No network access of any kind. Design-package copy; the web
// app's viewer.js replaces it when it exists.
(function () {
  "use strict";
  function setupViewer(viewer) {
    var img = viewer.querySelector("img");
    var port = viewer.querySelector(".viewport");
    var state = { zoom: 1, x: 0, y: 0, brightness: 100, contrast: 100, invert: false };
    function apply() {
      img.style.transform = "translate(-50%, -50%) translate(" + state.x + "px," + state.y +
        "px) scale(" + state.zoom + ")";
      img.style.filter = "brightness(" + state.brightness + "%) contrast(" + state.contrast +
        "%)" + (state.invert ? " invert(1)" : "");
    }
    function zoomBy(factor) { state.zoom = Math.min(8, Math.max(1, state.zoom * factor)); apply(); }
    function reset() {
      state = { zoom: 1, x: 0, y: 0, brightness: 100, contrast: 100, invert: false };
      viewer.querySelectorAll("input[type=range]").forEach(function (r) { r.value = 100; });
      apply();
    }
    viewer.querySelectorAll("[data-action]").forEach(function (button) {
      button.addEventListener("click", function () {
        var action = button.getAttribute("data-action");
        if (action === "zoom-in") zoomBy(1.25);
        if (action === "zoom-out") zoomBy(0.8);
        if (action === "invert") { state.invert = !state.invert; apply(); }
        if (action === "reset") reset();
      });
    });
    viewer.querySelectorAll("input[data-filter]").forEach(function (range) {
      range.addEventListener("input", function () {
        state[range.getAttribute("data-filter")] = Number(range.value); apply();
      });
    });
    port.addEventListener("wheel", function (e) { e.preventDefault(); zoomBy(e.deltaY < 0 ? 1.1 : 0.9); },
      { passive: false });
    var drag = null;
    port.addEventListener("pointerdown", function (e) {
      drag = { x: e.clientX - state.x, y: e.clientY - state.y }; port.setPointerCapture(e.pointerId);
    });
    port.addEventListener("pointermove", function (e) {
      if (!drag) return; state.x = e.clientX - drag.x; state.y = e.clientY - drag.y; apply();
    });
    port.addEventListener("pointerup", function () { drag = null; });
    apply();
    return { zoomBy: zoomBy, reset: reset };
  }

  function setupPage(page) {
    var items = Array.prototype.slice.call(page.querySelectorAll(".item"));
    var current = 0;
    items.forEach(function (item) { setupViewer(item.querySelector(".viewer")); });
    function focus(i) {
      current = Math.max(0, Math.min(items.length - 1, i));
      items.forEach(function (item, k) { item.classList.toggle("current", k === current); });
    }
    items.forEach(function (item, k) { item.addEventListener("click", function () { focus(k); }); });
    document.addEventListener("keydown", function (e) {
      if (e.target.tagName === "SELECT" || e.target.tagName === "TEXTAREA" || !items.length) return;
      var key = e.key.toLowerCase();
      if (key === "j") { focus(current + 1); return; }
      if (key === "k") { focus(current - 1); return; }
      if (key === "?") { var help = document.getElementById("instructions"); if (help) help.scrollIntoView(); return; }
      var input = items[current].querySelector('input[data-key="' + key + '"]');
      if (input) { input.checked = true; e.preventDefault(); }
    });
    var form = page.closest("form");
    if (form && form.hasAttribute("data-preview")) {
      form.addEventListener("submit", function (e) {
        e.preventDefault();  // a preview never sends anything
        var note = form.querySelector(".note");
        if (note) note.textContent = "Preview only: nothing was sent.";
      });
    }
    focus(0);
  }
  document.querySelectorAll(".work-page").forEach(setupPage);
})();
