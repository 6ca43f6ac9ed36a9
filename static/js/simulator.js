// The WhatsApp simulator page: keep the chat scrolled to the newest bubble and clear the box
// once a message went through (the server sends the "simPoll" event only on success).
(function () {
  "use strict";

  function scrollToEnd() {
    var log = document.getElementById("sim-log");
    if (log) {
      log.scrollTop = log.scrollHeight;
    }
  }

  document.addEventListener("DOMContentLoaded", scrollToEnd);

  document.body.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.target && event.detail.target.id === "sim-log") {
      scrollToEnd();
    }
  });

  document.body.addEventListener("simPoll", function () {
    var box = document.querySelector("#sim-send input[name=text]");
    if (box) {
      box.value = "";
      box.focus();
    }
  });
})();
