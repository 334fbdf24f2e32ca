// {{name}}: a gridfn handler. It logs each order it receives, and rejects an
// event whose data is not an order: gridfn dead-letters it instead of
// retrying, since no retry can fix it.
//
// Test: {{test}}
// Build: {{build}}
import { log, reject, success } from '@gridfn/sdk';

/** The order in the event's data, or why it is not one. */
export function parseOrder(event) {
  let data;
  try {
    data = event.json();
  } catch (error) {
    return { why: `data is not JSON: ${error.message}` };
  }
  if (data === null || typeof data !== 'object' || typeof data.orderId !== 'string') return { why: 'orderId is missing' };
  if (typeof data.amount !== 'number') return { why: 'amount is not a number' };
  return { order: data };
}

export function handle(event, delivery) {
  const { order, why } = parseOrder(event);
  if (!order) return reject(`not an order: ${why}`);
  log.info(`order ${order.orderId} received, amount ${order.amount.toFixed(2)} (${event.type} ${event.id})`);
  return success();
}
