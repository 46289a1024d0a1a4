/**
 * Build steps after tsc: `node scripts/bundle.mjs` bundles the CLI (oclif, every command and
 * the src/ graph under it) into one CommonJS file, dist/clonectl.cjs; after `oclif manifest`,
 * `node scripts/bundle.mjs --code-cache` records V8's code cache for it.
 *
 * Why: a command used to resolve, read and compile ~230 module files (oclif alone is ~120
 * CommonJS files, semver ~45) before doing anything, several times what `node -e 0` costs. One
 * file, loaded by bin/run.js through vm.Script with the cached bytecode of a representative
 * run, skips the resolution and most of the compilation. The cache is written here, once,
 * beside the code it belongs to (never into a shared temp directory at run time, where
 * another user could plant bytecode); V8 rejects it by itself when the file or the V8 flags
 * differ, and bin/run.js then simply compiles.
 */
import {build} from 'esbuild'
import {execFileSync} from 'node:child_process'
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {readFile, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'

const root = join(fileURLToPath(import.meta.url), '..', '..')
const out = join(root, 'dist', 'clonectl.cjs')

async function bundle() {
  await build({
    entryPoints: [join(root, 'scripts', 'bundleEntry.cjs')],
    outfile: out,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    // oclif reaches for typescript only to run .ts sources in development mode (unused); koffi
    // loads its prebuilt native binary from its own package directory.
    external: ['typescript', 'koffi'],
    // Whitespace and syntax only: names stay, so a bug's stack trace still reads.
    minifyWhitespace: true,
    minifySyntax: true,
    sourcemap: 'external',
    logLevel: 'warning',
    // src/volume/kernel.ts reads import.meta.url only where no require exists (unbundled ES
    // modules); in this CommonJS bundle it takes require, so import.meta being empty is fine.
    logOverride: {'empty-import-meta': 'silent'},
    plugins: [dynamicImportThroughLoader, wslUtilsOnDemand, debugOnDemand, oclifAtStart, builtinImportsOnDemand],
  })
}

/**
 * Node 20 loses a vm.Script's dynamic-import callback when the script comes from a code
 * cache (ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING), and oclif import()s its ESM plugins (help,
 * not-found, autocomplete). So the libraries' import() calls of a computed path go through a
 * function that bin/run.js, a file Node loaded itself, defines. An import() of a plain package
 * name (oclif's `import('wsl-utils')`, run at every start) is left to esbuild, which bundles
 * it: going through Node's ESM loader for it cost every command its resolution and loading.
 * Our own code's import()s are bundled too and never reach Node's loader.
 */
const dynamicImportThroughLoader = {
  name: 'dynamic-import-through-loader',
  setup(b) {
    b.onLoad({filter: /[\\/]node_modules[\\/].*\.js$/}, async (args) => {
      const text = await readFile(args.path, 'utf8')
      const computed = /(^|[^.\w$])import\((?!\s*['"])/g
      if (!computed.test(text)) return undefined
      return {contents: text.replace(computed, '$1globalThis.__clonectlImport('), loader: 'js'}
    })
  },
}

/**
 * oclif asks `(await import('wsl-utils')).isWsl` at every start (Config.load → getPlatform);
 * wsl-utils pulls in child_process and PowerShell helpers to answer it. is-wsl alone answers
 * the question; the rest (powerShellPath, for a Windows shell) is loaded only if asked.
 */
const wslUtilsOnDemand = {
  name: 'wsl-utils-on-demand',
  setup(b) {
    b.onResolve({filter: /^wsl-utils$/}, (args) => (args.pluginData === 'real' ? undefined : {path: 'wsl-utils', namespace: 'wsl-on-demand'}))
    b.onLoad({filter: /.*/, namespace: 'wsl-on-demand'}, () => ({
      contents: "export {default as isWsl} from 'is-wsl'\nexport const powerShellPath = async () => (await globalThis.__clonectlImport('wsl-utils')).powerShellPath()\n",
      resolveDir: root,
      loader: 'js',
    }))
  },
}

/**
 * oclif makes a `debug` logger at load time; the debug package brings supports-color, tty and
 * util's formatters with it. With DEBUG unset every namespace is off, so a silent logger does;
 * with DEBUG set (`DEBUG=oclif:* clonectl ...`) the real package is loaded, as before.
 */
const debugOnDemand = {
  name: 'debug-on-demand',
  setup(b) {
    b.onResolve({filter: /^debug$/}, () => ({path: 'debug', namespace: 'debug-on-demand'}))
    b.onLoad({filter: /.*/, namespace: 'debug-on-demand'}, () => ({
      contents: `if (process.env.DEBUG) module.exports = require('debug/src/index.js')
else {
  const off = (namespace) => Object.assign(() => {}, {enabled: false, namespace, log() {}, destroy: () => true, extend: (sub, delimiter = ':') => off(namespace + delimiter + sub)})
  module.exports = Object.assign(off, {default: off, enable() {}, disable: () => '', enabled: () => false})
}
`,
      resolveDir: root,
      loader: 'js',
    }))
  },
}

/**
 * Two lines of oclif that every command paid for at start, replaced in the bundle. Each
 * replacement names the exact text it replaces, and the build fails if oclif's text changes,
 * so an oclif upgrade is reviewed here rather than silently losing (or breaking) the change.
 */
const oclifStartPatches = [
  {
    // oclif sorts each plugin's commands with localeCompare; the first localeCompare in a
    // process sets up ICU's collator, about 6 ms here, for ids that are plain ASCII. Code-point
    // order is the same order for them (a unit test checks it over every id, ours and the
    // plugins').
    file: /[\\/]@oclif[\\/]core[\\/]lib[\\/]config[\\/]plugin\.js$/,
    from: '.sort((a, b) => a.id.localeCompare(b.id))',
    to: '.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))',
  },
  {
    // oclif finds each core plugin's directory with require.resolve of its package (Node's
    // resolution through package exports, ~2 ms a plugin here), then walks up from the entry it
    // found. Its own fallback, which reads node_modules/NAME/package.json up the tree as Node's
    // lookup does, finds an npm-installed plugin with two small reads; it is asked first now,
    // and require.resolve still answers for anything it does not find (a linked plugin, PnP).
    file: /[\\/]@oclif[\\/]core[\\/]lib[\\/]util[\\/]find-root\.js$/,
    from: "    if (name) {\n        debug(name)(`Finding root using ${root}`);",
    to: "    if (name) {\n        const installed = process.versions.pnp ? undefined : await findRootLegacy(name, root);\n        if (installed) return installed;\n        debug(name)(`Finding root using ${root}`);",
  },
]

const oclifAtStart = {
  name: 'oclif-at-start',
  setup(b) {
    for (const p of oclifStartPatches)
      b.onLoad({filter: p.file}, async (args) => {
        const text = await readFile(args.path, 'utf8')
        if (!text.includes(p.from)) throw new Error(`${args.path}: oclif's text changed ('${p.from.split('\n').pop().trim()}'); review oclifStartPatches in scripts/bundle.mjs`)
        return {contents: text.replace(p.from, p.to), loader: 'js'}
      })
  },
}

/**
 * Our code import()s a few builtins where they are first needed (node:crypto, node:tls,
 * node:readline/promises: most commands never use them, and loading them cost start-up).
 * esbuild leaves an import() of an external as a real dynamic import, which a vm.Script from
 * a code cache cannot do (see dynamicImportThroughLoader); as a small CommonJS module that
 * requires the builtin, it is set up on first import() like any other bundled module.
 */
const builtinImportsOnDemand = {
  name: 'builtin-imports-on-demand',
  setup(b) {
    b.onResolve({filter: /^node:/}, (args) => (args.kind === 'dynamic-import' ? {path: args.path, namespace: 'builtin-on-demand'} : undefined))
    b.onLoad({filter: /.*/, namespace: 'builtin-on-demand'}, (args) => ({contents: `module.exports = require(${JSON.stringify(args.path)})`, resolveDir: root, loader: 'js'}))
  },
}

/**
 * V8 keeps a script that is all ASCII as a one-byte string: reading it is a copy, where one
 * character beyond ASCII (a raw CSI in a minified regular expression) makes Node decode the
 * whole file into a two-byte string at every start. Escape them; in string and regular
 * expression literals, the only places they occur, \uXXXX means the same character.
 */
async function asciiOnly() {
  const text = await readFile(out, 'utf8')
  const ascii = text.replace(/[^\t-~]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
  if (ascii !== text) await writeFile(out, ascii)
}

/**
 * The code cache is that of one `status` run over a group with a clone, so what every command
 * needs at start (oclif's config and parser, the state directory) and what status shows (the
 * group record, a delta map, the table) is compiled and cached, not only an empty list.
 */
async function codeCache() {
  const scratch = mkdtempSync(join(tmpdir(), 'clonectl-cache-'))
  const state = join(scratch, 'state')
  const run = (args, env = {}) =>
    execFileSync(process.execPath, [join(root, 'bin', 'run.js'), ...args, '--state-dir', state], {env: {...process.env, ...env}, stdio: 'ignore'})
  try {
    writeFileSync(join(scratch, 'source.img'), Buffer.alloc(4 * 1024 * 1024))
    run(['group', 'create', 'g', '--source', join(scratch, 'source.img')])
    run(['clone', 'add', 'g', 'c', '--path', join(scratch, 'clone.img'), '--create'])
    run(['status'], {CLONECTL_WRITE_CODE_CACHE: `${out}.cache`})
  } finally {
    rmSync(scratch, {recursive: true, force: true})
  }
}

if (process.argv.includes('--code-cache')) await codeCache()
else {
  await bundle()
  await asciiOnly()
}
