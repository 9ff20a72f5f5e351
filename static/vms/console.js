/* The instance console: noVNC (graphical) and xterm.js (serial), for the instance page and the
 * console window (/instances/<id>/console/).
 *
 * Graphical: a click on "Connect" POSTs to the page's ticket URL and gets back JSON
 *   {protocol: "vnc", url, password}: a WebSocket URL with a one-time token and a one-time VNC
 * password. The page does not know which backend runs the instance: any backend that hands out
 * such a ticket (libvirt through our websockify proxy, or Nova's noVNC proxy) works here.
 * A ticket opens one connection; "Reconnect" asks for a new one.
 * Toolbar: Ctrl-Alt-Del, special keys, paste text as keystrokes, scale to fit, full screen, open
 * in a separate window, reconnect. #lc-vnc-status has data-state idle|connecting|connected|
 * disconnected|error and says why a session ended.
 *
 * Serial: a WebSocket to /ws/instances/<id>/serial/ (channels, vms/consoles/serial.py). Guest output comes
 * as binary frames, keystrokes go out as text frames. The newest session takes over the console:
 * close code 4410 says so. #lc-serial-status has data-state like the graphical one.
 *
 * Configuration (ticket URL, serial socket, translated texts) comes from the json_script element
 * "lc-console-config".
 */
import RFB from "../vendor/novnc/core/rfb.js";
import KeyTable from "../vendor/novnc/core/input/keysym.js";
import keysyms from "../vendor/novnc/core/input/keysymdef.js";
import { Terminal } from "../vendor/xterm/xterm.mjs";
import { FitAddon } from "../vendor/xterm-addon-fit/addon-fit.mjs";

const source = document.getElementById("lc-console-config");
const config = source ? JSON.parse(source.textContent) : null;
const text = (config && config.text) || {};

function format(template, values) {
  return String(template).replace(/%\((\w+)\)s/g, (_, key) => (key in values ? values[key] : ""));
}

function setStatus(element, state, message) {
  if (!element) return;
  element.dataset.state = state;
  element.textContent = message;
  const tone = { connected: "success", connecting: "info", error: "danger", disconnected: "warning" }[state] || "secondary";
  element.className = element.className.replace(/\btext-bg-\w+\b/g, "").trim() + ` text-bg-${tone}`;
}

function csrfToken() {
  const input = document.querySelector("#lc-console input[name=csrfmiddlewaretoken]");
  return input ? input.value : "";
}

// ------------------------------------------------------------------ keys

// US-layout physical keys of the printable ASCII characters: [code, needs Shift].
const US_KEYS = {};
(function buildUsKeys() {
  const rows = [
    ["`1234567890-=", "~!@#$%^&*()_+", ["Backquote", "Digit1", "Digit2", "Digit3", "Digit4", "Digit5", "Digit6",
      "Digit7", "Digit8", "Digit9", "Digit0", "Minus", "Equal"]],
    ["[]\\;',./", "{}|:\"<>?", ["BracketLeft", "BracketRight", "Backslash", "Semicolon", "Quote", "Comma", "Period",
      "Slash"]],
  ];
  for (const [plain, shifted, codes] of rows) {
    [...plain].forEach((ch, i) => { US_KEYS[ch] = [codes[i], false]; });
    [...shifted].forEach((ch, i) => { US_KEYS[ch] = [codes[i], true]; });
  }
  for (const ch of "abcdefghijklmnopqrstuvwxyz") {
    US_KEYS[ch] = [`Key${ch.toUpperCase()}`, false];
    US_KEYS[ch.toUpperCase()] = [`Key${ch.toUpperCase()}`, true];
  }
  US_KEYS[" "] = ["Space", false];
  US_KEYS["\t"] = ["Tab", false];
})();

const SHIFT = [KeyTable.XK_Shift_L, "ShiftLeft"];
const CTRL = [KeyTable.XK_Control_L, "ControlLeft"];
const ALT = [KeyTable.XK_Alt_L, "AltLeft"];

function fKey(n) {
  return [KeyTable.XK_F1 + n - 1, `F${n}`];
}

