import type { ContainerRunner } from '../../shared/docker';

/** The runner as a service uses it: an exited container is removed once its result is in hand. */
export function removingAfterExit(runner: ContainerRunner): ContainerRunner {
  return {
    ...runner,
    async run(spec) {
      const result = await runner.run(spec);
      if (result.status === 'exited') await runner.remove(result.containerId);
      return result;
    },
  };
}
