// The gridfn-js side of the benchmark (tests/bench/run): parse the event's
// data as a Storage BlobCreated payload and succeed, the same per-event work
// as the Rust tests/bench/handler.
import { reject, success } from '@gridfn/sdk';

export function handle(event) {
  let blob;
  try {
    blob = event.json();
  } catch (error) {
    return reject(`not a BlobCreated payload: ${error.message}`);
  }
  if (typeof blob?.api !== 'string' || typeof blob.contentLength !== 'number' || typeof blob.url !== 'string') {
    return reject('not a BlobCreated payload: api, contentLength or url missing');
  }
  return blob.url ? success() : reject('BlobCreated without a url');
}
