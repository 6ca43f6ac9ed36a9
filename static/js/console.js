/* Sophia console: the live channel on top of htmx's ws extension, and the console's manners.
 *
 * An element with hx-ext="ws" ws-connect="/ws/…" data-live-seq='{"clinic-1": 41}' receives
 * JSON frames {group, event, seq?, html?, data?}. Numbered frames are applied in order per
 * group: a duplicate is dropped, a gap asks the server for what was missed ("resync"), and after
 * every (re)connect the page sends the last numbers it applied, so nothing is lost offline.
 * `html`: elements with data-upsert-into="<selector>" are inserted or replaced by id inside that
 * container (kept sorted by data-sort, newest last for streams, first for the inbox); the rest
 * goes through htmx's out-of-band swap. `data` becomes the DOM event `sophia:<event>`.
 */
(function () {
  "use strict";
  var api = null;
  var RECONNECT_CODES = [1006, 1011, 1012, 1013];  // the ws extension retries these itself
  var userId = "";
  document.addEventListener("DOMContentLoaded", function () { userId = String(document.body.dataset.userId || ""); });

  // --- sequence numbers and resync ------------------------------------------------------
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

  function allLive() { return Array.prototype.slice.call(document.querySelectorAll("[ws-connect]")); }

  function setStatus() {
    var el = document.getElementById("live-status");
    var socks = allLive();
    if (!el || !socks.length) return;
    var state = "live";
    socks.forEach(function (s) {
      var st = liveState(s).status || "connecting";
      if (st === "denied") state = "denied";
      else if (st !== "live" && state !== "denied") state = liveState(s).everOpen ? "offline" : (state === "live" ? "connecting" : state);
    });
    if (state === "connecting") state = "idle";
    el.dataset.state = state;
    el.textContent = el.dataset["text" + state.charAt(0).toUpperCase() + state.slice(1)] || "";
    document.documentElement.classList.toggle("is-offline", state === "offline");
  }

  function dispatch(name, data, source) {
    document.dispatchEvent(new CustomEvent("sophia:" + name, { detail: { data: data || {}, source: source } }));
  }

  // --- upserts ----------------------------------------------------------------------------
  function insertSorted(container, element, newestFirst) {
    var key = element.getAttribute("data-sort") || "";
    var children = container.children;
    for (var i = 0; i < children.length; i++) {
      var other = children[i].getAttribute("data-sort");
      if (other === null) continue;
      if (newestFirst ? other < key : other > key) {
        container.insertBefore(element, children[i]);
        return;
      }
    }
    var tail = container.querySelector(":scope > .inbox-more");
    if (tail) container.insertBefore(element, tail); else container.appendChild(element);
  }

  function inboxAccepts(list, row) {
    if (list.dataset.query) return !!document.getElementById(row.id);  // a search: update only
    var closed = row.dataset.closed === "1";
    switch (list.dataset.view || "open") {
      case "urgent": return row.dataset.urgent === "1" && !closed;
      case "needs": return row.dataset.needs === "1" && !closed;
      case "mine": return row.dataset.holder === userId;
      case "bot": return row.dataset.mode === "bot" && !closed;
      case "human": return row.dataset.mode === "human" && !closed;
      case "closed": return closed;
      default: return !closed;
    }
  }

  function upsert(element, scope) {
    var selector = element.getAttribute("data-upsert-into");
    var container = (scope && scope.querySelector(selector)) || document.querySelector(selector);
    var existing = element.id ? document.getElementById(element.id) : null;
    if (!container) return;
    var isInbox = container.id === "inbox-list";
    if (isInbox) {
      var current = document.querySelector("[data-conversation-open]");
      if (current && element.id === "conv-row-" + current.getAttribute("data-conversation-open")) element.classList.add("is-active");
      if (!inboxAccepts(container, element)) { if (existing) existing.remove(); return; }
    }
    if (existing) {
      if (isInbox && existing.getAttribute("data-sort") !== element.getAttribute("data-sort")) {
        existing.remove();
        insertSorted(container, element, true);
      } else {
        existing.replaceWith(element);
      }
    } else {
      var empty = container.querySelector(":scope > .inbox-empty");
      if (empty) empty.remove();
      insertSorted(container, element, isInbox);
    }
    htmx.process(element);
    decorate(element);
    document.dispatchEvent(new CustomEvent("sophia:upserted", { detail: { element: element } }));
  }

  function applyHTML(html, scope) {
    if (html.indexOf("data-upsert-into") < 0) return html;
    var template = document.createElement("template");
    template.innerHTML = html;
    var rest = [];
    Array.prototype.slice.call(template.content.children).forEach(function (child) {
      if (child.hasAttribute("data-upsert-into")) { upsert(child, scope); return; }
      // A reply being typed, an open slot picker: left alone unless what they show changed.
      var current = child.id && child.hasAttribute("data-state") && document.getElementById(child.id);
      if (current && current.getAttribute("data-state") === child.getAttribute("data-state")) return;
      rest.push(child.outerHTML);
    });
    return rest.join("");
  }

  htmx.defineExtension("sophia-live", {
    init: function (apiRef) { api = apiRef; },
    transformResponse: function (text, xhr, elt) {
      if (xhr) return applyHTML(text, null);  // action answers carry the same fragments
      var frame;
      try { frame = JSON.parse(text); } catch (e) { return text; }
      var state = liveState(elt);
      if (frame.event === "resync.done") { state.pendingResync = false; return ""; }
      if (frame.event === "resync.reset") {
        // The backlog no longer reaches back far enough: reload the live fragments.
        state.pendingResync = false;
        state.seqs[frame.group] = frame.seq;
        htmx.trigger(document.body, "sophia:resync", { group: frame.group });
        window.location.reload();
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
      if (frame.data) dispatch(frame.event, frame.data, elt);
      return frame.html ? applyHTML(frame.html, elt.closest(".phone") || null) : "";
    },
  });

  function isLiveElt(elt) { return elt && elt.hasAttribute && elt.hasAttribute("ws-connect"); }

  document.addEventListener("htmx:wsOpen", function (evt) {
    var elt = evt.target;
    if (!isLiveElt(elt)) return;
    var state = liveState(elt);
    state.everOpen = true;
    state.pendingResync = false;
    state.status = "live";
    setStatus();
    requestResync(elt);  // catches up on anything since the page was rendered or the socket dropped
    if (elt.dataset.conversation) sendJSON(elt, { action: "viewer.here" });
  });

  document.addEventListener("htmx:wsClose", function (evt) {
    var elt = evt.target;
    if (!isLiveElt(elt) || !document.body.contains(elt)) return;
    var state = liveState(elt);
    var code = evt.detail && evt.detail.event && evt.detail.event.code;
    if (code === 4403 || (!state.everOpen && code === 1006 && state.failures > 3)) {
      state.status = "denied"; setStatus(); return;
    }
    state.failures = (state.failures || 0) + 1;
    state.status = "offline";
    setStatus();
    if (RECONNECT_CODES.indexOf(code) < 0) {
      // A clean close from a restarting server: reconnect as the extension would for 1012.
      clearTimeout(state.retry);
      state.retry = setTimeout(function () {
        var wrapper = socketOf(elt);
        if (wrapper) wrapper.init();
      }, 1000 + Math.random() * 1000);
    }
  });

  window.addEventListener("online", function () {
    allLive().forEach(function (elt) {
      var wrapper = socketOf(elt);
      if (wrapper && wrapper.socket && wrapper.socket.readyState > WebSocket.OPEN) wrapper.init();
    });
  });

  window.SophiaLive = {
    send: function (message) {
      var elt = document.querySelector("[ws-connect]");
      return elt ? sendJSON(elt, message) : false;
    },
    sendFrom: sendJSON,
    seqs: function () {
      var elt = document.querySelector("[ws-connect]");
      return elt ? liveState(elt).seqs : {};
    },
    drop: function () {  // for tests and demos: drop the socket as a network blip would
      allLive().forEach(function (elt) {
        var wrapper = socketOf(elt);
        if (wrapper && wrapper.socket) wrapper.socket.close(4000, "dropped");
      });
    },
  };

  // --- who holds the chat, countdowns -------------------------------------------------------
  function decorate(root) {
    (root.matches && root.matches("[data-holder]") ? [root] : []).concat(
      Array.prototype.slice.call((root.querySelectorAll ? root : document).querySelectorAll("[data-holder]"))
    ).forEach(function (el) {
      el.dataset.mine = el.dataset.holder && el.dataset.holder === userId ? "1" : "0";
    });
    tick(root);
  }

  function formatLeft(seconds) {
    if (seconds <= 0) return null;
    var m = Math.floor(seconds / 60), h = Math.floor(m / 60);
    return h ? h + " h " + String(m % 60).padStart(2, "0") + " min" : (m ? m + " min" : "<1 min");
  }

  function tick(root) {
    var now = Date.now() / 1000;
    (root || document).querySelectorAll("[data-deadline]").forEach(function (el) {
      var left = formatLeft(parseInt(el.dataset.deadline, 10) - now);
      if (el.classList.contains("window-left")) {
        var tpl = document.getElementById("conv-compose");
        el.textContent = left ? (tpl && tpl.dataset.textLeft ? tpl.dataset.textLeft.replace("{time}", left) : left) : "";
      } else if (left) {
        el.textContent = left;
      } else {
        el.textContent = el.dataset.closedText || "";
        el.classList.add("tag-window-closed");
      }
    });
  }
  setInterval(function () { tick(document); }, 30000);

  // --- typing (staff → other staff and the patient) and viewers -----------------------------
  var typingTimer = null, typingSentAt = 0;
  document.addEventListener("input", function (evt) {
    if (!evt.target.matches("[data-typing]")) return;
    var now = Date.now();
    if (now - typingSentAt > 3000) { window.SophiaLive.send({ action: "typing", typing: true }); typingSentAt = now; }
    clearTimeout(typingTimer);
    typingTimer = setTimeout(function () { window.SophiaLive.send({ action: "typing", typing: false }); typingSentAt = 0; }, 4000);
  });

  var typingClear = {};
  document.addEventListener("sophia:typing", function (evt) {
    var d = evt.detail.data, line = document.getElementById("conv-typing");
    if (d.who === "staff" && String(d.user_id) === userId) return;
    var on = d.who === "bot" ? d.status === "typing" : !!d.typing;
    var rowTag = d.conversation && document.getElementById("row-typing-" + d.conversation);
    if (rowTag) {
      rowTag.hidden = !on;
      clearTimeout(typingClear["row" + d.conversation]);
      typingClear["row" + d.conversation] = setTimeout(function () { rowTag.hidden = true; }, 8000);
    }
    var open = document.querySelector("[data-conversation-open]");
    if (!line || !open || (d.conversation && String(d.conversation) !== open.getAttribute("data-conversation-open"))) return;
    var text = d.who === "bot" ? line.dataset.bot : (line.dataset.staff || "{name}").replace("{name}", d.name || "");
    line.textContent = on ? text : "";
    clearTimeout(typingClear.line);
    if (on) typingClear.line = setTimeout(function () { line.textContent = ""; }, 8000);
  });

  var viewers = {};
  function showViewers() {
    var el = document.getElementById("conv-viewers");
    if (!el) return;
    var names = Object.keys(viewers).filter(function (id) { return id !== userId; }).map(function (id) { return viewers[id]; });
    el.textContent = names.length ? (el.dataset.label || "{names}").replace("{names}", names.join(", ")) : "";
  }
  document.addEventListener("sophia:viewer.join", function (evt) {
    var d = evt.detail.data; viewers[String(d.user_id)] = d.name; showViewers();
    if (String(d.user_id) !== userId) window.SophiaLive.send({ action: "viewer.here" });
  });
  document.addEventListener("sophia:viewer.here", function (evt) { var d = evt.detail.data; viewers[String(d.user_id)] = d.name; showViewers(); });
  document.addEventListener("sophia:viewer.leave", function (evt) { delete viewers[String(evt.detail.data.user_id)]; showViewers(); });

  // --- attention: title badge, sound, browser notification -----------------------------------
  var baseTitle = document.title, unseen = 0;
  function badge() { document.title = unseen ? "(" + unseen + ") " + baseTitle : baseTitle; }
  document.addEventListener("visibilitychange", function () { if (!document.hidden) { unseen = 0; badge(); } });
  function beep() {
    try {
      var ctx = new (window.AudioContext || window.webkitAudioContext)();
      var osc = ctx.createOscillator(), gain = ctx.createGain();
      osc.frequency.value = 880; gain.gain.value = 0.08; osc.connect(gain); gain.connect(ctx.destination);
      osc.start(); osc.stop(ctx.currentTime + 0.25);
    } catch (e) { /* no audio: the badge and the notification remain */ }
  }
  document.addEventListener("sophia:attention", function (evt) {
    var d = evt.detail.data, list = document.getElementById("inbox-list");
    unseen += 1; badge();
    if (document.body.dataset.attentionTitle) document.title = "🔴 " + document.title;
    if (localStorage.getItem("sophia:sound") === "1") beep();
    if (window.Notification && Notification.permission === "granted") {
      var what = d.urgent ? (list && list.dataset.urgentText) : (list && list.dataset.needsText);
      try { new Notification(what || "Sophia", { body: d.name, tag: "conv-" + d.conversation }); } catch (e) { /* ignore */ }
    }
  });
  document.addEventListener("change", function (evt) {
    if (evt.target.id === "attention-sound") localStorage.setItem("sophia:sound", evt.target.checked ? "1" : "0");
  });
  document.addEventListener("click", function (evt) {
    if (evt.target.id === "attention-notify" && window.Notification) Notification.requestPermission();
  });

  // --- inbox filters remember what the list shows -------------------------------------------
  document.addEventListener("htmx:configRequest", function (evt) {
    var form = evt.detail.elt && evt.detail.elt.closest && evt.detail.elt.closest(".inbox-tools");
    var list = document.getElementById("inbox-list");
    if (!form || !list) return;
    list.dataset.view = evt.detail.parameters.view || "open";
    list.dataset.query = evt.detail.parameters.q || "";
    form.querySelectorAll(".filter").forEach(function (l) { l.classList.toggle("is-on", l.querySelector("input").checked); });
  });

  // --- keyboard: j/k move, Enter opens, r reply, t take over, / search ------------------------
  function rows() { return Array.prototype.slice.call(document.querySelectorAll("#inbox-list .row-link")); }
  document.addEventListener("keydown", function (evt) {
    var tag = (evt.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea" || tag === "select" || evt.ctrlKey || evt.metaKey || evt.altKey) {
      if (evt.key === "Escape") evt.target.blur();
      return;
    }
    var list = rows(), index = list.indexOf(document.activeElement);
    if (evt.key === "j" || evt.key === "ArrowDown" && index >= 0) {
      evt.preventDefault(); (list[index + 1] || list[0] || {}).focus && (list[index + 1] || list[0]).focus();
    } else if (evt.key === "k" || evt.key === "ArrowUp" && index >= 0) {
      evt.preventDefault(); var prev = list[index - 1] || list[list.length - 1]; if (prev) prev.focus();
    } else if (evt.key === "/") {
      var search = document.getElementById("inbox-search"); if (search) { evt.preventDefault(); search.focus(); }
    } else if (evt.key === "r") {
      var box = document.getElementById("reply-text") || document.getElementById("note-text");
      if (box) { evt.preventDefault(); var d = box.closest("details"); if (d) d.open = true; box.focus(); }
    } else if (evt.key === "t") {
      var take = document.querySelector('#conv-header [data-key="t"]');
      if (take) { evt.preventDefault(); take.click(); }
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    decorate(document);
    var sound = document.getElementById("attention-sound");
    if (sound) sound.checked = localStorage.getItem("sophia:sound") === "1";
    var stream = document.getElementById("stream");
    if (stream) stream.scrollTop = stream.scrollHeight;
  });
  document.addEventListener("sophia:upserted", function (evt) {
    var stream = document.getElementById("stream");
    if (stream && stream.contains(evt.detail.element)) stream.scrollTop = stream.scrollHeight;
  });
  document.addEventListener("htmx:oobAfterSwap", function () { decorate(document); });
  document.addEventListener("htmx:afterSettle", function () { decorate(document); });
  document.addEventListener("htmx:wsAfterMessage", function () { decorate(document); });
})();
