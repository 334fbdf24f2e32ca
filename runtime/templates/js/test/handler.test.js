// {{name}}'s unit tests, under Node: @gridfn/sdk/testing stands in for gridfn.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { reject, success } from '@gridfn/sdk';
import { run } from '@gridfn/sdk/testing';

import { handle } from '../handler.js';

// events/sample.json is an Event Grid delivery of one event; run() takes it in gridfn's terms.
const [sample] = JSON.parse(readFileSync(new URL('../events/sample.json', import.meta.url), 'utf8'));
const event = (data = sample.data) => ({ id: sample.id, type: sample.eventType, source: sample.topic, subject: sample.subject, data });

test('the sample order is logged', async () => {
  const result = await run(handle, event());
  assert.deepEqual(result.outcome, success());
  assert.deepEqual(
    result.logs.map(({ level, message }) => `${level} ${message}`),
    ['info order o-1001 received, amount 42.50 (Contoso.Orders.OrderPlaced e-1001)'],
  );
});

test('data that is not an order is rejected', async () => {
  assert.deepEqual((await run(handle, event({ amount: 1 }))).outcome, reject('not an order: orderId is missing'));
  const lots = await run(handle, event({ orderId: 'o-1', amount: 'lots' }));
  assert.deepEqual(lots.outcome, reject('not an order: amount is not a number'));
  assert.deepEqual(lots.logs, []);
});
