// The checkout page's live status: a WebSocket on /ws/payments/<id>/, and polling of
// /pay/<id>/status every poll_ms while the socket is down. The server decides every text the
// buyer reads (checkout_state: step, headline, detail, in the page's language); this script puts
// them in place, runs the countdown, the copy buttons and the return to the shop. No framework.
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("checkout-config").textContent);
  var T = config.texts;
  var root = document.getElementById("checkout");
  var state = config.state;
  var position = state.position;
  var socket = null;
  var pollTimer = null;
  var reconnectDelay = 1000;
  var qrFor = state.amount_due;
  var clockSkewMs = Date.parse(state.server_time) - Date.now();
  var DONE = { settled: true, expired: true, invalid: true, cancelled: true };
  var STEP_INDEX = { choose: 0, waiting: 1, underpaid: 1, detected: 2, confirming: 2, paid: 4 };
  var token = encodeURIComponent(config.token);
  var lastSocketStatus = null;  // what the socket itself last said (support and tests)
  var announcedHeadline = state.headline;
  var announcedMinute = null;
  var redirectTimer = null;

  function format(template, values) {
    return template.replace(/%\((\w+)\)s/g, function (_, name) { return values[name]; });
  }

  function text(id, value) {
    var node = document.getElementById(id);
    if (node && value !== undefined && value !== null && node.textContent !== value) node.textContent = value;
  }

  function hasValue(amount) { return /[1-9]/.test(amount || ""); }

  // Exact, but no zeros past satoshi precision (payments.money.coin_text does the same).
  function coin(amount) { return String(amount).replace(/(\.\d{8}\d*?)0+$/, "$1"); }

  function renderSteps() {
    var current = STEP_INDEX[state.step];
    var items = root.querySelectorAll(".progress-steps li");
    for (var i = 0; i < items.length; i++) {
      var done = current !== undefined && i < current;
      var now = current !== undefined && i === current;
      items[i].classList.toggle("done", done);
      items[i].classList.toggle("current", now);
      if (now) items[i].setAttribute("aria-current", "step"); else items[i].removeAttribute("aria-current");
    }
  }

  function render() {
    root.setAttribute("data-step", state.step);
    root.setAttribute("data-status", state.status);
    root.setAttribute("data-sub-status", state.sub_status || "");
    root.classList.toggle("final", !!DONE[state.status]);
    text("headline", state.headline);
    text("detail", state.detail);
    if (state.headline !== announcedHeadline) {
      announcedHeadline = state.headline;
      text("announce", state.headline);  // once per change, politely
    }
    var fields = root.querySelectorAll("[data-field]");
    for (var i = 0; i < fields.length; i++) {
      var value = state[fields[i].getAttribute("data-field")];
      if (value !== undefined && value !== null && fields[i].hasAttribute("data-coin")) value = coin(value);
      if (value !== undefined && value !== null && fields[i].textContent !== value) fields[i].textContent = value;
    }
    var qr = document.getElementById("qr");
    if (qr && state.amount_due !== qrFor && hasValue(state.amount_due)) {
      qrFor = state.amount_due;  // after a partial payment the QR asks for the rest
      qr.src = config.links.qr + "?token=" + token + "&v=" + position;
    }
    var switcher = document.getElementById("switch-coin");
    if (switcher) switcher.hidden = !state.switchable;
    renderSteps();
    if (state.step === "paid") startRedirect();
  }

  function apply(snapshot, at) {
    if (at !== undefined && at < position) return;
    for (var key in snapshot) state[key] = snapshot[key];
    if (at !== undefined) position = at;
    if (state.crypto_currency && !document.getElementById("pay-section")) {
      location.reload();  // the coin was picked elsewhere (another tab): show its address
      return;
    }
    render();
  }

  function setTransport(kind, label) {
    root.setAttribute("data-transport", kind);
    text("transport", label);
  }

  // --- back to the shop ----------------------------------------------------------------------
  function startRedirect() {
    if (!config.redirect_url || redirectTimer) return;
    var left = config.redirect_seconds;
    var note = function () { text("redirect-note", format(T.redirecting, { merchant: config.merchant, seconds: left })); };
    note();
    redirectTimer = setInterval(function () {
      left -= 1;
      if (left <= 0) {
        clearInterval(redirectTimer);
        location.assign(config.redirect_url);
        return;
      }
      note();
    }, 1000);
  }

  // --- polling fallback ---------------------------------------------------------------------
  function poll() {
    fetch(config.links.status + "?token=" + token, { headers: { Accept: "application/json" }, cache: "no-store", credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (body) { if (body) apply(body, body.position); })
      .catch(function () { /* the next tick tries again */ });
  }

  function startPolling() {
    if (pollTimer) return;
    setTransport("polling", format(T.polling, { seconds: config.poll_ms / 1000 }));
    poll();
    pollTimer = setInterval(poll, config.poll_ms);
  }

  function stopPolling() {
    if (pollTimer) clearInterval(pollTimer);
    pollTimer = null;
  }

  // --- WebSocket ------------------------------------------------------------------------------
  function connect() {
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
        setTransport("websocket", T.live);
      } else if (data.type === "event") {
        var payload = data.event && data.event.data && data.event.data.payment;
        if (payload) lastSocketStatus = payload.status;
        if (payload) apply(payload, data.position);
        else position = Math.max(position, data.position);
        // The event carries the payment; the page's texts (step, confirmations) come from the
        // status endpoint, in the page's language: one small request per event.
        poll();
      } else if (data.type === "refetch") {
        poll();
      }
    };
    socket.onclose = function (event) {
      socket = null;
      startPolling();
      // 4500-4999: the server asks us not to reconnect (close codes: notifications/streams.py);
      // polling carries on.
      if (event.code >= 4500 && event.code <= 4999) return;
      if (DONE[state.status] && state.status !== "expired") return;
      setTimeout(connect, reconnectDelay);
      reconnectDelay = Math.min(reconnectDelay * 2, 30000);
    };
  }

  // --- countdown ------------------------------------------------------------------------------
  // The visible clock changes every second and is silent; a polite announcement is made once a
  // minute in the last five minutes, then at one minute and at zero.
  function tick() {
    var left = Math.max(0, Math.floor((Date.parse(state.expires_at) - (Date.now() + clockSkewMs)) / 1000));
    var minutes = Math.floor(left / 60), seconds = left % 60;
    text("countdown", minutes + ":" + (seconds < 10 ? "0" : "") + seconds);
    var fill = document.getElementById("bar-fill");
    if (fill) fill.style.transform = "scaleX(" + Math.min(1, left / config.duration_seconds) + ")";
    var timer = document.getElementById("timer");
    if (timer) timer.classList.toggle("low", left < 120);
    var announce = null;
    if (left === 0) announce = T.time_up;
    else if (left < 60) announce = T.one_minute_left;
    else if (minutes <= 5) announce = format(T.minutes_left, { minutes: minutes });
    if (state.step === "waiting" || state.step === "underpaid") {
      var key = left === 0 ? 0 : (left < 60 ? 1 : minutes + 1);
      if (announce && key !== announcedMinute) {
        announcedMinute = key;
        text("countdown-announce", announce);
      }
    }
    if (left === 0 && state.status === "pending") poll();
  }

  // --- copy ---------------------------------------------------------------------------------
  function copy(event) {
    var button = event.currentTarget;
    var source = document.getElementById(button.getAttribute("data-copy-from"));
    var value = source.textContent.trim();
    var done = function () {
      text("copy-feedback", format(T.copied_value, { value: value }));
      button.textContent = T.copied;
      button.classList.add("copied");
      setTimeout(function () { button.textContent = T.copy; button.classList.remove("copied"); }, 2000);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(value).then(done, function () { selectText(source); });
    } else {
      selectText(source);
      try { if (document.execCommand("copy")) done(); } catch (error) { /* selected for manual copy */ }
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

  // --- changing the coin -----------------------------------------------------------------------
  var chooser = document.getElementById("choose-section");
  var switchButton = document.getElementById("switch-coin");
  if (switchButton && chooser) {
    switchButton.addEventListener("click", function () {
      chooser.hidden = false;
      var pay = document.getElementById("pay-section");
      if (pay) pay.hidden = true;
      var first = chooser.querySelector("button.coin");
      if (first) first.focus();
    });
  }
  var keep = document.getElementById("keep-coin");
  if (keep && chooser) {
    keep.addEventListener("click", function () {
      chooser.hidden = true;
      var pay = document.getElementById("pay-section");
      if (pay) pay.hidden = false;
      if (switchButton) switchButton.focus();
    });
  }

  // --- development chain -------------------------------------------------------------------
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

  setTransport("connecting", T.connecting);
  render();
  tick();
  setInterval(tick, 1000);
  if ("WebSocket" in window) connect(); else startPolling();
})();
