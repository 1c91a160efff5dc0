import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify';
import type { NatsConnection } from '@nats-io/transport-node';
import { DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Counter, Gauge } from 'prom-client';
import type { z } from 'zod';
import { EventSchemas, Subjects } from '../../shared/events';
import { describeError } from '../../shared/errors';
import type { Logger } from '../../shared/logger';
import { createMetrics } from '../../shared/metrics';
import { EVENTS_STREAM, TopologyError, isPermissionDenied } from '../../shared/nats';
import { openSchedule, scheduleView } from '../../shared/schedule';
import { AuthRefused, createConnectionPool, isAuthRefused, parseBasic, type ConnectNats, type Lease } from './access';
import { createLogsReader, formatCursor, parseCursor, type LogsReader } from './logs';
import { createRunsReader, type RunView, type RunsReader } from './runs';
import { AssetParams, DagParams, DagRunParams, DagRunRequest, EventsQuery, LogsQuery, RunParams, RunsQuery, TriggerRequest, problem } from './schemas';
import { SECURITY_HEADERS, openSse } from './sse';
import { abilitiesCache } from './me';
import { loadAssets, type Asset } from './static';
import { pipelineStatus } from './status';

export interface WebConfig {
  host: string;
  port: number;
  /** TRANSFORM_SCHEDULE, shown with the next tick by GET /api/schedule. */
  transformSchedule: string;
  /** Comment heartbeat on every event stream (≤ 20 s). */
  heartbeatMs?: number;
  /** How long a person's NATS connection is kept after its last request. */
  connectionIdleMs?: number;
  /** How often a followed log checks whether its run has ended. */
  logPollMs?: number;
}

export interface WebDeps {
  connect: ConnectNats;
  logger: Logger;
  config: WebConfig;
}

export interface Web {
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly port: number;
  /** NATS requires authentication: every route but /healthz and /metrics needs Basic credentials. */
  readonly authRequired: boolean;
}

/** The Airflow DAG ids the seed's scripts use, and the pipeline each starts. */
export const DAGS: Record<string, 'transform' | 'model'> = { model_trigger_dag: 'model', brain_dags: 'transform' };
const SUBJECT_OF = { transform: Subjects.transformTrigger, model: Subjects.modelTrigger } as const;

/** `w` (from the web), the UTC second, and random hex: sortable, unique, within RUN_ID_PATTERN. */
export const webRunId = (now = new Date()) => `w${now.toISOString().slice(0, 19).replace(/[-:]/g, '')}Z-${randomBytes(3).toString('hex')}`;

/** A failure with its HTTP status; `code` is for programs. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

const bad = (error: z.ZodError) => new HttpError(400, 'BAD_REQUEST', problem(error));

function parse<T>(schema: z.ZodType<T>, value: unknown): T {
  const result = schema.safeParse(value ?? {});
  if (!result.success) throw bad(result.error);
  return result.data;
}

interface Readers {
  runs: RunsReader;
  logs: LogsReader;
}

declare module 'fastify' {
  interface FastifyRequest {
    lease?: Lease;
  }
}

const wantsStream = (req: FastifyRequest) => (req.headers.accept ?? '').includes('text/event-stream');

/** Last-Event-ID (a reconnecting EventSource) or `since`: the sequence after which to resume. */
function resumePoint(req: FastifyRequest, since: number | undefined): number | undefined {
  const header = req.headers['last-event-id'];
  const text = Array.isArray(header) ? header[0] : header;
  if (text !== undefined && text.trim() !== '') {
    if (!/^\d{1,15}$/.test(text.trim())) throw new HttpError(400, 'BAD_REQUEST', 'Last-Event-ID: must be a stream sequence');
    return Number(text.trim());
  }
  return since;
}

