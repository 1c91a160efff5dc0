/**
 * The dashboard in a real browser (Debian's chromium, driven by playwright-core) through the real stack: a
 * Pipeline (nats-server, the four services, dockerd running the stand-in stages) with the web service on it, and a
 * second, authenticated nats-server (deploy/nats/auth.conf) with a web service for the roles.
 */
import t from 'tap';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { chromium, type Browser, type BrowserContext, type Page, type Request } from 'playwright-core';
import { createLogger } from '../shared/logger';
import { EVENTS_STREAM } from '../shared/nats';
import { ensureTopology } from '../services/composition-root';
import { createWeb, type Web } from '../services/web/service';
import { Pipeline } from '../kit/pipeline';
import { webPortOf } from '../kit/screenshots';
import { SERVICE_NAMES } from '../services/index';
import { startAuthNatsServer, type AuthNatsServer } from './helpers/nats-auth';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
/** Where the screenshots go: docs/ when BRAIN_SCREENSHOTS_DIR says so (`BRAIN_SCREENSHOTS_DIR=docs`), else a temp dir. */
const SHOTS = process.env.BRAIN_SCREENSHOTS_DIR ?? mkdtempSync(join(tmpdir(), 'brain-shots-'));
const DESKTOP = { width: 1280, height: 860 };
/** The train stand-in prints 1,200 lines: more than the page's first tail (500), so "load earlier lines" has work. */
const TRAIN_LINES = 1200;

/** Far from any test run: the scheduler runs but never ticks. */
const SCHEDULE = '0 0 1 1 *';

const quiet = () => new Writable({ write: (_c, _e, cb) => cb() });
const webLogger = () => createLogger('web', 'warn', quiet());

let pipeline: Pipeline;
let webPort: number;
let authNats: AuthNatsServer;
let admin: NatsConnection;
let authWeb: Web;
let browser: Browser;
let context: BrowserContext;
const requests: { url: string; page: string }[] = [];
const problems: string[] = [];

t.before(async () => {
  [pipeline, authNats, browser] = await Promise.all([
    // Every service, the web one included, through the composition root; the schedule's next tick is months away.
    Pipeline.start({
      services: SERVICE_NAMES,
      env: { TRANSFORM_SCHEDULE: SCHEDULE },
      envFiles: {
        // The transform takes a second (a stage seen running, then done); training prints many lines slowly.
        transform: { NEW_DATA: '1', SLEEP: '1' },
        train: { SCRIPT: `seq 1 ${TRAIN_LINES} | sed "s/^/train line /"; echo "trained model $BRAIN_RUN_ID"` },
      },
    }),
    startAuthNatsServer(),
    chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true }),
  ]);
  webPort = webPortOf(pipeline.logLines);
  admin = await authNats.connectAs('admin', 'test-admin');
  await ensureTopology(admin, { lockTtlMs: 90_000, ackWaitMs: 30_000 });
  authWeb = createWeb({
    connect: ({ creds, name }) =>
      connect({ servers: authNats.url, name, ...(creds !== undefined ? { user: creds.user, pass: creds.pass, inboxPrefix: `_INBOX_${creds.user}` } : {}) }),
    logger: webLogger(),
    config: { host: '127.0.0.1', port: 0, transformSchedule: '0 * * * *', heartbeatMs: 1000 },
  });
  await authWeb.start();
  context = await newContext();
});

t.teardown(async () => {
  await browser?.close();
  await authWeb?.stop();
  await admin?.close();
  await authNats?.stop();
  authNats?.cleanup();
  await pipeline?.close();
  if (process.env.BRAIN_SCREENSHOTS_DIR === undefined) rmSync(SHOTS, { recursive: true, force: true });
});

const origin = () => `http://127.0.0.1:${webPort}`;

/** A fresh browser context that records every request its pages make, every CSP violation, console error and page error. */
async function newContext(opts: { httpCredentials?: { username: string; password: string }; viewport?: { width: number; height: number } } = {}): Promise<BrowserContext> {
  const ctx = await browser.newContext({ viewport: opts.viewport ?? DESKTOP, ...(opts.httpCredentials !== undefined ? { httpCredentials: opts.httpCredentials } : {}) });
  ctx.on('request', (r: Request) => requests.push({ url: r.url(), page: r.frame().url() }));
  await ctx.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      (window as unknown as { cspViolations: string[] }).cspViolations ??= [];
      (window as unknown as { cspViolations: string[] }).cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  ctx.on('page', (page) => watchPage(page));
  return ctx;
}