// The "Send key" menu: data-lc-keys names → key combinations (pressed in order, released in reverse).
const COMBOS = {
  "ctrl+alt+backspace": [CTRL, ALT, [KeyTable.XK_BackSpace, "Backspace"]],
  "alt+tab": [ALT, [KeyTable.XK_Tab, "Tab"]],
  "alt+f4": [ALT, fKey(4)],
  "tab": [[KeyTable.XK_Tab, "Tab"]],
  "escape": [[KeyTable.XK_Escape, "Escape"]],
  "print": [[KeyTable.XK_Print, "PrintScreen"]],
  "super": [[KeyTable.XK_Super_L, "MetaLeft"]],
};
for (let n = 1; n <= 12; n++) {
  if (n <= 7) COMBOS[`ctrl+alt+f${n}`] = [CTRL, ALT, fKey(n)];
  COMBOS[`f${n}`] = [fKey(n)];
}

function pressCombo(rfb, combo) {
  for (const [keysym, code] of combo) rfb.sendKey(keysym, code, true);
  for (const [keysym, code] of [...combo].reverse()) rfb.sendKey(keysym, code, false);
}

/* Type text as keystrokes. Shift is held explicitly for capitals and shifted symbols: a VNC server
 * (QEMU's in particular) maps the key, not the character, so "A" without Shift would come out "a".
 * Characters outside US ASCII go as their keysym alone. Returns how many characters were typed. */
async function typeText(rfb, value) {
  let typed = 0;
  for (const ch of value.replace(/\r\n?/g, "\n")) {
    if (ch === "\n") {
      rfb.sendKey(KeyTable.XK_Return, "Enter");
    } else if (US_KEYS[ch]) {
      const [code, shifted] = US_KEYS[ch];
      const keysym = keysyms.lookup(ch.codePointAt(0));
      if (shifted) rfb.sendKey(SHIFT[0], SHIFT[1], true);
      rfb.sendKey(keysym, code);
      if (shifted) rfb.sendKey(SHIFT[0], SHIFT[1], false);
    } else {
      rfb.sendKey(keysyms.lookup(ch.codePointAt(0)), null);
    }
    typed += 1;
    // A little pause now and then, so a slow guest (BIOS, boot loaders) does not drop keys.
    if (typed % 8 === 0) await new Promise((resolve) => setTimeout(resolve, 15));
  }
  return typed;
}

// ------------------------------------------------------------------ graphical console

class GraphicalConsole {
  constructor(root) {
    this.root = root;
    this.screen = root.querySelector("#lc-vnc-screen");
    this.status = root.querySelector("#lc-vnc-status");
    this.rfb = null;
    this.scale = true;
    this.generation = 0;
    this.bind();
  }

  $(selector) {
    return this.root.querySelector(selector);
  }

  bind() {
    this.$("#lc-vnc-connect").addEventListener("click", () => this.connect());
    this.$("#lc-vnc-disconnect").addEventListener("click", () => this.disconnect());
    this.$("#lc-vnc-cad").addEventListener("click", () => {
      if (this.rfb) { this.rfb.sendCtrlAltDel(); this.rfb.focus(); }
    });
    this.root.querySelectorAll("[data-lc-keys]").forEach((item) => {
      item.addEventListener("click", (event) => {
        event.preventDefault();
        const combo = COMBOS[item.dataset.lcKeys];
        if (this.rfb && combo) { pressCombo(this.rfb, combo); this.rfb.focus(); }
      });
    });
    this.$("#lc-vnc-paste-send").addEventListener("click", () => this.paste());
    this.$("#lc-vnc-scale").addEventListener("change", (event) => {
      this.scale = event.target.checked;
      if (this.rfb) this.rfb.scaleViewport = this.scale;
      this.screen.classList.toggle("lc-vnc-actual-size", !this.scale);
    });
    this.$("#lc-vnc-fullscreen").addEventListener("click", () => {
      const target = this.$("#lc-vnc-frame");
      if (document.fullscreenElement) document.exitFullscreen();
      else if (target.requestFullscreen) target.requestFullscreen().then(() => this.rfb && this.rfb.focus());
    });
    const windowLink = this.$("#lc-vnc-window");
    if (windowLink) {
      windowLink.addEventListener("click", (event) => {
        event.preventDefault();
        // The embedded session gives way: the new window opens its own (VNC sessions are shared anyway).
        this.disconnect();
        window.open(windowLink.href, `lc-console-${config.instance}`, "popup,width=1100,height=820");
      });
    }
    this.enable(false);
  }

