/**
 * The `brain` command line: every command's name, arguments, options and help, and nothing else. A command's
 * behaviour lives in cli/commands/<name>.ts and is loaded only when that command runs, so `brain --help` loads
 * commander alone and `brain runs` only what reading the history needs (no Docker client, no services).
 */
import { Argument, Command, InvalidArgumentError, Option } from 'commander';

/**
 * A module required when first used, by a path the CLI's bundle (`npm run bundle`) leaves to Node: the commands
 * that start services, and the service list, load the unbundled build (bin/brain.js runs `service`, `up` and `setup`
 * from it, so one process never mixes the two). Not `await import()`: in a CommonJS build TypeScript keeps `import()`
 * as the native ESM import, which goes through the ESM loader (slower, and it needs file extensions).
 */
function lazy<T>(id: string): () => T {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- loading on first use is the point
  return () => require(id) as T;
}

/** The service list loads every service's definition: only `brain service`'s help and argument check need it. */
const services = lazy<typeof import('../services/index')>('../services/index');
/* eslint-disable @typescript-eslint/no-require-imports -- required on first use, by literal paths the bundle follows */
const events = () => require('../shared/events') as typeof import('../shared/events');
const errors = () => require('../shared/errors') as typeof import('../shared/errors');
const commands = {
  serve: lazy<typeof import('./commands/serve')>('./commands/serve'),
  setup: lazy<typeof import('./commands/setup')>('./commands/setup'),
  trigger: () => require('./commands/trigger') as typeof import('./commands/trigger'),
  watch: () => require('./commands/watch') as typeof import('./commands/watch'),
  runs: () => require('./commands/runs') as typeof import('./commands/runs'),
  logs: () => require('./commands/logs') as typeof import('./commands/logs'),
  status: () => require('./commands/status') as typeof import('./commands/status'),
  schedule: () => require('./commands/schedule') as typeof import('./commands/schedule'),
};
/* eslint-enable @typescript-eslint/no-require-imports */

type ServiceName = import('../services/index').ServiceName;

function serviceName(value: string): ServiceName {
  const { SERVICE_NAMES } = services();
  if (!(SERVICE_NAMES as readonly string[]).includes(value)) {
    throw new InvalidArgumentError(`must be one of ${SERVICE_NAMES.join(', ')}`);
  }
  return value as ServiceName;
}

function runIdArg(value: string): string {
  if (!events().RUN_ID_PATTERN.test(value)) throw new InvalidArgumentError('must be 1-64 characters of A-Z a-z 0-9 _ -');
  return value;
}

function seconds(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('must be a positive number of seconds');
  return n;
}

function count(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 1000) throw new InvalidArgumentError('must be a whole number from 1 to 1000');
  return n;
}

export function buildProgram(): Command {
  const program = new Command('brain').description('brain-pipeline: an event-driven MLOps pipeline over NATS JetStream');
  program
    .command('service')
    .description('run one service')
    .addArgument(new Argument('<name>', 'one of the service names').argParser(serviceName))
    // The list of names is shown in `brain service --help` only; it is read then.
    .configureHelp({ argumentDescription: () => `one of ${services().SERVICE_NAMES.join(', ')}` })
    .action((name: ServiceName) => commands.serve().serve([name]));
  program
    .command('up')
    .description('run every service in one process (the five pipeline services and the web service)')
    .action(() => commands.serve().serveAll());
  program
    .command('setup')
    .description('create or update the NATS streams, consumers and buckets to match the configuration (as the admin NATS user); exit 2 on a configuration problem')
    .action(() => commands.setup().run());
  program
    .command('trigger')
    .description('start a transform run (the whole chain) or a model run by hand')
    .addArgument(new Argument('<what>', 'transform or model').choices(['transform', 'model']))
    .option('--run-id <id>', 'run id (default: generated)', runIdArg)
    .option('--reason <text>', 'why, shown by `brain runs` (default: hand)')
    .option('--wait', 'follow the run to its end; exit 1 when it failed, 3 when it was busy')
    .addOption(new Option('--timeout <s>', 'with --wait, give up after this many seconds (exit 4)').default(3600).argParser(seconds))
    .action((what: 'transform' | 'model', opts: import('./commands/trigger').TriggerOptions) => commands.trigger().run(what, opts));
  program
    .command('watch')
    .description('print pipeline events as they happen, until Ctrl-C')
    .option('--json', 'one JSON object per event: {"subject", "event"} (or {"subject", "invalid", "preview"})')
    .action((opts: { json?: boolean }) => commands.watch().run(opts));
  program
    .command('runs')
    .description('recent runs from the event history in JetStream, oldest first')
    .addOption(new Option('--limit <n>', 'how many runs').default(10).argParser(count))
    .option('--json', 'a JSON array of runs')
    .action((opts: { limit: number; json?: boolean }) => commands.runs().run(opts));
  program
    .command('logs')
    .description("print a run's container log lines (kept in the BRAIN_LOGS stream within a size bound)")
    .argument('<runId>', 'the run id')
    .option('-f, --follow', 'keep printing new lines until the run ends (or Ctrl-C)')
    .action((runId: string, opts: { follow?: boolean }) => commands.logs().run(runId, opts));
  program
    .command('status')
    .description('which services are up, which locks are held, the schedule (paused, or its next run), and the last run of each stage')
    .option('--json', 'one JSON object')
    .action((opts: { json?: boolean }) => commands.status().run(opts));
  program
    .command('pause')
    .description(
      'pause the schedule: no scheduled transform run until `brain resume` (hand triggers still run); durable, obeyed by every scheduler replica; needs the operator NATS user',
    )
    .action(() => commands.schedule().run('pause'));
  program
    .command('resume')
    .description('resume the paused schedule: the scheduler publishes its next tick again; needs the operator NATS user')
    .action(() => commands.schedule().run('resume'));
  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (err) {
    process.stderr.write(`brain: ${errors().describeError(err)}\n`);
    process.exitCode = 1;
  }
}
