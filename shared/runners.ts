import type { ContainerRunner } from './docker';
import type { Stage } from './events';

/**
 * One `ContainerRunner` over the backends of a service's stages (`<STAGE>_RUNNER`): `run` goes to the stage's own
 * backend; `list` and `remove` ask every backend, so the orphan sweeper and a step's end find a stage's container
 * or job service whichever backend started it (also one started before the stage's backend was changed).
 */
export function stageRunners(byStage: ReadonlyMap<Stage, ContainerRunner>, fallback: ContainerRunner): ContainerRunner {
  const backends = [...new Set([fallback, ...byStage.values()])];
  if (backends.length === 1) return fallback;
  return {
    run: (spec) => (byStage.get(spec.stage) ?? fallback).run(spec),
    async list(filter) {
      return (await Promise.all(backends.map((b) => b.list(filter)))).flat();
    },
    async remove(idOrName) {
      for (const b of backends) await b.remove(idOrName);
    },
  };
}