  enable(connected) {
    this.root.querySelectorAll("[data-lc-needs-session]").forEach((el) => {
      el.disabled = !connected;
      el.classList.toggle("disabled", !connected);
    });
    this.$("#lc-vnc-connect-label").textContent = this.everConnected ? this.$("#lc-vnc-connect").dataset.again
      : this.$("#lc-vnc-connect").dataset.first;
  }

  async connect() {
    this.disconnect(true);
    const generation = ++this.generation;
    setStatus(this.status, "connecting", text.connecting);
    let ticket;
    try {
      const response = await fetch(config.ticketUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok || !body.url) {
        setStatus(this.status, "error", format(text.ticketFailed, { reason: body.error || response.status }));
        return;
      }
      ticket = body;
    } catch (error) {
      setStatus(this.status, "error", text.network);
      return;
    }
    if (generation !== this.generation) return; // superseded by another click
    this.everConnected = true;
    const rfb = new RFB(this.screen, ticket.url, {
      credentials: { password: ticket.password },
      shared: true,
      wsProtocols: ["binary"],
    });
    rfb.scaleViewport = this.scale;
    rfb.resizeSession = false;
    rfb.focusOnClick = true;
    rfb.background = "#101418";
    rfb.addEventListener("connect", () => {
      setStatus(this.status, "connected", text.connected);
      this.enable(true);
      rfb.focus();
    });
    rfb.addEventListener("desktopname", (event) => {
      if (this.status.dataset.state === "connected" && event.detail.name) {
        setStatus(this.status, "connected", format(text.connectedTo, { name: event.detail.name }));
      }
    });
    let failure = null; // this connection's own, so a late event of an old one changes nothing
    rfb.addEventListener("securityfailure", (event) => {
      failure = format(text.securityFailure, { reason: event.detail.reason || event.detail.status });
    });
    rfb.addEventListener("credentialsrequired", () => {
      rfb.sendCredentials({ password: ticket.password });
    });
    rfb.addEventListener("disconnect", (event) => {
      if (this.rfb !== rfb) return; // an older connection, replaced or closed by the user: nothing to say
      this.rfb = null;
      this.enable(false);
      // clean: the session was up and the other side closed it (guest stopped, access ended,
      // maximum length…); otherwise it was refused before it started or broke.
      if (failure) setStatus(this.status, "error", failure);
      else if (event.detail.clean) setStatus(this.status, "disconnected", text.ended);
      else setStatus(this.status, "error", text.lost);
    });
    this.rfb = rfb;
    window.lcConsole.rfb = rfb; // for scripts and tests: the live RFB object
    this.enable(false);
  }

  disconnect(quiet = false) {
    if (!this.rfb) return;
    const rfb = this.rfb;
    this.rfb = null;
    rfb.disconnect();
    this.enable(false);
    if (!quiet) setStatus(this.status, "idle", text.disconnected);
  }

  async paste() {
    const area = this.$("#lc-vnc-paste-text");
    const feedback = this.$("#lc-vnc-paste-feedback");
    if (!this.rfb) return;
    if (!area.value) { feedback.textContent = text.nothingToPaste; return; }
    const count = await typeText(this.rfb, area.value);
    feedback.textContent = format(text.pasted, { count });
    area.value = "";
    this.rfb.focus();
  }
}

// ------------------------------------------------------------------ serial console

