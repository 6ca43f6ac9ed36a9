/* The WhatsApp simulator: bubbles arrive over each phone's websocket (console.js applies them);
 * here: scroll to the newest bubble, "typing…", tapping list rows and buttons, acknowledging
 * the replies a phone showed (delivered + read), clearing the box after a send. */
(function () {
  "use strict";

  function scroll(phone) {
    var log = phone && phone.querySelector(".sim-log");
    if (log) log.scrollTop = log.scrollHeight;
  }

  function ack(phone) {
    var live = phone.querySelector("[ws-connect]");
    var wamids = [];
    phone.querySelectorAll(".sim-out[data-wamid]:not([data-acked])").forEach(function (b) {
      b.setAttribute("data-acked", "1");
      wamids.push(b.getAttribute("data-wamid"));
    });
    if (wamids.length && live) window.SophiaLive.sendFrom(live, { action: "ack", wamids: wamids });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll(".phone").forEach(function (p) { scroll(p); });
  });

  document.addEventListener("sophia:upserted", function (evt) {
    var phone = evt.detail.element.closest(".phone");
    if (!phone) return;
    var typing = phone.querySelector(".sim-typing");
    if (typing && evt.detail.element.classList.contains("sim-out")) typing.hidden = true;
    scroll(phone);
    ack(phone);
  });

  document.addEventListener("sophia:sim.typing", function (evt) {
    var phone = evt.detail.source && evt.detail.source.closest(".phone");
    var typing = phone && phone.querySelector(".sim-typing");
    if (typing) typing.hidden = !evt.detail.data.typing;
    scroll(phone);
  });

  document.addEventListener("htmx:wsOpen", function (evt) {
    var phone = evt.target.closest(".phone");
    if (phone) ack(phone);
  });

  document.addEventListener("click", function (evt) {
    var button = evt.target.closest("[data-sim-reply]");
    if (!button) return;
    var phone = button.closest(".phone");
    var form = phone.querySelector(".sim-send");
    var values = JSON.parse(button.getAttribute("data-sim-reply"));
    htmx.ajax("POST", form.getAttribute("hx-post"), {
      source: form, target: form.previousElementSibling, swap: "outerHTML",
      values: Object.assign({}, values, {
        clinic: form.elements.clinic.value, phone: form.elements.phone.value, name: form.elements.name.value,
      }),
    });
    var details = button.closest("details");
    if (details) details.open = false;
  });

})();
