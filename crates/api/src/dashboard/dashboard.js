// cutover dashboard: plain JavaScript, no build step, no dependencies.
//
// Everything shown comes from the admin API and is data: nodes are built
// with createElement and text nodes (see `h`), never from HTML strings, so a
// version, reason or log line containing `<script>` is shown as those
// characters. The token lives in this tab's sessionStorage and travels only
// in the Authorization header (no cookies). Deployment events arrive over
// Server-Sent Events read with fetch(), since EventSource cannot send a header.
'use strict';

(() => {
  const TOKEN_KEY = 'cutover-admin-token';
  const POLL_MS = 2000;
  const HISTORY_MS = 15000;
  const LOG_MS = 5000;
  const HISTORY_LIMIT = 10;
  const LOG_TAIL = 60;
  const MAX_EVENTS_SHOWN = 200;
  const MAX_TOASTS = 2;
  const TERMINAL = new Set(['succeeded', 'failed', 'aborted', 'rolled_back']);
  const PIPELINE = ['queued', 'preparing', 'starting', 'checking', 'awaiting_promotion',
    'switching', 'verifying', 'draining', 'retiring'];
  // Steps shown only when a deployment went through them.
  const OPTIONAL = new Set(['queued', 'awaiting_promotion', 'verifying']);
  const LABELS = { awaiting_promotion: 'awaiting promotion', rolled_back: 'rolled back' };
  // The engine's notes (crates/engine/src/deployment/{switch,promote}.rs).
  const SHIFT_NOTE = /^(\d{1,3})% of new clients now reach (\S+) \((.*?)\)/;
  const PREVIEW_NOTE = /requests with `([^`]+): 1` or the cookie `([^`]+)=1`/;
  // A shift's split is shown while traffic is divided (switching, verifying).
  const SPLIT_STATES = new Set(['switching', 'verifying']);

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  const views = new Map();
  let token = sessionStorage.getItem(TOKEN_KEY);
  let pollTimer = null;
  let polling = false;
  let pollAgain = false;

  // ---- Building nodes: text only -------------------------------------

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'on') for (const [type, fn] of Object.entries(value)) node.addEventListener(type, fn);
      else if (/^on/i.test(key)) throw new Error('no inline event handlers');
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    return append(node, children);
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fill(node, ...children) {
    node.replaceChildren();
    return append(node, children);
  }

  const label = (state) => LABELS[state] || state;
  const badge = (kind, text, role) => h('span', { class: `badge ${kind}`, 'data-role': role }, text);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function seconds(ms) {
    const s = Math.max(0, ms) / 1000;
    return s < 10 ? `${s.toFixed(1)}s` : `${Math.round(s)}s`;
  }

  function ago(at) {
    const s = Math.max(0, Math.round((Date.now() - at) / 1000));
    if (s < 60) return `${s}s ago`;
    if (s < 3600) return `${Math.floor(s / 60)}m ago`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
    return new Date(at).toLocaleDateString();
  }

  // ---- The admin API -------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function request(method, path, options = {}) {
    const headers = Object.assign({ Authorization: `Bearer ${token}` }, options.headers);
    let body;
    if (options.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(options.body);
    }
    const response = await fetch(path, {
      method, headers, body, signal: options.signal, cache: 'no-store', credentials: 'omit',
    });
    if (response.ok) return response;
    const text = await response.text().catch(() => '');
    let message = text || response.statusText || `HTTP ${response.status}`;
    try {
      const parsed = JSON.parse(text);
      if (parsed && typeof parsed.error === 'string') message = parsed.error;
    } catch (_) {
      // Not JSON: keep the text.
    }
    if (response.status === 401) signOut(`The token was refused: ${message}`);
    throw new ApiError(response.status, message);
  }

  const getJson = async (path, signal) => (await request('GET', path, { signal })).json();

  // ---- Signing in and out, polling ------------------------------------

  function setConnection(state, text) {
    $('conn').dataset.state = state;
    $('conn-text').textContent = text;
  }

  function stopAll() {
    clearTimeout(pollTimer);
    pollTimer = null;
    for (const view of views.values()) view.destroy();
    views.clear();
    fill($('apps'));
  }

  function showLogin(message) {
    stopAll();
    $('login').hidden = false;
    $('apps').hidden = true;
    $('no-apps').hidden = true;
    $('sign-out').hidden = true;
    $('login-error').textContent = message || '';
    setConnection('idle', 'Not signed in');
    $('token').focus();
  }

  function signOut(message) {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(message);
  }

  async function signIn(candidate) {
    token = candidate;
    $('sign-in').disabled = true;
    $('login-error').textContent = '';
    try {
      await getJson('/v1/apps');
      sessionStorage.setItem(TOKEN_KEY, candidate);
      $('token').value = '';
      start();
    } catch (error) {
      // A 401 has already brought the form back with its message.
      if (error.status !== 401) {
        token = null;
        $('login-error').textContent = `Cannot reach cutover: ${error.message}`;
      }
    } finally {
      $('sign-in').disabled = false;
    }
  }

  function start() {
    $('login').hidden = true;
    $('apps').hidden = false;
    $('sign-out').hidden = false;
    setConnection('idle', 'Connecting…');
    poll();
  }

  async function poll() {
    clearTimeout(pollTimer);
    if (!token) return;
    if (polling) {
      pollAgain = true;
      return;
    }
    polling = true;
    try {
      render(await getJson('/v1/apps'));
      setConnection('ok', `Live · updated ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      if (token) setConnection('error', `Cannot reach cutover: ${error.message}`);
    } finally {
      polling = false;
    }
    if (!token) return;
    const wait = pollAgain ? 0 : (document.hidden ? POLL_MS * 5 : POLL_MS);
    pollAgain = false;
    pollTimer = setTimeout(poll, wait);
  }

  function pollSoon() {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, 100);
  }

  function render(apps) {
    const container = $('apps');
    const names = new Set();
    apps.forEach((status, index) => {
      names.add(status.name);
      let view = views.get(status.name);
      if (!view) {
        view = new AppView(status.name);
        views.set(status.name, view);
      }
      if (container.children[index] !== view.root) {
        container.insertBefore(view.root, container.children[index] || null);
      }
      view.update(status);
    });
    for (const [name, view] of views) {
      if (names.has(name)) continue;
      view.destroy();
      view.root.remove();
      views.delete(name);
    }
    $('no-apps').hidden = apps.length > 0;
    // Time to the first view with data, for measurements (Performance API).
    if (!performance.getEntriesByName('cutover-apps-rendered').length) {
      performance.mark('cutover-apps-rendered');
    }
  }

  // ---- Confirmation and outcomes --------------------------------------

  function confirmAction(title, text, ok, danger) {
    const dialog = $('confirm');
    const okButton = $('confirm-ok');
    const cancelButton = $('confirm-cancel');
    fill($('confirm-title'), title);
    fill($('confirm-text'), text);
    okButton.textContent = ok;
    okButton.className = danger ? 'primary danger-fill' : 'primary';
    return new Promise((resolve) => {
      const finish = (answer) => {
        okButton.onclick = null;
        cancelButton.onclick = null;
        dialog.oncancel = null;
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      okButton.onclick = () => finish(true);
      cancelButton.onclick = () => finish(false);
      dialog.oncancel = (event) => {
        event.preventDefault();
        finish(false);
      };
      dialog.showModal();
      okButton.focus();
    });
  }

  function toast(text, bad) {
    // The card keeps the whole outcome; a toast is its first words.
    const short = text.length > 90 ? `${text.slice(0, 88)}…` : text;
    const node = h('div', { class: bad ? 'toast bad' : 'toast', role: 'status' }, short);
    const toasts = $('toasts');
    toasts.append(node);
    while (toasts.children.length > MAX_TOASTS) toasts.firstChild.remove();
    setTimeout(() => node.remove(), 5000);
  }

  // Asks, sends one POST, shows what came of it.
  async function act(view, action) {
    if (!(await confirmAction(action.title, action.text, action.ok, action.danger))) {
      view.outcome('', 'Cancelled: nothing was sent.');
      return;
    }
    view.outcome('', `${action.ok}: sending…`);
    try {
      const record = await (await request('POST', action.path, { body: action.body })).json();
      const message = action.done(record);
      view.outcome('ok', message);
      toast(message, false);
      if (action.follow && typeof record.id === 'number') view.startFollow(record.id);
      pollSoon();
    } catch (error) {
      if (error.status === 401) return;
      const why = error.status === 403 ? 'not allowed with this token' : (error.status || 'no answer');
      const message = `${action.ok} failed (${why}): ${error.message}`;
      view.outcome('bad', message);
      toast(message, true);
    }
  }

  // ---- One app --------------------------------------------------------

  class AppView {
    constructor(name) {
      this.name = name;
      this.status = null;
      this.follow = null;
      this.latestId = null;
      this.historyAt = 0;
      this.logAt = 0;
      this.build();
    }

    build() {
      const e = (this.el = {});
      const button = (role, text, cls, onClick) =>
        h('button', { type: 'button', class: cls, 'data-role': role, on: { click: onClick } }, text);
      e.health = h('span');
      e.meta = h('span', { class: 'meta' });
      e.stats = h('div', { class: 'stats' });
      e.slots = h('div', { class: 'slots', 'data-role': 'slots' });
      e.version = h('input', {
        type: 'text', placeholder: 'version, e.g. v2', 'data-role': 'version', maxlength: 200,
        spellcheck: 'false', autocomplete: 'off', 'aria-label': `Version of ${this.name} to deploy`,
        on: { keydown: (event) => event.key === 'Enter' && this.deploy() },
      });
      e.deploy = button('deploy', 'Deploy', 'primary', () => this.deploy());
      e.promote = button('promote', 'Promote', '', () => this.promote());
      e.abort = button('abort', 'Abort', 'danger', () => this.abort());
      e.rollback = button('rollback', 'Roll back', '', () => this.rollback());
      e.outcome = h('p', { class: 'outcome', 'data-role': 'outcome', role: 'status' });
      e.deployment = h('div', { 'data-role': 'deployment' }, h('p', { class: 'muted' }, 'Loading…'));
      e.history = h('div', { class: 'history', 'data-role': 'history' });
      e.logSlot = h('select', { 'aria-label': 'Slot of the log', on: { change: () => this.loadLog() } },
        h('option', { value: '' }, 'live slot'), h('option', { value: 'blue' }, 'blue'),
        h('option', { value: 'green' }, 'green'));
      e.log = h('pre', { class: 'log', 'data-role': 'log', tabindex: 0 }, '…');
      const section = (title, ...body) => h('section', {}, h('h3', {}, title), body);
      this.root = h('article', { class: 'card app', 'data-app': this.name },
        h('header', { class: 'app-head' }, h('h2', {}, this.name), e.health, e.meta),
        h('div', { class: 'app-grid' },
          h('div', {}, e.stats, section('Slots', e.slots),
            h('section', { class: 'actions' }, h('h3', {}, 'Actions'),
              h('div', { class: 'deploy-row' }, e.version, e.deploy),
              h('div', { class: 'action-row' }, e.promote, e.abort, e.rollback), e.outcome)),
          h('div', {}, section('Deployment', e.deployment), section('History', e.history),
            h('section', {},
              h('div', { class: 'log-head' }, h('h3', {}, 'Release log'), e.logSlot,
                button('log-refresh', 'Refresh', 'ghost', () => this.loadLog())),
              e.log))));
    }

    destroy() {
      if (this.follow) this.follow.stop();
    }

    update(status) {
      this.status = status;
      fill(this.el.health, badge(status.health, status.health, 'health'));
      fill(this.el.meta, `${status.driver} · ${status.hosts.join(', ')}`);
      this.renderStats(status);
      this.renderSlots(status);
      const current = status.current_deployment;
      if (current && (!this.follow || this.follow.id !== current.id)) this.startFollow(current.id);
      if (current && this.follow && this.follow.record && this.follow.id === current.id) {
        // Facts filled in as it runs (the slots, the version it replaces);
        // the state comes from the events, which are newer.
        Object.assign(this.follow.record, current, { state: this.follow.record.state });
        this.renderDeployment();
      }
      if (!current && !this.follow && this.latestId) this.startFollow(this.latestId);
      this.renderButtons();
      const now = Date.now();
      if (now - this.historyAt > HISTORY_MS) this.loadHistory();
      if (now - this.logAt > LOG_MS) this.loadLog();
    }

    renderStats(status) {
      const stat = (name, value, sub, role) => h('div', { class: 'stat' },
        h('span', { class: 'label' }, name), h('span', { class: 'value', 'data-role': role }, value),
        h('span', { class: 'sub' }, sub));
      const standby = status.slots.find((slot) => slot.state === 'standby');
      const draining = status.draining;
      const inRotation = status.endpoints.filter((endpoint) => endpoint.healthy).length;
      fill(this.el.stats,
        stat('Live', status.live_version || 'none', status.live_slot ? `${status.live_slot} slot` : 'nothing deployed', 'live-version'),
        stat('Standby', standby && standby.release ? standby.release.version : 'none',
          standby ? `${standby.slot} slot, kept ready` : 'no release kept', 'standby-version'),
        stat('In flight', status.in_flight,
          draining ? `+${draining.in_flight} draining on ${draining.slot} (${draining.version})` : 'requests right now', 'in-flight'),
        stat('Endpoints', `${inRotation}/${status.endpoints.length}`, 'in rotation', 'endpoints'));
    }

    renderSlots(status) {
      const rows = ['blue', 'green'].map((name) => {
        const slot = status.slots.find((s) => s.slot === name);
        const live = status.live_slot === name;
        const version = slot && slot.release ? slot.release.version : '—';
        const state = slot ? slot.state : 'empty';
        const details = [];
        if (live && status.endpoints.length) {
          const shown = status.endpoints.slice(0, 4).map((e) =>
            `${e.label} ${e.addr}${e.healthy ? '' : ' (out of rotation)'} · ${e.in_flight} in flight · ${e.requests} requests`);
          if (status.endpoints.length > 4) shown.push(`+${status.endpoints.length - 4} more`);
          details.push(shown.join('; '));
        } else if (slot && slot.endpoints.length) {
          details.push(slot.endpoints.map((e) => e.addr).join(', '));
        }
        if (slot) details.push(`changed ${ago(slot.updated_at)}`);
        return h('div', { class: 'slot', 'data-slot': name },
          h('span', { class: `slot-name ${name}` }, name),
          h('span', { class: 'slot-detail' }, h('strong', { 'data-role': 'slot-version' }, version),
            details.length ? ` · ${details.join(' · ')}` : ''),
          badge(live ? 'live' : state, live ? 'live' : state, 'slot-state'));
      });
      fill(this.el.slots, rows);
    }

    renderButtons() {
      const current = this.follow && this.follow.record ? currentState(this.follow) : null;
      const running = current !== null && !TERMINAL.has(current);
      const awaiting = current === 'awaiting_promotion';
      this.el.promote.disabled = !awaiting;
      this.el.promote.classList.toggle('pulse', awaiting);
      this.el.abort.disabled = !running;
      this.el.rollback.disabled = !(this.status && this.status.live_slot);
    }

    outcome(kind, text) {
      this.el.outcome.className = kind ? `outcome ${kind}` : 'outcome';
      this.el.outcome.textContent = text;
    }

    deploy() {
      const version = this.el.version.value.trim();
      if (!version) {
        this.outcome('bad', 'Enter the version to deploy.');
        this.el.version.focus();
        return;
      }
      const live = (this.status && this.status.live_version) || 'the live release';
      act(this, {
        title: `Deploy ${version} to ${this.name}?`,
        text: `${version} starts in the idle slot and gets traffic once it is healthy; ${live} keeps serving until then.`,
        ok: 'Deploy',
        path: `/v1/apps/${enc(this.name)}/deployments`,
        body: { version, trigger: 'dashboard' },
        follow: true,
        done: (record) => `Deployment #${record.id} of ${record.version} started.`,
      });
    }

    promote() {
      const version = this.follow && this.follow.record ? this.follow.record.version : 'the new release';
      act(this, {
        title: `Promote ${version} on ${this.name}?`,
        text: `Traffic moves to ${version}; the release serving now is drained and stopped.`,
        ok: 'Promote',
        path: `/v1/apps/${enc(this.name)}/promote`,
        done: (record) => `Deployment #${record.id} of ${record.version} promoted.`,
      });
    }

    abort() {
      const version = this.follow && this.follow.record ? this.follow.record.version : 'the running deployment';
      act(this, {
        title: `Abort the deployment of ${version} on ${this.name}?`,
        text: 'Before the switch nothing changes for clients; during a shift or verification traffic goes back to the release that served before.',
        ok: 'Abort',
        danger: true,
        path: `/v1/apps/${enc(this.name)}/abort`,
        done: (record) => `Deployment #${record.id} of ${record.version}: abort requested.`,
      });
    }

    rollback() {
      act(this, {
        title: `Roll ${this.name} back?`,
        text: `The release that was live before ${(this.status && this.status.live_version) || 'this one'} comes back (a pure switch while it is kept ready).`,
        ok: 'Roll back',
        danger: true,
        path: `/v1/apps/${enc(this.name)}/rollback`,
        follow: true,
        done: (record) => `Rollback #${record.id} to ${record.version} started.`,
      });
    }

    startFollow(id) {
      if (this.follow) this.follow.stop();
      this.follow = new Follow(this, id);
    }

    onFollowChanged(follow, event) {
      if (follow !== this.follow) return;
      this.renderDeployment();
      this.renderButtons();
      if (!event) return;
      if (event.message && event.state !== follow.previousState) pollSoon();
      follow.previousState = event.state;
      if (TERMINAL.has(event.state)) {
        this.loadHistory();
        this.loadLog();
      }
    }

    renderDeployment() {
      const follow = this.follow;
      if (!follow || !follow.record) {
        fill(this.el.deployment, h('p', { class: 'muted' }, follow ? 'Loading…' : 'No deployment yet.'));
        return;
      }
      const record = follow.record;
      const state = currentState(follow);
      const queued = this.status && this.status.queued.length
        ? ` · ${this.status.queued.length} queued after it` : '';
      const title = `#${record.id} · ${record.from_version ? `${record.from_version} → ` : ''}${record.version}`;
      const oldList = this.el.deployment.querySelector('.events');
      const pinned = !oldList || oldList.scrollHeight - oldList.scrollTop - oldList.clientHeight < 24;
      fill(this.el.deployment,
        h('div', { class: 'deployment', 'data-role': 'deployment-panel', 'data-state': state, 'data-id': record.id },
          h('div', { class: 'dep-head' }, h('span', { class: 'title' }, title),
            badge(state, label(state), 'deployment-state'),
            h('span', { class: 'meta' },
              `${record.trigger}${record.target_slot ? ` → ${record.target_slot}` : ''} · ${ago(record.created_at)}${queued}`)),
          stepList(follow), splitBar(follow), previewBox(follow, this.status), reasonBox(follow),
          eventList(follow)));
      const list = this.el.deployment.querySelector('.events');
      if (pinned && list) list.scrollTop = list.scrollHeight;
    }

    async loadHistory() {
      this.historyAt = Date.now();
      try {
        const list = await getJson(`/v1/apps/${enc(this.name)}/deployments?limit=${HISTORY_LIMIT}`);
        this.latestId = list.length ? list[0].id : null;
        const stale = !this.follow || (this.follow.done && this.latestId > this.follow.id);
        if (this.latestId && stale && !(this.status && this.status.current_deployment)) {
          this.startFollow(this.latestId);
        }
        if (!this.follow) this.renderDeployment();
        this.renderHistory(list);
      } catch (error) {
        if (error.status !== 401) fill(this.el.history, h('p', { class: 'error' }, `History unavailable: ${error.message}`));
      }
    }

    renderHistory(list) {
      if (!list.length) {
        fill(this.el.history, h('p', { class: 'muted' }, 'No deployments yet.'));
        return;
      }
      const cell = (cls, ...content) => h('span', { class: cls }, content);
      fill(this.el.history,
        h('div', { class: 'hrow head' }, cell('', '#'), cell('', 'Version'), cell('', 'Outcome'),
          cell('', 'Reason'), cell('', 'When')),
        list.map((r) => h('div', { class: 'hrow', 'data-id': r.id },
          cell('id', `#${r.id}`),
          cell('ver', r.version, h('small', {}, `${r.from_version ? `from ${r.from_version} · ` : ''}${r.trigger}`)),
          cell('', badge(r.state, label(r.state))),
          cell('why', r.reason || (r.state === 'succeeded' ? '' : '—')),
          h('span', { class: 'when', title: new Date(r.created_at).toLocaleString() }, ago(r.created_at),
            r.finished_at ? ` · ${seconds(r.finished_at - (r.started_at || r.created_at))}` : ''))));
    }

    async loadLog() {
      this.logAt = Date.now();
      const slot = this.el.logSlot.value;
      const path = `/v1/apps/${enc(this.name)}/logs?tail=${LOG_TAIL}${slot ? `&slot=${slot}` : ''}`;
      const log = this.el.log;
      try {
        const text = await (await request('GET', path)).text();
        const pinned = log.scrollHeight - log.scrollTop - log.clientHeight < 24;
        log.textContent = text || '(the log is empty)';
        if (pinned) log.scrollTop = log.scrollHeight;
      } catch (error) {
        if (error.status !== 401) log.textContent = `(no log: ${error.message})`;
      }
    }
  }

  // ---- Following one deployment -----------------------------------------

  // Loads a deployment and its stored events, then follows new events over
  // SSE (resuming after the last one seen) until the terminal one.
  class Follow {
    constructor(view, id) {
      this.view = view;
      this.id = id;
      this.record = null;
      this.events = [];
      this.lastEventId = null;
      this.previousState = null;
      this.done = false;
      this.controller = new AbortController();
      this.run();
    }

    stop() {
      this.controller.abort();
    }

    async run() {
      const signal = this.controller.signal;
      for (let attempt = 0; !signal.aborted; attempt++) {
        try {
          if (!this.record) await this.load();
          if (this.done) return;
          await this.stream();
          if (this.done) {
            await this.load();
            return;
          }
          attempt = 0;
        } catch (error) {
          if (signal.aborted || error.status === 404 || error.status === 401) return;
        }
        await sleep(Math.min(500 * 2 ** attempt, 8000));
      }
    }

    async load() {
      const detail = await getJson(`/v1/deployments/${this.id}`, this.controller.signal);
      if (this.controller.signal.aborted) return;
      this.record = detail;
      if (detail.events.length >= this.events.length) this.events = detail.events;
      const last = this.events[this.events.length - 1];
      this.lastEventId = last ? last.id : null;
      this.previousState = currentState(this);
      this.done = TERMINAL.has(detail.state);
      this.view.onFollowChanged(this, null);
    }

    async stream() {
      const headers = { Accept: 'text/event-stream' };
      if (this.lastEventId !== null) headers['Last-Event-ID'] = String(this.lastEventId);
      const response = await request('GET', `/v1/deployments/${this.id}/events`,
        { signal: this.controller.signal, headers });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        let match;
        while ((match = /\r?\n\r?\n/.exec(buffer))) {
          this.onBlock(buffer.slice(0, match.index));
          buffer = buffer.slice(match.index + match[0].length);
        }
      }
    }

    onBlock(block) {
      const data = block.split(/\r?\n/).filter((line) => line.startsWith('data:'))
        .map((line) => line.slice(5).replace(/^ /, ''));
      if (!data.length) return; // a keep-alive comment
      let event;
      try {
        event = JSON.parse(data.join('\n'));
      } catch (_) {
        return;
      }
      if (typeof event.id !== 'number' || (this.lastEventId !== null && event.id <= this.lastEventId)) return;
      this.lastEventId = event.id;
      this.events.push(event);
      if (this.record) this.record.state = event.state;
      if (TERMINAL.has(event.state)) this.done = true;
      this.view.onFollowChanged(this, event);
    }
  }

  function currentState(follow) {
    const last = follow.events[follow.events.length - 1];
    return last ? last.state : follow.record.state;
  }

  // ---- Pieces of the deployment panel ------------------------------------

  function stepList(follow) {
    const first = new Map();
    for (const event of follow.events) if (!first.has(event.state)) first.set(event.state, event.at);
    const start = follow.events.length ? follow.events[0].at : follow.record.created_at;
    const current = currentState(follow);
    const terminal = TERMINAL.has(current);
    const reached = PIPELINE.filter((state) => first.has(state));
    const furthest = reached.length ? PIPELINE.indexOf(reached[reached.length - 1]) : -1;
    const step = (state, cls) => h('li', { class: `step ${cls}`, 'data-step': state }, label(state),
      first.has(state) ? h('span', { class: 'at' }, `+${seconds(first.get(state) - start)}`) : null);
    const items = [];
    PIPELINE.forEach((state, index) => {
      const seen = first.has(state);
      if (OPTIONAL.has(state) && !seen) return;
      let cls = 'pending';
      if (seen) cls = state === current ? 'current' : 'done';
      else if (index < furthest || terminal) cls = 'skipped';
      if (terminal && current !== 'succeeded' && index === furthest) cls = 'failed';
      items.push(step(state, cls));
    });
    items.push(terminal ? step(current, current === 'succeeded' ? 'done' : 'failed') : step('succeeded', 'pending'));
    return h('ol', { class: 'steps', 'data-role': 'steps' }, items);
  }

  function splitBar(follow) {
    const record = follow.record;
    const state = currentState(follow);
    let shift = null;
    for (const event of follow.events) {
      const match = SHIFT_NOTE.exec(event.message);
      if (match) shift = { percent: Math.min(100, Number(match[1])), slot: match[2] };
    }
    if (!shift || !SPLIT_STATES.has(state) || !record.from_version) return null;
    const percent = state === 'switching' ? shift.percent : 100;
    const old = record.from_version;
    const part = (cls, share, text) => {
      const node = h('span', { class: cls }, share >= 15 ? text : '');
      node.style.width = `${share}%`;
      return node;
    };
    return h('div', { class: 'split', 'data-role': 'split', 'data-percent': percent },
      h('h3', {}, 'Traffic split (new clients)'),
      h('div', { class: 'split-bar' }, part('old', 100 - percent, `${old} ${100 - percent}%`),
        part('new', percent, `${record.version} ${percent}%`)),
      h('div', { class: 'split-legend' },
        h('span', {}, `${old}${record.from_slot ? ` on ${record.from_slot}` : ''}: ${100 - percent}%`),
        h('span', {}, `${record.version} on ${shift.slot}: ${percent}%`)));
  }

  function previewBox(follow, status) {
    const state = currentState(follow);
    if (state !== 'checking' && state !== 'awaiting_promotion') return null;
    const note = follow.events.slice().reverse().find((event) => PREVIEW_NOTE.test(event.message));
    if (!note) return null;
    const [, header, cookie] = PREVIEW_NOTE.exec(note.message);
    const record = follow.record;
    const host = status && status.hosts.find((name) => !name.includes('*'));
    const url = host ? `http://${host}/` : 'http://<proxy address>/';
    return h('div', { class: 'preview', 'data-role': 'preview' },
      h('h3', {}, 'Preview'),
      h('p', {}, `${record.version} is healthy${record.target_slot ? ` on ${record.target_slot}` : ''}. ` +
        `Requests with the header ${header}: 1 or the cookie ${cookie}=1 reach it; everyone else stays on ` +
        `${record.from_version || 'the live release'}.`),
      h('pre', {}, `curl -H '${header}: 1' ${url}`),
      state === 'awaiting_promotion'
        ? h('p', { class: 'muted' }, 'Promote to move traffic to it, or abort to stop it.') : null);
  }

  function reasonBox(follow) {
    const record = follow.record;
    const state = currentState(follow);
    if (!TERMINAL.has(state) || !record.reason) return null;
    return h('p', { class: state === 'succeeded' ? 'reason ok' : 'reason', 'data-role': 'reason' }, record.reason);
  }

  function eventList(follow) {
    const start = follow.events.length ? follow.events[0].at : 0;
    return h('ol', { class: 'events', 'data-role': 'events' },
      follow.events.slice(-MAX_EVENTS_SHOWN).map((event) => h('li', {},
        h('span', { class: 't' }, `+${seconds(event.at - start)}`),
        h('span', { class: 's' }, label(event.state)),
        h('span', { class: 'm' }, event.message))));
  }

  // ---- Start ------------------------------------------------------------

  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const candidate = $('token').value.trim();
    if (candidate) signIn(candidate);
  });
  $('sign-out').addEventListener('click', () => signOut(''));
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && token) poll();
  });
  if (token) start();
  else showLogin('');
})();