class SerialConsole {
  constructor(root) {
    this.root = root;
    this.status = root.querySelector("#lc-serial-status");
    this.container = root.querySelector("#lc-serial-terminal");
    this.socket = null;
    this.terminal = null;
    this.fit = null;
    root.querySelector("#lc-serial-connect").addEventListener("click", () => this.connect());
    root.querySelector("#lc-serial-disconnect").addEventListener("click", () => this.disconnect());
    window.addEventListener("resize", () => this.fitNow());
    // Full screen: the serial pane alone, the terminal refitted to it (and back on leaving).
    const pane = root.querySelector("#lc-console-serial-pane");
    root.querySelector("#lc-serial-fullscreen").addEventListener("click", () => {
      if (document.fullscreenElement) document.exitFullscreen();
      else if (pane.requestFullscreen) pane.requestFullscreen().then(() => this.terminal && this.terminal.focus());
    });
    document.addEventListener("fullscreenchange", () => this.fitNow());
    // A separate window: this page's session gives way (one serial session per instance), the window takes it.
    const windowLink = root.querySelector("#lc-serial-window");
    if (windowLink) {
      windowLink.addEventListener("click", (event) => {
        event.preventDefault();
        this.disconnect();
        window.open(windowLink.href, `lc-serial-${config.instance}`, "popup,width=1000,height=700");
      });
    }
    this.enable(false);
  }

  ensureTerminal() {
    if (this.terminal) return;
    this.terminal = new Terminal({
      cursorBlink: true,
      convertEol: false,
      fontSize: 14,
      // xterm.js makes a row exactly as tall as the font's ascent + descent rounded to a pixel: an
      // underscore sits on that last pixel and vanished wherever the row fell between device pixels
      // ("x86 64"). A little leading keeps every glyph inside its row.
      lineHeight: 1.2,
      scrollback: 5000,
      fontFamily: "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace",
    });
    this.fit = new FitAddon();
    this.terminal.loadAddon(this.fit);
    this.terminal.open(this.container);
    this.terminal.onData((data) => {
      if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(data);
    });
    this.fitNow();
    window.lcConsole.terminal = this.terminal;
  }

  fitNow() {
    if (this.fit && this.container.offsetParent !== null) {
      try { this.fit.fit(); } catch (error) { /* hidden tab: nothing to measure */ }
    }
  }

  enable(connected) {
    this.root.querySelector("#lc-serial-disconnect").disabled = !connected;
  }

  connect() {
    this.disconnect(true);
    this.ensureTerminal();
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${window.location.host}${config.serialSocket}`);
    socket.binaryType = "arraybuffer";
    setStatus(this.status, "connecting", text.connecting);
    socket.addEventListener("open", () => {
      if (this.socket !== socket) return;
      setStatus(this.status, "connected", text.connected);
      this.enable(true);
      this.terminal.focus();
      socket.send("\r"); // wake the prompt up
    });
    socket.addEventListener("message", (event) => {
      this.terminal.write(typeof event.data === "string" ? event.data : new Uint8Array(event.data));
    });
    socket.addEventListener("close", (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.enable(false);
      const messages = text.serialClosed || {};
      if (this.closing) { setStatus(this.status, "idle", text.disconnected); return; }
      const state = event.code === 1000 ? "disconnected" : "error";
      setStatus(this.status, state, messages[String(event.code)] || messages.default);
    });
    this.closing = false;
    this.socket = socket;
  }

  disconnect(quiet = false) {
    if (!this.socket) return;
    this.closing = true;
    const socket = this.socket;
    socket.close(1000);
    if (!quiet) { this.socket = null; this.enable(false); setStatus(this.status, "idle", text.disconnected); }
  }
}

// ------------------------------------------------------------------ start

if (config) {
  const root = document.getElementById("lc-console");
  window.lcConsole = { typeText: (value) => window.lcConsole.rfb && typeText(window.lcConsole.rfb, value) };
  const graphical = new GraphicalConsole(root);
  const serial = new SerialConsole(root);
  window.lcConsole.graphical = graphical;
  window.lcConsole.serial = serial;
  const serialTab = root.querySelector("#lc-console-tab-serial");
  if (serialTab) {
    serialTab.addEventListener("shown.bs.tab", () => {
      serial.ensureTerminal();
      serial.fitNow();
      if (!serial.socket && serial.status.dataset.state === "idle") serial.connect();
    });
  }
  // The separate window of the serial console (?tab=serial) opens on that tab and connects it, not the screen.
  const serialFirst = new URLSearchParams(window.location.search).get("tab") === "serial";
  if (serialFirst && serialTab && window.bootstrap) window.bootstrap.Tab.getOrCreateInstance(serialTab).show();
  else if (config.autoConnect) graphical.connect();
  root.dataset.ready = "true";
}