function watchPage(page: Page): void {
  page.on('pageerror', (err) => problems.push(`page error on ${page.url()}: ${err.message}`));
  page.on('console', (m) => {
    // A stream the test's own teardown or a page navigation cuts is not a fault of the page.
    if (m.type() === 'error' && !/net::ERR_ABORTED|ERR_INCOMPLETE_CHUNKED_ENCODING|401/.test(m.text())) problems.push(`console error on ${page.url()}: ${m.text()}`);
  });
}

const cspViolations = (page: Page) => page.evaluate(() => (window as unknown as { cspViolations?: string[] }).cspViolations ?? []);

async function openGrid(ctx: BrowserContext, url = `${origin()}/`): Promise<Page> {
  const page = await ctx.newPage();
  await page.goto(url);
  await page.waitForSelector('body[data-ready="grid"]');
  return page;
}

const cellText = (page: Page, runId: string, stage: string) => page.locator(`tr[data-run="${runId}"] td[data-stage="${stage}"]`).innerText();

/** Resolves once `check` holds, with performance.now() at that moment. */
async function when(what: string, check: () => Promise<boolean>, timeoutMs = 20_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return performance.now();
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

t.test('a run triggered on the bus appears on an open page within 2 s of its event, and its stage cells change live, without a reload', async (t) => {
  const page = await openGrid(context);
  await page.evaluate(() => ((window as unknown as { sameDocument: boolean }).sameDocument = true));
  t.equal(await page.locator('#runs tbody tr').count(), 0, 'no runs yet');
  t.match(await page.locator('#live').innerText(), /live/, 'the event stream is open');

  const runId = 'dash-bus-1';
  await pipeline.publish('transform.trigger', { v: 1, runId, at: new Date().toISOString(), reason: 'from the bus' });
  const trigger = await pipeline.waitForSubject('transform.trigger', runId);
  const shown = await when('the run row', async () => (await page.locator(`tr[data-run="${runId}"]`).count()) === 1);
  t.ok(shown - trigger.at < 2000, `the run appeared ${Math.round(shown - trigger.at)} ms after its trigger event (< 2000)`);
  t.match(await page.locator(`tr[data-run="${runId}"]`).innerText(), /from the bus/, 'with its reason');

  const done = await pipeline.waitForSubject('transform.done', runId, 20_000);
  const transformShown = await when('transform new-data', async () => /new-data/.test(await cellText(page, runId, 'transform')));
  t.ok(transformShown - done.at < 2000, `transform's cell turned new-data ${Math.round(transformShown - done.at)} ms after transform.done (< 2000)`);

  await when(
    'the run holding a lock in the status panel',
    async () => /held\s+(transform|model)\s+dash-bus-1\s+stage \S+, by \S+, for \d/.test(await page.locator('#locks').innerText()),
    15_000,
  );
  t.pass('the status panel shows the lock the run holds: its run, stage, holder and age');
  const end = await pipeline.waitForSubject('model.done', runId, 40_000);
  const trainShown = await when('train trained', async () => /trained/.test(await cellText(page, runId, 'train')), 20_000);
  t.ok(trainShown - end.at < 2000, `train's cell turned trained ${Math.round(trainShown - end.at)} ms after model.done (< 2000)`);
  t.match(await cellText(page, runId, 'load'), /loaded/);
  t.match(await cellText(page, runId, 'gate'), /mismatch/);
  t.match(await cellText(page, runId, 'train'), /\d+(\.\d)? (ms|s)/, 'each cell shows its duration');
  t.ok(await page.locator(`tr[data-run="${runId}"] td[data-stage="train"] .o-ok`).count(), 'coloured by its outcome');
  t.equal(await page.evaluate(() => (window as unknown as { sameDocument?: boolean }).sameDocument), true, 'the page was never reloaded');
  const reads = requests.filter((r) => r.page === page.url() && new URL(r.url).pathname.startsWith('/api/runs')).map((r) => r.url.slice(origin().length));
  t.ok(reads.length > 1, `${reads.length} reads of runs`);
  t.same(
    reads.filter((u) => u !== '/api/runs?limit=25' && u !== `/api/runs/${runId}`),
    [],
    'the first page once, then only the run an event named: never all history',
  );
  await page.close();
});

t.test('the trigger button publishes a trigger; the run page shows its timeline, events and log lines live, and after the containers are gone', async (t) => {
  const page = await openGrid(context);
  await page.fill('#reason', 'from the browser');
  await page.click('#trigger-model');
  const trigger = await pipeline.waitFor((e) => e.subject === 'model.trigger' && e.data.reason === 'from the browser', 5000, 'the button’s trigger');
  const runId = String(trigger.data.runId);
  t.match(runId, /^w\d{8}T\d{6}Z-[0-9a-f]{6}$/, 'a web run id, published on the bus');
  await page.waitForSelector(`#action-result a[href="/runs/${runId}"]`);
  t.match(await page.locator('#action-result').innerText(), new RegExp(`Triggered model run ${runId}`));
  await page.waitForSelector(`tr[data-run="${runId}"]`, { timeout: 2000 });

  // Open the run while it runs: its lines arrive live.
  await page.click(`#action-result a[href="/runs/${runId}"]`);
  await page.waitForSelector('body[data-ready="run"]');
  const firstLine = await when('the gate’s first line', async () => (await page.locator('#log .line', { hasText: 'comparing dataset commit with master' }).count()) > 0, 20_000);
  const end = await pipeline.waitForSubject('model.done', runId, 40_000);
  t.ok(firstLine < end.at, 'the first line was on the page before the run ended (followed live)');
  await page.waitForSelector('body[data-log-ended="true"]', { timeout: 10_000 });
  await when('the last train line', async () => (await page.locator('#log .line', { hasText: `trained model ${runId}` }).count()) === 1, 5000);
  t.match(await page.locator('#log-state').innerText(), /run ended \(trained\)/);
  await when('the timeline of the gate and training', async () => (await page.locator('#timeline tbody tr').count()) === 2, 5000);
  const timeline = await page.locator('#timeline tbody').innerText();
  t.match(timeline, /Gate\s+mismatch/);
  t.match(timeline, /Train\s+trained/);
  t.match(await page.locator('#timeline tbody tr[data-stage="train"] td').nth(1).innerText(), /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/, 'each stage shows its start');
  const events = await page.locator('#events tbody').innerText();
  for (const subject of ['model.trigger', 'model.mismatch', 'model.done']) t.match(events, subject, `its ${subject} event`);
  t.notMatch(events, 'transform.', 'a model run has no transform events');
  t.match(await page.locator('#run-summary').innerText(), /from the browser/);
  await page.screenshot({ path: join(SHOTS, 'dashboard-run.png') });
  await page.close();

  // After its containers are gone, the log is read back from the log stream, capped to the tail; earlier lines on demand.
  t.same(await pipeline.leftBehind(runId), [], 'the run’s containers are gone');
  const later = await context.newPage();
  await later.goto(`${origin()}/runs/${runId}`);
  await later.waitForSelector('body[data-log-ended="true"]');
  await when('the tail', async () => (await later.locator('#log .line').count()) === 500, 5000);
  t.equal(await later.locator('#log .line', { hasText: `trained model ${runId}` }).count(), 1, 'the tail ends with the last line');
  t.equal(await later.locator('#log .line', { hasText: 'comparing dataset commit with master' }).count(), 0, 'the first lines are not loaded yet');
  t.ok(await later.locator('#log-more').isVisible(), 'earlier lines are offered');
  while (await later.locator('#log-more').isVisible()) {
    const before = await later.locator('#log .line').count();
    await later.click('#log-more');
    await when('earlier lines', async () => (await later.locator('#log .line').count()) > before, 5000);
  }
  t.ok((await later.locator('#log .line').count()) > TRAIN_LINES, 'every line, once all earlier pages are loaded');
  t.equal(await later.locator('#log .line', { hasText: 'comparing dataset commit with master' }).count(), 1, 'down to the gate’s first line');
  for (const stage of ['model-trigger', 'train']) {
    t.ok((await later.locator('#log .line .stage', { hasText: new RegExp(`^${stage}$`) }).count()) > 0, `lines of ${stage}`);
  }
  await later.close();

  const grid = await openGrid(context);
  await grid.waitForSelector(`tr[data-run="${runId}"] td[data-stage="train"] .o-ok`);
  await grid.waitForSelector('#chart canvas');
  await grid.waitForSelector('body[data-status="loaded"]');
  const services = await grid.locator('#services').innerText();
  for (const name of SERVICE_NAMES) t.match(services, new RegExp(`up\\s+${name}`), `${name} up`);
  t.match(await grid.locator('#locks').innerText(), /free\s+transform/);
  t.match(await grid.locator('#schedule-state').innerText(), /Running: 0 0 1 1 \* \(UTC\); next run \d{4}-01-01 00:00:00 UTC/);
  await grid.screenshot({ path: join(SHOTS, 'dashboard-grid.png'), fullPage: true });
  await grid.close();
});

t.test('the page loads nothing from outside the service, breaks no CSP rule, works with the keyboard and fits a phone', async (t) => {
  const phone = await newContext({ viewport: { width: 390, height: 844 } });
  const page = await openGrid(phone);
  t.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'no sideways scrolling on a phone');
  await page.keyboard.press('Tab');
  t.equal(await page.evaluate(() => document.activeElement?.textContent), 'Skip to content', 'the first tab stop is the skip link');
  await page.keyboard.press('Enter');
  t.equal(await page.evaluate(() => document.activeElement?.id), 'main', 'which moves the focus to the content');
  t.same(await cspViolations(page), [], 'no CSP violation (uPlot and the timeline set styles through the CSSOM only)');

  // Older runs page in with the cursor of the page before.
  const paged = await openGrid(phone, `${origin()}/?limit=1`);
  t.equal(await paged.locator('#runs tbody tr').count(), 1, 'one run per page');
  await paged.click('#older');
  await paged.waitForSelector('#runs tbody tr[data-run="dash-bus-1"]');
  t.equal(await paged.locator('#runs tbody tr').count(), 2, 'the older run is added below');
  t.ok(
    requests.some((r) => /\/api\/runs\?limit=1&before=\d+$/.test(r.url)),
    'read with `before`',
  );
  t.notOk(await paged.locator('#older').isVisible(), 'no more pages');
  const runPage = await phone.newPage();
  await runPage.goto(`${origin()}/runs/dash-bus-1`);
  await runPage.waitForSelector('body[data-log-ended="true"]');
  t.same(await cspViolations(runPage), [], 'none on a run page either');
  await phone.close();

  t.ok(requests.length > 10, `${requests.length} requests recorded`);
  const foreign = requests.filter((r) => new URL(r.url).origin !== origin() && !r.url.startsWith(`http://127.0.0.1:${authWeb.port}/`));
  t.same(foreign, [], 'every request went to the service itself');
  t.same(problems, [], 'no page error and no console error');

  // Content types and caching, as the browser got them.
  const html = await fetch(`${origin()}/`);
  t.match(html.headers.get('content-type'), /^text\/html; charset=utf-8/);
  t.equal(html.headers.get('cache-control'), 'no-cache');
  t.match(html.headers.get('content-security-policy'), /script-src 'self'; style-src 'self'/);
  const text = await html.text();
  t.notMatch(text, /<script>|style=/, 'no inline script or style');
  const app = /src="(\/assets\/[0-9a-f]+\/app\.js)"/.exec(text)?.[1];
  t.ok(app, 'the script is under a versioned path');
  const js = await fetch(`${origin()}${app}`);
  t.match(js.headers.get('content-type'), /^text\/javascript/);
  t.equal(js.headers.get('cache-control'), 'private, max-age=31536000, immutable');
  t.equal((await fetch(`${origin()}${app}`, { headers: { 'if-none-match': js.headers.get('etag') ?? '' } })).status, 304, 'revalidation answers 304');
  const css = await fetch(`${origin()}${app?.replace('app.js', 'uplot.css')}`);
  t.match(css.headers.get('content-type'), /^text\/css/);
  t.equal((await fetch(`${origin()}/assets/0/app.js`)).headers.get('cache-control'), 'no-cache', 'an older version is served uncached');
  t.equal((await fetch(`${origin()}/assets/${app?.split('/')[2]}/secret.txt`)).status, 400, 'only asset names');
  t.equal((await fetch(`${origin()}/assets/${app?.split('/')[2]}/nope.js`)).status, 404);
});

