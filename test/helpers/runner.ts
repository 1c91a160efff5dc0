import type { ContainerRunner, StageSpec } from '../../shared/docker';
import { TEST_IMAGES } from '../../kit/stand-ins';

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

/** A stage spec for the stand-in gate image, which runs `script` (its `SCRIPT`) and is scanned for "the phrase". */
export function gateSpec(runId: string, script: string, over: Partial<StageSpec> = {}): StageSpec {
  return {
    stage: 'model-trigger',
    runId,
    image: TEST_IMAGES.modelTrigger,
    env: { SCRIPT: script },
    mounts: [],
    timeoutMs: 30_000,
    phrase: 'the phrase',
    signal: new AbortController().signal,
    ...over,
  };
}
