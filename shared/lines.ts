import { StringDecoder } from 'node:string_decoder';

export type StreamName = 'stdout' | 'stderr';
export interface Frame {
  stream: StreamName;
  payload: Buffer;
}

/**
 * Splits Docker's multiplexed attach/logs stream (`Tty: false`) into stdout and stderr payloads.
 * Frames may straddle chunks: the partial header or payload is carried over.
 * Unlike `modem.demuxStream`, it is pulled by the caller, so a slow reader slows Docker down.
 */
export class FrameDemuxer {
  private pending: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    let buf = this.pending.length > 0 ? Buffer.concat([this.pending, chunk]) : chunk;
    const frames: Frame[] = [];
    while (buf.length >= 8) {
      const type = buf[0];
      const size = buf.readUInt32BE(4);
      if (buf.length < 8 + size) break;
      frames.push({ stream: type === 2 ? 'stderr' : 'stdout', payload: buf.subarray(8, 8 + size) });
      buf = buf.subarray(8 + size);
    }
    this.pending = buf.length > 0 ? Buffer.from(buf) : Buffer.alloc(0);
    return frames;
  }
}

const withoutCr = (line: string) => (line.endsWith('\r') ? line.slice(0, -1) : line);

/**
 * Turns text chunks into lines. Memory stays bounded: a line longer than `maxLineLength`
 * is emitted in pieces of that length.
 */
export class LineSplitter {
  private tail = '';
  constructor(
    private readonly maxLineLength = 16 * 1024,
    private readonly masker: Masker = NO_MASK,
  ) {}

  push(text: string): string[] {
    const lines: string[] = [];
    let nl = text.indexOf('\n');
    if (nl === -1) {
      this.tail += text;
    } else {
      // Only the first line joins the carried tail: the chunk itself is never copied whole.
      lines.push(withoutCr(this.tail + text.slice(0, nl)));
      let start = nl + 1;
      while ((nl = text.indexOf('\n', start)) !== -1) {
        lines.push(withoutCr(text.slice(start, nl)));
        start = nl + 1;
      }
      this.tail = text.slice(start);
    }
    // Cut an overlong line only once it runs a whole secret past the cut, and mask before cutting,
    // so no secret is ever split across two pieces (and so printed in halves).
    const cutAt = this.maxLineLength + Math.max(0, this.masker.longest - 1);
    while (this.tail.length > cutAt) {
      this.tail = this.masker.mask(this.tail);
      if (this.tail.length <= cutAt) break;
      lines.push(this.tail.slice(0, this.maxLineLength));
      this.tail = this.tail.slice(this.maxLineLength);
    }
    return lines.map(this.masker.mask);
  }

  end(): string[] {
    const rest = this.tail;
    this.tail = '';
    return rest.length > 0 ? [this.masker.mask(rest)] : [];
  }
}

/**
 * Finds a phrase anywhere in a text stream that arrives in chunks, keeping only
 * `phrase.length - 1` characters between chunks. The phrase has no newline, so a match is within one line.
 */
export class PhraseMatcher {
  private carry = '';
  private matched = false;
  constructor(private readonly phrase: string) {}

  get found(): boolean {
    return this.matched;
  }

  push(text: string): void {
    if (this.matched) return;
    const keep = this.phrase.length - 1;
    // A match starting in the carry ends within the chunk's first `keep` characters: no copy of the whole chunk.
    if (text.includes(this.phrase) || (this.carry + text.slice(0, keep)).includes(this.phrase)) {
      this.matched = true;
      this.carry = '';
      return;
    }
    const last = text.length >= keep ? text : this.carry + text;
    this.carry = last.slice(Math.max(0, last.length - keep));
  }
}

/** Decodes one output stream, scans the raw text for a phrase and cuts it into masked lines. */
export class StreamScanner {
  private readonly decoder = new StringDecoder('utf8');
  private readonly splitter: LineSplitter;
  private readonly matcher: PhraseMatcher | null;

  constructor(phrase: string | undefined, masker: Masker = NO_MASK, maxLineLength?: number) {
    this.splitter = new LineSplitter(maxLineLength, masker);
    this.matcher = phrase === undefined ? null : new PhraseMatcher(phrase);
  }

  get phraseFound(): boolean {
    return this.matcher?.found ?? false;
  }

  push(bytes: Buffer): string[] {
    const text = this.decoder.write(bytes);
    this.matcher?.push(text);
    return this.splitter.push(text);
  }

  end(): string[] {
    const text = this.decoder.end();
    this.matcher?.push(text);
    return [...this.splitter.push(text), ...this.splitter.end()];
  }
}

export interface Masker {
  mask(text: string): string;
  /** Length of the longest value masked. */
  readonly longest: number;
}

const NO_MASK: Masker = { mask: (text) => text, longest: 0 };

/**
 * Replaces every known secret value. Output is masked line by line, so each line of a multi-line value
 * (a PEM key, a JSON credential) is masked too. Values shorter than 4 characters are not masked
 * (they would mangle ordinary text).
 */
export function createMasker(secrets: Iterable<string>): Masker {
  const candidates = [...secrets].flatMap((s) => [s, ...s.split(/\r?\n/)]);
  const values = [...new Set(candidates.filter((s) => s.length >= 4))].sort((a, b) => b.length - a.length);
  if (values.length === 0) return NO_MASK;
  return {
    longest: values[0]?.length ?? 0,
    mask(text) {
      let out = text;
      for (const value of values) if (out.includes(value)) out = out.split(value).join('****');
      return out;
    },
  };
}

/** Variables the runner itself sets on every container: their values are run ids and stage names, not secrets. */
const RUNNER_VARIABLES = new Set(['BRAIN_RUN_ID', 'BRAIN_STAGE']);

/**
 * The values a container was started with (Docker's `Config.Env`, `KEY=value` each) for the env-file keys
 * its label lists (comma-separated). A container without the label (started by an older version) gives
 * every value but the runner's own variables: masking too much beats leaking a secret.
 */
export function envValuesOf(env: readonly string[], keysLabel: string | undefined): string[] {
  const keys = keysLabel === undefined ? null : new Set(keysLabel.split(',').filter((k) => k !== ''));
  const values: string[] = [];
  for (const entry of env) {
    const eq = entry.indexOf('=');
    if (eq <= 0) continue;
    const key = entry.slice(0, eq);
    if (keys !== null ? keys.has(key) : !RUNNER_VARIABLES.has(key)) values.push(entry.slice(eq + 1));
  }
  return values;
}
