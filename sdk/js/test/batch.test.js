// Batch handlers under Node: `handleBatch`'s outcomes as gridfn reads them,
// and the entry module `gridfn-js build` makes for each kind of handler
// module (evaluated here against the SDK's stand-ins for the host).
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { PublishError, kv, log, publish, reject, retry, success } from '@gridfn/sdk';
import { runBatch } from '@gridfn/sdk/testing';

import { entry } from '../bin/entry.js';
import { begin, end } from '../src/host/memory.js';

test('a batch answers one outcome per event, in order', async () => {
  const handleBatch = (events, delivery) => {
    log.info(`call of ${events.length} attempt=${delivery.attempt}`);
    return events.map((e) => (e.json().n === 2 ? retry('later', { afterMs: 5 }) : e.json().n ? success() : reject('empty')));
  };
  const events = [{ data: { n: 1 } }, { id: 'mine', data: { n: 2 } }, { data: {} }];
  const { outcomes, logs } = await runBatch(handleBatch, events, { attempt: 1 });
  assert.deepEqual(outcomes, [success(), retry('later', { afterMs: 5 }), reject('empty')]);
  assert.deepEqual(logs.map((l) => l.message), ['call of 3 attempt=1']);

  const ids = await runBatch((es) => es.map((e) => reject(e.id)), events);
  assert.deepEqual(ids.outcomes, [reject('evt-1'), reject('mine'), reject('evt-3')], 'ids default to evt-N');
});

test('a throw or a rejected promise retries every event; a non-outcome item retries its own', async () => {
  const two = [{}, {}];
  const threw = await runBatch(() => { throw new Error('bulk insert failed'); }, two);
  assert.deepEqual(threw.outcomes, [retry('handler threw: bulk insert failed'), retry('handler threw: bulk insert failed')]);
  assert.match(threw.logs[0].message, /^handler threw: bulk insert failed\nError: bulk insert failed/);
  const late = await runBatch(async () => { throw new TypeError('late'); }, two);
  assert.deepEqual(late.outcomes, [retry('handler threw: late'), retry('handler threw: late')]);

  const single = await runBatch(() => success(), two);
  assert.deepEqual(single.outcomes.map((o) => o.reason), Array(2).fill('handleBatch returned an object with keys [kind], not an array of outcomes'));
  const mixed = await runBatch(async () => [success(), undefined], two);
  assert.deepEqual(mixed.outcomes, [success(), retry('handleBatch answered undefined for event 1, not success(), retry(…) or reject(…)')]);
});

test('an answer of the wrong length is kept as it is, for gridfn to retry the call', async () => {
  assert.deepEqual((await runBatch(() => [success()], [{}, {}])).outcomes, [success()]);
});

test('a batch handler may use kv but never publish', async () => {
  const store = new Map();
  const { outcomes } = await runBatch((events) => {
    assert.throws(() => publish({ type: 'T', data: {} }), (e) => e instanceof PublishError && e.kind === 'denied');
    kv.increment('calls');
    return events.map(() => success());
  }, [{}, {}], { kv: store, publish: true });
  assert.deepEqual(outcomes, [success(), success()]);
  assert.equal(new TextDecoder().decode(store.get('calls')), '1');
});

const adapter = fileURLToPath(new URL('../src/adapter.js', import.meta.url));
const sdkIndex = fileURLToPath(new URL('../src/index.js', import.meta.url));
const rawEvent = (id) => ({ id, eventType: 'T', source: '/s', data: new Uint8Array(), extensions: [] });
const rawDelivery = { attempt: 0, handler: 'h', replay: false };

/** The entry `gridfn-js build` makes for a handler module with this source, imported. */
async function built(source, t) {
  const dir = await mkdtemp(join(tmpdir(), 'gridfn-entry-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'handler.js');
  await writeFile(file, source.replaceAll('@gridfn/sdk', pathToFileURL(sdkIndex).href));
  const exported = [...source.matchAll(/export (?:async )?function (\w+)/g)].map((m) => m[1]);
  const { world, contents } = entry(file, exported, adapter);
  await writeFile(join(dir, 'entry.js'), contents);
  begin({ config: null, kv: null, publish: false, log: true });
  t.after(end);
  return { world, exports: await import(pathToFileURL(join(dir, 'entry.js')).href) };
}

test('a module with only handle is built for the handler world', async (t) => {
  const { world, exports } = await built(
    "import { success } from '@gridfn/sdk';\nexport function handle() { return success(); }\n",
    t,
  );
  assert.equal(world, 'handler');
  assert.deepEqual(Object.keys(exports), ['handle']);
  assert.deepEqual(exports.handle(rawEvent('a'), rawDelivery), { tag: 'success' });
});

test('a module with handleBatch is built for batch-handler, its handle a batch of one', async (t) => {
  const { world, exports } = await built(
    "import { reject } from '@gridfn/sdk';\n" +
      'export async function handleBatch(events) { return events.map((e) => reject(`${e.id} of ${events.length}`)); }\n',
    t,
  );
  assert.equal(world, 'batch-handler');
  assert.deepEqual(Object.keys(exports).sort(), ['handle', 'handleBatch']);
  assert.deepEqual(await exports.handleBatch([rawEvent('a'), rawEvent('b')], rawDelivery), [
    { tag: 'reject', val: 'a of 2' },
    { tag: 'reject', val: 'b of 2' },
  ]);
  assert.deepEqual(await exports.handle(rawEvent('c'), rawDelivery), { tag: 'reject', val: 'c of 1' });
});

test('a module with both keeps its own handle beside handleBatch', async (t) => {
  const { world, exports } = await built(
    "import { reject, success } from '@gridfn/sdk';\n" +
      'export function handle() { return success(); }\n' +
      "export function handleBatch(events) { return events.map(() => reject('batched')); }\n",
    t,
  );
  assert.equal(world, 'batch-handler');
  assert.deepEqual(exports.handle(rawEvent('a'), rawDelivery), { tag: 'success' });
  assert.deepEqual(exports.handleBatch([rawEvent('b')], rawDelivery), [{ tag: 'reject', val: 'batched' }]);
});

test('a batch of one answered with another number of outcomes is a retry', async (t) => {
  const { exports } = await built('export function handleBatch() { return []; }\n', t);
  assert.deepEqual(exports.handle(rawEvent('a'), rawDelivery), {
    tag: 'retry',
    val: { reason: 'the batch handler answered 0 outcomes for one event', afterMs: undefined },
  });
});

test("a batch call's kv writes are kept only when one of its events is recorded", async () => {
  const store = new Map();
  const counting = (answers) => (events) => {
    kv.increment('seen', events.length);
    return answers;
  };
  const seen = () => new TextDecoder().decode(store.get('seen') ?? new Uint8Array());
  await runBatch(counting([retry('a'), retry('b')]), [{}, {}], { kv: store });
  await runBatch(counting([success()]), [{}, {}], { kv: store });
  assert.equal(seen(), '', 'all retried, or the wrong length: nothing');
  await runBatch(counting([retry('a'), success()]), [{}, {}], { kv: store });
  assert.equal(seen(), '2', "one recorded: the call's writes go with it");
});
