/* Sophia console: the live channel on top of htmx's ws extension.
 *
 * An element with hx-ext="ws,sophia-live" ws-connect="/ws/…" data-live-seq='{"clinic-1": 41}'
 * receives JSON frames {group, event, seq, html?, data?}. Frames are applied in sequence order
 * per group: a duplicate is dropped, a gap asks the server for what was missed ("resync"), and
 * after every (re)connect the page sends the last numbers it applied so nothing is lost while
 * offline. `html` goes through htmx's out-of-band swap; `data` is re-dispatched as a DOM event
 * `sophia:<event>` on document for page scripts (typing, viewers, attention).
 */
(function () {
  "use strict";
  var api = null;
  var RECONNECT_CODES = [1006, 1011, 1012, 1013];  // the ws extension retries these itself

  function liveState(elt) {
    if (!elt._sophiaLive) {
      var initial = {};
      try { initial = JSON.parse(elt.getAttribute("data-live-seq") || "{}"); } catch (e) { initial = {}; }
      elt._sophiaLive = { seqs: initial, everOpen: false, retry: null, pendingResync: false };
    }
    return elt._sophiaLive;
  }

  function socketOf(elt) {
    var data = api && api.getInternalData(elt);
    return data && data.webSocket;
  }

  function sendJSON(elt, message) {
    var wrapper = socketOf(elt);
    if (wrapper && wrapper.socket && wrapper.socket.readyState === WebSocket.OPEN) {
      wrapper.socket.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  function requestResync(elt) {
    var state = liveState(elt);
    if (state.pendingResync) return;
    state.pendingResync = sendJSON(elt, { action: "resync", since: state.seqs });
  }

  function setStatus(state) {
    var el = document.getElementById("live-status");
    if (!el) return;
    el.dataset.state = state;
    el.textContent = el.dataset["text" + state.charAt(0).toUpperCase() + state.slice(1)] || "";
    document.documentElement.classList.toggle("is-offline", state === "offline");
  }

  function dispatch(name, detail) {
    document.dispatchEvent(new CustomEvent("sophia:" + name, { detail: detail }));
  }

  htmx.defineExtension("sophia-live", {
    init: function (apiRef) { api = apiRef; },
    transformResponse: function (text, xhr, elt) {
      if (xhr) return text;  // ordinary htmx requests inside the live element
      var frame;
      try { frame = JSON.parse(text); } catch (e) { return text; }
      var state = liveState(elt);
      if (frame.event === "resync.done") {
        state.pendingResync = false;
        return "";
      }
      if (frame.event === "resync.reset") {
        // The backlog no longer reaches back far enough: reload the live fragments.
        state.pendingResync = false;
        state.seqs[frame.group] = frame.seq;
        htmx.trigger(document.body, "sophia:resync", { group: frame.group });
        return "";
      }
      if (typeof frame.seq === "number" && frame.group) {
        var last = state.seqs[frame.group];
        if (typeof last === "number") {
          if (frame.seq <= last) return "";
          if (frame.seq > last + 1) { requestResync(elt); return ""; }
        }
        state.seqs[frame.group] = frame.seq;
      }
      dispatch(frame.event, frame.data || {});
      return frame.html || "";
    },
  });

  function isLiveElt(elt) { return elt && elt.hasAttribute && elt.hasAttribute("ws-connect"); }

  document.addEventListener("htmx:wsOpen", function (evt) {
    var elt = evt.target;
    if (!isLiveElt(elt)) return;
    var state = liveState(elt);
    state.everOpen = true;
    state.pendingResync = false;
    setStatus("live");
    requestResync(elt);  // catches up on anything since the page was rendered or the socket dropped
  });

  document.addEventListener("htmx:wsClose", function (evt) {
    var elt = evt.target;
    if (!isLiveElt(elt) || !document.body.contains(elt)) return;
    var code = evt.detail && evt.detail.event && evt.detail.event.code;
    if (code === 4403 || code === 4404) { setStatus("denied"); return; }
    setStatus("offline");
    if (RECONNECT_CODES.indexOf(code) < 0) {
      // A clean close from a restarting server: reconnect as the extension would for 1012.
      var state = liveState(elt);
      clearTimeout(state.retry);
      state.retry = setTimeout(function () {
        var wrapper = socketOf(elt);
        if (wrapper) wrapper.init();
      }, 1000 + Math.random() * 1000);
    }
  });

  document.addEventListener("htmx:wsConnecting", function (evt) {
    if (isLiveElt(evt.target) && liveState(evt.target).everOpen) setStatus("offline");
  });

  window.addEventListener("online", function () {
    document.querySelectorAll("[ws-connect]").forEach(function (elt) {
      var wrapper = socketOf(elt);
      if (wrapper && wrapper.socket && wrapper.socket.readyState > WebSocket.OPEN) wrapper.init();
    });
  });

  window.SophiaLive = {
    send: function (message) {
      var elt = document.querySelector("[ws-connect]");
      return elt ? sendJSON(elt, message) : false;
    },
    seqs: function () {
      var elt = document.querySelector("[ws-connect]");
      return elt ? liveState(elt).seqs : {};
    },
  };
})();
