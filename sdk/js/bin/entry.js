// What `gridfn-js build` bundles: an entry module that wraps the handler
// module's exports in the SDK's adapter, and the world of sdk/wit it is
// built for. Apart from the build so that `node --test` can check it.

/**
 * The entry module the component is built from, and its world: `handle`
 * alone is the `handler` world; with `handleBatch` it is `batch-handler`,
 * whose `handle` is the module's own or, without one, a batch of one.
 */
export function entry(file, exported, adapter) {
  const from = JSON.stringify(file);
  const sdk = `import { exportBatchOfOne, exportHandle, exportHandleBatch } from ${JSON.stringify(adapter)};\n`;
  if (!exported.includes('handleBatch')) {
    return { world: 'handler', contents: `import { handle as userHandle } from ${from};\n${sdk}export const handle = exportHandle(userHandle);\n` };
  }
  const handle = exported.includes('handle')
    ? `import { handle as userHandle } from ${from};\nexport const handle = exportHandle(userHandle);\n`
    : 'export const handle = exportBatchOfOne(userBatch);\n';
  return {
    world: 'batch-handler',
    contents: `import { handleBatch as userBatch } from ${from};\n${sdk}export const handleBatch = exportHandleBatch(userBatch);\n${handle}`,
  };
}
