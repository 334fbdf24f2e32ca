// The SDK under Node: the adapter gridfn's `handle` export goes through, and
// the stand-ins a handler's tests rely on to behave like gridfn.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { KvError, PublishError, config, kv, log, publish, reject, retry, success } from '@gridfn/sdk';
import { allowedBy, run } from '@gridfn/sdk/testing';

import { exportHandle } from '../src/adapter.js';

test('outcomes become the WIT outcome variant', () => {
  const handle = (outcome) => exportHandle(() => outcome)({ data: new Uint8Array(), extensions: [] }, {});
  assert.deepEqual(handle(success()), { tag: 'success' });
  assert.deepEqual(handle(reject('bad')), { tag: 'reject', val: 'bad' });
  assert.deepEqual(handle(retry('later', { afterMs: 1500.2 })), { tag: 'retry', val: { reason: 'later', afterMs: 1501n } });
  assert.deepEqual(handle(retry('later')), { tag: 'retry', val: { reason: 'later', afterMs: undefined } });
});

test('a module without handle is refused when the component is built', () => {
  assert.throws(() => exportHandle(undefined), /must export function handle\(event, delivery\)/);
});

test('the event and delivery read the WIT records', async () => {
  let seen;
  const event = {
    id: 'e-1', type: 'T', source: '/s', subject: 'a/b', time: '2026-11-30T09:00:00Z',
    dataVersion: '1', data: { n: 1 }, extensions: { traceparent: '00-x' },
  };
  await run((e, d) => {
    seen = [e.id, e.type, e.source, e.subject, e.time, e.dataVersion, e.dataContentType, e.json(), e.text(),
      e.extension('traceparent'), e.extensions, d.handler, d.attempt, d.replay, d.subscription];
    return success();
  }, event, { handler: 'h', attempt: 2, replay: true });
  assert.deepEqual(seen, ['e-1', 'T', '/s', 'a/b', '2026-11-30T09:00:00Z', '1', undefined, { n: 1 }, '{"n":1}',
    '00-x', { traceparent: '00-x' }, 'h', 2, true, undefined]);
});

test('a throw, a rejected promise or a missing outcome is a retry, as in gridfn', async () => {
  const thrown = await run(() => { throw new Error('boom'); });
  assert.deepEqual(thrown.outcome, retry('handler threw: boom'));
  assert.equal(thrown.logs[0].level, 'error');
  assert.match(thrown.logs[0].message, /^handler threw: boom\nError: boom/);

  assert.deepEqual((await run(async () => { throw new TypeError('late'); })).outcome, retry('handler threw: late'));
  assert.deepEqual((await run(async () => reject('no'))).outcome, reject('no'));
  assert.match((await run(() => undefined)).outcome.reason, /^handle returned undefined, not success\(\)/);
  assert.match((await run(() => ({ ok: true }))).outcome.reason, /^handle returned an object with keys \[ok\]/);
});

test('log fields become text, and log = false drops them', async () => {
  const say = () => { log.warn('hi', { n: 3, ok: true }); return success(); };
  assert.deepEqual((await run(say)).logs, [{ level: 'warn', message: 'hi', fields: { n: '3', ok: 'true' } }]);
  assert.deepEqual((await run(say, {}, { log: false })).logs, []);
});

test('what is not granted is denied: config none, kv and publish throw denied', async () => {
  const result = await run(() => {
    assert.equal(config.get('a'), undefined);
    assert.throws(() => kv.get('k'), (e) => e instanceof KvError && e.kind === 'denied');
    assert.throws(() => publish({ type: 'T', data: {} }), (e) => e instanceof PublishError && e.kind === 'denied');
    return success();
  });
  assert.deepEqual(result.outcome, success());
});

test('kv keeps values, counts atomically and refuses oversized keys and values', async () => {
  const store = new Map();
  const use = () => {
    kv.set('name', 'gridfn');
    kv.set('raw', new Uint8Array([1, 2]));
    assert.equal(kv.getText('name'), 'gridfn');
    assert.deepEqual(kv.get('raw'), new Uint8Array([1, 2]));
    kv.delete('raw');
    assert.equal(kv.get('raw'), undefined);
    assert.throws(() => kv.set('x'.repeat(513), 'v'), (e) => e.kind === 'too-large');
    assert.throws(() => kv.set('big', new Uint8Array((1 << 20) + 1)), (e) => e.kind === 'too-large');
    return success();
  };
  assert.deepEqual((await run(use, {}, { kv: store })).outcome, success());
  const counts = [];
  const count = (delta) => () => {
    counts.push(kv.increment('n', delta));
    return success();
  };
  await run(count(5), {}, { kv: store });
  await run(count(undefined), {}, { kv: store });
  assert.deepEqual(counts, [5, 6]);
  assert.equal(new TextDecoder().decode(store.get('n')), '6');
});

