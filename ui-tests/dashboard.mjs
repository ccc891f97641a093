// Drives the dashboard of a running `meshgate up` in Debian's Chromium, as a person would:
// signs in with the one-time URL, reads the map, opens the panels, switches namespace shop to
// STRICT after a plaintext client shows up, moves the canary, and times a generated
// 500-node, 2,000-edge map. Usage: node dashboard.mjs LOGIN_URL PLAINTEXT_URL OUT_DIR
// Prints one JSON line of measurements; exits non-zero on the first failed check.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const [loginUrl, plainUrl, outDir] = process.argv.slice(2);
if (!loginUrl || !plainUrl || !outDir) {
  console.error("usage: node dashboard.mjs LOGIN_URL PLAINTEXT_URL OUT_DIR");
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });
const origin = new URL(loginUrl).origin;
const results = {};
const check = (ok, what) => {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.error(`ok: ${what}`);
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Waits until the last `n` answers through the gateway all satisfy `ok`; seconds it took.
async function answersBecome(n, ok, what) {
  const since = Date.now();
  versions.length = 0;
  for (;;) {
    await sleep(500);
    const recent = versions.slice(-n);
    if (recent.length >= n && recent.every(ok)) return Math.round((Date.now() - since) / 100) / 10;
    if (Date.now() - since > 30000) throw new Error(`${what}: ${recent.join(",")}`);
  }
}

// Traffic while the test runs: through the gateway, and (once asked) a plaintext client
// straight to order, outside the mesh.
let plaintext = false;
const versions = [];
let stop = false;
const traffic = (async () => {
  while (!stop) {
    try {
      const r = await fetch("http://127.0.0.1:8080/");
      const body = await r.json();
      // What inventory said through order: its version, or order's 502 with why.
      versions.push(r.status === 200 ? body.inventory.version : `${r.status} ${body.inventory && body.inventory.error}`);
      if (versions.length > 400) versions.shift();
    } catch { /* the lab answers again shortly */ }
    if (plaintext) {
      try { await fetch(plainUrl, { signal: AbortSignal.timeout(1000) }); } catch { /* refused once STRICT */ }
    }
    await sleep(50);
  }
})();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });

  // Sign in: the code leaves the address bar, a second use of it is refused.
  await page.goto(loginUrl);
  check(page.url() === `${origin}/`, `signed in and on the map (${page.url()})`);
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "meshgate_session");
  check(session && session.httpOnly && session.sameSite === "Strict", "session cookie HttpOnly, SameSite=Strict");
  const again = await (await browser.newContext()).newPage();
  const reuse = await again.goto(loginUrl);
  check(reuse.status() === 401, "the sign-in link works once");

  // The lab's nodes and edges with live numbers.
  await page.waitForFunction(() => {
    const names = [...document.querySelectorAll("g.node text:first-of-type")].map((t) => t.textContent);
    return names.some((n) => n.includes("order")) && names.some((n) => n.includes("inventory")) && document.querySelectorAll("g.edge").length >= 2;
  }, null, { timeout: 60000 });
  const names = await page.$$eval("g.node text:first-of-type", (l) => l.map((t) => t.textContent));
  check(names.some((n) => n.includes("order")) && names.some((n) => n.includes("inventory")), `nodes ${names.join(", ")}`);
  // The canary's versions inside their Service's box.
  await page.waitForFunction(() => [...document.querySelectorAll("g.service text")].some((t) => t.textContent.startsWith("Service inventory · 2 versions")), null, { timeout: 60000 });
  check(true, "inventory's two versions in one Service box");
  const edgeText = () => page.$$eval("g.edge", (l) => l.map((g) => g.getAttribute("aria-label")));
  const first = await edgeText();
  check(first.some((t) => /\/s · 100\.0% · p99 [0-9.]+ ms; mTLS$/.test(t)), `an mTLS edge with rate, success and p99: ${first[0]}`);
  const stamp = await page.textContent("#live");
  await sleep(2500);
  check((await page.textContent("#live")) !== stamp, "the map updates without reloading");
  await page.screenshot({ path: `${outDir}/map-1280x800.png` });

  // Panels: an edge, then order's node (identity, certificate, policies).
  // Edges end under their nodes: the edge's own hit area, not whatever lies on top.
  await page.locator("g.edge").first().dispatchEvent("click");
  await page.waitForSelector("#panel table.stats");
  const edgePanel = await page.textContent("#panel");
  check(edgePanel.includes("proxy time") && edgePanel.includes("latency histogram"), "the edge panel has latency, its histogram and proxy time");
  check((await page.locator("#panel .histogram .bar").count()) > 0, "the histogram has bars");
  await page.screenshot({ path: `${outDir}/edge-panel.png` });
  const order = page.locator("g.node", { hasText: "order" }).first();
  await order.click();
  await page.waitForFunction(() => document.querySelector("#panel").textContent.includes("SPIFFE ID"), null, { timeout: 10000 });
  const nodePanel = await page.textContent("#panel");
  check(nodePanel.includes("spiffe://cluster.local/ns/shop/sa/order") && nodePanel.includes("expires"), "order's identity and certificate expiry");
  // Recent requests: a tap through the control plane, answered by order's sidecar.
  await page.click("text=tap 10 s");
  await page.waitForFunction(() => document.querySelectorAll("#panel table.recent tr").length >= 4, null, { timeout: 20000 });
  const recent = await page.$$eval("#panel table.recent tr", (l) => l.map((r) => r.textContent));
  check(recent.some((r) => r.includes("GET") && r.includes("200")), `recent requests through order's sidecar: ${recent[1]}`);
  await page.screenshot({ path: `${outDir}/order-panel.png` });
  // The gateway's too (tapped by its identity: it has no Workload).
  await page.locator("g.node", { hasText: "gateway" }).first().click();
  await page.click("text=tap 10 s");
  await page.waitForFunction(() => document.querySelectorAll("#panel table.recent tr").length >= 3, null, { timeout: 20000 });
  const viaGateway = await page.$$eval("#panel table.recent tr", (l) => l.map((r) => r.textContent));
  check(viaGateway.some((r) => r.includes("GET 127.0.0.1:8080/") && r.includes("200")), `recent requests through the gateway: ${viaGateway[1]}`);

  // A narrow window: the panel goes under the map, both readable.
  await page.setViewportSize({ width: 420, height: 800 });
  await sleep(300);
  const narrow = await page.evaluate(() => {
    const p = document.querySelector("#panel").getBoundingClientRect();
    return { panelWidth: p.width, overflow: document.documentElement.scrollWidth > window.innerWidth + 1 };
  });
  check(narrow.panelWidth >= 380 && !narrow.overflow, `narrow window: panel ${narrow.panelWidth}px wide, no sideways scroll`);
  await page.screenshot({ path: `${outDir}/narrow-420.png` });
  await page.setViewportSize({ width: 1280, height: 800 });

  // A plaintext client appears on the map as an insecure channel, with its reason.
  await page.selectOption("#window", "30s");
  plaintext = true;
  await page.waitForFunction(() => [...document.querySelectorAll("g.edge.insecure")].some((g) => g.getAttribute("aria-label").includes(" to shop/order")), null, { timeout: 30000 });
  const labels = await edgeText();
  const insecure = labels.find((t) => t.includes(" to shop/order") && t.includes("insecure channel"));
  check(/cleartext \(\w+/.test(insecure || ""), `the plaintext edge names why: ${insecure} (edges: ${labels.join(" | ")})`);
  await page.screenshot({ path: `${outDir}/plaintext-edge.png` });

  // STRICT for namespace shop, from the map: the YAML is shown, applied on confirmation.
  await order.click();
  await page.waitForSelector("text=set mTLS…");
  await page.selectOption("select[aria-label='mTLS mode']", "STRICT");
  await page.selectOption("select[aria-label='scope']", "namespace");
  await page.click("text=set mTLS…");
  const yaml = await page.textContent("#confirm-yaml");
  check(yaml.includes("kind: \"PeerAuthentication\"") && yaml.includes("mode: \"STRICT\"") && yaml.includes("namespace: \"shop\""), "the confirmation shows the PeerAuthentication");
  await page.screenshot({ path: `${outDir}/confirm-strict.png` });
  await page.click("#confirm-apply");
  await page.waitForFunction(() => !document.querySelector("#confirm").open, null, { timeout: 10000 });
  // Refused now, at once: the plaintext client's connections are drawn as refused.
  const appliedAt = Date.now();
  await page.waitForFunction(() => [...document.querySelectorAll("g.edge.refused")].some((g) => g.getAttribute("aria-label").includes(" to shop/order") && g.getAttribute("aria-label").includes("refused: plaintext under STRICT")), null, { timeout: 20000, polling: 250 });
  results.strictRefusedSeconds = Math.round((Date.now() - appliedAt) / 100) / 10;
  check(true, `the plaintext client's connections are drawn refused ${results.strictRefusedSeconds} s after STRICT`);
  await page.screenshot({ path: `${outDir}/strict-refused.png` });
  // And the plaintext edge stops carrying requests and leaves the 30 s window.
  await page.waitForFunction(() => ![...document.querySelectorAll("g.edge.insecure")].some((g) => g.getAttribute("aria-label").includes(" to shop/order")), null, { timeout: 60000, polling: 500 });
  results.strictEdgeGoneSeconds = Math.round((Date.now() - appliedAt) / 100) / 10;
  check(true, `the plaintext edge left the map ${results.strictEdgeGoneSeconds} s after STRICT`);
  plaintext = false;

  // The canary from the map: inventory's split to 0 / 100, traffic follows.
  const inv = page.locator("g.node", { hasText: "inventory-v1" }).first();
  await inv.click();
  await page.waitForSelector("text=apply weights…", { timeout: 10000 });
  const weights = page.locator("#panel input[type=number]");
  const n = await weights.count();
  check(n >= 2, `a split with ${n} backends`);
  // A weight outside 0-100 is refused before anything is shown.
  await weights.nth(0).fill("150");
  await page.click("text=apply weights…");
  check((await page.textContent("#panel .op .error")).includes("from 0 to 100"), "a weight of 150 is refused with a message");
  for (let i = 0; i < n; i++) {
    const name = await weights.nth(i).getAttribute("aria-label");
    await weights.nth(i).fill(name.includes("v2") ? "100" : "0");
  }
  await page.click("text=apply weights…");
  check((await page.textContent("#confirm-yaml")).includes("weight: 100"), "the confirmation shows the new weights");
  await page.click("#confirm-apply");
  await page.waitForFunction(() => !document.querySelector("#confirm").open, null, { timeout: 10000 });
  results.canaryMovedSeconds = await answersBecome(20, (v) => v === "v2", "traffic did not move to v2");
  check(true, `20 requests in a row on v2, ${results.canaryMovedSeconds} s after the weights moved`);
  await page.screenshot({ path: `${outDir}/canary-moved.png` });

  // Deny order → inventory from the edge's panel: inventory's sidecar answers 403, order says
  // so; allowed again, traffic flows.
  await page.waitForFunction(() => [...document.querySelectorAll("g.edge")].some((g) => g.getAttribute("aria-label").startsWith("shop/order-1 to shop/inventory-v2")), null, { timeout: 20000 });
  await page.evaluate(() => [...document.querySelectorAll("g.edge")].find((g) => g.getAttribute("aria-label").startsWith("shop/order-1 to shop/inventory-v2")).dispatchEvent(new MouseEvent("click", { bubbles: true })));
  await page.waitForSelector("text=deny these calls…", { timeout: 10000 });
  await page.click("text=deny these calls…");
  const deny = await page.textContent("#confirm-yaml");
  check(deny.includes("kind: \"AuthorizationPolicy\"") && deny.includes("action: \"DENY\"") && deny.includes("cluster.local/ns/shop/sa/order"), "the confirmation shows a DENY for order's identity");
  await page.click("#confirm-apply");
  await page.waitForFunction(() => !document.querySelector("#confirm").open, null, { timeout: 10000 });
  results.denySeconds = await answersBecome(10, (v) => String(v).startsWith("502 inventory answered 403"), "calls were not denied");
  check(true, `order's calls to inventory get 403, ${results.denySeconds} s after the deny`);
  await page.click("text=allow again…");
  check((await page.textContent("#confirm-title")).includes("Delete"), "allowing again deletes the policy, and says so");
  await page.click("#confirm-apply");
  await page.waitForFunction(() => !document.querySelector("#confirm").open, null, { timeout: 10000 });
  await answersBecome(10, (v) => v === "v2", "calls were not allowed again");
  check(true, "allowed again: traffic flows");

  // A generated 500-node, 2,000-edge map: render time, and a click until the panel shows.
  const timing = await page.evaluate(async () => {
    const mg = window.meshgate;
    if (mg.state.es) mg.state.es.close();
    const nodes = [], edges = [];
    for (let i = 0; i < 500; i++) nodes.push({ id: `ns${i % 20}/w${i}`, kind: i < 5 ? "gateway" : "workload", workload: `w${i}`, namespace: `ns${i % 20}`, app: `a${i}`, version: "v1" });
    for (let i = 0; i < 2000; i++) {
      const s = Math.floor(i / 4) % 495, d = Math.min(499, s + 1 + (i % 7));
      edges.push({ source: nodes[s].id, destination: nodes[d].id, service: `ns/s${i}:80`, protocol: "http", rps: i % 50, successRate: 0.99, errors: 1, requests: 100, latencyMs: { p50: 1, p95: 2, p99: 3 }, proxyMs: { p50: 0.1, p99: 0.2, source: null, destination: null }, proxyShareOfP50: 0.1, mtls: i % 10 !== 0, plaintextReason: i % 10 === 0 ? "Permissive" : null, bytes: { request: 0, response: 10 }, reportedBy: ["source"], principals: {} });
    }
    const g = { nodes, edges };
    const frame = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    let t = performance.now();
    mg.render(g);
    await frame();
    const first = performance.now() - t;
    const updates = [];
    for (let k = 0; k < 5; k++) {
      for (const e of edges) e.rps = (e.rps + 1) % 50;
      t = performance.now();
      mg.render(g);
      await frame();
      updates.push(performance.now() - t);
    }
    updates.sort((a, b) => a - b);
    t = performance.now();
    document.querySelector("g.node:nth-child(250)").dispatchEvent(new MouseEvent("click", { bubbles: true }));
    await frame();
    const click = performance.now() - t;
    return { firstRenderMs: Math.round(first), updateMedianMs: Math.round(updates[2]), clickToPanelMs: Math.round(click), nodes: document.querySelectorAll("g.node").length, edges: document.querySelectorAll("g.edge").length };
  });
  check(timing.nodes === 500 && timing.edges === 2000, `the generated map drew ${timing.nodes} nodes and ${timing.edges} edges`);
  results.large = timing;
  await page.screenshot({ path: `${outDir}/large-500x2000.png` });
  check(errors.length === 0, `no script errors (${errors.join(" | ")})`);
} finally {
  stop = true;
  await browser.close();
  await traffic;
}
console.log(JSON.stringify(results));
