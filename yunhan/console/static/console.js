// The Yunhan console: one ES module, no build step, no dependency.
//
// Every page is drawn from the same /v1 API the CLI uses. Forms, filters and actions are
// generated from the server's own /openapi.json, so a form asks for what the API takes and
// a new field appears without touching this file; the API stays the judge of what is valid
// and its error messages are shown as they are. The map is kept live by a long poll on
// GET /v1/topology (the same wake-up the agents' watch uses).

const $ = (sel, root = document) => root.querySelector(sel);

// -- state ---------------------------------------------------------------------------------

const state = {
  session: null, // {csrf_token, project, admin, projects}
  actAs: sessionStorage.getItem("yunhan.project") || "", // the admin's project switch
  openapi: null,
  topo: null,
  watch: null, // AbortController of the live topology poll
  gen: 0, // bumped by every page drawn: a watch of an older page stops
  flash: null, // secrets an answer shows once (a new token, a private key): shown next page
  traceResult: null,
  pick: [], // instance ids picked on the map for a trace
};

// The kinds of the console: API collection, store kind (events), title, admin only.
const KINDS = [
  ["vpcs", "vpc", "VPCs"],
  ["subnets", "subnet", "Subnets"],
  ["instances", "instance", "Instances"],
  ["route-tables", "route_table", "Route tables"],
  ["security-groups", "security_group", "Security groups"],
  ["acls", "network_acl", "Network ACLs"],
  ["vips", "vip", "VIPs"],
  ["natgws", "natgw", "NAT gateways"],
  ["eips", "eip", "EIPs"],
  ["volumes", "volume", "Volumes"],
  ["functions", "function", "Functions"],
  ["patches", "patch", "Fleet patches"],
  ["flow-logs", "flow_log", "Flow logs"],
  ["hybrid-gws", "hybrid_gw", "Hybrid gateways"],
  ["idc-sites", "idc_site", "IDC sites"],
  ["zones", "zone", "Zones"],
  ["hosts", "host", "Hosts"],
  ["projects", "project", "Projects", true],
];
const KIND = Object.fromEntries(KINDS.map(([path, store, title, admin]) => [path, { path, store, title, admin }]));
// Form fields whose value names a resource of a kind: offered as a list of its names.
const REFERS = {
  vpc: "vpcs", subnet: "subnets", subnets: "subnets", zone: "zones", instance: "instances",
  host: "hosts", security_groups: "security-groups", to: "instances", site: "idc-sites",
};

// -- API -----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || "";
    this.details = err.details || {};
  }
}

