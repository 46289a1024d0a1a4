#!/usr/bin/env node
/**
 * Mutation check of the crash suite (issue 12): each mutation below removes one ordering
 * step the crash invariants (DESIGN §4) depend on. For each, a scratch copy of the
 * repository gets that one change, is built with tsc, and the mutation-killing test set runs
 * against it; some test must fail (KILLED). The unmutated copy must pass first.
 *
 * A pattern that does not match exactly once is an error, not a kill: a stale pattern must
 * be loud. An "equivalent" mutant is one shown (see its reason) to change no observable
 * behaviour: it is run and reported, and its survival is not a failure.
 *
 * Usage: npm run mutate [-- NAME ...]   (names: run only those mutations)
 * Exit: 0 when every (non-equivalent) mutation was killed; 1 otherwise.
 */
import {spawnSync} from 'node:child_process'
import {cpSync, existsSync, mkdtempSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..')

/**
 * The mutation-killing set; a mutant run stops at the first failing file. The power-loss
 * model comes first, so the table shows whether it (and not only a targeted test) catches
 * each mutant; then the targeted tests, fastest first.
 */
const KILL_SET = [
  'test/crash/nbdPowerLoss.test.js',
  'test/unit/memoryFs.test.js',
  'test/unit/groupStore.test.js',
  'test/crash/setAhead.test.js',
  'test/crash/powerLoss.test.js',
  'test/unit/engineOrdering.test.js',
  'test/unit/restoreStartRace.test.js',
  'test/crash/holes.test.js',
]

/**
 * find: an exact string or a RegExp that must match exactly once in `file`; replace: the
 * text put in its place (a RegExp's groups may be used as $1…).
 */
const MUTATIONS = [
  {
    name: 'nbd-flush-acked-early',
    what: 'the NBD server acknowledges FLUSH before the backend flush settled',
    file: 'src/nbd/NbdServer.ts',
    find: /\bp = backend\.flush\(\)/,
    replace: 'p = (backend.flush().catch(() => undefined), Promise.resolve())',
  },
  {
    name: 'nbd-fua-ignored',
    what: 'the NBD server ignores FUA on WRITE',
    file: 'src/nbd/NbdServer.ts',
    find: /const fua = \(r\.flags & CmdFlag\.FUA\) !== 0/,
    replace: 'const fua = false',
  },
  {
    name: 'restore-p-staged-early',
    what: 'the restore path stages P before the host write instead of after',
    file: 'src/engine/Restore.ts',
    find: /^([ \t]*)P\.setVolatile\(s, e\)$/m,
    replace: '$1P.setVolatile(s, e)\n$1P.stage(s, e)',
  },
  {
    name: 'cod-no-onwrite',
    what: 'CodEngine does not call onWrite (the source is not flushed for a COD copy)',
    file: 'src/engine/CodEngine.ts',
    find: /^[ \t]*o\.onWrite\?\.\(\)\n/m,
    replace: '\n',
  },
  {
    name: 'sync-punch-no-onwrite',
    what: 'a sync chunk that only punched holes does not call onWrite (the clone is not flushed before the clears are durable)',
    file: 'src/engine/SyncEngine.ts',
    find: 'if (written > 0 || zeroed > 0) this.o.onWrite?.()',
    replace: 'if (written > 0) this.o.onWrite?.()',
  },
  {
    name: 'groupstore-no-dir-fsync',
    what: 'GroupStore.create does not fsync the groups directory',
    file: 'src/store/GroupStore.ts',
    find: /^[ \t]*await this\.fs\.fsyncDir\(this\.groupsDir\)\n/m,
    replace: '\n',
  },
  {
    name: 'checkpoint-d-before-p',
    what: 'the checkpointer commits the delta maps before P',
    file: 'src/engine/Checkpointer.ts',
    find: /^([ \t]*)(if \(p && !abandoned\.has\(p\)\) await p\.commitCheckpoint\(tickets\[0\]\)\n)([\s\S]*?\n\1\}\n)/m,
    replace: '$3$1$2',
    equivalent:
      'HostIO sets D[c][e] durably before every host write to e and that set withdraws any pending clear of D[c][e], so no durable D[c] clear can uncover a host write that only P would cover (see the comment in Checkpointer.once)',
  },
  {
    name: 'map-fastpath-no-wait',
    what: "PersistentMap.setDurable's fast path does not wait for the commit in flight",
    file: 'src/map/PersistentMap.ts',
    find: /\?\s*this\.inflight\s*:\s*undefined/,
    replace: '? undefined : undefined',
  },
  {
    name: 'checkpoint-commit-not-awaited',
    what: 'the checkpointer does not await the map commits',
    file: 'src/engine/Checkpointer.ts',
    find: /await (p\.commitCheckpoint\(tickets\[0\]\))([\s\S]*?)await (ds\[i\]\.commitCheckpoint\(tickets\[first \+ i\]\))/,
    replace: 'void $1$2void $3',
  },
  {
    name: 'restore-read-passes-overwrite',
    what: 'a host read during a protected restore does not wait for a write replacing a not yet restored extent whole',
    file: 'src/engine/Restore.ts',
    find: ' && !this.overwriting.has(e))',
    replace: ')',
  },
  {
    name: 'hostio-read-past-restore-setup',
    what: 'a host read does not wait for a restore being set up (reads the pre-restore source)',
    file: 'src/engine/HostIO.ts',
    find: /^[ \t]*await this\.gate\.waitOpen\(\)\n/m,
    replace: '\n',
  },
]

