import t from 'tap';
import { FrameDemuxer, LineSplitter, PhraseMatcher, StreamScanner, createMasker } from '../shared/lines';
import { parseEvent } from '../shared/events';
import { scheduledRunId } from '../services/scheduler/service';

const frame = (type: 1 | 2, text: string) => {
  const payload = Buffer.from(text);
  const header = Buffer.alloc(8);
  header[0] = type;
  header.writeUInt32BE(payload.length, 4);
  return Buffer.concat([header, payload]);
};

t.test('FrameDemuxer splits stdout and stderr, across any chunk boundary', async (t) => {
  const wire = Buffer.concat([frame(1, 'out one\n'), frame(2, 'err one\n'), frame(1, 'out two\n')]);
  for (let cut = 1; cut < wire.length; cut += 3) {
    const demux = new FrameDemuxer();
    const frames = [...demux.push(wire.subarray(0, cut)), ...demux.push(wire.subarray(cut))];
    t.same(
      frames.map((f) => `${f.stream}:${f.payload.toString()}`),
      ['stdout:out one\n', 'stderr:err one\n', 'stdout:out two\n'],
      `cut at ${cut}`,
    );
  }
});

t.test('LineSplitter carries partial lines and bounds long ones', async (t) => {
  const s = new LineSplitter(10);
  t.same(s.push('ab'), []);
  t.same(s.push('c\nde\r\nf'), ['abc', 'de']);
  t.same(s.push('x'.repeat(25)), ['f' + 'x'.repeat(9), 'x'.repeat(10)]);
  t.same(s.end(), ['xxxxxx']);
});

t.test('PhraseMatcher finds a phrase split over chunks, keeping only a short tail', async (t) => {
  const m = new PhraseMatcher('New data was transformed');
  for (const part of ['noise\nNew da', 'ta was trans', 'formed\nmore']) m.push(part);
  t.ok(m.found);
  const miss = new PhraseMatcher('New data was transformed');
  miss.push('New data was\n');
  miss.push('transformed');
  t.notOk(miss.found, 'not across a line break');
});

t.test('StreamScanner decodes UTF-8 split inside a character', async (t) => {
  const scanner = new StreamScanner('größe');
  const bytes = Buffer.from('die größe\n');
  const lines = [...scanner.push(bytes.subarray(0, 7)), ...scanner.push(bytes.subarray(7)), ...scanner.end()];
  t.same(lines, ['die größe']);
  t.ok(scanner.phraseFound);
});

t.test('createMasker hides secret values, each line of multi-line ones, but not short ones', async (t) => {
  const { mask } = createMasker(['hunter2secret', 'no', '', '-----BEGIN KEY-----\nAbCdEfGh123\n-----END KEY-----']);
  t.equal(mask('token=hunter2secret and hunter2secret'), 'token=**** and ****');
  t.equal(mask('no change'), 'no change');
  t.equal(mask('AbCdEfGh123'), '****', 'a line of a multi-line value');
});

t.test('LineSplitter never cuts a secret in two when it splits an overlong line', async (t) => {
  const secret = 'S3CRET-0123456789abcdef';
  for (let offset = 0; offset < 30; offset++) {
    const s = new LineSplitter(20, createMasker([secret]));
    const pieces = [...s.push('x'.repeat(offset) + secret + 'y'.repeat(50)), ...s.end()];
    const joined = pieces.join('|');
    t.notOk(/S3CRET|0123456789abcdef|9abcdef|S3CRET-01/.test(joined), `offset ${offset}: ${joined}`);
    t.ok(pieces.join('').includes('****'), 'masked');
  }
});

t.test('parseEvent: empty bodies are {}, unknown fields and unsafe run ids are rejected', async (t) => {
  const enc = (s: string) => new TextEncoder().encode(s);
  t.same(parseEvent('model.trigger', enc('')), { ok: true, value: {} });
  t.same(parseEvent('model.trigger', enc('  {}  ')), { ok: true, value: {} });
  const unknown = parseEvent('transform.trigger', enc('{"network":"host"}'));
  t.equal(unknown.ok, false);
  const unsafe = parseEvent('transform.trigger', enc('{"runId":"a b"}'));
  t.equal(unsafe.ok, false);
});

t.test('scheduled run ids are the tick time, the same in every replica', async (t) => {
  t.equal(scheduledRunId(new Date('2026-11-26T13:00:00.120Z')), 's20261126T130000Z');
});
