import { consumersOf, envFilesOf } from '../shared/definition';
import { loader } from './loader/definition';
import { modelGate } from './model-gate/definition';
import { scheduler } from './scheduler/definition';
import { trainer } from './trainer/definition';
import { transformer } from './transformer/definition';
import { web } from './web/definition';

/**
 * Every service, in start order: a new service is one folder with a `definition.ts` and one line here.
 * Each definition says what the service consumes, the stages it runs, the lock it holds and the settings it needs;
 * everything else is derived from this list.
 */
export const SERVICES = [scheduler, transformer, loader, modelGate, trainer, web] as const;

export type ServiceDefinitions = (typeof SERVICES)[number];
export type ServiceName = ServiceDefinitions['name'];
export const SERVICE_NAMES: readonly ServiceName[] = SERVICES.map((d) => d.name);

/** The definition of a named service. */
export function definitionOf(name: ServiceName): ServiceDefinitions {
  const found = SERVICES.find((d) => d.name === name);
  if (found === undefined) throw new Error(`no service named ${name}`);
  return found;
}

/** Each consuming service's durable consumer, by its name in camelCase: `CONSUMERS.modelGate.durable`. */
export const CONSUMERS = consumersOf<ServiceDefinitions>(SERVICES);

/** Each stage's env file in BRAIN_ENV_DIR, by its stage in camelCase: `ENV_FILES.loadProcessed`. */
export const ENV_FILES = envFilesOf(SERVICES);
