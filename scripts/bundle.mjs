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
import {mkdtempSync, rmSync} from 'node:fs'
import {readFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'

const root = join(fileURLToPath(import.meta.url), '..', '..')
const out = join(root, 'dist', 'clonectl.cjs')

async function bundle() {
  await build({
    entryPoints: [join(root, 'dist', 'commands', 'index.js')],
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
    plugins: [dynamicImportThroughLoader],
  })
}

/**
 * Node 20 loses a vm.Script's dynamic-import callback when the script comes from a code
 * cache (ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING), and oclif import()s its ESM plugins (help,
 * not-found, autocomplete). So the libraries' import() calls go through a function that
 * bin/run.js, a real ES module, defines. Our own code's import()s are bundled by esbuild and
 * never reach Node's loader.
 */
const dynamicImportThroughLoader = {
  name: 'dynamic-import-through-loader',
  setup(b) {
    b.onLoad({filter: /[\\/]node_modules[\\/].*\.js$/}, async (args) => {
      const text = await readFile(args.path, 'utf8')
      if (!/(^|[^.\w$])import\(/.test(text)) return undefined
      return {contents: text.replace(/(^|[^.\w$])import\(/g, '$1globalThis.__clonectlImport('), loader: 'js'}
    })
  },
}

/** One run of a light command, so what every command needs at start (oclif's config and parser, the state directory) is compiled and cached too. */
async function codeCache() {
  const state = mkdtempSync(join(tmpdir(), 'clonectl-cache-'))
  try {
    execFileSync(process.execPath, [join(root, 'bin', 'run.js'), 'status', '--state-dir', state], {
      env: {...process.env, CLONECTL_WRITE_CODE_CACHE: `${out}.cache`},
      stdio: 'ignore',
    })
  } finally {
    rmSync(state, {recursive: true, force: true})
  }
}

if (process.argv.includes('--code-cache')) await codeCache()
else await bundle()
