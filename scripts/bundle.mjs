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
    plugins: [oclifAtStart, dynamicImportThroughLoader, wslUtilsOnDemand, debugOnDemand, builtinImportsOnDemand],
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
function computedImportsThroughLoader(text) {
  const computed = /(^|[^.\w$])import\((?!\s*['"])/g
  return computed.test(text) ? text.replace(computed, '$1globalThis.__clonectlImport(') : undefined
}
const dynamicImportThroughLoader = {
  name: 'dynamic-import-through-loader',
  setup(b) {
    b.onLoad({filter: /[\\/]node_modules[\\/].*\.js$/}, async (args) => {
      const contents = computedImportsThroughLoader(await readFile(args.path, 'utf8'))
      return contents === undefined ? undefined : {contents, loader: 'js'}
    })
  },
}

/**
 * oclif asks `(await import('wsl-utils')).isWsl` at every start (Config.load → getPlatform);
 * wsl-utils pulls in child_process and PowerShell helpers to answer it. is-wsl alone answers
 * the question; the rest (powerShellPath, for a Windows shell) is loaded only if asked.
 * is-wsl answers false unless one of its cheap tests (the kernel release or /proc/version
 * naming Microsoft, or a WSL path existing) passes; those tests are made here first, and only
 * a system that passes one loads is-wsl (with is-inside-container, is-docker and node:process,
 * ~0.5 ms) for its answer. The build fails if is-wsl's tests change.
 */
const isWslTests = [
  "os.release().toLowerCase().includes('microsoft')",
  "fs.readFileSync('/proc/version', 'utf8').toLowerCase().includes('microsoft')",
  "fs.existsSync('/proc/sys/fs/binfmt_misc/WSLInterop')\n\t\t|| fs.existsSync('/run/WSL')",
  'return false;\n};\n\nexport default process.env.__IS_WSL_TEST__ ? isWsl : isWsl();',
]
const wslUtilsOnDemand = {
  name: 'wsl-utils-on-demand',
  setup(b) {
    b.onResolve({filter: /^wsl-utils$/}, (args) => (args.pluginData === 'real' ? undefined : {path: 'wsl-utils', namespace: 'wsl-on-demand'}))
    b.onLoad({filter: /.*/, namespace: 'wsl-on-demand'}, async () => {
      const isWslText = await readFile(join(root, 'node_modules', 'is-wsl', 'index.js'), 'utf8')
      const changed = isWslTests.find((t) => !isWslText.includes(t))
      if (changed) throw new Error(`is-wsl's tests changed ('${changed}'); review wslUtilsOnDemand in scripts/bundle.mjs`)
      return {
        contents: `import {existsSync, readFileSync} from 'node:fs'
import {release} from 'node:os'
const maybeWsl = () => {
  if (process.env.__IS_WSL_TEST__) return true
  if (process.platform !== 'linux') return false
  if (release().toLowerCase().includes('microsoft')) return true
  try {
    if (readFileSync('/proc/version', 'utf8').toLowerCase().includes('microsoft')) return true
  } catch {}
  return existsSync('/proc/sys/fs/binfmt_misc/WSLInterop') || existsSync('/run/WSL')
}
export const isWsl = maybeWsl() ? require('is-wsl').default : false
export const powerShellPath = async () => (await globalThis.__clonectlImport('wsl-utils')).powerShellPath()
`,
        resolveDir: root,
        loader: 'js',
      }
    })
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
 * Lines of oclif that every command paid for at start, replaced in the bundle. Each
 * replacement names the exact text it replaces, and the build fails if oclif's text changes
 * (or a patched file is no longer bundled), so an oclif upgrade is reviewed here rather than
 * silently losing (or breaking) the change.
 */
const packageFile = (path) => new RegExp(`[\\\\/]node_modules[\\\\/]${path.replaceAll('/', '[\\\\/]').replaceAll('.', '\\.')}$`)
const oclifFile = (path) => packageFile(`@oclif/core/lib/${path}`)

/**
 * `const X = require("M");` → X loads M on its first property read. oclif requires, at load,
 * modules that only some paths use (a glob library for command discovery by pattern, a
 * template engine, readline for a flag read from stdin, child_process for Windows, the error
 * renderer's text wrapping, spinner frames); evaluating them and the Node builtins under them
 * cost every command time at start. Only for a binding oclif uses as `X.name` (checked when
 * each is added: no spread, no passing X itself), which a Proxy forwards unchanged.
 */
const onDemand = (file, line) => {
  const m = /^(const|var) (\w+) = (.*require\("[^"]+"\).*);$/.exec(line)
  if (!m) throw new Error(`onDemand: not a require line: ${line}`)
  return {file, from: line, to: `${m[1]} ${m[2]} = __clonectlOnDemand(() => ${m[3]});`, helper: true}
}
const onDemandHelper = '\nfunction __clonectlOnDemand(load) { let m; return new Proxy({}, {get: (_, k) => (m ??= load())[k], has: (_, k) => k in (m ??= load())}) }\n'

const oclifStartPatches = [
  {
    // oclif sorts each plugin's commands with localeCompare; the first localeCompare in a
    // process sets up ICU's collator, about 6 ms here, for ids that are plain ASCII. Code-point
    // order is the same order for them (a unit test checks it over every id, ours and the
    // plugins').
    file: oclifFile('config/plugin.js'),
    from: '.sort((a, b) => a.id.localeCompare(b.id))',
    to: '.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))',
  },
  {
    // oclif finds each core plugin's directory with require.resolve of its package (Node's
    // resolution through package exports, ~2 ms a plugin here), then walks up from the entry it
    // found. Its own fallback, which reads node_modules/NAME/package.json up the tree as Node's
    // lookup does, finds an npm-installed plugin with two small reads; it is asked first now,
    // and require.resolve still answers for anything it does not find (a linked plugin, PnP).
    file: oclifFile('util/find-root.js'),
    from: "    if (name) {\n        debug(name)(`Finding root using ${root}`);",
    to: "    if (name) {\n        const installed = process.versions.pnp ? undefined : await findRootLegacy(name, root);\n        if (installed) return installed;\n        debug(name)(`Finding root using ${root}`);",
  },
  {
    // oclif matches each dependency of a plugin against each plugin name with minimatch, which
    // compiles a pattern each time (~2 ms for ours); a name without glob characters matches
    // only itself, which === says without minimatch (then not loaded at all).
    file: oclifFile('config/plugin-loader.js'),
    from: '(0, minimatch_1.minimatch)(p, w)',
    to: '(/[*?[\\]{}()!#\\\\]/.test(w) ? (0, minimatch_1.minimatch)(p, w) : p === w)',
  },
  onDemand(oclifFile('config/plugin-loader.js'), 'const minimatch_1 = require("minimatch");'),
  onDemand(oclifFile('config/plugin.js'), 'const tinyglobby_1 = require("tinyglobby");'),
  onDemand(oclifFile('config/config.js'), 'const ejs_1 = __importDefault(require("ejs"));'),
  // supports-color asks tty.isatty(1) and (2) at load; the tty module brings net with it
  // (~1.5 ms), where process.stdout and process.stderr, which oclif has made by then (screen.js),
  // know the same: Node makes a tty.WriteStream (isTTY true) exactly when the fd is a TTY.
  {file: packageFile('supports-color/index.js'), from: "const tty = require('tty');", to: ''},
  {file: packageFile('supports-color/index.js'), from: 'getSupportLevel({isTTY: tty.isatty(1)})', to: 'getSupportLevel({isTTY: process.stdout.isTTY === true})'},
  {file: packageFile('supports-color/index.js'), from: 'getSupportLevel({isTTY: tty.isatty(2)})', to: 'getSupportLevel({isTTY: process.stderr.isTTY === true})'},
  {file: packageFile('chalk/source/vendor/supports-color/index.js'), from: "import tty from 'node:tty';", to: ''},
  // The global process is node:process; importing it cost a copy of its ~100 properties (esbuild's ESM interop).
  {file: packageFile('chalk/source/vendor/supports-color/index.js'), from: "import process from 'node:process';", to: ''},
  {file: packageFile('chalk/source/vendor/supports-color/index.js'), from: 'createSupportsColor({isTTY: tty.isatty(1)})', to: 'createSupportsColor({isTTY: process.stdout.isTTY === true})'},
  {file: packageFile('chalk/source/vendor/supports-color/index.js'), from: 'createSupportsColor({isTTY: tty.isatty(2)})', to: 'createSupportsColor({isTTY: process.stderr.isTTY === true})'},
  {
    // oclif reads its JSON files (package.json of the CLI and of each plugin, the manifests, the
    // theme) one after another at start, each through the thread pool (open, stat, read, close:
    // four round trips of ~40 µs here); the same read as one synchronous call takes a few µs.
    // Errors are the same (a rejected promise: readJson stays async).
    file: oclifFile('util/fs.js'),
    from: "const contents = await (0, promises_1.readFile)(path, 'utf8');",
    to: "const contents = (0, node_fs_1.readFileSync)(path, 'utf8');",
  },
  // node:fs/promises costs ~1.3 ms to load (Node sets up FileHandle, streams, readline and
  // watchers for it); oclif's start needs none of these once readJson reads synchronously.
  onDemand(oclifFile('util/fs.js'), 'const promises_1 = require("node:fs/promises");'),
  onDemand(oclifFile('config/ts-path.js'), 'const promises_1 = require("node:fs/promises");'),
  onDemand(oclifFile('util/read-tsconfig.js'), 'const promises_1 = require("node:fs/promises");'),
  // lilconfig reads fs.promises at load; oclif asks it only for a package.json without an oclif section.
  onDemand(oclifFile('util/read-pjson.js'), 'const lilconfig_1 = require("lilconfig");'),
  // ansis (oclif's colours: it detects the terminal's colour support at load) is used only
  // inside colorize() and the spinner, so it is loaded by their first call.
  onDemand(oclifFile('ux/theme.js'), 'const ansis_1 = __importDefault(require("ansis"));'),
  onDemand(oclifFile('ux/action/spinner.js'), 'const ansis_1 = __importDefault(require("ansis"));'),
  // The JSON colorizer (its token regular expressions are made at load) is for --json on a TTY.
  onDemand(oclifFile('ux/index.js'), 'const colorize_json_1 = __importDefault(require("./colorize-json"));'),
  onDemand(oclifFile('ux/index.js'), 'var colorize_json_2 = require("./colorize-json");'),
  {file: oclifFile('ux/index.js'), from: '    colorizeJson: colorize_json_1.default,', to: '    colorizeJson: (...args) => colorize_json_1.default(...args),'},
  // Help: its renderer (text wrapping, widths, templates) is for --help and errors only; the
  // two helpers every run asks (the help flags, the argv's command id) live in help/util.js.
  onDemand(oclifFile('index.js'), 'var help_1 = require("./help");'),
  onDemand(oclifFile('flags.js'), 'const help_1 = require("./help");'),
  onDemand(oclifFile('errors/handle.js'), 'const index_1 = require("../help/index");'),
  onDemand(oclifFile('help/util.js'), 'const ejs_1 = __importDefault(require("ejs"));'),
  {
    file: oclifFile('main.js'),
    from: 'const help_1 = require("./help");',
    to: 'const help_1 = __clonectlOnDemand(() => require("./help"));\nconst help_util_1 = require("./help/util");',
    helper: true,
  },
  {file: oclifFile('main.js'), from: '(0, help_1.getHelpFlagAdditions)(config)', to: '(0, help_util_1.getHelpFlagAdditions)(config)'},
  {file: oclifFile('main.js'), from: '(0, help_1.normalizeArgv)(config, argv)', to: '(0, help_util_1.normalizeArgv)(config, argv)'},
  onDemand(oclifFile('performance.js'), 'const node_perf_hooks_1 = require("node:perf_hooks");'),
  onDemand(oclifFile('parser/parse.js'), 'const node_readline_1 = require("node:readline");'),
  onDemand(oclifFile('util/os.js'), 'const node_child_process_1 = require("node:child_process");'),
  onDemand(oclifFile('ux/action/spinner.js'), 'const cli_spinners_1 = __importDefault(require("cli-spinners"));'),
  onDemand(oclifFile('errors/handle.js'), 'const clean_stack_1 = __importDefault(require("clean-stack"));'),
  onDemand(oclifFile('errors/errors/cli.js'), 'const clean_stack_1 = __importDefault(require("clean-stack"));'),
  onDemand(oclifFile('errors/errors/cli.js'), 'const indent_string_1 = __importDefault(require("indent-string"));'),
  onDemand(oclifFile('errors/errors/cli.js'), 'const wrap_ansi_1 = __importDefault(require("wrap-ansi"));'),
  onDemand(oclifFile('errors/errors/pretty-print.js'), 'const indent_string_1 = __importDefault(require("indent-string"));'),
  onDemand(oclifFile('errors/errors/pretty-print.js'), 'const wrap_ansi_1 = __importDefault(require("wrap-ansi"));'),
  // proper-lockfile (loaded when a sync, restore or admin command first takes a lock):
  // graceful-fs, as it loads, replaces fs.close and fs.closeSync process-wide and loads Node's
  // fs streams (~1 ms at the start of every sync); its EMFILE queueing is for programs holding
  // thousands of files open, where a lock uses a handful. Node's fs serves it.
  {file: packageFile('proper-lockfile/lib/lockfile.js'), from: "const fs = require('graceful-fs');", to: "const fs = require('fs');"},
  {file: packageFile('proper-lockfile/lib/adapter.js'), from: "const fs = require('graceful-fs');", to: "const fs = require('fs');"},
  // signal-exit checks its one argument with node:assert (~0.5 ms to load) at every call:
  // node:assert is loaded only when the check fails, to throw its error.
  {file: packageFile('proper-lockfile/node_modules/signal-exit/index.js'), from: "var assert = require('assert')", to: "var assert = {equal: function (a, b, m) { if (a != b) require('assert').equal(a, b, m) }}"},
]

/** Every patch of a file, in one onLoad (esbuild takes the first onLoad that answers). */
const oclifAtStart = {
  name: 'oclif-at-start',
  setup(b) {
    const applied = new Set()
    b.onStart(() => applied.clear())
    b.onLoad({filter: new RegExp([...new Set(oclifStartPatches.map((p) => p.file.source))].join('|'))}, async (args) => {
      const patches = oclifStartPatches.filter((p) => p.file.test(args.path))
      if (patches.length === 0) return undefined
      let text = await readFile(args.path, 'utf8')
      for (const p of patches) {
        if (!text.includes(p.from)) throw new Error(`${args.path}: oclif's text changed ('${p.from.split('\n').pop().trim()}'); review oclifStartPatches in scripts/bundle.mjs`)
        text = text.replace(p.from, p.to)
        applied.add(p)
      }
      // At the end: a function declaration is hoisted, and the file's 'use strict' stays first.
      if (patches.some((p) => p.helper)) text += onDemandHelper
      return {contents: computedImportsThroughLoader(text) ?? text, loader: 'js'}
    })
    b.onEnd((result) => {
      if (result.errors.length > 0) return
      const missed = oclifStartPatches.filter((p) => !applied.has(p))
      if (missed.length > 0) throw new Error(`oclif files no longer bundled: ${missed.map((p) => p.file).join(', ')}; review oclifStartPatches in scripts/bundle.mjs`)
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
 * Two code caches, each that of one process running several commands (bin/run.js picks one):
 * clonectl.cjs.cache, of a process that creates a group, adds a clone, shows its status,
 * synchronizes it (already in sync) and prints the version, with every command's module setup;
 * and clonectl.cjs.status.cache, of `status` and `--version` alone, for those two. A cache made
 * by `status` alone left a no-op `clone sync` compiling its own code at every start (89 ms; 83
 * with it cached), and the broad cache costs status ~1.5 ms more to deserialize (847 KB, 560).
 */
async function codeCache() {
  const scratch = mkdtempSync(join(tmpdir(), 'clonectl-cache-'))
  const state = ['--state-dir', join(scratch, 'state')]
  const make = (out, [first, ...runs], everyCommand) =>
    execFileSync(process.execPath, [join(root, 'bin', 'run.js'), ...first], {
      env: {...process.env, CLONECTL_WRITE_CODE_CACHE: JSON.stringify({out, runs, everyCommand})},
      stdio: 'ignore',
    })
  try {
    writeFileSync(join(scratch, 'source.img'), Buffer.alloc(4 * 1024 * 1024))
    const create = ['group', 'create', 'g', '--source', join(scratch, 'source.img'), ...state]
    const add = ['clone', 'add', 'g', 'c', '--path', join(scratch, 'clone.img'), '--create', ...state]
    make(`${out}.cache`, [create, add, ['status', ...state], ['clone', 'sync', 'g', 'c', ...state], ['--version']], true)
    make(`${out}.status.cache`, [['status', ...state], ['--version']], false)
  } finally {
    rmSync(scratch, {recursive: true, force: true})
  }
}

if (process.argv.includes('--code-cache')) await codeCache()
else {
  await bundle()
  await asciiOnly()
}
