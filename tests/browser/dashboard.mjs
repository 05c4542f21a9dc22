// Drives headless chromium against a node's /dashboard and checks what a
// person would: no console errors, the live supervision tree, a fault
// injected from the page shows as a restart within 2 s, a simulation's
// progress bar moves and its cancel button stops it, a compensated saga
// shows with its steps, a plan's model has its realization chart. Prints one JSON line of findings; exits 1 on a
// failed check. Run by tests/it/dashboard.rs, which starts the node.
//
// env: VV_URL (http://127.0.0.1:PORT), VV_KEY (admin key), VV_SCREENSHOT
// (PNG path), VV_NODE, VV_ARCHITECT_KEY (an active architect instance),
// VV_SIMULATION (a long running simulation id), VV_SAGA (a compensated
// saga id), VV_REALIZATION_MODEL (a model with a realization snapshot),
// CHROMIUM (default /usr/bin/chromium).
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const url = env("VV_URL");
const key = env("VV_KEY");
const node = env("VV_NODE");
const findings = { console_errors: [], checks: {} };
const fail = (message) => {
  findings.failed = message;
  console.log(JSON.stringify(findings));
  process.exit(1);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 1800 } });
  page.on("console", (message) => {
    if (message.type() === "error") findings.console_errors.push(message.text());
  });
  page.on("pageerror", (error) => findings.console_errors.push(String(error)));
  // Under its Content-Security-Policy (no inline script or style): a
  // violation is a console error, which fails the run below.
  await page.addInitScript((apiKey) => sessionStorage.setItem("valueverse.apiKey", apiKey), key);
  const served = await page.goto(`${url}/dashboard`);
  const headers = served.headers();
  const csp = headers["content-security-policy"] || "";
  for (const directive of ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"]) {
    if (!csp.includes(directive)) fail(`the page's Content-Security-Policy lacks ${directive}: ${csp}`);
  }
  if (headers["x-content-type-options"] !== "nosniff") fail("the page is served without nosniff");
  if (headers["referrer-policy"] !== "no-referrer") fail("the page is served without Referrer-Policy: no-referrer");
  findings.checks.csp = csp;

  // The live tree: the architect supervisor and its instance.
  const row = page.locator(`tr[data-instance="${node}/architect/${env("VV_ARCHITECT_KEY")}"]`);
  await page.locator("#connection.up").waitFor({ timeout: 10000 });
  await row.waitFor({ timeout: 10000 });
  findings.checks.tree = await page.locator("details[data-kind]").count();
  if (findings.checks.tree < 6) fail(`expected every supervisor in the tree, saw ${findings.checks.tree}`);

  // The key is kept for the tab only.
  findings.checks.local_storage_keys = await page.evaluate(() => localStorage.length);
  if (findings.checks.local_storage_keys !== 0) fail("the page wrote to localStorage");
  // Mailbox bars get their width through the CSSOM.
  const widths = await page.locator(".bar > span").evaluateAll((spans) => spans.map((s) => s.style.width));
  if (widths.length === 0 || widths.some((w) => !w.endsWith("%"))) fail(`mailbox bars without a width: ${widths}`);

  // Collapse and expand a supervisor: the state survives live updates.
  const architect = page.locator(`details[data-id="kind:${node}:architect"]`);
  await architect.locator("summary").first().click();
  await page.waitForTimeout(1300);
  if (await architect.evaluate((el) => el.open)) fail("a collapsed supervisor opened again on the next frame");
  await architect.locator("summary").first().click();
  await row.waitFor({ timeout: 3000 });

  // A fault injected from the page: the restart shows within 2 s.
  const before = Number(await row.getAttribute("data-restarts"));
  await row.locator('button[data-action="crash"]').click();
  const clicked = Date.now();
  await page.locator(`tr[data-instance="${node}/architect/${env("VV_ARCHITECT_KEY")}"][data-restarts="${before + 1}"]`)
    .waitFor({ timeout: 2000 })
    .catch(() => fail("the injected restart did not show within 2 s"));
  findings.checks.restart_visible_ms = Date.now() - clicked;

  // The simulation's progress bar moves.
  const bar = page.locator(`progress[data-sim="${env("VV_SIMULATION")}"]`);
  await bar.waitFor({ timeout: 10000 });
  const first = Number(await bar.getAttribute("value"));
  let later = first;
  for (let i = 0; i < 40 && later <= first; i++) {
    await page.waitForTimeout(250);
    later = Number(await bar.getAttribute("value"));
  }
  findings.checks.progress = [first, later];
  if (!(later > first)) fail(`the progress bar did not move (${first} then ${later})`);

  // The compensated saga with its step timeline.
  const saga = page.locator(`tr[data-saga="${env("VV_SAGA")}"]`);
  await saga.waitFor({ timeout: 10000 });
  findings.checks.saga_steps = await saga.locator(".timeline .step").count();
  findings.checks.saga_status = (await saga.locator(".chip").first().textContent()).trim();

  // The realization chart of the planned model: a dot a day, a percentage.
  const realization = page.locator(`figure.realization[data-model="${env("VV_REALIZATION_MODEL")}"]`);
  await realization.locator(".realization-chart svg circle.day").first().waitFor({ timeout: 10000 })
    .catch(() => fail("the planned model's realization chart did not render"));
  findings.checks.realization_points = await realization.locator("circle.day").count();
  findings.checks.realization_caption = (await realization.locator("figcaption").textContent()).trim();
  if (!/% realized/.test(findings.checks.realization_caption)) fail(`no realization % shown: ${findings.checks.realization_caption}`);

  // Charts: the activity lines have points by now.
  findings.checks.activity_paths = await page.locator("#chart-messages path").count();

  findings.screenshot = process.env.VV_SCREENSHOT || null;
  if (findings.screenshot) await page.screenshot({ path: findings.screenshot, fullPage: true });

  // Operator control: cancel the simulation from the page.
  await page.locator(`button[data-action="sim-cancel"][data-id="${env("VV_SIMULATION")}"]`).click();
  await bar.waitFor({ state: "detached", timeout: 10000 })
    .catch(() => fail("the cancelled simulation stayed in the running list"));
  findings.checks.simulation_cancelled = true;

  // A finished simulation's histogram and tornado (the test ran one).
  await page.locator("#sim-histogram rect").first().waitFor({ timeout: 5000 });
  findings.checks.histogram_bars = await page.locator("#sim-histogram rect").count();
  findings.checks.tornado_bars = await page.locator("#sim-tornado rect").count();

  // Operator control: a failed instance is reset from the page. Crashing
  // it past its restart budget (5 in a minute) escalates it to failed.
  const instance = `tr[data-instance="${node}/architect/${env("VV_ARCHITECT_KEY")}"]`;
  const crashUrl = `${url}/api/v1/actors/architect/${env("VV_ARCHITECT_KEY")}/crash`;
  for (let i = 0; i < 10; i++) {
    if ((await page.locator(instance).getAttribute("data-status")) === "failed") break;
    await page.locator(`${instance}[data-status="active"]`).waitFor({ timeout: 8000 });
    const response = await fetch(crashUrl, {
      method: "POST",
      headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
      body: JSON.stringify({ reason: `drill ${i}` }),
    });
    if (!response.ok) fail(`crash ${i}: ${response.status} ${await response.text()}`);
    await page.waitForTimeout(300);
    await page.locator(`${instance}:not([data-status="active"])`).waitFor({ timeout: 3000 }).catch(() => {});
  }
  await page.locator(`${instance}[data-status="failed"]`).waitFor({ timeout: 5000 })
    .catch(() => fail("the instance did not escalate to failed"));
  await page.locator(`${instance} button[data-action="reset"]`).click();
  await page.locator(`${instance}[data-status="active"]`).waitFor({ timeout: 5000 })
    .catch(() => fail("the reset from the page did not bring the instance back"));
  findings.checks.reset_from_page = true;
} finally {
  await browser.close();
}
if (findings.console_errors.length) fail("console errors");
console.log(JSON.stringify(findings));
