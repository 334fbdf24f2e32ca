#!/usr/bin/env node
// gridfn-js build: a handler module -> a gridfn WebAssembly component.
//
//   gridfn-js build [HANDLER] [-o OUT.wasm] [--toolchain DIR]
//
// HANDLER is a module exporting `handle` (and/or `handleBatch`), or a folder
// whose package.json names it in "main" (default: the current folder). Two
// steps: esbuild bundles the module with this SDK (its host bindings picked
// by the `gridfn-component` condition) into one ES module, then
// componentize-js embeds it in SpiderMonkey for sdk/wit's `handler` world,
// or its `batch-handler` world when the module exports `handleBatch`. Both tools
// are found in the handler's node_modules, or in --toolchain DIR (a folder
// with them in node_modules, as scripts/components installs).
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { entry } from './entry.js';

const sdkRoot = fileURLToPath(new URL('..', import.meta.url));
const witDir = fileURLToPath(new URL('../../wit', import.meta.url));

function usage(problem) {
  console.error(`gridfn-js: ${problem}\nusage: gridfn-js build [HANDLER] [-o OUT.wasm] [--toolchain DIR]`);
  process.exit(2);
}

function parseArgs(argv) {
  const [command, ...rest] = argv;
  if (command !== 'build') usage(command ? `unknown command ${command}` : 'no command');
  const args = { handler: '.', out: undefined, toolchain: undefined };
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i];
    if (arg === '-o' || arg === '--out') args.out = rest[++i];
    else if (arg === '--toolchain') args.toolchain = rest[++i];
    else if (arg.startsWith('-')) usage(`unknown option ${arg}`);
    else args.handler = arg;
  }
  return args;
}

/** The handler's module file and the folder its package lives in. */
function handlerModule(path) {
  const full = resolve(path);
  if (!existsSync(full)) usage(`${path} does not exist`);
  if (!statSync(full).isDirectory()) return { file: full, dir: dirname(full), name: basename(full).replace(/\.[cm]?[jt]s$/, '') };
  const manifest = join(full, 'package.json');
  const pkg = existsSync(manifest) ? JSON.parse(readFileSync(manifest, 'utf8')) : {};
  const file = join(full, pkg.main ?? 'handler.js');
  if (!existsSync(file)) usage(`${file} does not exist (name the module in package.json "main")`);
  return { file, dir: full, name: pkg.name?.replace(/^@.*\//, '') ?? basename(full) };
}

/** Imports `name` from the first of `dirs` whose node_modules has it. */
async function tool(name, dirs) {
  for (const dir of dirs) {
    const pkgDir = join(dir, 'node_modules', name);
    if (!existsSync(join(pkgDir, 'package.json'))) continue;
    const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));
    const exported = pkg.exports?.['.'] ?? pkg.exports;
    const entry =
      typeof exported === 'string' ? exported : exported?.import ?? exported?.default ?? createRequire(join(dir, 'x.js')).resolve(name);
    return import(pathToFileURL(resolve(pkgDir, entry)).href);
  }
  usage(`${name} is not installed: npm install -D @bytecodealliance/componentize-js@0.23.0 esbuild@0.28.2 (or pass --toolchain DIR)`);
}

function searchDirs(start, toolchain) {
  const dirs = [];
  for (let dir = start; ; dir = dirname(dir)) {
    dirs.push(dir);
    if (dirname(dir) === dir) break;
  }
  return toolchain ? [resolve(toolchain), ...dirs] : dirs;
}

/**
 * The one SDK: the handler's `@gridfn/sdk` imports resolve to the SDK doing
 * the build (whether or not the handler has it installed), through its
 * package.json `exports`.
 */
const thisSdk = {
  name: 'gridfn-sdk',
  setup(build) {
    const { exports } = JSON.parse(readFileSync(join(sdkRoot, 'package.json'), 'utf8'));
    build.onResolve({ filter: /^@gridfn\/sdk(\/|$)/ }, ({ path }) => {
      const entry = exports[`.${path.slice('@gridfn/sdk'.length)}`];
      if (!entry) return { errors: [{ text: `@gridfn/sdk does not export ${path}` }] };
      return { path: join(sdkRoot, entry.default) };
    });
  },
};

/** The options both esbuild runs share: this SDK, bundled for a component. */
const bundling = {
  bundle: true,
  format: 'esm',
  platform: 'neutral',
  target: 'es2022',
  conditions: ['gridfn-component'],
  mainFields: ['module', 'main'],
  plugins: [thisSdk],
  external: ['gridfn:*', 'wasi:*'],
  logLevel: 'warning',
};

/** The names the handler module exports (esbuild's metafile lists them; nothing is written). */
async function exportsOf(esbuild, file) {
  const { metafile } = await (esbuild.build ?? esbuild.default.build)({ ...bundling, entryPoints: [file], metafile: true, write: false, outdir: '/' });
  return Object.values(metafile.outputs).flatMap((output) => output.exports ?? []);
}

async function build({ handler, out, toolchain }) {
  const module = handlerModule(handler);
  const output = resolve(out ?? `${module.name}.wasm`);
  const dirs = searchDirs(module.dir, toolchain);
  const esbuild = await tool('esbuild', dirs);
  const { componentize } = await tool('@bytecodealliance/componentize-js', dirs);

  const work = await mkdtemp(join(tmpdir(), 'gridfn-js-'));
  try {
    const bundle = join(work, 'handler.bundle.js');
    const adapter = join(sdkRoot, 'src', 'adapter.js');
    const started = Date.now();
    const { world, contents } = entry(module.file, await exportsOf(esbuild, module.file), adapter);
    await (esbuild.build ?? esbuild.default.build)({
      ...bundling,
      stdin: { contents, resolveDir: module.dir, sourcefile: 'gridfn-entry.js' },
      outfile: bundle,
    });
    const { component } = await componentize({ sourcePath: bundle, witPath: witDir, worldName: world });
    await mkdir(dirname(output), { recursive: true });
    await writeFile(output, component);
    const mb = (component.length / 1e6).toFixed(1);
    console.error(`gridfn-js: built ${output} (${world} world, ${mb} MB, ${((Date.now() - started) / 1000).toFixed(1)} s)`);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

await build(parseArgs(process.argv.slice(2)));