/** The web service: the HTTP API over the pipeline's events and records, on each person's own NATS connection. */
export function createWeb(deps: WebDeps): Web {
  const { logger, config } = deps;
  const heartbeatMs = Math.min(config.heartbeatMs ?? 15_000, 20_000);
  const metrics = createMetrics({ service: 'web' });
  const requests = new Counter({ name: 'brain_web_requests_total', help: 'HTTP requests by route and status', labelNames: ['route', 'status'], registers: [metrics.registry] });
  const streams = new Gauge({ name: 'brain_web_streams', help: 'Open event and log streams', registers: [metrics.registry] });
  const pool = createConnectionPool({ connect: deps.connect, logger, idleMs: config.connectionIdleMs ?? 30_000 });
  const readers = new WeakMap<NatsConnection, Promise<Readers>>();
  const abilities = abilitiesCache();
  const assets = loadAssets();
  const app = Fastify({ logger: false, bodyLimit: 64 * 1024, return503OnClosing: true, forceCloseConnections: true });
  let own: NatsConnection | undefined;
  let authRequired = false;
  let port = 0;
  let started = false;

  const readersOf = (nc: NatsConnection): Promise<Readers> => {
    let found = readers.get(nc);
    if (found === undefined) {
      found = Promise.all([createRunsReader(nc), createLogsReader(nc)]).then(([runs, logs]) => ({ runs, logs }));
      found.catch(() => readers.delete(nc));
      readers.set(nc, found);
    }
    return found;
  };
  const leaseOf = (req: FastifyRequest): Lease => {
    if (req.lease === undefined) throw new HttpError(500, 'INTERNAL', 'no NATS connection for the request');
    return req.lease;
  };

  // An empty JSON body is `{}` (curl -X POST -H 'Content-Type: application/json' with no -d).
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    const text = String(body);
    if (text.trim() === '') return done(null, {});
    try {
      done(null, JSON.parse(text));
    } catch (err) {
      done(new HttpError(400, 'BAD_REQUEST', `body is not JSON: ${(err as Error).message}`), undefined);
    }
  });

  app.addHook('onSend', async (_req, reply, payload) => {
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) reply.header(k, v);
    if (!reply.hasHeader('cache-control')) reply.header('cache-control', 'no-store');
    return payload;
  });
  app.addHook('onResponse', async (req, reply) => {
    requests.inc({ route: req.routeOptions.url ?? 'unknown', status: String(reply.statusCode) });
  });

  /** Every route but /healthz and /metrics: a NATS connection as the person (or the service's own, without auth). */
  async function authenticate(req: FastifyRequest, reply: FastifyReply): Promise<void> {
    if (!authRequired) {
      if (own === undefined) throw new HttpError(503, 'NATS_UNAVAILABLE', 'not connected to NATS');
      req.lease = { nc: own, release: () => undefined };
      return;
    }
    const creds = parseBasic(req.headers.authorization);
    if (creds === null) throw new HttpError(401, 'UNAUTHORIZED', 'NATS credentials are required (HTTP Basic: a NATS user and password)');
    const lease = await pool.acquire(creds);
    req.lease = lease;
    reply.raw.once('close', () => lease.release());
  }

  app.setErrorHandler((err, req, reply) => {
    let status: number;
    let code: string;
    let message: string;
    if (err instanceof HttpError) [status, code, message] = [err.status, err.code, err.message];
    else if (err instanceof AuthRefused || isAuthRefused(err)) [status, code, message] = [401, 'UNAUTHORIZED', 'the NATS server refused these credentials'];
    else if (isPermissionDenied(err)) {
      [status, code, message] = [403, 'FORBIDDEN', `NATS user ${JSON.stringify(req.lease?.user ?? '')} may not do this (refused by the NATS server's permissions)`];
    } else if (err instanceof TopologyError) [status, code, message] = [503, 'NOT_SET_UP', err.message];
    else if (typeof (err as { statusCode?: unknown }).statusCode === 'number' && (err as { statusCode: number }).statusCode < 500) {
      [status, code, message] = [(err as { statusCode: number }).statusCode, 'BAD_REQUEST', describeError(err)];
    } else {
      logger.error({ route: req.routeOptions.url, user: req.lease?.user, err: describeError(err) }, 'request failed');
      [status, code, message] = [503, 'UNAVAILABLE', `the request could not be completed: ${describeError(err)}`];
    }
    if (status === 401) reply.header('www-authenticate', 'Basic realm="brain-pipeline", charset="UTF-8"');
    if (status >= 400 && status < 500 && status !== 401 && status !== 404) logger.info({ route: req.routeOptions.url, user: req.lease?.user, status, code }, 'request refused');
    void reply.status(status).send({ error: message, code });
  });

  app.setNotFoundHandler((_req, reply) => void reply.status(404).send({ error: 'no such route', code: 'NOT_FOUND' }));

  app.get('/healthz', async (_req, reply) => {
    const nats = own === undefined ? (authRequired ? 'per-user' : 'closed') : own.isClosed() ? 'closed' : 'connected';
    const ok = started && nats !== 'closed';
    return reply.status(ok ? 200 : 503).send({ ok, service: 'web', auth: authRequired, nats });
  });
  app.get('/metrics', async (_req, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()));

  // -------------------------------------------------------------------------------------------------------------
  // The API: every route below runs on the person's own NATS connection
  // -------------------------------------------------------------------------------------------------------------

  app.register(async (api) => {
    api.addHook('preHandler', authenticate);

    // The dashboard: one page for the grid (`/`) and a run (`/runs/:runId`); its assets under a version of their
    // contents, cached for good (a new release has a new version); the page itself revalidated on every load.
    const sendAsset = (req: FastifyRequest, reply: FastifyReply, asset: Asset, cache: string) => {
      void reply.header('cache-control', cache).header('etag', asset.etag).type(asset.type);
      if (req.headers['if-none-match'] === asset.etag) return reply.status(304).send();
      return reply.send(asset.body);
    };
    api.get('/', async (req, reply) => sendAsset(req, reply, assets.page, 'no-cache'));
    api.get('/runs/:runId', async (req, reply) => {
      parse(RunParams, req.params);
      return sendAsset(req, reply, assets.page, 'no-cache');
    });
    api.get('/assets/:version/:file', async (req, reply) => {
      const { version, file } = parse(AssetParams, req.params);
      const asset = assets.get(file);
      if (asset === undefined) throw new HttpError(404, 'NOT_FOUND', `no asset ${file}`);
      // A page of an older release still gets today's files, uncached.
      return sendAsset(req, reply, asset, version === assets.version ? 'private, max-age=31536000, immutable' : 'no-cache');
    });

    /** Who the request runs as and what NATS lets them do (probed once per connection, see me.ts). */
    api.get('/api/me', async (req) => {
      const lease = leaseOf(req);
      const may = await abilities(lease.nc, lease.user);
      return { user: lease.user ?? null, auth: authRequired, may: { trigger: may.trigger, pause: may.pause }, why: may.why };
    });

    /** Services up (the NATS services API), the run locks held, the schedule and its next run. */
    api.get('/api/status', async (req) => {
      const nc = leaseOf(req).nc;
      const [status, schedule] = await Promise.all([
        pipelineStatus(nc),
        openSchedule(nc).then(async (control) => viewOf(control !== null ? await control.read() : { paused: false })),
      ]);
      return { ...status, schedule };
    });

    api.get('/api/runs', async (req) => {
      const q = parse(RunsQuery, req.query);
      const { runs } = await readersOf(leaseOf(req).nc);
      const page = await runs.list(q.limit, q.before);
      return { runs: page.runs, next: page.next };
    });

    api.get('/api/runs/:runId', async (req) => {
      const { runId } = parse(RunParams, req.params);
      const { runs } = await readersOf(leaseOf(req).nc);
      const run = await runs.get(runId);
      if (run === null) throw new HttpError(404, 'NOT_FOUND', `no run ${runId}`);
      return { ...run, events: await runs.events(runId) };
    });

    api.get('/api/runs/:runId/logs', async (req, reply) => {
      const { runId } = parse(RunParams, req.params);
      const q = parse(LogsQuery, req.query);
      const { runs, logs } = await readersOf(leaseOf(req).nc);
      const run = await runs.get(runId);
      if (run === null) throw new HttpError(404, 'NOT_FOUND', `no run ${runId}`);
      if (!wantsStream(req)) {
        const page = await logs.tail(runId, q.limit, q.before !== undefined ? parseCursor(q.before) : undefined);
        return { runId, result: run.result, lines: page.lines, before: page.before !== null ? formatCursor(page.before) : null };
      }
      const resume = resumePoint(req, undefined);
      reply.hijack();
      await followLogs(reply, runs, logs, runId, q.limit, resume);
      return reply;
    });

    api.get('/api/events', async (req, reply) => {
      const q = parse(EventsQuery, req.query);
      const resume = resumePoint(req, q.since);
      const nc = leaseOf(req).nc;
      const start = resume !== undefined ? resume + 1 : (await jetstreamManager(nc).then((jsm) => jsm.streams.info(EVENTS_STREAM))).state.last_seq + 1;
      const consumer = await jetstream(nc).consumers.get(EVENTS_STREAM, { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: start });
      reply.hijack();
      const sse = openSse(reply.raw, heartbeatMs);
      streams.inc();
      const messages = await consumer.consume({ max_messages: 256 });
      sse.signal.addEventListener('abort', () => void messages.close(), { once: true });
      try {
        // A fresh stream names where it starts, so a reconnect before any event resumes exactly there.
        if (resume === undefined) await sse.send({ id: start - 1, event: 'hello', data: { lastSeq: start - 1 } });
        for await (const m of messages) {
          let data: unknown;
          try {
            data = m.json();
          } catch {
            data = { invalid: m.string().slice(0, 200) };
          }
          await sse.send({ id: m.seq, event: m.subject, data });
          if (sse.closed) break;
        }
      } catch (err) {
        logger.warn({ err: describeError(err) }, 'event stream ended');
      } finally {
        streams.dec();
        await messages.close().catch(() => undefined);
        sse.end();
      }
      return reply;
    });

    api.post('/api/runs', async (req, reply) => {
      const body = parse(TriggerRequest, req.body);
      const lease = leaseOf(req);
      const runId = await trigger(lease, body.pipeline, body.runId, body.reason);
      return reply.status(202).send({ runId });
    });

    api.post('/api/v1/dags/:dagId/dagRuns', async (req) => {
      const { dagId } = parse(DagParams, req.params);
      const pipeline = DAGS[dagId];
      if (pipeline === undefined) throw new HttpError(404, 'NOT_FOUND', `no DAG ${dagId}; the DAGs are ${Object.keys(DAGS).join(', ')}`);
      const body = parse(DagRunRequest, req.body);
      const reason = body.note ?? (typeof body.conf?.reason === 'string' ? body.conf.reason : undefined) ?? 'airflow api';
      const runId = await trigger(leaseOf(req), pipeline, body.dag_run_id, reason.slice(0, 200));
      return dagRun(dagId, runId, 'queued', body.conf ?? {}, body.note ?? null, body.logical_date ?? body.execution_date ?? null);
    });

    api.get('/api/v1/dags/:dagId/dagRuns/:dagRunId', async (req) => {
      const { dagId, dagRunId } = parse(DagRunParams, req.params);
      const pipeline = DAGS[dagId];
      if (pipeline === undefined) throw new HttpError(404, 'NOT_FOUND', `no DAG ${dagId}`);
      const nc = leaseOf(req).nc;
      const { runs } = await readersOf(nc);
      const run = await runs.get(dagRunId);
      if (run !== null && run.trigger.subject === SUBJECT_OF[pipeline]) {
        return { ...dagRun(dagId, dagRunId, airflowState(run), {}, null, null), start_date: run.startedAt, end_date: run.endedAt ?? null, result: run.result };
      }
      if (run === null && (await triggerQueued(nc, SUBJECT_OF[pipeline], dagRunId))) return dagRun(dagId, dagRunId, 'queued', {}, null, null);
      throw new HttpError(404, 'NOT_FOUND', `DAGRun ${dagRunId} of ${dagId} not found`);
    });

    api.get('/api/schedule', async (req) => {
      const control = await openSchedule(leaseOf(req).nc);
      const state = control !== null ? await control.read() : { paused: false, revision: 0 };
      return viewOf(state);
    });
    for (const action of ['pause', 'resume'] as const) {
      api.post(`/api/schedule/${action}`, async (req) => {
        const lease = leaseOf(req);
        const control = await openSchedule(lease.nc);
        if (control === null) throw new HttpError(503, 'NOT_SET_UP', 'the schedule bucket does not exist: run `brain setup`');
        const state = await control.set(action === 'pause', lease.user);
        logger.info({ user: lease.user, paused: state.paused }, `schedule ${action}d`);
        return viewOf(state);
      });
    }
  });

  function viewOf(state: { paused: boolean; by?: string; at?: string }) {
    return scheduleView(state, config.transformSchedule);
  }

  /**
   * Publishes a trigger on the person's connection with a JetStream publish: the server's ack (or its permission
   * error) tells stored from refused. A run id already used (a record, or the stream's duplicate window) is a 409.
   */
  async function trigger(lease: Lease, pipeline: 'transform' | 'model', given: string | undefined, reason: string | undefined): Promise<string> {
    const runId = given ?? webRunId();
    const subject = SUBJECT_OF[pipeline];
    if (given !== undefined) {
      const { runs } = await readersOf(lease.nc);
      if ((await runs.get(runId)) !== null) throw new HttpError(409, 'RUN_ID_USED', `run id ${runId} is already used`);
    }
    const body = EventSchemas[subject].parse({ v: 1, runId, at: new Date().toISOString(), ...(reason !== undefined ? { reason } : {}) });
    const ack = await jetstream(lease.nc).publish(subject, JSON.stringify(body), { msgID: `${runId}:${subject}` });
    if (ack.duplicate) throw new HttpError(409, 'RUN_ID_USED', `run id ${runId} was triggered moments ago`);
    logger.info({ user: lease.user, runId, subject, seq: ack.seq }, 'run triggered');
    return runId;
  }

  /** Streams the run's log: the tail, then each new batch, until the run has ended and its last batch is sent. */
  async function followLogs(reply: FastifyReply, runs: RunsReader, logs: LogsReader, runId: string, limit: number, resume: number | undefined): Promise<void> {
    const sse = openSse(reply.raw, heartbeatMs);
    streams.inc();
    let sent = resume ?? 0;
    const following = new AbortController();
    const stop = () => following.abort();
    sse.signal.addEventListener('abort', stop, { once: true });
    try {
      if (resume === undefined) {
        const tail = await logs.tail(runId, limit);
        const last = tail.lines[tail.lines.length - 1];
        sent = last?.seq ?? 0;
        await sse.send({ id: sent, event: 'tail', data: { lines: tail.lines, before: tail.before !== null ? formatCursor(tail.before) : null } });
      }
      const follow = logs.follow(runId, sent, following.signal, async (b) => {
        await sse.send({ id: b.seq, event: 'lines', data: { lines: b.lines.map((line, i) => ({ seq: b.seq, i, stage: b.stage, stream: b.stream, at: b.at, line })) } });
        sent = b.seq;
      });
      const watch = (async () => {
        while (!following.signal.aborted) {
          const run = await runs.get(runId);
          if (run !== null && run.result !== 'running') {
            // Logs are stored before the step's ending: once the run has ended, its last batch is known.
            const end = await logs.lastSeq(runId);
            const deadline = Date.now() + 5000;
            while (sent < end && Date.now() < deadline && !following.signal.aborted) await new Promise((r) => setTimeout(r, 50));
            await sse.send({ event: 'end', data: { result: run.result } });
            following.abort();
            return;
          }
          await new Promise((r) => setTimeout(r, config.logPollMs ?? 1000));
        }
      })();
      await Promise.all([follow, watch]);
    } catch (err) {
      logger.warn({ runId, err: describeError(err) }, 'log stream ended');
    } finally {
      sse.signal.removeEventListener('abort', stop);
      following.abort();
      streams.dec();
      sse.end();
    }
  }

  return {
    get port() {
      return port;
    },
    get authRequired() {
      return authRequired;
    },
    async start() {
      try {
        own = await deps.connect({ name: 'brain-web' });
        authRequired = own.info?.auth_required === true;
      } catch (err) {
        // No identity of its own on a server that requires one: every request brings its own.
        if (!isAuthRefused(err)) throw err;
        authRequired = true;
      }
      try {
        await app.listen({ host: config.host, port: config.port });
      } catch (err) {
        await own?.close();
        throw err;
      }
      port = (app.server.address() as AddressInfo).port;
      started = true;
      logger.info({ host: config.host, port, auth: authRequired }, 'web service listening');
    },
    async stop() {
      started = false;
      await app.close();
      await pool.close();
      await own?.drain().catch(() => undefined);
    },
  };
}

