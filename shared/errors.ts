/** Stable codes carried by every error the pipeline raises on purpose. */
export const ErrorCode = {
  Config: 'CONFIG_INVALID',
  ImageNotFound: 'IMAGE_NOT_FOUND',
  PullFailed: 'PULL_FAILED',
  DockerUnavailable: 'DOCKER_UNAVAILABLE',
  ContainerCreate: 'CONTAINER_CREATE_FAILED',
  ContainerStart: 'CONTAINER_START_FAILED',
  ContainerGone: 'CONTAINER_GONE',
  /** The stage asks for GPUs (`<STAGE>_GPUS`) and the engine has no GPU runtime (device driver) for the request. */
  GpuUnavailable: 'GPU_UNAVAILABLE',
  /** A container under our name belongs to another deployment: never adopted, stopped or removed. */
  ContainerForeign: 'CONTAINER_FOREIGN',
  /** A Swarm job's task waited for a node (pending) past SWARM_SCHEDULING_TIMEOUT: no node matches its constraints or resources. */
  SchedulingTimeout: 'SCHEDULING_TIMEOUT',
  EnvFile: 'ENV_FILE_INVALID',
  /** An event we publish ourselves fails its schema even after sanitising: a programming error. */
  EventInvalid: 'EVENT_INVALID',
  Topology: 'TOPOLOGY_MISMATCH',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Base class: a message meant for people plus a code meant for programs. */
export class BrainError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'BrainError';
  }
}

export class ConfigError extends BrainError {
  constructor(readonly problems: string[]) {
    super(ErrorCode.Config, `invalid configuration:\n  - ${problems.join('\n  - ')}`);
    this.name = 'ConfigError';
  }
}

export class StageError extends BrainError {
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'StageError';
  }
}

/** A one-line description of any thrown value, for events and logs. */
export function describeError(err: unknown): string {
  if (err instanceof Error) return err.message.split('\n')[0] ?? err.name;
  return String(err);
}
