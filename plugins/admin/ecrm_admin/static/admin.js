// ecrm admin: the only script besides htmx (the CSP allows no inline script).
// 1. htmx requests carry the session's CSRF token as X-CSRF-Token.
document.addEventListener("htmx:configRequest", function (event) {
  var meta = document.querySelector('meta[name="csrf-token"]');
  if (meta) { event.detail.headers["X-CSRF-Token"] = meta.content; }
});
// 2. Live e-mail preview: typing in a form marked data-live-preview submits it
//    (after a pause) with its preview button, into the sandboxed preview frame.
(function () {
  var timer = null;
  document.addEventListener("input", function (event) {
    var form = event.target.closest && event.target.closest("form[data-live-preview]");
    if (!form) { return; }
    clearTimeout(timer);
    timer = setTimeout(function () {
      var button = form.querySelector("button[data-preview]");
      if (button && form.requestSubmit) { form.requestSubmit(button); }
    }, 600);
  });
})();