function run(cmd, args, cwd, label) {
  const t0 = Date.now()
  const r = spawnSync(cmd, args, {cwd, encoding: 'utf8', maxBuffer: 256 * 1024 * 1024, env: {...process.env, FORCE_COLOR: '0'}})
  return {ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}`, ms: Date.now() - t0, label}
}

/** Apply `m` to `text`: the new text, or throw when the pattern does not match exactly once. */
function apply(m, text) {
  const re = typeof m.find === 'string' ? new RegExp(m.find.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'), 'g') : new RegExp(m.find.source, m.find.flags.includes('g') ? m.find.flags : `${m.find.flags}g`)
  const hits = [...text.matchAll(re)].length
  if (hits !== 1) throw new Error(`pattern ${re} matches ${hits} times in ${m.file} (must be exactly once): update the mutation`)
  return text.replace(new RegExp(re.source, re.flags.replace('g', '')), m.replace)
}

/** Build with tsc only, then run the kill set file by file; stop at the first failure. */
function check(dir) {
  const tsc = run(process.execPath, [join(dir, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], dir, 'tsc')
  if (!tsc.ok) return {built: false, failed: 'tsc', out: tsc.out}
  for (const f of KILL_SET) {
    const t = run(process.execPath, ['--test', '--test-concurrency=1', join('dist', f)], dir, f)
    if (!t.ok) return {built: true, failed: f, out: t.out}
  }
  return {built: true}
}

function firstFailure(out) {
  const lines = out.split('\n')
  const i = lines.findIndex((l) => /^\s*not ok /.test(l))
  const err = lines.slice(i >= 0 ? i : 0).find((l) => /^\s*error:/.test(l) && !/subtests? failed/.test(l))
  return (err ?? lines.find((l) => /not ok/.test(l)) ?? '').trim().slice(0, 160)
}

const only = process.argv.slice(2)
const selected = only.length ? MUTATIONS.filter((m) => only.includes(m.name)) : MUTATIONS
if (only.length && selected.length !== only.length) {
  console.error(`unknown mutation name(s): ${only.filter((n) => !MUTATIONS.some((m) => m.name === n)).join(', ')}; known: ${MUTATIONS.map((m) => m.name).join(', ')}`)
  process.exit(2)
}

// Every pattern is checked against the real tree first: a stale one stops the run at once.
const stale = []
for (const m of selected) {
  try {
    apply(m, readFileSync(join(repo, m.file), 'utf8'))
  } catch (error) {
    stale.push(`${m.name}: ${error.message}`)
  }
}
if (stale.length) {
  console.error(`STALE PATTERN(S):\n  ${stale.join('\n  ')}`)
  process.exit(1)
}

const scratch = mkdtempSync(join(tmpdir(), 'clonectl-mutate-'))
try {
  for (const p of ['src', 'test', 'commands', 'bench', 'bin', 'package.json', 'tsconfig.json']) if (existsSync(join(repo, p))) cpSync(join(repo, p), join(scratch, p), {recursive: true})
  symlinkSync(realpathSync(join(repo, 'node_modules')), join(scratch, 'node_modules'))
  console.log(`scratch copy: ${scratch}`)

  const t0 = Date.now()
  const base = check(scratch)
  if (!base.built || base.failed) {
    console.error(`the UNMUTATED tree fails (${base.failed}): fix that first\n${base.out.slice(-4000)}`)
    process.exit(1)
  }
  console.log(`unmutated tree: kill set passes (${((Date.now() - t0) / 1000).toFixed(0)} s)`)

  const rows = []
  for (const m of selected) {
    const path = join(scratch, m.file)
    const original = readFileSync(path, 'utf8')
    const t1 = Date.now()
    writeFileSync(path, apply(m, original))
    let r
    try {
      r = check(scratch)
    } finally {
      writeFileSync(path, original)
    }
    const secs = ((Date.now() - t1) / 1000).toFixed(0)
    let verdict
    if (!r.built) verdict = 'BUILD FAILED'
    else if (r.failed) verdict = 'KILLED'
    else verdict = m.equivalent ? 'EQUIVALENT' : 'SURVIVED'
    rows.push({m, verdict, by: r.failed ? `${r.failed}: ${firstFailure(r.out)}` : m.equivalent ? `equivalent mutant (${m.equivalent})` : '', secs})
    console.log(`${verdict.padEnd(12)} ${m.name.padEnd(30)} ${secs.padStart(4)} s  ${rows.at(-1).by}`)
    if (verdict === 'BUILD FAILED') console.log(r.out.slice(-2000))
  }

  console.log('\n| mutation | what it removes | result |\n|---|---|---|')
  for (const r of rows) console.log(`| ${r.m.name} | ${r.m.what} | ${r.verdict}${r.verdict === 'EQUIVALENT' ? ` (${r.m.equivalent})` : ''} |`)
  const bad = rows.filter((r) => r.verdict === 'SURVIVED' || r.verdict === 'BUILD FAILED')
  console.log(`\n${rows.filter((r) => r.verdict === 'KILLED').length} killed, ${bad.length} survived or did not build, ${rows.filter((r) => r.verdict === 'EQUIVALENT').length} equivalent`)
  process.exitCode = bad.length ? 1 : 0
} finally {
  rmSync(scratch, {recursive: true, force: true})
}