t.test('with NATS auth: a monitor sees the buttons disabled with the reason, an operator may use them; the probe stores and changes nothing', async (t) => {
  const url = `http://127.0.0.1:${authWeb.port}`;
  const jsm = await jetstreamManager(admin);
  const before = { events: (await jsm.streams.info(EVENTS_STREAM)).state, schedule: (await jsm.streams.info('KV_schedule')).state };

  const anonymous = await fetch(`${url}/`);
  t.equal(anonymous.status, 401, 'the page itself needs credentials');
  t.match(anonymous.headers.get('www-authenticate'), /^Basic /, 'so the browser asks for them');

  const monitor = await newContext({ httpCredentials: { username: 'monitor', password: authNats.passwords.monitor } });
  const page = await openGrid(monitor, `${url}/`);
  t.match(await page.locator('#who').innerText(), /signed in as monitor/);
  await page.waitForSelector('body[data-status="loaded"]');
  t.match(await page.locator('#services').innerText(), /down\s+transformer/, 'the status panel reads the services API as monitor');
  t.match(await page.locator('#locks').innerText(), /free\s+transform/, 'and the locks');
  for (const id of ['#trigger-transform', '#trigger-model', '#pause-toggle']) t.ok(await page.locator(id).isDisabled(), `${id} disabled for monitor`);
  t.ok(await page.locator('#trigger-why').isVisible());
  t.match(await page.locator('#trigger-why').innerText(), /NATS user "monitor" may not publish transform\.trigger .*operator account/);
  t.match(await page.locator('#pause-why').innerText(), /may not write the schedule's pause/);
  t.equal(await page.locator('#trigger-transform').getAttribute('aria-describedby'), 'trigger-why', 'the reason is the buttons’ description');
  t.notMatch(await page.content(), new RegExp(authNats.passwords.monitor), 'no credential on the page');
  await monitor.close();

  const operator = await newContext({ httpCredentials: { username: 'operator', password: authNats.passwords.operator } });
  const op = await openGrid(operator, `${url}/`);
  for (const id of ['#trigger-transform', '#trigger-model', '#pause-toggle']) t.ok(await op.locator(id).isEnabled(), `${id} enabled for operator`);
  await op.waitForSelector('#live.on', { timeout: 5000 });
  t.pass('the event stream is open with the credentials the browser was given');
  t.notOk(await op.locator('#trigger-why').isVisible(), 'no explanation for an operator');
  t.notOk(await op.locator('#pause-why').isVisible());

  // Neither probe stored or changed anything.
  const after = { events: (await jsm.streams.info(EVENTS_STREAM)).state, schedule: (await jsm.streams.info('KV_schedule')).state };
  t.equal(after.events.last_seq, before.events.last_seq, 'no event stored by the trigger probes');
  t.equal(after.events.messages, 0);
  t.equal(after.schedule.last_seq, before.schedule.last_seq, 'the pause probe wrote nothing');

  // The operator's pause toggle does pause (and resume) the schedule.
  await op.click('#pause-toggle');
  await op.waitForSelector('#pause-toggle:text("Resume schedule")');
  t.match(await op.locator('#schedule-state').innerText(), /Paused by operator/);
  await op.click('#pause-toggle');
  await op.waitForSelector('#pause-toggle:text("Pause schedule")');
  t.match(await op.locator('#action-result').innerText(), /Schedule resumed/);
  await operator.close();

  // The verdict is kept per connection: asking again on the same (pooled) connection probes nothing.
  const refusals = () => authNats.log.filter((l) => /Violation/i.test(l) && l.includes('"monitor"') && l.includes('transform.trigger')).length;
  const probed = refusals();
  t.ok(probed > 0, 'the NATS server refused (and logged) the monitor’s probe');
  const me = await fetch(`${url}/api/me`, { headers: { authorization: `Basic ${Buffer.from(`monitor:${authNats.passwords.monitor}`).toString('base64')}` } });
  t.match(await me.json(), { user: 'monitor', auth: true, may: { trigger: false, pause: false } });
  t.equal(refusals(), probed, 'no second probe on the same connection');
});

t.test('screenshots are PNGs of a desktop viewport', async (t) => {
  mkdirSync(SHOTS, { recursive: true });
  for (const name of ['dashboard-grid.png', 'dashboard-run.png']) {
    const png = readFileSync(join(SHOTS, name));
    t.equal(png.subarray(1, 4).toString(), 'PNG', name);
    t.equal(png.readUInt32BE(16), DESKTOP.width, `${name} is ${DESKTOP.width} px wide`);
  }
});
