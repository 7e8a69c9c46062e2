// The checkout page's live status: a WebSocket on /ws/payments/<id>/, and polling of
// /pay/<id>/status every poll_ms while the socket is down. No framework: it only updates text.
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("checkout-config").textContent);
  var root = document.getElementById("checkout");
  var state = config.state;
  var position = state.position;
  var socket = null;
  var pollTimer = null;
  var reconnectDelay = 1000;
  var reconnectTimer = null;
  var qrFor = state.amount_due;
  var clockSkewMs = Date.parse(state.server_time) - Date.now();
  var DONE = { settled: true, expired: true, invalid: true, cancelled: true };
  var token = encodeURIComponent(config.token);
  var lastSocketStatus = null;  // what the socket itself last said (support and tests)

  function text(id, value) {
    var node = document.getElementById(id);
    if (node && node.textContent !== value) node.textContent = value;
  }

  function hasValue(amount) { return /[1-9]/.test(amount || ""); }

  function finalMessage(s) {
    var unit = s.crypto_currency;
    if (s.status === "settled") {
      var extra = s.sub_status === "paid_over" ? " You paid more than was due: ask the merchant about the difference." : "";
      if (s.sub_status === "paid_late") extra = " It arrived after the deadline and was accepted.";
      return "Thank you, your payment is complete." + extra;
    }
    if (s.status === "expired") {
      if (hasValue(s.amount_received)) {
        return "Time ran out with " + s.amount_received + " of " + s.crypto_amount + " " + unit +
          " paid (" + s.amount_due + " " + unit + " still due). Contact the merchant about what you sent.";
      }
      return "The time to pay has run out. Do not send anything to this address.";
    }
    if (s.status === "invalid") return "This payment could not be completed. Contact the merchant.";
    if (s.status === "cancelled") return "The merchant cancelled this payment. Do not send anything.";
    if (s.sub_status === "paid_late") return "Your payment arrived after the deadline; the merchant will decide whether it is accepted.";
    if (s.sub_status === "paid_partial") return "Partially paid: " + s.amount_due + " " + unit + " still due.";
    return "";
  }

  function render() {
    root.setAttribute("data-status", state.status);
    root.setAttribute("data-sub-status", state.sub_status || "");
    root.classList.toggle("final", !!DONE[state.status]);
    text("headline", config.headlines[state.status] || state.status);
    text("status", state.status);
    text("sub-status", (state.sub_status || "").replace("_", " "));
    text("final-message", finalMessage(state));
    var fields = root.querySelectorAll("[data-field]");
    for (var i = 0; i < fields.length; i++) {
      var name = fields[i].getAttribute("data-field");
      var value = state[name];
      if (value !== undefined && value !== null && fields[i].textContent !== value) fields[i].textContent = value;
    }
    if (state.amount_due !== qrFor && hasValue(state.amount_due)) {
      qrFor = state.amount_due;  // after a partial payment the QR asks for the rest
      document.getElementById("qr").src = config.links.qr + "?token=" + token + "&v=" + position;
    }
  }

  function apply(snapshot, at) {
    if (at !== undefined && at < position) return;
    for (var key in snapshot) state[key] = snapshot[key];
    if (at !== undefined) position = at;
    render();
  }

  function setTransport(kind, label) {
    root.setAttribute("data-transport", kind);
    text("transport", label);
  }

  // --- polling fallback ---------------------------------------------------------------------
  function poll() {
    fetch(config.links.status + "?token=" + token, { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (body) { if (body) apply(body, body.position); })
      .catch(function () { /* the next tick tries again */ });
  }

  function startPolling() {
    if (pollTimer) return;
    setTransport("polling", "Live updates unavailable: checking every " + config.poll_ms / 1000 + " s.");
    poll();
    pollTimer = setInterval(poll, config.poll_ms);
  }

  function stopPolling() {
    if (pollTimer) clearInterval(pollTimer);
    pollTimer = null;
  }

  // --- WebSocket ------------------------------------------------------------------------------
  function connect() {
    reconnectTimer = null;
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    try {
      socket = new WebSocket(scheme + location.host + config.links.socket + "?token=" + token + "&after=" + position);
    } catch (error) {
      startPolling();
      return;
    }
    socket.onmessage = function (message) {
      var data;
      try { data = JSON.parse(message.data); } catch (error) { return; }
      if (data.type === "subscribed") {
        stopPolling();
        reconnectDelay = 1000;
        setTransport("websocket", "Live");
      } else if (data.type === "event") {
        var payload = data.event && data.event.data && data.event.data.payment;
        if (payload) lastSocketStatus = payload.status;
        if (payload) apply(payload, data.position);
        else position = Math.max(position, data.position);
      } else if (data.type === "refetch") {
        poll();
      }
    };
    socket.onclose = function (event) {
      socket = null;
      startPolling();
      // 4500-4999: the server asks us not to reconnect (close codes: notifications/streams.py); polling carries on.
      if (event.code >= 4500 && event.code <= 4999) return;
      if (DONE[state.status] && state.status !== "expired") return;
      reconnectTimer = setTimeout(connect, reconnectDelay);
      reconnectDelay = Math.min(reconnectDelay * 2, 30000);
    };
  }

  // --- countdown, copy, simulate --------------------------------------------------------------
  function tick() {
    var left = Math.max(0, Math.floor((Date.parse(state.expires_at) - (Date.now() + clockSkewMs)) / 1000));
    var minutes = Math.floor(left / 60), seconds = left % 60;
    text("countdown", minutes + ":" + (seconds < 10 ? "0" : "") + seconds);
    if (left === 0 && state.status === "pending" && !DONE[state.status]) poll();
  }

  function copy(event) {
    var source = document.getElementById(event.currentTarget.getAttribute("data-copy-from"));
    var value = source.textContent.trim();
    var done = function () { text("copy-feedback", "Copied " + value); event.currentTarget && (event.currentTarget.textContent = "Copied"); };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(value).then(done, function () { selectText(source); });
    } else {
      selectText(source);
      try { document.execCommand("copy"); done(); } catch (error) { /* selected for manual copy */ }
    }
  }

  function selectText(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  var buttons = document.querySelectorAll("button.copy");
  for (var i = 0; i < buttons.length; i++) buttons[i].addEventListener("click", copy);

  var simulateForm = document.getElementById("simulate-form");
  if (simulateForm) {
    simulateForm.addEventListener("submit", function (event) {
      event.preventDefault();
      var csrf = simulateForm.querySelector("input[name=csrfmiddlewaretoken]").value;
      fetch(simulateForm.action, {
        method: "POST",
        headers: { Accept: "application/json", "X-CSRFToken": csrf },
        credentials: "same-origin",
      }).then(function (response) { return response.json(); })
        .then(function (body) { if (body && body.position !== undefined) apply(body, body.position); });
    });
  }

  // Test and support hook: the page's live state, read-only.
  window.cryptopayCheckout = {
    state: function () { return state; },
    position: function () { return position; },
    lastSocketStatus: function () { return lastSocketStatus; },
  };

  render();
  tick();
  setInterval(tick, 1000);
  if ("WebSocket" in window) connect(); else startPolling();
})();