test('published events are sent only on success, with gridfn default id and source', async () => {
  const emit = (outcome) => () => {
    publish({ type: 'Next', subject: 's', data: { a: 1 } });
    publish({ type: 'Text', data: 'plain', dataContentType: 'text/plain', source: '/mine', id: 'fixed' });
    return outcome;
  };
  const done = await run(emit(success()), { id: 'e-9' }, { handler: 'h', publish: true });
  assert.deepEqual(done.published, [
    { id: 'e-9:h:0', type: 'Next', source: '/gridfn/handlers/h', subject: 's', dataContentType: undefined, data: { a: 1 } },
    { id: 'fixed', type: 'Text', source: '/mine', subject: undefined, dataContentType: 'text/plain', data: 'plain' },
  ]);
  assert.deepEqual((await run(emit(retry('no')), {}, { publish: true })).published, []);
});

test('publish refuses invalid events and more than 100', async () => {
  const result = await run(() => {
    assert.throws(() => publish({ type: '', data: {} }), (e) => e.kind === 'invalid');
    assert.throws(() => publish({ type: 'T', data: 'not json' }), (e) => e.kind === 'invalid');
    for (let i = 0; i < 100; i++) publish({ type: 'T', data: i });
    assert.throws(() => publish({ type: 'T', data: 101 }), (e) => e.kind === 'too-large');
    return success();
  }, {}, { publish: true });
  assert.equal(result.published.length, 100);
});

test('fetch reaches only the allowed hosts, answered by the test server', async () => {
  const server = (request) => new Response(`got ${new URL(request.url).pathname}`);
  const handle = async (event) => {
    try {
      log.info(await (await fetch(event.json().url)).text());
      return success();
    } catch (error) {
      return reject(error.message);
    }
  };
  const options = { allowedHosts: ['https://api.example.com'], server };
  const ok = await run(handle, { data: { url: 'https://api.example.com/v1' } }, options);
  assert.deepEqual(ok.logs.map((l) => l.message), ['got /v1']);
  const refused = await run(handle, { data: { url: 'https://evil.example.com/v1' } }, options);
  assert.deepEqual(refused.outcome, reject('NetworkError when attempting to fetch resource.'));
  assert.equal(typeof globalThis.fetch, 'function', 'the real fetch is back after the run');
});

test('allowed hosts follow gridfn rules: scheme, host, port, wildcards', () => {
  assert.equal(allowedBy('https://api.example.com', 'https://api.example.com/x'), true);
  assert.equal(allowedBy('https://api.example.com', 'http://api.example.com/x'), false);
  assert.equal(allowedBy('https://api.example.com', 'https://api.example.com:8443/x'), false);
  assert.equal(allowedBy('http://127.0.0.1:8080', 'http://127.0.0.1:8080/x'), true);
  assert.equal(allowedBy('http://127.0.0.1:8080', 'http://localhost:8080/x'), false);
  assert.equal(allowedBy('*://svc:*', 'https://svc:1234/'), true);
  assert.equal(allowedBy('https://*.example.com', 'https://a.example.com/'), true);
  assert.equal(allowedBy('https://*.example.com', 'https://example.com/'), false);
});

test('capabilities used outside a call say how to test them', () => {
  assert.throws(() => config.get('a'), /outside a handler call; in tests, call the handler through run\(\)/);
});

test('kv writes of a retried run are dropped, as gridfn drops them', async () => {
  const store = new Map();
  const counting = (answer) => () => {
    const seen = kv.increment('seen');
    assert.equal(kv.getText('seen'), String(seen), 'a run reads its own writes');
    return answer;
  };
  await run(counting(success()), {}, { kv: store });
  await run(counting(retry('later')), {}, { kv: store });
  assert.equal(new TextDecoder().decode(store.get('seen')), '1', 'the retried run left nothing');
  await run(counting(reject('no')), {}, { kv: store });
  assert.equal(new TextDecoder().decode(store.get('seen')), '2', 'a rejection is recorded with its writes');
});
