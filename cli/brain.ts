import { Command, InvalidArgumentError } from 'commander';
import { SERVICE_NAMES, environmentWithDotenv, loadConfig, type ServiceName } from '../shared/config';
import { ConfigError, describeError } from '../shared/errors';
import { TopologyError } from '../shared/nats';
import { runServices } from './run';
import { logsCommand } from './commands/logs';
import { runsCommand } from './commands/runs';
import { statusCommand } from './commands/status';
import { setupCommand } from './commands/setup';
import { triggerCommand } from './commands/trigger';
import { watchCommand } from './commands/watch';

function serviceName(value: string): ServiceName {
  if (!(SERVICE_NAMES as readonly string[]).includes(value)) {
    throw new InvalidArgumentError(`must be one of ${SERVICE_NAMES.join(', ')}`);
  }
  return value as ServiceName;
}

/**
 * Runs services until SIGTERM or SIGINT, then shuts down cleanly. Exit 2 on bad configuration, or when the NATS
 * topology differs from it and this NATS user may not fix it (the message names the setting and says to run `brain setup`).
 */
async function serve(names: readonly ServiceName[]): Promise<void> {
  let config;
  try {
    config = loadConfig(environmentWithDotenv(process.env), names);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`brain: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  let running;
  try {
    running = await runServices(names, config);
  } catch (err) {
    if (err instanceof TopologyError) {
      process.stderr.write(`brain: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  await new Promise<void>((resolve) => {
    const onSignal = () => resolve();
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
  });
  await running.stop();
}

export function buildProgram(): Command {
  const program = new Command('brain').description('brain-pipeline: an event-driven MLOps pipeline over NATS JetStream');
  program
    .command('service')
    .description('run one service')
    .argument('<name>', `one of ${SERVICE_NAMES.join(', ')}`, serviceName)
    .action((name: ServiceName) => serve([name]));
  program
    .command('up')
    .description('run all five services in one process')
    .action(() => serve(SERVICE_NAMES));
  for (const command of [setupCommand(), triggerCommand(), watchCommand(), runsCommand(), logsCommand(), statusCommand()]) program.addCommand(command);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (err) {
    process.stderr.write(`brain: ${describeError(err)}\n`);
    process.exitCode = 1;
  }
}
