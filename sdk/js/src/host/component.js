// The host's imports, as componentize-js binds them inside a component
// (`gridfn-js build` picks this file through the `gridfn-component`
// condition). The same functions as ./memory.js, the stand-in for tests.
import { log as hostLog } from 'gridfn:handler/log@0.1.1';
import { get as configGet } from 'gridfn:handler/config@0.1.1';
import * as hostKv from 'gridfn:handler/kv@0.1.1';
import { publish as hostPublish } from 'gridfn:handler/publish@0.1.1';

import { KvError, PublishError } from '../errors.js';

// A WIT `result` error reaches JS as a thrown value: the variant itself, or
// an error object carrying it as `payload`.
function variant(thrown) {
  const value = thrown !== null && typeof thrown === 'object' && 'payload' in thrown ? thrown.payload : thrown;
  return typeof value === 'string' ? { tag: value } : value;
}

function kvCall(call) {
  try {
    return call();
  } catch (thrown) {
    const { tag, val } = variant(thrown);
    throw new KvError(tag, val);
  }
}

export const log = (level, message, fields) => hostLog(level, message, fields);

export { configGet };

export const kvGet = (key) => kvCall(() => hostKv.get(key));
export const kvSet = (key, value) => kvCall(() => hostKv.set(key, value));
export const kvDelete = (key) => kvCall(() => hostKv.delete(key));
export const kvIncrement = (key, delta) => kvCall(() => hostKv.increment(key, delta));

export function publish(event) {
  try {
    hostPublish(event);
  } catch (thrown) {
    const { tag, val } = variant(thrown);
    throw new PublishError(tag, val);
  }
}