function airflowState(run: RunView): 'queued' | 'running' | 'success' | 'failed' {
  if (run.result === 'running') return 'running';
  return run.result === 'failed' || run.result === 'busy' ? 'failed' : 'success';
}

function dagRun(dagId: string, runId: string, state: string, conf: Record<string, unknown>, note: string | null, logicalDate: string | null) {
  return {
    dag_id: dagId,
    dag_run_id: runId,
    state,
    logical_date: logicalDate,
    execution_date: logicalDate,
    start_date: null as string | null,
    end_date: null as string | null,
    conf,
    external_trigger: true,
    run_type: 'manual',
    note,
  };
}

/** A trigger of `runId` stored in the last day whose step has not begun yet: read by time from the trigger subject alone. */
async function triggerQueued(nc: NatsConnection, subject: string, runId: string): Promise<boolean> {
  const consumer = await jetstream(nc).consumers.get(EVENTS_STREAM, {
    filter_subjects: subject,
    deliver_policy: DeliverPolicy.StartTime,
    opt_start_time: new Date(Date.now() - 24 * 3600 * 1000).toISOString(),
  });
  const info = await consumer.info();
  if (info.num_pending === 0) return false;
  const messages = await consumer.consume({ max_messages: 256 });
  try {
    for await (const m of messages) {
      try {
        if ((m.json() as { runId?: unknown }).runId === runId) return true;
      } catch {
        // not JSON: not this run's trigger
      }
      if (m.info.pending === 0) break;
    }
  } finally {
    await messages.close();
  }
  return false;
}