async function api(method, path, body, { signal } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.session) headers["X-CSRF-Token"] = state.session.csrf_token;
  if (state.session && state.session.admin && state.actAs && path.startsWith("/v1/")) {
    headers["X-Yunhan-Project"] = state.actAs;
  }
  const resp = await fetch(path, {
    method, headers, signal, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 204) return null;
  const data = await resp.json().catch(() => null);
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

async function listAll(path) {
  const out = [];
  let cursor = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api("GET", `${path}${sep}limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    out.push(...(page.items || []));
    cursor = page.next;
  } while (cursor);
  return out;
}

async function openapi() {
  if (!state.openapi) state.openapi = await api("GET", "/openapi.json");
  return state.openapi;
}

function resolveSchema(s) {
  const doc = state.openapi;
  let seen = 0;
  while (s && s.$ref && seen++ < 10) s = doc.components.schemas[s.$ref.split("/").pop()];
  return s || {};
}

function operation(method, path) {
  const p = state.openapi.paths[path];
  return p ? p[method] : undefined;
}

function bodySchema(op) {
  const s = op && op.requestBody && op.requestBody.content["application/json"];
  return s ? resolveSchema(s.schema) : null;
}

// -- DOM helpers ---------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style") setStyle(el, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Styles go through the CSSOM: the page's policy (style-src 'self') refuses style attributes.
function setStyle(el, text) {
  for (const decl of String(text).split(";")) {
    const i = decl.indexOf(":");
    if (i > 0) el.style.setProperty(decl.slice(0, i).trim(), decl.slice(i + 1).trim());
  }
}

function announce(text) {
  const live = $("#live");
  live.textContent = "";
  setTimeout(() => { live.textContent = text; }, 30);
}

function errorBox(err) {
  const box = h("div", { class: "error", role: "alert" });
  box.textContent = err instanceof ApiError ? err.message : String(err.message || err);
  return box;
}

function show(...nodes) {
  const main = $("#main");
  main.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));
}

function labelsView(labels) {
  const entries = Object.entries(labels || {});
  if (!entries.length) return h("span", { class: "muted" }, "—");
  return h("span", { class: "labels" }, entries.map(([k, v]) => h("span", {}, `${k}=${v}`)));
}

function scalar(v) {
  if (v === null || v === undefined || v === "") return "—";
  if (Array.isArray(v)) return v.every((x) => typeof x !== "object") ? v.join(", ") : `${v.length} item(s)`;
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function when(t) {
  if (!t) return "—";
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  return isNaN(d) ? String(t) : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

// -- sign-in and session --------------------------------------------------------------------

async function loadSession() {
  try {
    state.session = await api("GET", "/console/session");
  } catch (err) {
    if (err.status === 401) state.session = null;
    else throw err;
  }
}

function signInPage(message) {
  stopWatch();
  state.gen += 1;
  $("#nav").hidden = true;
  $("#who").replaceChildren();
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "off", required: true });
  const err = h("div");
  const form = h("form", { class: "resource signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in to Yunhan"),
    h("div", { class: "field" },
      h("label", { for: "token" }, "Token"),
      input,
      h("span", { class: "help", id: "token-help" }, "A project token (yh_…) or the admin token. `yunhan project token create` makes one."),
    ),
    err,
    h("button", { type: "submit" }, "Sign in"),
  );
  input.setAttribute("aria-describedby", "token-help");
  if (message) err.append(errorBox(message));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.replaceChildren();
    try {
      state.session = await api("POST", "/console/session", { token: input.value });
      state.actAs = "";
      sessionStorage.removeItem("yunhan.project");
      input.value = "";
      if (location.hash === "#/topology") await route();
      else location.hash = "#/topology"; // hashchange draws it: one run, one watch
    } catch (e) {
      err.append(errorBox(e));
    }
  });
  show(form);
  input.focus();
}

async function signOut() {
  stopWatch();
  try { await api("DELETE", "/console/session"); } catch { /* signed out anyway */ }
  state.session = null;
  signInPage();
}

function chrome(current) {
  const nav = $("#nav");
  nav.hidden = false;
  const links = [["#/topology", "Topology", "topology"]];
  for (const k of KINDS) {
    if (k[3] && !state.session.admin) continue;
    links.push([`#/k/${k[0]}`, k[2], k[0]]);
  }
  nav.replaceChildren(...links.map(([href, text, key]) =>
    h("a", { href, "aria-current": key === current ? "page" : undefined }, text)));
  const who = $("#who");
  const s = state.session;
  const parts = [h("span", {}, s.admin ? "admin" : `project ${s.project.name}`)];
  if (s.admin && state.actAs && !(s.projects || []).some((p) => p.name === state.actAs)) {
    state.actAs = ""; // a project deleted since it was chosen
    sessionStorage.removeItem("yunhan.project");
  }
  if (s.admin) {
    const sel = h("select", { id: "act-as", "aria-label": "Project the pages show" },
      h("option", { value: "" }, "admin project"),
      (s.projects || []).filter((p) => p.id !== s.project.id).map((p) =>
        h("option", { value: p.name, selected: p.name === state.actAs }, p.name)));
    sel.addEventListener("change", () => {
      state.actAs = sel.value;
      sessionStorage.setItem("yunhan.project", sel.value);
      route();
    });
    parts.push(sel);
  }
  parts.push(h("button", { class: "secondary", type: "button", onclick: signOut }, "Sign out"));
  who.replaceChildren(...parts);
}

// -- router ----------------------------------------------------------------------------------

// aria-busy says when a page is drawn: screen readers wait for it, and so do the tests.
async function route() {
  const main = $("#main");
  main.setAttribute("aria-busy", "true");
  try {
    await draw();
  } finally {
    main.setAttribute("aria-busy", "false");
  }
}

async function draw() {
  stopWatch();
  state.gen += 1;
  if (!state.session) await loadSession();
  if (!state.session) return signInPage();
  const path = location.hash.replace(/^#\/?/, "").split("?")[0];
  const parts = (path || "topology").split("/").map(decodeURIComponent);
  try {
    if (parts[0] === "topology") return await topologyPage();
    await openapi(); // the map needs no schema: only lists and forms wait for it
    if (parts[0] === "k" && KIND[parts[1]]) {
      const kind = KIND[parts[1]];
      chrome(kind.path);
      if (parts.length === 2) return await listPage(kind);
      if (parts[2] === "new") return createPage(kind);
      if (parts[3] === "edit") return await editPage(kind, parts[2]);
      return await detailPage(kind, parts[2]);
    }
    chrome("");
    show(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/topology" }, "Back to the topology")));
  } catch (err) {
    if (err.status === 401) return signInPage(err);
    show(h("h1", {}, "Error"), errorBox(err));
  }
}

// -- topology --------------------------------------------------------------------------------

const PALETTE = ["#0b5cad", "#1c6b36", "#a4161a", "#8a5a00", "#6b2fa3", "#00727a", "#b5179e", "#3a5a40"];

function stopWatch() {
  if (state.watch) state.watch.abort();
  state.watch = null;
}

async function topologyPage() {
  chrome("topology");
  const liveBadge = h("span", { class: "live-state", id: "live-state" }, "connecting…");
  const from = h("select", { id: "trace-from", "aria-label": "Trace from instance" });
  const to = h("select", { id: "trace-to", "aria-label": "Trace to instance" });
  const proto = h("select", { id: "trace-proto", "aria-label": "Protocol" },
    ["icmp", "tcp", "udp"].map((p) => h("option", { value: p }, p)));
  const port = h("input", { id: "trace-port", type: "number", min: 1, max: 65535, placeholder: "port", "aria-label": "Destination port (tcp, udp)", size: 6 });
  const traceBtn = h("button", { type: "button", id: "trace-go" }, "Trace");
  const clearBtn = h("button", { type: "button", class: "secondary", id: "trace-clear" }, "Clear");
  const panel = h("section", { class: "trace-panel", id: "trace-panel", "aria-label": "Trace", hidden: true });
  const wrap = h("div", { class: "map-wrap", id: "map-wrap" });
  traceBtn.addEventListener("click", () => runTrace(from.value, to.value, proto.value, port.value));
  clearBtn.addEventListener("click", () => { state.traceResult = null; state.pick = []; drawTopology(); });
  show(
    h("h1", {}, "Topology ", liveBadge),
    h("p", { class: "legend" }, "Zones are columns, hosts sit in them and instances on hosts. Bands are VPCs and their subnets across the zones they span. ★ marks a VIP's holder. Pick two instances (or use the lists) and trace a packet between them."),
    h("div", { class: "toolbar", role: "group", "aria-label": "Trace between two instances" },
      h("label", {}, "From", from), h("label", {}, "To", to), h("label", {}, "Protocol", proto),
      h("label", {}, "Port", port), traceBtn, clearBtn),
    wrap,
    panel,
  );
  const gen = state.gen;
  state.topo = await api("GET", "/v1/topology");
  if (gen !== state.gen) return; // the user went elsewhere meanwhile
  drawTopology();
  watchTopology(gen);
}

// The long poll: one at a time per page. It stops when the page is left or replaced, backs
// off on errors (1 s doubling to 30 s), and stops on a refusal that retrying cannot cure.
async function watchTopology(gen) {
  stopWatch();
  const ctl = new AbortController();
  state.watch = ctl;
  const current = () => state.watch === ctl && state.gen === gen && !ctl.signal.aborted;
  const badge = (text, on) => {
    const b = $("#live-state");
    if (b) { b.textContent = text; b.classList.toggle("on", on); }
  };
  let backoff = 1000;
  while (current()) {
    const started = performance.now();
    try {
      badge("live", true);
      const t = await api("GET", `/v1/topology?after=${state.topo.revision}&timeout=25`, undefined, { signal: ctl.signal });
      if (!current()) return;
      backoff = 1000;
      if (t) {
        const before = holders(state.topo);
        state.topo = t;
        drawTopology();
        const after = holders(t);
        for (const [vip, holder] of Object.entries(after)) {
          if (before[vip] !== holder) announce(`VIP ${vip} is now held by ${holder || "nobody"}`);
        }
      } else if (performance.now() - started < 500) {
        await sleep(1000); // a server that does not wait: do not spin
      }
    } catch (err) {
      if (!current()) return;
      if (err.status === 401) return signInPage(err);
      if (err.status >= 400 && err.status < 500) {
        badge(`stopped: ${err.message}`, false);
        return;
      }
      badge("reconnecting…", false);
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 30000);
    }
  }
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function holders(t) {
  const names = Object.fromEntries(t.instances.map((i) => [i.id, i.name]));
  return Object.fromEntries(t.vips.map((v) => [v.name, names[v.status.holder] || ""]));
}

function drawTopology() {
  const t = state.topo;
  const wrap = $("#map-wrap");
  if (!t || !wrap) return;
  const zones = [...t.zones].sort((a, b) => a.name.localeCompare(b.name));
  const zoneIndex = Object.fromEntries(zones.map((z, i) => [z.id, i]));
  for (const z of zones) zoneIndex[z.name] = zoneIndex[z.id];
  const sites = [...t.idc_sites].sort((a, b) => a.name.localeCompare(b.name));
  const siteName = Object.fromEntries(sites.map((s) => [s.id, s.name]));
  const ncols = Math.max(zones.length + sites.length, 1);
  const vpcColor = Object.fromEntries(t.vpcs.map((v, i) => [v.id, PALETTE[i % PALETTE.length]]));
  const vpcName = Object.fromEntries(t.vpcs.map((v) => [v.id, v.name]));
  const subnetById = Object.fromEntries(t.subnets.map((s) => [s.id, s]));
  const instById = Object.fromEntries(t.instances.map((i) => [i.id, i]));
  const projName = Object.fromEntries(t.projects.map((p) => [p.id, p.name]));
  const multi = t.projects.length > 1;
  const holderOf = {};
  for (const v of t.vips) if (v.status.holder) (holderOf[v.status.holder] ||= []).push(v);
  const eipOf = {};
  for (const e of t.eips) {
    const target = e.status.instance || e.status.natgw;
    if (target) (eipOf[target] ||= []).push(e);
  }
  const appliances = new Set();
  // Instances named as a next hop by a route are appliances (drawn with a double border).
  for (const r of t.routes || []) {
    const nh = r.spec.next_hop;
    const ref = typeof nh === "string" ? (nh.startsWith("instance:") ? nh.slice(9) : null)
      : nh && nh.type === "instance" ? nh.id : null;
    if (ref) appliances.add(ref);
  }

  const map = h("div", { class: "map", id: "map", style: `grid-template-columns: repeat(${ncols}, minmax(15em, 1fr))` });
  zones.forEach((z, i) => map.append(h("div", { class: "zone-head", style: `grid-column:${i + 1}`, dataset: { zone: z.name } }, `Zone ${z.name}`)));
  sites.forEach((s, i) => map.append(h("div", { class: "zone-head idc", style: `grid-column:${zones.length + i + 1}` }, `IDC ${s.name}`)));

  // VPC and subnet bands, spanning the zones where they have something (all when empty).
  for (const vpc of t.vpcs) {
    const color = vpcColor[vpc.id];
    const mine = t.instances.filter((i) => i.status.vpc === vpc.id);
    const cols = (list) => {
      const idx = list.map((i) => zoneIndex[i.spec.zone]).filter((x) => x !== undefined);
      return idx.length ? [Math.min(...idx) + 1, Math.max(...idx) + 2] : [1, zones.length + 1];
    };
    const [a, b] = cols(mine);
    map.append(h("div", { class: "vpc-band", style: `grid-column:${a} / ${b}; --vpc:${color}`, dataset: { vpc: vpc.name } },
      h("strong", {}, `VPC ${vpc.name}`), " ", h("span", { class: "muted" }, (vpc.spec.cidrs || []).join(", ")),
      multi ? h("span", { class: "tag" }, projName[vpc.project] || vpc.project) : null));
    for (const sub of t.subnets.filter((s) => s.spec.vpc === vpc.id)) {
      const members = mine.filter((i) => i.spec.subnet === sub.id);
      const site = String(sub.spec.location || "").startsWith("idc:") ? sub.spec.location.slice(4) : null;
      let [sa, sb] = cols(members);
      if (site && sites.findIndex((s) => s.name === site) >= 0) {
        const c = zones.length + sites.findIndex((s) => s.name === site) + 1;
        sa = Math.min(sa, c); sb = Math.max(sb, c + 1);
      }
      const vips = t.vips.filter((v) => v.spec.subnet === sub.id);
      map.append(h("div", { class: "subnet-band", style: `grid-column:${sa} / ${sb}; --vpc:${color}`, dataset: { subnet: sub.name } },
        h("span", {}, `Subnet ${sub.name} `, h("span", { class: "muted" }, sub.spec.cidr), site ? ` (IDC ${site})` : ""),
        vips.map((v) => h("span", { class: "vip", dataset: { vip: v.name, holder: instById[v.status.holder]?.name || "" } },
          `VIP ${v.name} ${v.spec.ip || v.status.ip || ""} → ${instById[v.status.holder]?.name || "nobody"}`))));
    }
  }

  // Hosts in their zones, with what runs on them.
  const hostsByZone = {};
  for (const host of t.hosts) (hostsByZone[host.spec.zone] ||= []).push(host);
  const onHost = (hostName, hostId) => (o) => o.status.host === hostName || o.status.host === hostId;
  zones.forEach((z, i) => {
    const col = h("div", { class: "zone-col", style: `grid-column:${i + 1}`, dataset: { zoneCol: z.name } });
    const hosts = [...(hostsByZone[z.name] || []), ...(hostsByZone[z.id] || [])].sort((a, b) => a.name.localeCompare(b.name));
    for (const host of hosts) {
      const here = onHost(host.name, host.id);
      const chips = [];
      for (const inst of t.instances.filter(here).sort((a, b) => a.name.localeCompare(b.name))) {
        const sub = subnetById[inst.spec.subnet];
        const vips = holderOf[inst.id] || [];
        const eips = eipOf[inst.id] || [];
        const picked = state.pick.includes(inst.id);
        chips.push(h("button", {
          type: "button",
          class: `chip${vips.length ? " vip-holder" : ""}${appliances.has(inst.id) || appliances.has(inst.name) ? " appliance" : ""}`,
          style: `--vpc:${vpcColor[inst.status.vpc] || "#737b8c"}`,
          "aria-pressed": picked ? "true" : "false",
          dataset: { id: inst.id, instance: inst.name, zone: z.name, host: host.name },
          "aria-label": `Instance ${inst.name}, ${inst.status.ip || "no address"}, ${inst.status.phase}` +
            (vips.length ? `, holds VIP ${vips.map((v) => v.name).join(", ")}` : "") + ". Pick for a trace.",
          onclick: () => pickInstance(inst.id),
        }, inst.name,
        h("small", {}, `${inst.status.ip || "—"} · ${sub ? sub.name : "?"} · ${inst.status.phase}`),
        eips.length ? h("small", {}, `EIP ${eips.map((e) => e.status.address).join(", ")}`) : null));
      }
      for (const gw of t.natgws.filter(here)) {
        chips.push(h("a", { class: "chip gw", href: `#/k/natgws/${encodeURIComponent(gw.name)}`, dataset: { id: gw.id, natgw: gw.name } },
          `NAT ${gw.name}`, h("small", {}, `${gw.status.public_ip || ""} · ${vpcName[gw.spec.vpc] || ""}`)));
      }
      for (const gw of t.hybrid_gws) {
        for (const rep of gw.status.replicas || []) {
          if (rep.host !== host.name && rep.host !== host.id) continue;
          chips.push(h("a", { class: "chip gw", href: `#/k/hybrid-gws/${encodeURIComponent(gw.name)}`, dataset: { id: gw.id, hybridGw: gw.name } },
            `Hybrid ${gw.name} #${rep.index ?? ""}`, h("small", {}, `${rep.state || rep.bgp || ""} · ${siteName[gw.spec.site] || gw.spec.site || ""}`)));
        }
      }
      const lost = host.status.healthy === false;
      const condition = host.status.healthy ? "healthy" : (host.status.condition || "unhealthy");
      col.append(h("section", { class: `host${lost ? " lost" : ""}`, dataset: { host: host.name }, "aria-label": `Host ${host.name}` },
        h("div", { class: "host-name" }, h("span", {}, host.name), h("span", { class: "muted" }, condition)),
        h("div", { class: "chips" }, chips.length ? chips : h("span", { class: "muted" }, "empty"))));
    }
    if (!hosts.length) col.append(h("p", { class: "muted" }, "no host"));
    map.append(col);
  });
  sites.forEach((s, i) => {
    map.append(h("div", { class: "zone-col idc-col", style: `grid-column:${zones.length + i + 1}` },
      h("section", { class: "host", dataset: { site: s.name }, "aria-label": `IDC site ${s.name}` },
        h("div", { class: "host-name" }, h("span", {}, s.name)),
        h("small", {}, (s.spec.cidrs || []).join(", ")))));
  });
  const internet = t.eips.filter((e) => !e.status.instance && !e.status.natgw);
  if (internet.length) {
    map.append(h("div", { style: `grid-column:1 / ${ncols + 1}`, class: "legend" },
      `Unbound EIPs: ${internet.map((e) => `${e.name} ${e.status.address}`).join(", ")}`));
  }
  wrap.replaceChildren(map);
  // A mark per drawing, with the revision drawn: what bench/console.py times.
  performance.mark("yunhan:topology", { detail: { revision: t.revision } });
  fillTraceSelects();
  if (state.traceResult) drawTrace(state.traceResult);
  else $("#trace-panel").hidden = true;
}

function fillTraceSelects() {
  const t = state.topo;
  const insts = [...t.instances].sort((a, b) => a.name.localeCompare(b.name));
  for (const [id, which] of [["trace-from", 0], ["trace-to", 1]]) {
    const sel = $(`#${id}`);
    if (!sel) continue;
    const keep = state.pick[which] || sel.value;
    sel.replaceChildren(h("option", { value: "" }, "—"), ...insts.map((i) => h("option", { value: i.id, selected: i.id === keep }, i.name)));
  }
}

function pickInstance(id) {
  state.pick = state.pick.length >= 2 ? [id] : [...state.pick.filter((x) => x !== id), id];
  drawTopology();
  const names = state.pick.map((p) => state.topo.instances.find((i) => i.id === p)?.name);
  announce(state.pick.length === 2 ? `Trace from ${names[0]} to ${names[1]}: press Trace` : `Picked ${names[0]} to trace from`);
}

async function runTrace(from, to, proto, port) {
  const panel = $("#trace-panel");
  panel.hidden = false;
  if (!from || !to) {
    panel.replaceChildren(errorBox("pick two instances to trace between"));
    return;
  }
  const q = new URLSearchParams({ from, to, proto });
  if (proto !== "icmp" && port) q.set("port", port);
  try {
    state.traceResult = await api("GET", `/v1/trace?${q}`);
    state.pick = [from, to];
    drawTopology();
  } catch (err) {
    state.traceResult = null;
    panel.replaceChildren(errorBox(err));
  }
}

function hopElement(hop) {
  const map = $("#map");
  if (hop.place === "instance" || hop.place === "natgw") {
    const el = map.querySelector(`[data-id="${CSS.escape(hop.ref)}"]`);
    if (el) return el;
  }
  return map.querySelector(`section.host[data-host="${CSS.escape(hop.host)}"]`);
}

// "instance:<id>" as a person reads it: "instance:fw".
function named(x, names) {
  if (!x) return x;
  if (names[x]) return names[x];
  const i = x.indexOf(":");
  return i > 0 && names[x.slice(i + 1)] ? `${x.slice(0, i)}:${names[x.slice(i + 1)]}` : x;
}

function decidingRule(hop, names) {
  const parts = [];
  if (hop.policy) parts.push(`policy ${hop.policy.priority} ${hop.policy.action} (${hop.policy.match || "any"}) → ${named(hop.policy.nexthop, names) || ""}${hop.policy.taken ? "" : " not taken"}`);
  if (hop.route) {
    const r = hop.route;
    parts.push(`${r.type} route ${r.dst} → ${named(r.target, names) || r.via}` +
      (r.table ? ` (table ${names[r.table] || r.table}${r.priority ? `, priority ${r.priority}` : ""})` : ""));
  }
  if (hop.nat) parts.push(`NAT ${hop.nat}`);
  if (hop.note) parts.push(hop.note);
  return parts.join("; ") || "—";
}

function drawTrace(tr) {
  const map = $("#map");
  const panel = $("#trace-panel");
  const names = tr.names || {};
  const points = [];
  const visits = new Map(); // a place crossed twice gets its second marker beside the first
  const items = tr.hops.map((hop, i) => {
    const el = hopElement(hop);
    if (el) {
      el.classList.add("on-trace");
      const mr = map.getBoundingClientRect();
      const r = el.getBoundingClientRect();
      const k = visits.get(el) || 0;
      visits.set(el, k + 1);
      points.push([r.left - mr.left + r.width / 2 + 20 * k, r.top - mr.top + r.height / 2 + 12 * k, i + 1]);
    }
    const what = hop.place === "vpc" ? `VPC router on ${hop.host}` :
      hop.place === "instance" ? `instance ${names[hop.ref] || hop.ref} on ${hop.host}` :
      hop.place === "natgw" ? `NAT gateway ${names[hop.ref] || hop.ref} on ${hop.host}` :
      hop.place === "host" ? `host ${hop.host}` : "internet";
    return h("li", { class: hop.dropped ? "dropped" : "", dataset: { traceHop: String(i + 1), place: hop.place, ref: names[hop.ref] || hop.ref || "" } },
      h("strong", {}, what), ` — ${hop.src} → ${hop.dst}: `, decidingRule(hop, names), hop.dropped ? " (dropped here)" : "");
  });
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("class", "trace");
  svg.setAttribute("width", map.scrollWidth);
  svg.setAttribute("height", map.scrollHeight);
  svg.setAttribute("aria-hidden", "true");
  const line = document.createElementNS(svgNS, "polyline");
  line.setAttribute("points", points.map(([x, y]) => `${x},${y}`).join(" "));
  svg.append(line);
  for (const [x, y, n] of points) {
    const c = document.createElementNS(svgNS, "circle");
    c.setAttribute("cx", x); c.setAttribute("cy", y); c.setAttribute("r", 9);
    const label = document.createElementNS(svgNS, "text");
    label.setAttribute("x", x - 3.5); label.setAttribute("y", y + 4);
    label.textContent = String(n);
    svg.append(c, label);
  }
  map.append(svg);
  panel.hidden = false;
  panel.replaceChildren(
    h("h2", {}, `Trace ${names[tr.src] || tr.src} → ${tr.dst_instance ? names[tr.dst_instance] || tr.dst : tr.dst} (${tr.proto}${tr.port ? ` ${tr.port}` : ""})`),
    h("p", { id: "trace-verdict" }, h("span", { class: `verdict-${tr.verdict === "dropped" ? "dropped" : "delivered"}` }, tr.verdict), tr.reason ? ` — ${tr.reason}` : ""),
    h("ol", { id: "trace-hops" }, items));
  announce(`Trace: ${tr.verdict} in ${tr.hops.length} hops`);
}

// -- lists -----------------------------------------------------------------------------------

const HIDDEN_QUERY = new Set(["limit", "cursor", "label"]);

async function listPage(kind, cursor = null, history = []) {
  const op = operation("get", `/v1/${kind.path}`);
  const params = ((op && op.parameters) || []).filter((p) => p.in === "query" && !HIDDEN_QUERY.has(p.name));
  const q = new URLSearchParams(location.hash.split("?")[1] || "");
  const filters = params.map((p) => h("label", {}, p.name, h("input", { name: p.name, value: q.get(p.name) || "", size: 12 })));
  const labelInput = h("input", { name: "label", value: q.getAll("label").join(","), size: 18, placeholder: "key=value,…" });
  const hasLabels = op && (op.parameters || []).some((p) => p.name === "label");
  const form = h("form", { class: "toolbar", role: "search", "aria-label": `Filter ${kind.title}` },
    filters, hasLabels ? h("label", {}, "labels", labelInput) : null,
    h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const nq = new URLSearchParams();
    for (const input of form.querySelectorAll("input")) {
      if (!input.value.trim()) continue;
      if (input.name === "label") for (const term of input.value.split(",")) { if (term.trim()) nq.append("label", term.trim()); }
      else nq.set(input.name, input.value.trim());
    }
    location.hash = `#/k/${kind.path}${nq.toString() ? `?${nq}` : ""}`;
  });
  const canCreate = !!operation("post", `/v1/${kind.path}`);
  const put = !!operation("put", `/v1/${kind.path}/{ref}`);
  const header = h("div", { class: "actions" },
    h("h1", {}, kind.title),
    canCreate || put ? h("a", { class: "button", href: `#/k/${kind.path}/new` }, `Create ${singular(kind)}`) : null);
  const body = h("div");
  show(header, form, body);
  if (!op) { body.append(h("p", {}, "This kind cannot be listed.")); return; }
  const qs = new URLSearchParams(q);
  qs.set("limit", "20");
  if (cursor) qs.set("cursor", cursor);
  try {
    const page = await api("GET", `/v1/${kind.path}?${qs}`);
    body.append(listTable(kind, page.items || []));
    const pager = h("div", { class: "pager" });
    if (history.length) pager.append(h("button", { type: "button", class: "secondary", onclick: () => listPage(kind, history[history.length - 1], history.slice(0, -1)) }, "Previous page"));
    if (page.next) pager.append(h("button", { type: "button", class: "secondary", onclick: () => listPage(kind, page.next, [...history, cursor]) }, "Next page"));
    pager.append(h("span", { class: "muted" }, `${(page.items || []).length} shown · revision ${page.revision ?? "—"}`));
    body.append(pager);
  } catch (err) {
    body.append(errorBox(err));
  }
}

function singular(kind) {
  return kind.title === "Fleet patches" ? "Fleet patch" : kind.title.replace(/s$/, "");
}

const STATUS_KEYS = ["phase", "state", "ip", "address", "public_ip", "host", "holder", "available", "message"];

function listTable(kind, items) {
  if (!items.length) return h("p", { class: "muted" }, "None.");
  const specKeys = [];
  for (const o of items) {
    for (const [k, v] of Object.entries(o.spec || {})) {
      if (specKeys.length < 4 && !specKeys.includes(k) && (typeof v !== "object" || Array.isArray(v)) && !String(k).includes("secret")) specKeys.push(k);
    }
  }
  const statusKeys = STATUS_KEYS.filter((k) => items.some((o) => o.status && o.status[k] !== undefined && typeof o.status[k] !== "object"));
  const names = nameIndex();
  const cols = ["name", ...specKeys, ...statusKeys.map((k) => `status.${k}`), "labels"];
  const table = h("table", { class: "responsive", id: "list" },
    h("caption", { class: "sr-only" }, kind.title),
    h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col" }, c.replace("status.", "").replace(/_/g, " "))))),
    h("tbody", {}, items.map((o) => h("tr", { dataset: { name: o.name || o.id } },
      h("td", { "data-label": "name" }, h("a", { href: `#/k/${kind.path}/${encodeURIComponent(o.name || o.id)}` }, o.name || o.id)),
      specKeys.map((k) => h("td", { "data-label": k.replace(/_/g, " ") }, pretty(o.spec[k], names))),
      statusKeys.map((k) => h("td", { "data-label": k.replace(/_/g, " ") }, pretty(o.status[k], names))),
      h("td", { "data-label": "labels" }, labelsView(o.labels)),
    ))));
  return h("div", { class: "table-wrap" }, table);
}

function nameIndex() {
  const t = state.topo;
  const names = {};
  if (!t) return names;
  for (const key of ["zones", "vpcs", "subnets", "instances", "vips", "natgws", "eips", "hybrid_gws", "route_tables", "idc_sites", "security_groups"]) {
    for (const o of t[key] || []) names[o.id] = o.name;
  }
  return names;
}

function pretty(v, names) {
  if (typeof v === "string" && names[v]) return names[v];
  if (Array.isArray(v) && v.every((x) => typeof x === "string")) return v.map((x) => names[x] || x).join(", ") || "—";
  return scalar(v);
}

// -- detail ----------------------------------------------------------------------------------

async function detailPage(kind, ref) {
  if (!state.topo) state.topo = await api("GET", "/v1/topology").catch(() => null);
  const o = await getOne(kind, ref);
  const names = nameIndex();
  const title = h("h1", {}, `${singular(kind)} ${o.name || o.id}`);
  const msg = h("div", { id: "action-result" });
  const actions = h("div", { class: "actions", role: "group", "aria-label": "Actions" });
  if (operation("patch", `/v1/${kind.path}/{ref}`)) actions.append(h("a", { class: "button secondary", href: `#/k/${kind.path}/${encodeURIComponent(ref)}/edit` }, "Edit"));
  const forms = h("div");
  for (const [path, ops] of Object.entries(state.openapi.paths)) {
    const m = path.match(new RegExp(`^/v1/${kind.path}/\\{ref\\}/([a-z-]+)$`));
    if (!m || !ops.post || ["invoke", "bootstrap-tokens"].includes(m[1])) continue;
    const action = m[1];
    actions.append(h("button", { type: "button", class: "secondary", dataset: { action }, onclick: () => {
      forms.replaceChildren(actionForm(kind, ref, path, ops.post, action, msg));
      forms.querySelector("input,select,textarea,button")?.focus();
    } }, label(action)));
  }
  if (operation("delete", `/v1/${kind.path}/{ref}`)) {
    actions.append(h("button", { type: "button", class: "danger", onclick: async () => {
      if (!confirm(`Delete ${singular(kind).toLowerCase()} ${o.name}?`)) return;
      try {
        await api("DELETE", `/v1/${kind.path}/${encodeURIComponent(ref)}`);
        location.hash = `#/k/${kind.path}`;
      } catch (err) { msg.replaceChildren(errorBox(err)); }
    } }, "Delete"));
  }
  const overview = h("dl", { class: "kv" },
    h("dt", {}, "id"), h("dd", {}, o.id),
    h("dt", {}, "created"), h("dd", {}, when(o.created_at)),
    h("dt", {}, "revision"), h("dd", {}, o.revision ?? "—"),
    h("dt", {}, "labels"), h("dd", {}, labelsView(o.labels)));
  const extra = h("div");
  const sections = [title, flashBox(), actions, msg, forms, overview, extra,
    h("h2", {}, "Spec"), kv(o.spec || {}, names),
    h("h2", {}, "Status"), kv(o.status || {}, names)];
  const events = h("section", { "aria-labelledby": "events-title" }, h("h2", { id: "events-title" }, "Events"));
  sections.push(events);
  show(...sections);
  await Promise.all([
    kindExtras(kind, o, extra, msg).catch((err) => extra.append(errorBox(err))),
    loadEvents(kind, o, events),
  ]);
}

// One object: its own GET, or (a kind with none, as projects) its list filtered by name.
async function getOne(kind, ref) {
  if (operation("get", `/v1/${kind.path}/{ref}`)) return api("GET", `/v1/${kind.path}/${encodeURIComponent(ref)}`);
  const page = await api("GET", `/v1/${kind.path}?name=${encodeURIComponent(ref)}`);
  const found = (page.items || []).find((o) => o.name === ref || o.id === ref);
  if (!found) throw new ApiError(404, { error: { message: `no ${singular(kind).toLowerCase()} '${ref}'` } });
  return found;
}

function label(s) { return s.replace(/-/g, " ").replace(/^./, (c) => c.toUpperCase()); }

function kv(obj, names) {
  const entries = Object.entries(obj).filter(([k]) => !k.includes("secret"));
  if (!entries.length) return h("p", { class: "muted" }, "—");
  return h("dl", { class: "kv" }, entries.flatMap(([k, v]) => [
    h("dt", {}, k),
    h("dd", {}, v && typeof v === "object" && !(Array.isArray(v) && v.every((x) => typeof x !== "object"))
      ? nested(v) : pretty(v, names)),
  ]));
}

// Nested values fold away: the page's own sections (routes, rollout, timeline) show them.
function nested(v) {
  const n = Array.isArray(v) ? `${v.length} item(s)` : `${Object.keys(v).length} field(s)`;
  const pre = h("pre", {}, JSON.stringify(v, null, 2));
  return Object.keys(v).length > 3 ? h("details", {}, h("summary", {}, n), pre) : pre;
}

async function loadEvents(kind, o, section) {
  try {
    const ev = await api("GET", `/v1/events?for=${encodeURIComponent(`${kind.store}/${o.name}`)}`);
    const items = ev.items || [];
    section.append(items.length ? h("ul", { class: "events" }, items.map((e) =>
      h("li", {}, h("strong", {}, e.reason || e.type || ""), ` ${e.message || ""} `, h("span", { class: "muted" }, `${e.last_time || ""}${e.count > 1 ? ` ×${e.count}` : ""}`))))
      : h("p", { class: "muted" }, "No events."));
  } catch (err) {
    section.append(h("p", { class: "muted" }, err.message));
  }
}

// What some kinds show besides spec and status: sub-resources and their history.
async function kindExtras(kind, o, root, msg) {
  const ref = encodeURIComponent(o.name || o.id);
  if (kind.path === "route-tables") {
    const rt = await api("GET", `/v1/route-tables/${ref}/routes`);
    root.append(h("h2", {}, "Associated subnets"),
      h("p", { id: "associations" }, rt.subnets.length ? rt.subnets.join(", ") : (rt.default ? "every subnet without a table of its own" : "none")));
    root.append(h("h2", {}, "Routes"), subTable(rt.routes, ["type", "dst", "next_hop", "priority", "state", "subnet", "host"],
      (r) => r.id && r.type === "custom" ? `/v1/routes/${encodeURIComponent(r.id)}` : null, msg, "routes"));
    root.append(h("h2", {}, "Policy routes"), subTable(rt.policies, ["priority", "src", "dst", "proto", "port", "action", "next_hop", "state"],
      (r) => `/v1/policy-routes/${encodeURIComponent(r.id)}`, msg, "policies"));
  } else if (kind.path === "security-groups") {
    root.append(h("h2", {}, "Rules"), subTable(o.spec.rules || [], null,
      (r) => `/v1/security-groups/${ref}/rules/${encodeURIComponent(r.id)}`, msg, "rules"));
  } else if (kind.path === "natgws") {
    root.append(h("h2", {}, "Port forwards"), subTable(o.spec.forwards || [], null,
      (f) => `/v1/natgws/${ref}/forwards/${f.proto}/${f.port}`, msg, "forwards"));
  } else if (kind.path === "volumes") {
    const tl = await api("GET", `/v1/volumes/${ref}/timeline`);
    root.append(h("h2", {}, "Timeline and restore points"), timeline(tl));
  } else if (kind.path === "functions") {
    const usage = await api("GET", "/v1/usage?by=function").catch(() => null);
    root.append(h("h2", {}, "Metrics (since the meter began)"), functionMetrics(o, usage));
  } else if (kind.path === "patches") {
    root.append(h("h2", {}, "Rollout by host"), rollout(o));
  } else if (kind.path === "hybrid-gws") {
    const routes = await api("GET", `/v1/hybrid-gws/${ref}/routes`);
    root.append(h("h2", {}, "Routes"), subTable(routes.routes || routes.items || [], null, () => null, msg, "gw-routes"));
  }
}

function subTable(rows, cols, deletePath, msg, id) {
  if (!rows || !rows.length) return h("p", { class: "muted" }, "None.");
  cols = cols || [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const names = nameIndex();
  return h("div", { class: "table-wrap" }, h("table", { class: "responsive", id },
    h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col" }, c)), h("th", { scope: "col" }, h("span", { class: "sr-only" }, "Actions")))),
    h("tbody", {}, rows.map((r) => {
      const path = deletePath(r);
      return h("tr", {}, cols.map((c) => h("td", { "data-label": c }, cell(c, r[c], names))),
        h("td", {}, path ? h("button", { type: "button", class: "danger", "aria-label": `Delete ${cols.map((c) => r[c]).filter((x) => x !== null && x !== undefined).slice(0, 3).join(" ")}`, onclick: async () => {
          try { await api("DELETE", path); await route(); } catch (err) { msg.replaceChildren(errorBox(err)); }
        } }, "Delete") : ""));
    }))));
}

// A sub-resource's field as the CLI writes it: a port range "22" or "1000-2000", a peer
// "cidr:10.0.0.0/8" or "sg:web" (names for ids).
function cell(key, v, names) {
  if (key === "port" && Array.isArray(v) && v.length === 2) return v[0] === v[1] ? String(v[0]) : `${v[0]}-${v[1]}`;
  if (v && typeof v === "object" && !Array.isArray(v)) {
    return Object.entries(v).filter(([, x]) => x !== null && x !== undefined)
      .map(([k, x]) => `${k}:${names[x] || (typeof x === "object" ? JSON.stringify(x) : x)}`).join(" ") || "—";
  }
  return pretty(v, names);
}

function timeline(tl) {
  // Restore points: every instant between `from` and `to` of a range, at its granularity.
  const points = tl.points || [];
  const head = h("dl", { class: "kv" },
    h("dt", {}, "oldest"), h("dd", {}, when(tl.oldest)),
    h("dt", {}, "newest"), h("dd", {}, when(tl.newest)),
    h("dt", {}, "journal"), h("dd", {}, bytes(tl.journal_bytes)),
    h("dt", {}, "base"), h("dd", {}, bytes(tl.base_bytes)));
  const list = points.length ? h("ol", { class: "timeline", id: "timeline", "aria-label": "Restore points, newest last" },
    points.map((p) => h("li", {}, `${when(p.from)} → ${when(p.to)}`, h("span", { class: "muted" }, ` · a point every ${p.every_s} s`))))
    : h("p", { class: "muted" }, "No restore points: the volume is not protected (Protect) or has not written yet.");
  const tiers = (tl.tiers || []).map((t) => `every ${t.every_s} s for ${t.keep_s} s`).join("; ");
  return h("div", {}, head, tiers ? h("p", { class: "muted" }, `Kept: ${tiers}.`) : null, list,
    h("p", { class: "muted" }, "Restore (above) takes any instant inside a range."));
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function functionMetrics(fn, usage) {
  const row = ((usage && usage.items) || []).find((u) => u.function === fn.id || u.name === fn.name) || {};
  const cells = [["invocations", row.requests ?? 0], ["cold starts", row.cold_starts ?? 0], ["errors", row.errors ?? 0],
    ["billed", `${row.billed_ms ?? 0} ms`], ["GB-s", (row.gb_seconds ?? 0).toFixed(3)],
    ["cost", `${(row.cost ?? 0).toFixed(6)} ${usage ? usage.currency : ""}`]];
  const traffic = Object.entries(fn.status.traffic || {}).map(([v, pct]) => `v${v} ${pct}%`).join(", ");
  return h("div", {},
    h("dl", { class: "kv", id: "fn-metrics" }, cells.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])),
    h("p", {}, `Traffic: ${traffic || "—"} · latest version ${fn.status.latest_version ?? "—"}`));
}

function rollout(p) {
  const st = p.status;
  const order = [...(st.targets || []), ...Object.keys(st.hosts || {}).filter((x) => !(st.targets || []).includes(x))];
  const done = order.filter((x) => ["applied", "rolled_back"].includes((st.hosts[x] || {}).state)).length;
  const pct = order.length ? Math.round((100 * done) / order.length) : 0;
  return h("div", {},
    h("p", {}, `${st.phase}: ${st.message || ""}`),
    h("div", { class: "bar", role: "progressbar", "aria-valuenow": pct, "aria-valuemin": 0, "aria-valuemax": 100, "aria-label": "Hosts done" }, h("span", { style: `width:${pct}%` })),
    h("p", { class: "muted" }, `${done} of ${order.length} hosts done; canaries: ${(st.canary_hosts || []).join(", ") || "—"}`),
    order.length ? h("div", { class: "table-wrap" }, h("table", { class: "responsive", id: "rollout" },
      h("thead", {}, h("tr", {}, ["host", "asked", "state", "applied", "refused", "died", "busy", "rolled back", "message"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, order.map((host) => {
        const x = st.hosts[host] || {};
        return h("tr", { dataset: { host } }, h("td", { "data-label": "host" }, host), h("td", { "data-label": "asked" }, x.want || "—"),
          h("td", { "data-label": "state" }, x.state || "waiting"),
          ["applied", "refused", "died", "busy", "rolled_back"].map((k) => h("td", { "data-label": k }, String(x[k] ?? 0))),
          h("td", { "data-label": "message" }, x.message || ""));
      })))) : null);
}

// -- forms -----------------------------------------------------------------------------------

function createPage(kind) {
  const post = operation("post", `/v1/${kind.path}`);
  const put = operation("put", `/v1/${kind.path}/{ref}`);
  const op = post || put;
  if (!op) { show(h("h1", {}, kind.title), h("p", {}, "This kind is not created here.")); return; }
  const schema = bodySchema(op) || { properties: {} };
  const msg = h("div", { id: "form-result" });
  const nameField = put ? { name: { type: "string", title: "Name" } } : {};
  const form = schemaForm({ ...schema, properties: { ...nameField, ...schema.properties }, required: [...(put ? ["name"] : []), ...(schema.required || [])] },
    `Create ${singular(kind).toLowerCase()}`, `create-${kind.path}`, async (body) => {
      let made;
      if (put) {
        const name = body.name;
        delete body.name;
        made = await api("PUT", `/v1/${kind.path}/${encodeURIComponent(name)}`, body);
      } else {
        made = await api("POST", `/v1/${kind.path}`, body);
      }
      keepSecrets(made);
      const obj = made.project && typeof made.project === "object" ? made.project : made;
      location.hash = `#/k/${kind.path}/${encodeURIComponent(obj.name || obj.id)}`;
    }, msg);
  show(h("h1", { id: `create-${kind.path}-title` }, `Create ${singular(kind).toLowerCase()}`), h("p", {}, h("a", { href: `#/k/${kind.path}` }, `Back to ${kind.title}`)), form);
  form.setAttribute("aria-labelledby", `create-${kind.path}-title`);
  form.querySelector("input,select,textarea")?.focus();
}

async function editPage(kind, ref) {
  const o = await getOne(kind, ref);
  const op = operation("patch", `/v1/${kind.path}/{ref}`);
  const schema = bodySchema(op) || { properties: { labels: { type: "object", additionalProperties: { type: "string" } } } };
  // The patch's own shape: its top-level fields, and its `spec` limited to what it takes.
  const specSchema = schema.properties && schema.properties.spec ? unwrap(schema.properties.spec).p : null;
  const specKeys = specSchema && specSchema.properties ? Object.keys(specSchema.properties) : [];
  const initial = { ...o.spec, labels: o.labels };
  if (specSchema) initial.spec = Object.fromEntries(specKeys.filter((k) => k in (o.spec || {})).map((k) => [k, o.spec[k]]));
  const msg = h("div", { id: "form-result" });
  const form = schemaForm({ ...schema, required: [] }, "Save", `edit-${kind.path}`, async (body) => {
    // A JSON merge patch: labels removed from the text are sent as null (deleted).
    if (body.labels || "labels" in (schema.properties || {})) {
      const labels = body.labels || {};
      for (const k of Object.keys(o.labels || {})) if (!(k in labels)) labels[k] = null;
      body.labels = labels;
    }
    await api("PATCH", `/v1/${kind.path}/${encodeURIComponent(ref)}`, body);
    location.hash = `#/k/${kind.path}/${encodeURIComponent(ref)}`;
  }, msg, initial);
  show(h("h1", { id: "edit-title" }, `Edit ${singular(kind).toLowerCase()} ${o.name}`), form);
  form.setAttribute("aria-labelledby", "edit-title");
}

function actionForm(kind, ref, path, op, action, msg) {
  const schema = bodySchema(op);
  const run = async (body) => {
    const res = await api("POST", path.replace("{ref}", encodeURIComponent(ref)), schema ? body : undefined);
    keepSecrets(res);
    await route();
    $("#action-result")?.replaceChildren(h("div", { class: "notice", role: "status" }, `${label(action)}: done${res && res.name ? ` (${res.name})` : ""}`));
  };
  const form = schemaForm(schema || { properties: {} }, label(action), `action-${action}`, run, msg);
  form.setAttribute("aria-label", label(action));
  return form;
}

// Fields an answer holds once and the API never shows again.
const SECRETS = ["token", "private_key", "public_key", "key"];

function keepSecrets(answer) {
  if (!answer || typeof answer !== "object") return;
  const shown = SECRETS.filter((k) => typeof answer[k] === "string");
  state.flash = shown.length ? Object.fromEntries(shown.map((k) => [k, answer[k]])) : null;
}

function flashBox() {
  if (!state.flash) return null;
  const box = h("div", { class: "notice", role: "status", id: "secret" },
    h("strong", {}, "Copy these now: they are not shown again."),
    h("dl", { class: "kv" }, Object.entries(state.flash).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, h("code", {}, v))])));
  state.flash = null;
  return box;
}

function unwrap(prop) {
  let optional = false;
  let p = resolveSchema(prop);
  if (p.anyOf) {
    const kinds = p.anyOf.map(resolveSchema);
    optional = kinds.some((k) => k.type === "null");
    const real = kinds.filter((k) => k.type !== "null");
    // One of several forms: the text one if there is one (a list can be written as text).
    const pick = real.length === 1 ? real[0] : real.find((k) => k.type === "string") || { type: "json" };
    p = { ...pick, description: p.description || prop.description, default: p.default, title: p.title };
  }
  return { p, optional };
}

function schemaForm(schema, submitText, id, onSubmit, msg, initial = {}) {
  const form = h("form", { class: "resource", id, novalidate: true });
  const fields = [];
  const required = new Set(schema.required || []);
  // Labels last: what the resource is comes first.
  const props = Object.entries(schema.properties || {}).sort(([a], [b]) => (a === "labels") - (b === "labels"));
  for (const [name, raw] of props) {
    const { p, optional } = unwrap(raw);
    const fid = `${id}-${name}`;
    const help = p.description || (raw && raw.description) || "";
    const init = initial[name];
    let input;
    let read;
    const type = p.type;
    if (p.enum) {
      input = h("select", { id: fid, name },
        !required.has(name) ? h("option", { value: "" }, "—") : null,
        p.enum.map((v) => h("option", { value: v, selected: (init ?? p.default) === v }, v)));
      read = () => input.value || undefined;
    } else if (type === "boolean") {
      input = h("input", { id: fid, name, type: "checkbox", checked: (init ?? p.default) === true });
      read = () => input.checked;
    } else if (type === "integer" || type === "number") {
      input = h("input", { id: fid, name, type: "number", step: type === "integer" ? 1 : "any", min: p.minimum, max: p.maximum, value: init ?? "" , placeholder: p.default !== undefined ? String(p.default) : " " });
      read = () => (input.value === "" ? undefined : Number(input.value));
    } else if (type === "array" && ["string", "integer"].includes(resolveSchema(p.items).type)) {
      input = h("textarea", { id: fid, name, rows: 3, placeholder: "one per line" });
      if (Array.isArray(init)) input.value = init.join("\n");
      const itemType = resolveSchema(p.items).type;
      read = () => {
        const items = input.value.split("\n").map((x) => x.trim()).filter(Boolean);
        if (!items.length) return undefined;
        return itemType === "integer" ? items.map(Number) : items;
      };
    } else if (type === "object" && p.additionalProperties && unwrap(p.additionalProperties).p.type === "string") {
      input = h("textarea", { id: fid, name, rows: 2, placeholder: "key=value, one per line" });
      if (init && typeof init === "object") input.value = Object.entries(init).map(([k, v]) => `${k}=${v}`).join("\n");
      read = () => {
        const lines = input.value.split("\n").map((x) => x.trim()).filter(Boolean);
        if (!lines.length) return undefined;
        return Object.fromEntries(lines.map((l) => { const i = l.indexOf("="); return i < 0 ? [l, ""] : [l.slice(0, i).trim(), l.slice(i + 1).trim()]; }));
      };
    } else if (type === "string") {
      input = h("input", { id: fid, name, type: name.includes("secret") || name === "token" ? "password" : "text", value: init ?? "", placeholder: " ", maxlength: p.maxLength, autocomplete: "off" });
      const refers = REFERS[name];
      if (refers) input.setAttribute("list", `${fid}-names`);
      read = () => (input.value.trim() === "" ? undefined : input.value.trim());
      if (p.pattern) {
        let re = null;
        try { re = new RegExp(p.pattern, "u"); } catch { re = null; }
        if (re) input.addEventListener("input", () => input.setCustomValidity(input.value && !re.test(input.value) ? `must match ${p.pattern}` : ""));
      }
    } else {
      input = h("textarea", { id: fid, name, rows: 3, placeholder: "JSON" });
      if (init !== undefined) input.value = JSON.stringify(init, null, 2);
      read = () => {
        if (!input.value.trim()) return undefined;
        try { return JSON.parse(input.value); } catch { throw new Error(`${name}: not valid JSON`); }
      };
    }
    if (required.has(name) && !optional) input.setAttribute("required", "");
    const helpId = help ? `${fid}-help` : null;
    if (helpId) input.setAttribute("aria-describedby", helpId);
    const wrapper = h("div", { class: `field${type === "boolean" ? " check" : ""}` },
      h("label", { for: fid }, `${p.title || name}${required.has(name) ? " *" : ""}`), input,
      helpId ? h("span", { class: "help", id: helpId }, help.replace(/`/g, "")) : null);
    if (REFERS[name] && (type === "string" || type === "array")) {
      const dl = h("datalist", { id: `${fid}-names` });
      wrapper.append(dl);
      fillNames(dl, REFERS[name]);
    }
    fields.push([name, read, input]);
    form.append(wrapper);
  }
  const submit = h("button", { type: "submit" }, submitText);
  form.append(msg, h("div", { class: "actions" }, submit));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    msg.replaceChildren();
    // The browser checks what the schema says (required, bounds, patterns); the API then
    // checks everything, and its message is what the user reads.
    const bad = fields.find(([, , input]) => !input.checkValidity());
    if (bad) {
      bad[2].reportValidity();
      msg.append(errorBox(`${bad[0]}: ${bad[2].validationMessage}`));
      return;
    }
    const body = {};
    try {
      for (const [name, read] of fields) {
        const v = read();
        if (v !== undefined) body[name] = v;
      }
      submit.disabled = true;
      await onSubmit(body);
    } catch (err) {
      msg.append(errorBox(err));
      msg.querySelector(".error")?.focus?.();
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

async function fillNames(datalist, path) {
  try {
    if (path === "zones" || path === "hosts" || path === "idc-sites") {
      const t = state.topo || (state.topo = await api("GET", "/v1/topology"));
      const list = path === "zones" ? t.zones : path === "hosts" ? t.hosts : t.idc_sites;
      datalist.replaceChildren(...list.map((o) => h("option", { value: o.name })));
      return;
    }
    const items = await listAll(`/v1/${path}`);
    datalist.replaceChildren(...items.map((o) => h("option", { value: o.name || o.id })));
  } catch { /* a hint only */ }
}

// -- start -----------------------------------------------------------------------------------

// The skip link must not change the route (#main is no page): it moves the focus only.
$(".skip").addEventListener("click", (ev) => {
  ev.preventDefault();
  $("#main").focus();
});

// A new page takes the focus to its content, as a page load would take it to the top.
window.addEventListener("hashchange", async () => {
  await route();
  if (!document.activeElement || document.activeElement === document.body) $("#main").focus();
});
route();
