// The moderation contract, checked under Node with the SDK's stand-ins
// (the end-to-end tests run the built component through gridfn).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { reject, retry, success } from '@gridfn/sdk';
import { run } from '@gridfn/sdk/testing';

import { ESCALATED, handle, twoDecimals } from '../handler.js';

// Two of the lab's events (moderation_events.json), as gridfn hands them over.
const flagged = {
  id: 'mod-0001',
  type: 'com.contoso.ai.ContentFlagged',
  source: '/services/content-moderation',
  subject: '/content/images/img-4821',
  data: { contentId: 'img-4821', contentType: 'image', confidence: 0.97, category: 'violence', severity: 'high', reviewRequired: true },
};
const escalated = {
  id: 'mod-0005',
  type: ESCALATED,
  source: '/services/content-moderation',
  subject: '/content/text/doc-3301',
  data: { contentId: 'doc-3301', confidence: 0.52, category: 'self-harm', severity: 'high', escalationReason: 'Low confidence requires human review' },
};

const messages = (result) => result.logs.map(({ level, message }) => `${level} ${message}`);

test('each type takes its own action, with the contract log line', async () => {
  const q = await run(handle, flagged, { handler: 'flagged' });
  assert.deepEqual(q.outcome, success());
  assert.deepEqual(messages(q), ['warn flagged: quarantine img-4821 (violence, high; confidence 0.97)']);

  const approved = { ...flagged, type: 'com.contoso.ai.ContentApproved', data: { contentId: 'doc-1137', confidence: 0.99 } };
  const p = await run(handle, approved, { handler: 'approved' });
  assert.deepEqual(p.outcome, success());
  assert.deepEqual(messages(p), ['info approved: publish doc-1137']);

  const e = await run(handle, escalated, { handler: 'review', publish: true });
  assert.deepEqual(e.outcome, success());
  assert.deepEqual(messages(e), ['warn review: escalate doc-3301 for human review (Low confidence requires human review)']);
  assert.deepEqual(e.published, [], 'an incoming escalation is not escalated again');
});

test('category and severity default to unknown', async () => {
  const bare = { ...flagged, data: { contentId: 'c-1', confidence: 0.5 } };
  const result = await run(handle, bare, { handler: 'h' });
  assert.deepEqual(messages(result), ['warn h: quarantine c-1 (unknown, unknown; confidence 0.50)']);
});

test('the config action overrides the type, and an escalation is published with its reason', async () => {
  const result = await run(handle, flagged, { handler: 'severe', config: { action: 'escalate' }, publish: true, kv: true });
  assert.deepEqual(result.outcome, success());
  assert.deepEqual(messages(result), ['warn severe: escalate img-4821 for human review (confidence 0.97, severity high)']);
  assert.deepEqual(result.published, [
    {
      id: 'mod-0001:severe:0',
      type: ESCALATED,
      source: '/gridfn/moderation',
      subject: '/content/images/img-4821',
      dataContentType: undefined,
      data: { ...flagged.data, escalationReason: 'confidence 0.97, severity high' },
    },
  ]);
  assert.equal(new TextDecoder().decode(result.kv.get('count/escalate')), '1');
});

test('without publish and kv granted it still escalates, in its log only', async () => {
  const result = await run(handle, flagged, { handler: 'h', config: { action: 'escalate' } });
  assert.deepEqual(result.outcome, success());
  assert.equal(result.published.length, 0);
});

test('kv counts each action', async () => {
  const store = new Map();
  for (const id of ['a', 'b']) await run(handle, { ...flagged, id }, { kv: store });
  await run(handle, { ...flagged, type: 'com.contoso.ai.ContentApproved' }, { kv: store });
  const count = (key) => new TextDecoder().decode(store.get(key));
  assert.equal(count('count/quarantine'), '2');
  assert.equal(count('count/publish'), '1');
});

test('what is not a moderation result is rejected, not retried', async () => {
  const cases = [
    [{ contentId: 'x' }, 'not a moderation result: confidence is missing'],
    [{ confidence: 0.5 }, 'not a moderation result: contentId is missing'],
    [{ contentId: 7, confidence: 0.5 }, 'not a moderation result: contentId is not a string'],
    [{ contentId: 'x', confidence: 'high' }, 'not a moderation result: confidence is not a number'],
    [[1, 2], 'not a moderation result: data is not a JSON object'],
  ];
  for (const [data, reason] of cases) {
    assert.deepEqual((await run(handle, { ...flagged, data })).outcome, reject(reason));
  }
  const notJson = await run(handle, { ...flagged, data: 'not json' });
  assert.match(notJson.outcome.reason, /^not a moderation result: data is not JSON: /);
  assert.equal(notJson.outcome.kind, 'reject');
});

test('an unknown type or action is rejected', async () => {
  const other = await run(handle, { ...flagged, type: 'com.contoso.ai.Other' });
  assert.deepEqual(other.outcome, reject('unexpected event type com.contoso.ai.Other'));
  const unknown = await run(handle, flagged, { config: { action: 'delete' } });
  assert.deepEqual(unknown.outcome, reject('unknown action delete'));
});

test('a kv store failure is retried', async () => {
  const store = new Map([['count/quarantine', new TextEncoder().encode('not a number')]]);
  const result = await run(handle, flagged, { kv: store });
  assert.equal(result.outcome.kind, 'retry');
  assert.match(result.outcome.reason, /^counting failed: kv store/);
  assert.deepEqual(result.logs, [], 'nothing is logged as done');
});

test('confidence is written as Rust writes {:.2}', () => {
  assert.deepEqual(
    [0.97, 0.5, 1, 0.125, 0.375, 0.015, 12.345, -0.125].map(twoDecimals),
    ['0.97', '0.50', '1.00', '0.12', '0.38', '0.01', '12.35', '-0.12'],
  );
});
