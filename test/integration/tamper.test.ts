/**
 * The tamper matrix (issue: damaged or hand-edited state). Each state file of a group —
 * group.json, a fractured clone's delta map, a mirrored clone's delta map, P of an interrupted
 * protected restore, the lock — is deleted, emptied, truncated, damaged in its header or its
 * body, replaced by a directory or a symlink, or given a wrong owner or mode; then an operator
 * runs what they would: status, group list, clone sync, restore, serve, every fix the errors
 * print, clone remove, group destroy.
 *
 * Asserted for every case, whatever clonectl decides to do:
 * - no command crashes as "a bug" (exit 1) or exits with an undocumented code;
 * - no silent wrong result: a `clone sync` that succeeds leaves the clone equal to the source,
 *   a `restore` that succeeds leaves the source equal to the clone, and the clone unchanged;
 * - no write outside the group's own volumes: the other group's volumes and a decoy file
 *   (the target of planted symlinks) keep their bytes;
 * - the other group is unaffected: `status h` succeeds throughout;
 * - a printed fix names the real group and clone, never a GROUP or CLONE placeholder.
 */
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import {createHash} from 'node:crypto'
import {chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, truncateSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {ForwardSync} from '../../src/engine/ForwardSync.js'
import {HostIO} from '../../src/engine/HostIO.js'
import {RestoreSession} from '../../src/engine/Restore.js'
import {CloneGroup} from '../../src/group/CloneGroup.js'
import {addClone, createGroup, fractureClones} from '../../src/group/GroupAdmin.js'
import {ExitCode} from '../../src/errors/errors.js'
import {nodeFs} from '../../src/io/NodeDurableFs.js'
import {GroupStore} from '../../src/store/GroupStore.js'
import {ensureStateDir} from '../../src/store/stateDir.js'
import {Cli, type CliResult} from '../helpers/cli.js'
import {startServe} from '../helpers/serve.js'

const EXTENT = 64 * 1024
const SIZE = 32 * EXTENT
// Every documented status but 1 (a bug).
const DOCUMENTED = new Set<number>(Object.values(ExitCode).filter((c) => c !== ExitCode.bug))
const isRoot = process.getuid?.() === 0

function sha(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex')
}

function pattern(seed: number): Buffer {
  const b = Buffer.alloc(SIZE)
  for (let i = 0; i < SIZE; i += 4) b.writeUInt32LE((Math.imul(i + 1, 2654435761) ^ seed) >>> 0, i)
  return b
}

/**
 * A scratch world: group g (source, clone c1 fractured with host writes since, clone c2
 * mirrored), group h (its own source and clone), and a decoy file. With `restoring`, g has an
 * interrupted protected restore from c1 (P on disk, nothing copied yet).
 */
async function buildWorld(dir: string, restoring: boolean): Promise<void> {
  const ctx = {fs: nodeFs, store: new GroupStore(nodeFs, join(dir, 'state'))}
  await ensureStateDir(nodeFs, join(dir, 'state'))
  writeFileSync(join(dir, 'g-src.img'), pattern(1))
  writeFileSync(join(dir, 'h-src.img'), pattern(2))
  writeFileSync(join(dir, 'decoy.img'), pattern(3))
  for (const [group, clones] of [
    ['g', ['c1', 'c2']],
    ['h', ['c1']],
  ] as const) {
    await createGroup(ctx, {name: group, sourcePath: join(dir, `${group}-src.img`), extentSize: EXTENT})
    const g = await CloneGroup.open(ctx, group, {writable: true})
    for (const c of clones) {
      await addClone(g, {clone: c, path: join(dir, `${group}-${c}.img`), create: true})
      const s = await ForwardSync.start(g, {clone: c, command: 'test'})
      if (s instanceof ForwardSync) await s.run()
    }
    if (group === 'g') {
      await fractureClones(g, ['c1'])
      // Writes through the host path after the fracture: D[c1] records extents 3, 7 and 12.
      const host = new HostIO(g)
      for (const e of [3, 7, 12]) await host.write(e * EXTENT + 100, Buffer.alloc(5000, 0xee), false)
      await host.flush()
      if (restoring) {
        const r = await RestoreSession.start(g, {clone: 'c1', protected: true, command: 'test restore'})
        await r.suspend()
      }
    } else await fractureClones(g, ['c1'])
    await g.close({save: true})
  }
}

type Tamper = 'delete' | 'empty' | 'truncate' | 'flip-header' | 'flip-body' | 'zero-body' | 'dir' | 'symlink' | 'owner' | 'mode'

function tamper(dir: string, file: string, how: Tamper): void {
  const f = join(dir, 'state', 'groups', 'g', file)
  const size = readFileSync(f).length
  const xor = (at: number): void => {
    const b = readFileSync(f)
    if (at < b.length) b[at] ^= 0x5a
    writeFileSync(f, b)
  }
  switch (how) {
    case 'delete':
      rmSync(f)
      break
    case 'empty':
      truncateSync(f, 0)
      break
    case 'truncate':
      truncateSync(f, Math.floor(size / 2))
      break
    case 'flip-header':
      xor(file.endsWith('.json') ? Math.floor(size / 3) : 20)
      break
    case 'flip-body':
      // Every 512-byte sector of the bitmap area (or the middle of group.json).
      if (file.endsWith('.json')) xor(Math.floor((2 * size) / 3))
      else for (let at = 4096 + 37; at < size; at += 512) xor(at)
      break
    case 'zero-body':
      if (file.endsWith('.json')) writeFileSync(f, '{}')
      else {
        const b = readFileSync(f)
        b.fill(0, 4096)
        writeFileSync(f, b)
      }
      break
    case 'dir':
      rmSync(f)
      mkdirSync(f)
      break
    case 'symlink': {
      // An identical copy outside the state directory: following it would be trusting a file
      // that anyone with access there could change.
      const outside = join(dir, `outside-${file}`)
      renameSync(f, outside)
      symlinkSync(outside, f)
      break
    }
    case 'owner':
      chownSync(f, 65534, 65534)
      break
    case 'mode':
      chmodSync(f, 0o666)
      break
  }
}

const FILES: Array<{file: string; restoring: boolean}> = [
  {file: 'group.json', restoring: false},
  {file: 'clone-c1.map', restoring: false},
  {file: 'clone-c2.map', restoring: false},
  {file: 'restore.pmap', restoring: true},
]
const TAMPERS: Tamper[] = ['delete', 'empty', 'truncate', 'flip-header', 'flip-body', 'zero-body', 'dir', 'symlink', ...(isRoot ? (['owner', 'mode'] as const) : (['mode'] as const))]

describe('tamper matrix: damaged or hand-edited state never yields a wrong copy nor spreads', {concurrency: 1}, () => {
  let root = ''
  before(() => {
    root = mkdtempSync(join(tmpdir(), 'clonectl-tamper-'))
  })
  after(() => rmSync(root, {recursive: true, force: true}))

  for (const {file, restoring} of FILES)
    for (const how of TAMPERS)
      test(`${file} ${how}`, async () => {
        const dir = join(root, `${file}-${how}`)
        // A world of its own (group.json names its volumes by absolute path: no copying).
        mkdirSync(dir)
        await buildWorld(dir, restoring)
        tamper(dir, file, how)
        const cli = new Cli(join(dir, 'state'))
        const outside = {h: sha(join(dir, 'h-src.img')), hc: sha(join(dir, 'h-c1.img')), decoy: sha(join(dir, 'decoy.img'))}
        const log: string[] = []
        const check = (what: string, r: CliResult): void => {
          log.push(`${what}: exit ${r.code} ${r.stderr.split('\n')[0]}`)
          assert.ok(r.code !== null && DOCUMENTED.has(r.code), `${what} exited ${r.code ?? r.signal} (undocumented):\n${r.stdout}\n${r.stderr}`)
          assert.doesNotMatch(r.stderr + r.stdout, /a bug in clonectl|at [\w.<>]+ \(.*:\d+:\d+\)/, `${what} reported a bug:\n${r.stderr}`)
          const fix = (r.json as {error?: {fix?: string}} | undefined)?.error?.fix
          if (fix) assert.doesNotMatch(fix, /\b(GROUP|CLONE)\b/, `${what}: the fix has a placeholder: ${fix}`)
        }
        const untouched = async (what: string): Promise<void> => {
          assert.equal(sha(join(dir, 'h-src.img')), outside.h, `${what} wrote group h's source`)
          assert.equal(sha(join(dir, 'h-c1.img')), outside.hc, `${what} wrote group h's clone`)
          assert.equal(sha(join(dir, 'decoy.img')), outside.decoy, `${what} wrote the decoy`)
          const h = await cli.run(['status', 'h', '--json'])
          assert.equal(h.code, 0, `after ${what}, status of the other group failed:\n${h.stderr}`)
        }
        const fixes = new Set<string>()
        const noteFix = (r: CliResult): void => {
          const fix = (r.json as {error?: {fix?: string}} | undefined)?.error?.fix ?? ''
          for (const m of fix.matchAll(/`clonectl ([^`]+)`/g)) fixes.add(m[1])
        }
        try {
          for (const args of [['status', '--json'], ['status', 'g', '--json'], ['group', 'list', '--json']]) {
            const r = await cli.run(args)
            check(args.join(' '), r)
            noteFix(r)
          }
          await untouched('status')

          const c1Before = sha(join(dir, 'g-c1.img'))
          if (!restoring) {
            const r = await cli.run(['clone', 'sync', 'g', 'c1', '--json'])
            check('clone sync', r)
            noteFix(r)
            if (r.code === 0) assert.equal(sha(join(dir, 'g-c1.img')), sha(join(dir, 'g-src.img')), `clone sync succeeded but the clone differs from the source: ${r.stdout} ${r.stderr}`)
            await untouched('clone sync')
            if (r.code === 0) await cli.run(['clone', 'fracture', 'g', 'c1'])
          }
          const c1 = sha(join(dir, 'g-c1.img'))
          const r = await cli.run(['restore', 'g', ...(restoring ? [] : ['c1']), '--yes', '--json'])
          check('restore', r)
          noteFix(r)
          if (r.code === 0) {
            assert.equal(sha(join(dir, 'g-src.img')), c1, 'restore succeeded but the source differs from the clone')
            assert.equal(sha(join(dir, 'g-c1.img')), c1, 'restore wrote the clone (INV-3)')
          } else if (restoring) assert.equal(sha(join(dir, 'g-c1.img')), c1Before, 'a refused restore wrote the clone')
          await untouched('restore')

          // serve: it serves (and stops cleanly), or refuses with a documented code.
          try {
            const s = await startServe(join(dir, 'state'), 'g', [], 20_000)
            const e = await s.stop()
            assert.ok(e.code !== null && DOCUMENTED.has(e.code), `serve stopped with ${e.code ?? e.signal}:\n${s.stderr()}`)
          } catch (error) {
            const m = /exited (\d+)/.exec((error as Error).message)
            assert.ok(m && DOCUMENTED.has(Number(m[1])) && Number(m[1]) !== 0, `serve: ${(error as Error).message}`)
            assert.doesNotMatch((error as Error).message, /a bug in clonectl/)
          }
          await untouched('serve')

          for (const fix of [...fixes].slice(0, 3)) {
            const args = fix.split(/\s+/).filter(Boolean)
            if (args.includes('--force') && args[0] === 'restore') args.push('--yes')
            const f = await cli.run([...args, '--json'])
            check(`the printed fix \`clonectl ${fix}\``, f)
            await untouched(`the printed fix \`clonectl ${fix}\``)
          }

          const rm = await cli.run(['clone', 'remove', 'g', 'c2', '--yes', '--json'])
          check('clone remove', rm)
          await untouched('clone remove')
          const d = await cli.run(['group', 'destroy', 'g', '--force', '--yes', '--json'])
          check('group destroy', d)
          await untouched('group destroy')
          const list = await cli.run(['group', 'list', '--json'])
          check('group list after destroy', list)
        } catch (error) {
          ;(error as Error).message += `\nsteps so far:\n${log.join('\n')}`
          throw error
        } finally {
          if (existsSync(dir)) spawnSync('chmod', ['-R', 'u+rwX', dir])
          rmSync(dir, {recursive: true, force: true})
        }
      })
})
