// The live view: draws what /api/stream pushes; buttons POST to /api/action after a
// confirmation. Text from the cluster only ever goes into the page as textContent.
"use strict";
(function () {
  const token = new URLSearchParams(location.search).get("token") || "";
  const q = "?token=" + encodeURIComponent(token);
  let nodes = [];
  let model = { nodes: {}, leader_key: null, raft_term: null, raft_leader: null };
  let hosts = {};

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function isDown(n) {
    const st = (model.nodes[n] || {}).state || "unknown";
    return st !== "running";
  }

  // The node most hosts tables call host0.
  function host0() {
    const votes = {};
    for (const n of Object.keys(hosts)) {
      const h = hosts[n].host0;
      if (h && !isDown(n)) votes[h] = (votes[h] || 0) + 1;
    }
    let best = null;
    for (const h of Object.keys(votes)) if (best === null || votes[h] > votes[best]) best = h;
    return best;
  }

  function drawNodes() {
    const box = document.getElementById("nodes");
    box.replaceChildren();
    const h0 = host0();
    for (const n of nodes) {
      const m = model.nodes[n] || {};
      const state = m.state || "unknown";
      let role, cls;
      if (state !== "running") { role = "down"; cls = "state-down"; }
      else if (model.raft_leader === n) { role = "leader"; cls = "role-leader"; }
      else if (m.key_role) { role = "follower"; cls = "role-follower"; }
      else { role = "no key"; cls = "role-nokey"; }
      const d = el("div", "node " + cls);
      d.id = "node-" + n;
      d.dataset.role = role;
      d.dataset.state = state;
      const name = el("div", "name", n);
      if (h0 === n) name.appendChild(el("span", "badge", "host0"));
      d.appendChild(name);
      d.appendChild(el("div", "role", role));
      d.appendChild(el("div", "state", "container: " + state));
      d.appendChild(el("div", "state", "key: " + (m.key_role || "none")));
      const cut = (hosts[n] && hosts[n].cut_from) || [];
      if (cut.length > 0) {
        d.classList.add("cut");
        d.appendChild(el("div", "cutoff", "cut off from " + cut.join(", ")));
      }
      const b = el("div", "buttons");
      if (state === "running") {
        b.appendChild(button("kill", n));
        b.appendChild(button("isolate", n));
      } else {
        b.appendChild(button("start", n));
      }
      d.appendChild(b);
      box.appendChild(d);
    }
    document.getElementById("leader").textContent = model.raft_leader || "none";
    document.getElementById("term").textContent = model.raft_term === null ? "?" : String(model.raft_term);
    document.getElementById("leaderkey").textContent = model.leader_key || "none";
  }

  function drawHosts() {
    const box = document.getElementById("hosts");
    box.replaceChildren();
    const live = nodes.filter((n) => hosts[n] && !hosts[n].error && !isDown(n));
    const count = {};
    for (const n of live) for (const l of new Set(hosts[n].lines)) count[l] = (count[l] || 0) + 1;
    for (const n of nodes) {
      const t = el("div", "table");
      t.appendChild(el("h3", "", n));
      const h = hosts[n];
      if (!h) t.appendChild(el("div", "err", "not read yet"));
      else if (h.error) t.appendChild(el("div", "err", h.error));
      else {
        const pre = el("pre");
        for (const l of h.lines) {
          const diff = live.includes(n) && count[l] !== live.length;
          pre.appendChild(el("span", "line" + (diff ? " diff" : ""), l));
        }
        t.appendChild(pre);
      }
      box.appendChild(t);
    }
  }

  function addLine(line) {
    const box = document.getElementById("events");
    const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    const d = el("div", line.kind);
    d.appendChild(el("span", "clock", line.clock));
    d.appendChild(el("span", "", line.text));
    box.appendChild(d);
    while (box.childElementCount > 500) box.removeChild(box.firstChild);
    if (atEnd) box.scrollTop = box.scrollHeight;
  }

  function button(action, node) {
    const b = el("button", "", action);
    b.type = "button";
    b.addEventListener("click", () => act(action, node));
    return b;
  }

  async function act(action, node) {
    const what = node ? action + " " + node : action;
    if (!window.confirm("Really " + what + "?")) return;
    const result = document.getElementById("result");
    result.textContent = what + "…";
    try {
      const r = await fetch("/api/action" + q, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ action: action, node: node }),
      });
      const j = await r.json().catch(() => ({ message: r.statusText }));
      result.textContent = (r.ok ? "done: " : "failed: ") + j.message;
    } catch (e) {
      result.textContent = "failed: " + e;
    }
  }

  function onPush(p) {
    if (p.type === "state") {
      document.getElementById("cluster").textContent = p.cluster;
      document.title = "clusterlab " + p.cluster;
      nodes = p.nodes;
      model = p.model;
      hosts = p.hosts;
      document.getElementById("events").replaceChildren();
      for (const l of p.lines) addLine(l);
      drawNodes();
      drawHosts();
    } else if (p.type === "change") {
      model = p.model;
      addLine(p.line);
      drawNodes();
      drawHosts();
    } else if (p.type === "hosts") {
      hosts = p.hosts;
      drawNodes();
      drawHosts();
    }
  }

  document.getElementById("kill-leader").addEventListener("click", () => act("kill", "leader"));
  document.getElementById("heal").addEventListener("click", () => act("heal", null));
  const conn = document.getElementById("conn");
  const es = new EventSource("/api/stream" + q);
  es.onopen = () => { conn.textContent = "live"; conn.className = "conn-on"; };
  es.onerror = () => { conn.textContent = "disconnected (retrying)"; conn.className = "conn-off"; };
  es.onmessage = (m) => onPush(JSON.parse(m.data));
})();
