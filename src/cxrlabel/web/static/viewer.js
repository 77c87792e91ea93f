/* cxrlabel work page: image viewer (zoom, pan, window/level, invert), keyboard operation,
   client-side validation and prefetching of the next page's images.
   Plain JavaScript, no build step; inlined as-is by the job-design preview. */
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  var MIN_SCALE = 1, MAX_SCALE = 12;

  function Viewer(root) {
    this.root = root;
    this.port = root.querySelector(".viewport");
    this.img = root.querySelector("img");
    this.brightness = root.querySelector('[data-filter="brightness"]');
    this.contrast = root.querySelector('[data-filter="contrast"]');
    this.invertButton = root.querySelector('[data-action="invert"]');
    this.pointers = new Map();
    this.reset();
    this.bind();
  }
  Viewer.prototype.reset = function () {
    this.scale = 1; this.tx = 0; this.ty = 0; this.inverted = false;
    if (this.brightness) this.brightness.value = 100;
    if (this.contrast) this.contrast.value = 100;
    this.apply();
  };
  Viewer.prototype.apply = function () {
    this.img.style.transform = "translate(" + this.tx + "px," + this.ty + "px) scale(" + this.scale + ")";
    var b = this.brightness ? this.brightness.value / 100 : 1;
    var c = this.contrast ? this.contrast.value / 100 : 1;
    this.img.style.filter = "brightness(" + b + ") contrast(" + c + ")" + (this.inverted ? " invert(1)" : "");
    if (this.invertButton) this.invertButton.setAttribute("aria-pressed", String(this.inverted));
  };
  // Zoom by factor k keeping the image point under (px, py) (viewport coordinates) fixed.
  Viewer.prototype.zoomAt = function (k, px, py) {
    var next = Math.min(MAX_SCALE, Math.max(MIN_SCALE, this.scale * k));
    k = next / this.scale;
    var rect = this.port.getBoundingClientRect();
    var cx = (px === undefined ? rect.width / 2 : px) - rect.width / 2;
    var cy = (py === undefined ? rect.height / 2 : py) - rect.height / 2;
    this.tx = cx - k * (cx - this.tx);
    this.ty = cy - k * (cy - this.ty);
    this.scale = next;
    if (this.scale === 1) { this.tx = 0; this.ty = 0; }
    this.apply();
  };
  Viewer.prototype.pan = function (dx, dy) { this.tx += dx; this.ty += dy; this.apply(); };
  Viewer.prototype.step = function (input, delta) {
    if (!input) return;
    input.value = Math.min(+input.max, Math.max(+input.min, +input.value + delta));
    this.apply();
  };
  Viewer.prototype.invert = function () { this.inverted = !this.inverted; this.apply(); };
  Viewer.prototype.bind = function () {
    var self = this, port = this.port;
    port.addEventListener("wheel", function (e) {
      e.preventDefault();
      var rect = port.getBoundingClientRect();
      self.zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - rect.left, e.clientY - rect.top);
    }, { passive: false });
    port.addEventListener("dblclick", function () { self.reset(); });
    port.addEventListener("pointerdown", function (e) {
      port.setPointerCapture(e.pointerId);
      self.pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
      port.classList.add("dragging");
    });
    port.addEventListener("pointermove", function (e) {
      var prev = self.pointers.get(e.pointerId);
      if (!prev) return;
      if (self.pointers.size === 1) {
        self.pan(e.clientX - prev.x, e.clientY - prev.y);
      } else if (self.pointers.size === 2) { // pinch: scale by the change of finger distance
        var other = null;
        self.pointers.forEach(function (p, id) { if (id !== e.pointerId) other = p; });
        var before = Math.hypot(prev.x - other.x, prev.y - other.y);
        var after = Math.hypot(e.clientX - other.x, e.clientY - other.y);
        var rect = port.getBoundingClientRect();
        if (before > 0) self.zoomAt(after / before, (e.clientX + other.x) / 2 - rect.left, (e.clientY + other.y) / 2 - rect.top);
      }
      self.pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
    });
    function up(e) { self.pointers.delete(e.pointerId); if (!self.pointers.size) port.classList.remove("dragging"); }
    port.addEventListener("pointerup", up);
    port.addEventListener("pointercancel", up);
    this.root.addEventListener("input", function (e) { if (e.target.dataset.filter) self.apply(); });
    this.root.addEventListener("click", function (e) {
      var action = e.target.closest("[data-action]");
      if (!action) return;
      var a = action.dataset.action;
      if (a === "zoom-in") self.zoomAt(1.25);
      else if (a === "zoom-out") self.zoomAt(0.8);
      else if (a === "reset") self.reset();
      else if (a === "invert") self.invert();
    });
  };
  // Keys the viewer handles; returns true when used.
  Viewer.prototype.key = function (e) {
    switch (e.key) {
      case "+": case "=": this.zoomAt(1.25); return true;
      case "-": case "_": this.zoomAt(0.8); return true;
      case "0": this.reset(); return true;
      case "i": case "I": this.invert(); return true;
      case ",": this.step(this.brightness, -10); return true;
      case ".": this.step(this.brightness, 10); return true;
      case "[": this.step(this.contrast, -10); return true;
      case "]": this.step(this.contrast, 10); return true;
      case "ArrowLeft": if (this.scale > 1) { this.pan(40, 0); return true; } return false;
      case "ArrowRight": if (this.scale > 1) { this.pan(-40, 0); return true; } return false;
      case "ArrowUp": if (this.scale > 1) { this.pan(0, 40); return true; } return false;
      case "ArrowDown": if (this.scale > 1) { this.pan(0, -40); return true; } return false;
    }
    return false;
  };

  function WorkPage(form) {
    this.form = form;
    this.items = Array.prototype.slice.call(form.querySelectorAll(".item"));
    this.viewers = this.items.map(function (item) { return new Viewer(item.querySelector("[data-role=viewer]")); });
    this.error = form.querySelector("[data-role=form-error]");
    this.position = form.querySelector("[data-role=position]");
    this.answered = form.querySelector("[data-role=answered]");
    this.submitting = false;
    this.current = 0;
    form.setAttribute("novalidate", ""); // we validate ourselves, also items that are hidden
    this.show(0, false);
    this.bind();
    this.count();
    this.prefetch();
  }
  WorkPage.prototype.show = function (index, focus) {
    if (index < 0 || index >= this.items.length) return;
    this.items.forEach(function (item, i) { item.classList.toggle("current", i === index); });
    this.current = index;
    if (this.position) this.position.textContent = String(index + 1);
    if (focus === false) return;
    var item = this.items[index];
    item.querySelector(".viewport").focus({ preventScroll: true });
    // On a phone the buttons sit below the answers: after "Next" the new X-ray would be above
    // the screen. Bring the item's top into view whenever it is not on screen.
    var top = item.getBoundingClientRect().top;
    if (top < 0 || top > window.innerHeight * 0.5) item.scrollIntoView({ block: "start" });
  };
  WorkPage.prototype.missing = function (item) {
    var out = [];
    item.querySelectorAll("fieldset.q").forEach(function (fs) {
      var required = fs.querySelector("input[required]");
      if (required && !fs.querySelector("input:checked")) out.push(fs);
    });
    return out;
  };
  WorkPage.prototype.count = function () {
    var self = this, done = 0;
    this.items.forEach(function (item) { if (!self.missing(item).length) done += 1; });
    if (this.answered) this.answered.textContent = String(done);
    return done;
  };
  WorkPage.prototype.validate = function () {
    for (var i = 0; i < this.items.length; i++) {
      var gaps = this.missing(this.items[i]);
      this.items[i].querySelectorAll("fieldset.q").forEach(function (fs) { fs.classList.remove("missing"); });
      if (gaps.length) {
        gaps.forEach(function (fs) { fs.classList.add("missing"); });
        this.show(i);
        var what = gaps.map(function (fs) { return fs.querySelector("legend").textContent.trim().replace(/\s+[A-Z]$/, ""); });
        this.fail("Image " + (i + 1) + " still needs an answer: " + what.join(" / "));
        gaps[0].querySelector("input").focus();
        return false;
      }
    }
    return true;
  };
  WorkPage.prototype.fail = function (text) { this.error.textContent = text; this.error.hidden = false; };
  WorkPage.prototype.submit = function () {
    if (this.submitting) return; // a double press sends one request (the server is idempotent too)
    if (!this.validate()) return;
    if (this.form.hasAttribute("data-preview")) { this.fail("Preview: answers are not saved."); return; }
    this.submitting = true;
    var button = this.form.querySelector("[data-role=submit]");
    if (button) button.disabled = true;
    this.form.submit();
  };
  WorkPage.prototype.choose = function (fieldsetClass, key) {
    var fs = this.items[this.current].querySelector("fieldset." + fieldsetClass);
    var input = fs && fs.querySelector('input[data-key="' + key.toLowerCase() + '"]') ||
                fs && fs.querySelector('input[data-key="' + key + '"]');
    if (!input) return false;
    input.checked = true;
    input.dispatchEvent(new Event("change", { bubbles: true }));
    fs.classList.remove("missing");
    return true;
  };
  WorkPage.prototype.cycleFlag = function () {
    var inputs = this.items[this.current].querySelectorAll("fieldset.q-flag input");
    var i = Array.prototype.findIndex.call(inputs, function (x) { return x.checked; });
    var next = inputs[(i + 1) % inputs.length];
    next.checked = true;
    next.dispatchEvent(new Event("change", { bubbles: true }));
  };
  WorkPage.prototype.help = function () {
    var dialog = document.getElementById("help-dialog");
    if (dialog && dialog.showModal) { if (!dialog.open) dialog.showModal(); }
    else { var h = this.form.querySelector(".keys-help"); if (h) h.open = true; }
  };
  WorkPage.prototype.bind = function () {
    var self = this;
    this.form.addEventListener("change", function () { self.count(); self.error.hidden = true; });
    this.form.addEventListener("submit", function (e) { e.preventDefault(); self.submit(); });
    this.form.addEventListener("click", function (e) {
      var action = e.target.closest("[data-action]");
      if (!action) return;
      if (action.dataset.action === "next") self.show(self.current + 1);
      else if (action.dataset.action === "prev") self.show(self.current - 1);
      else if (action.dataset.action === "help") self.help();
    });
    document.addEventListener("keydown", function (e) {
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      var t = e.target;
      if (t && (t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && t.type === "text"))) return;
      var dialog = document.getElementById("help-dialog");
      if (dialog && dialog.open) return; // Esc closes it natively
      var used = true;
      if (e.key === "Enter") {
        if (t && (t.tagName === "BUTTON" && t.type !== "submit") || (t && t.tagName === "A")) return;
        self.submit();
      } else if (e.key === "j" || e.key === "J") self.show(self.current + 1);
      else if (e.key === "k" || e.key === "K") self.show(self.current - 1);
      else if (e.key === "?") self.help();
      else if (e.key === "f" || e.key === "F") self.cycleFlag();
      else if (self.choose("q-label", e.key) || self.choose("q-certainty", e.key)) used = true;
      else used = self.viewers[self.current].key(e);
      if (used) e.preventDefault();
    });
  };
  // Reserve the next page now and warm the browser cache with its images (immutable URLs).
  WorkPage.prototype.prefetch = function () {
    var url = this.form.dataset.prefetchUrl;
    if (!url || !window.fetch) return;
    var token = this.form.querySelector("input[name=csrf_token]").value;
    var run = function () {
      fetch(url, { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": token } })
        .then(function (r) { return r.ok ? r.json() : { images: [] }; })
        .then(function (data) { (data.images || []).forEach(function (src) { var im = new Image(); im.src = src; }); })
        .catch(function () { /* prefetching is only an optimisation */ });
    };
    if (window.requestIdleCallback) window.requestIdleCallback(run, { timeout: 3000 }); else setTimeout(run, 1000);
  };

  function start() {
    var form = document.getElementById("work-form");
    if (form) window.cxrWorkPage = new WorkPage(form);
    // Viewers outside a work page (expert review, gold proposals): zoom, pan and filters too.
    document.querySelectorAll("[data-role=viewer]").forEach(function (root) {
      if (!root.closest("#work-form")) new Viewer(root);
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
