/**
 * clonectl through its real entry point (bin/run.js → dist/commands), each test in its own
 * state directory under a temp dir: help, the whole clone lifecycle (create, add --create,
 * host writes, incremental sync, fracture, status), every refusal with its message and exit
 * status, --json errors, a corrupt map, a held lock, a source changed behind clonectl's
 * back, protected restore and verify.
 *
 * Host writes go through the library (HostIO on a group opened with withGroup, under the
 * group lock), which is the same path `clonectl serve` gives NBD clients.
 */
import assert from 'node:assert/strict'
import {randomBytes} from 'node:crypto'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {HostIO} from '../../src/engine/HostIO.js'
import {RestoreSession} from '../../src/engine/Restore.js'
import {withGroup} from '../../src/group/GroupSession.js'
import type {CloneStatus, GroupStatus} from '../../src/group/GroupStatus.js'
import {nodeFs} from '../../src/io/NodeDurableFs.js'
import {GroupStore} from '../../src/store/GroupStore.js'
import {Cli, cmp, KiB, MiB, pwrite, randomImage, sha256, tempDir} from '../helpers/cli.js'
import {startServe} from '../helpers/serve.js'
import {assertJsonError} from '../helpers/jsonContract.js'

const EXTENT = 64 * KiB
let dir: string
let cli: Cli

before(async () => {
  dir = await tempDir('cli')
  cli = new Cli(join(dir, 'state'))
})
after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})

/** Host writes through the library, under the group lock, flushed. */
async function hostWrite(group: string, writes: Array<{offset: number; data: Uint8Array}>): Promise<void> {
  const ctx = {fs: nodeFs, store: new GroupStore(nodeFs, cli.stateDir)}
  await withGroup(ctx, group, {command: 'test host writes'}, async (g) => {
    const io = new HostIO(g)
    for (const w of writes) await io.write(w.offset, Buffer.from(w.data), false)
    await io.flush()
  })
}

/** The extents a set of writes touches. */
function touched(writes: Array<{offset: number; data: Uint8Array}>): Set<number> {
  const s = new Set<number>()
  for (const w of writes) for (let e = Math.floor(w.offset / EXTENT); e <= Math.floor((w.offset + w.data.length - 1) / EXTENT); e++) s.add(e)
  return s
}

/** A group with an 8 MiB (default) random source and a synchronized clone c (created). */
async function groupWithClone(name: string, size = 8 * MiB): Promise<{src: string; clone: string}> {
  const src = join(dir, `${name}-src.img`)
  const clone = join(dir, `${name}-c.img`)
  await randomImage(src, size, name.length + size)
  await cli.ok(['group', 'create', name, '--source', src, '--extent-size', '64K'])
  await cli.ok(['clone', 'add', name, 'c', '--path', clone, '--create'])
  return {src, clone}
}

function cloneStatus(s: GroupStatus, name = 'c'): CloneStatus {
  const c = s.clones.find((x) => x.name === name)
  assert.ok(c, `status has clone ${name}: ${JSON.stringify(s)}`)
  return c
}

/** Assert an error result: exit status, message on stderr matching every pattern. */
function assertError(r: {code: number | null; stderr: string; stdout: string}, code: number, ...patterns: Array<string | RegExp>): void {
  assert.equal(r.code, code, `exit ${r.code}, expected ${code}; stderr: ${r.stderr} stdout: ${r.stdout}`)
  for (const p of patterns) {
    if (typeof p === 'string') assert.ok(r.stderr.includes(p), `stderr ${JSON.stringify(r.stderr)} should name ${p}`)
    else assert.match(r.stderr, p)
  }
}

describe('help', () => {
  test('--help lists the topics and top-level commands with their summaries; help --nested-commands lists every command', async () => {
    const r = await cli.ok(['--help'])
    for (const [cmd, summary] of [
      ['clone', /Add, synchronize, fracture and remove/],
      ['group', /Create, list and destroy clone groups/],
      ['drill', /Run a recovery drill/],
      ['restore', /Restore the source from a clone/],
      ['serve', /Serve a group's source over NBD/],
      ['status', /Show each clone/],
      ['verify', /Compare source and clone/],
    ] as const) {
      assert.match(r.stdout, new RegExp(`^\\s+${cmd}\\s+\\S`, 'm'), `--help lists ${cmd}`)
      assert.match(r.stdout.replace(/\s+/g, ' '), summary, `--help gives the summary of ${cmd}`)
    }
    const all = (await cli.ok(['help', '--nested-commands'])).stdout
    const flat = all.replace(/\s+/g, ' ')
    for (const [cmd, summary] of [
      ['clone add', 'Add a clone to a group'],
      ['clone fracture', 'Fracture clones'],
      ['clone remove', 'Remove a clone from its group'],
      ['clone sync', 'Synchronize a clone with the source'],
      ['group create', 'Create a clone group'],
      ['group destroy', "Destroy a clone group's state"],
      ['group list', 'List clone groups'],
      ['drill', 'Run a recovery drill'],
      ['restore', 'Restore the source from a clone'],
      ['serve', "Serve a group's source"],
      ['status', 'Show each clone'],
      ['verify', 'Compare source and clone'],
    ]) {
      assert.ok(flat.includes(` ${cmd} ${summary}`), `help --nested-commands lists "${cmd}" with its summary`)
    }
    const sub = await cli.ok(['clone', 'sync', '--help'])
    assert.match(sub.stdout, /--rate/)
    assert.match(sub.stdout, /--wait/)
  })
})

describe('clone lifecycle', () => {
  test('create → add --create (cmp identical) → fracture → host writes → sync copies only the dirty extents → fracture', async () => {
    const src = join(dir, 'life-src.img')
    const clone = join(dir, 'life-c.img')
    await randomImage(src, 8 * MiB + 4 * KiB, 7) // not a multiple of the extent size
    const created = await cli.json(['group', 'create', 'life', '--source', src, '--extent-size', '64K'])
    assert.ok(created, 'group create --json prints a result')
    const added = await cli.json(['clone', 'add', 'life', 'c', '--path', clone, '--create'])
    assert.equal(added.sync.completed, true)
    assert.equal(added.sync.copiedBytes + added.sync.skippedBytes, 8 * MiB + 4 * KiB)
    assert.ok(cmp(src, clone).same, 'clone is byte-identical after add')
    assert.equal((await fsp.stat(clone)).size, 8 * MiB + 4 * KiB)

    let s = await cli.status('life')
    assert.equal(s.extentSize, EXTENT)
    assert.equal(s.extentCount, 129)
    assert.equal(cloneStatus(s).state, 'synchronized')
    assert.equal(cloneStatus(s).dirtyExtents, 0)
    assert.equal(cloneStatus(s).inSyncPercent, 100)
    assert.equal(s.operation, undefined)

    // Already synchronized: says so, exit 0, copies nothing.
    const again = await cli.ok(['clone', 'sync', 'life', 'c'])
    assert.match(again.stdout, /already synchronized/)
    const againJson = await cli.json(['clone', 'sync', 'life', 'c'])
    assert.equal(againJson.alreadySynchronized, true)
    assert.equal(againJson.copiedBytes, 0)

    const fr = await cli.json(['clone', 'fracture', 'life', 'c'])
    assert.equal(fr[0].state, 'fractured')
    assert.equal(cloneStatus(await cli.status('life')).state, 'fractured')
    // Fracturing again is fine (the end state already holds).
    await cli.ok(['clone', 'fracture', 'life', 'c'])

    const writes = [
      {offset: 0, data: randomBytes(100)},
      {offset: 3 * EXTENT + 10, data: randomBytes(200)},
      {offset: 80 * EXTENT - 1, data: randomBytes(2)}, // crosses an extent boundary
      {offset: 8 * MiB + 4 * KiB - 10, data: randomBytes(10)}, // the short last extent
    ]
    const dirty = touched(writes)
    assert.equal(dirty.size, 5)
    await hostWrite('life', writes)
    assert.equal(cmp(src, clone).same, false, 'a fractured clone does not see host writes')

    s = await cli.status('life')
    const cs = cloneStatus(s)
    assert.equal(cs.state, 'fractured')
    assert.equal(cs.dirtyExtents, dirty.size)
    assert.equal(cs.dirtyBytes, 4 * EXTENT + 4 * KiB, 'the short last extent counts its real bytes')
    assert.ok(cs.inSyncPercent < 100)

    const synced = await cli.json(['clone', 'sync', 'life', 'c'])
    assert.equal(synced.completed, true)
    assert.equal(synced.compared, false)
    assert.equal(synced.totalExtents, dirty.size)
    assert.equal(synced.copiedBytes, 4 * EXTENT + 4 * KiB, `copied only the ${dirty.size} dirty extents`)
    assert.ok(cmp(src, clone).same, 'identical after the incremental sync')
    s = await cli.status('life')
    assert.equal(cloneStatus(s).state, 'synchronized')
    assert.equal(cloneStatus(s).dirtyExtents, 0)
    assert.ok(cloneStatus(s).lastSyncAt)

    // Mirrored now: a host write reaches both.
    await hostWrite('life', [{offset: 5 * EXTENT, data: randomBytes(EXTENT)}])
    assert.ok(cmp(src, clone).same, 'a synchronized clone mirrors host writes')
    assert.equal(cloneStatus(await cli.status('life')).dirtyExtents, 0)

    await cli.ok(['clone', 'fracture', 'life', 'c'])
    s = await cli.status('life')
    assert.equal(cloneStatus(s).state, 'fractured')
    assert.ok(cloneStatus(s).lastFractureAt)

    const list = await cli.json(['group', 'list'])
    assert.ok(JSON.stringify(list).includes('life'))
  })
})

describe('refusals: message and exit status', () => {
  test('a clone that is the source (same path, hard link, symlink) is refused with exit 5 naming both paths', async () => {
    const src = join(dir, 'ref-src.img')
    await randomImage(src, 1 * MiB, 3)
    await cli.ok(['group', 'create', 'ref', '--source', src])
    let r = await cli.run(['clone', 'add', 'ref', 'same', '--path', src])
    assertError(r, 5, src)
    const hard = join(dir, 'ref-hardlink.img')
    await fsp.link(src, hard)
    r = await cli.run(['clone', 'add', 'ref', 'hard', '--path', hard])
    assertError(r, 5, src, hard)
    const sym = join(dir, 'ref-symlink.img')
    await fsp.symlink(src, sym)
    r = await cli.run(['clone', 'add', 'ref', 'sym', '--path', sym])
    assertError(r, 5, src, sym)
    // Nothing was added.
    assert.deepEqual((await cli.status('ref')).clones, [])
  })

  test('a clone smaller than the source is refused with exit 5 naming both sizes', async () => {
    const src = join(dir, 'small-src.img')
    const small = join(dir, 'small-c.img')
    await randomImage(src, 1 * MiB, 4)
    await randomImage(small, 512 * KiB, 5)
    await cli.ok(['group', 'create', 'small', '--source', src])
    const r = await cli.run(['clone', 'add', 'small', 'c', '--path', small])
    assertError(r, 5, small, String(MiB), String(512 * KiB))
    assert.equal(await sha256(small), await sha256(small), 'untouched') // still readable
  })

  test('a clone already used by another group is refused with exit 5 naming that group', async () => {
    const a = await groupWithClone('usedA', 1 * MiB)
    const src = join(dir, 'usedB-src.img')
    await randomImage(src, 1 * MiB, 6)
    await cli.ok(['group', 'create', 'usedB', '--source', src])
    const before = await sha256(a.clone)
    let r = await cli.run(['clone', 'add', 'usedB', 'c', '--path', a.clone])
    assertError(r, 5, 'usedA', a.clone)
    // Another group's source too.
    r = await cli.run(['clone', 'add', 'usedB', 'c2', '--path', a.src])
    assertError(r, 5, 'usedA', a.src)
    assert.equal(await sha256(a.clone), before, "the other group's clone is untouched")
  })

  test('unknown group → 3; bad extent size → 2; bad size → 2; --json error object', async () => {
    let r = await cli.run(['clone', 'sync', 'nope', 'c'])
    assertError(r, 3, 'nope')
    r = await cli.run(['status', 'nope'])
    assertError(r, 3, 'nope')
    const src = join(dir, 'usage-src.img')
    await randomImage(src, 1 * MiB, 8)
    for (const bad of ['3K', '2K', '128M', '1X']) {
      r = await cli.run(['group', 'create', 'usage', '--source', src, '--extent-size', bad])
      assert.equal(r.code, 2, `--extent-size ${bad}: exit ${r.code}, stderr ${r.stderr}`)
      assert.match(r.stderr, /extent size|not a size/)
    }
    r = await cli.run(['group', 'create', 'bad/name', '--source', src])
    assert.equal(r.code, 2, r.stderr)
    r = await cli.run(['clone', 'sync', 'nope', 'c', '--wait=soon'])
    assertError(r, 2, /--wait expects seconds/)
    r = await cli.run(['clone', 'sync', 'nope', 'c', '--rate', 'fast'])
    assertError(r, 2, /--rate/)
    r = await cli.run(['clone', 'sync', 'nope', 'c', '--json'])
    assert.equal(r.code, 3)
    assert.deepEqual(Object.keys(r.json).sort(), ['error', 'status'])
    assert.equal(r.json.status, 3)
    assert.equal(r.json.error.code, 'NOT_FOUND')
    assert.equal(typeof r.json.error.message, 'string')
    assert.match(r.json.error.message, /nope/)
    assert.equal(typeof r.json.error.fix, 'string')
  })

  test('an out-of-sync clone: fracture → 6, restore without --force → 6 (also as --json), and the source is untouched', async () => {
    const src = join(dir, 'oos-src.img')
    await randomImage(src, 1 * MiB, 9)
    await cli.ok(['group', 'create', 'oos', '--source', src])
    await cli.ok(['clone', 'add', 'oos', 'c', '--path', join(dir, 'oos-c.img'), '--create', '--no-sync'])
    assert.equal(cloneStatus(await cli.status('oos')).state, 'out-of-sync')
    const before = await sha256(src)
    let r = await cli.run(['clone', 'fracture', 'oos', 'c'])
    assertError(r, 6, /out-of-sync/, /clone sync oos c/)
    r = await cli.run(['restore', 'oos', 'c', '--yes'])
    assertError(r, 6, /out-of-sync/, /--force/)
    r = await cli.run(['restore', 'oos', 'c', '--yes', '--json'])
    assert.equal(r.code, 6)
    assert.equal(r.json.status, 6)
    assert.equal(r.json.error.code, 'BAD_STATE')
    assert.match(r.json.error.message, /out-of-sync/)
    assert.match(r.json.error.fix, /--force/)
    assert.equal(await sha256(src), before)
    assert.equal(cloneStatus(await cli.status('oos')).state, 'out-of-sync')
  })

  test('a corrupt, truncated or missing map file is named and read as every extent to copy, never as empty; that clone alone is affected', async () => {
    await groupWithClone('corrupt', 1 * MiB)
    const mapPath = join(cli.stateDir, 'groups', 'corrupt', 'clone-c.map')
    const extents = (1 * MiB) / EXTENT
    for (const damage of [
      async () => {
        const fh = await fsp.open(mapPath, 'r+')
        await fh.write(Buffer.from([0xff]), 0, 1, 20)
        await fh.close()
      },
      () => fsp.truncate(mapPath, 100),
      () => fsp.rm(mapPath),
    ]) {
      await damage()
      const s = await cli.status('corrupt')
      assert.equal(s.clones[0].state, 'out-of-sync')
      assert.ok(s.clones[0].stateReason.includes(mapPath), s.clones[0].stateReason)
      assert.equal(s.clones[0].dirtyExtents, extents, 'every extent to copy, never an empty map')
      const r = await cli.run(['clone', 'sync', 'corrupt', 'c', '--json'])
      assert.equal(r.code, 0, r.stderr)
      assert.ok(r.stderr.includes(mapPath) && /map damaged/.test(r.stderr), r.stderr)
      assert.equal(r.json.totalExtents, extents)
      assert.equal((await cli.status('corrupt')).clones[0].state, 'synchronized')
    }
  })

  test('restore without --yes and without a terminal refuses (exit 5) and changes nothing', async () => {
    const {src} = await groupWithClone('noyes', 1 * MiB)
    await cli.ok(['clone', 'fracture', 'noyes', 'c'])
    const before = await sha256(src)
    const r = await cli.run(['restore', 'noyes', 'c'])
    assertError(r, 5, /--yes/)
    assert.equal(await sha256(src), before)
    const s = await cli.status('noyes')
    assert.equal(s.operation, undefined)
    assert.equal(cloneStatus(s).state, 'fractured')
  })
})

describe('a held lock', () => {
  test('a slow sync holds the lock: another mutating command fails fast with exit 4 naming its pid, and succeeds with --wait=60 after it ends', async () => {
    const src = join(dir, 'lock-src.img')
    await randomImage(src, 4 * MiB, 10)
    await cli.ok(['group', 'create', 'lock', '--source', src])
    await cli.ok(['clone', 'add', 'lock', 'c', '--path', join(dir, 'lock-c.img'), '--create', '--no-sync'])
    const holderFile = join(cli.stateDir, 'groups', 'lock', 'lock.holder.json')
    const bg = cli.spawnBackground(['clone', 'sync', 'lock', 'c', '--rate', '1M'])
    try {
      await bg.until(async () => {
        try {
          return JSON.parse(await fsp.readFile(holderFile, 'utf8')).pid === bg.pid
        } catch {
          return false
        }
      }, 'the background sync to take the lock')
      const t0 = Date.now()
      let r = await cli.run(['clone', 'fracture', 'lock', 'c'])
      assertError(r, 4, `pid ${bg.pid}`, /clone sync lock c/, /--wait/)
      assert.ok(Date.now() - t0 < 10_000, 'fails fast')
      r = await cli.run(['clone', 'fracture', 'lock', 'c', '--json'])
      assert.equal(r.json?.status, 4)
      assert.equal(r.json.error.code, 'LOCK_HELD')
      // status is not mutating: it shows the holder.
      const s = await cli.status('lock')
      assert.equal(s.lockedBy?.pid, bg.pid)
      r = await cli.run(['clone', 'fracture', 'lock', 'c', '--wait=60'])
      assert.equal(r.code, 0, r.stderr)
      const first = await bg.done
      assert.equal(first.code, 0, first.stderr)
      assert.equal(cloneStatus(await cli.status('lock')).state, 'fractured', 'the fracture ran after the sync')
      assert.ok(cmp(src, join(dir, 'lock-c.img')).same)
    } finally {
      bg.kill('SIGKILL')
      await bg.done.catch(() => undefined)
    }
  })
})

describe('changes behind clonectl\'s back', () => {
  test('a source changed outside clonectl: the next sync says so on stderr, compares, and the result is identical', async () => {
    const {src, clone} = await groupWithClone('behind', 4 * MiB)
    await cli.ok(['clone', 'fracture', 'behind', 'c'])
    await pwrite(src, 2 * MiB + 5, randomBytes(1000))
    await pwrite(src, 100, randomBytes(10))
    const r = await cli.ok(['clone', 'sync', 'behind', 'c', '--json'])
    assert.match(r.stderr, /changed outside clonectl/)
    assert.equal(r.json.compared, true)
    assert.equal(r.json.completed, true)
    assert.equal(r.json.totalExtents, 64, 'every extent compared')
    assert.ok(cmp(src, clone).same)
    const s = await cli.status('behind')
    assert.equal(cloneStatus(s).state, 'synchronized')
    assert.equal(cloneStatus(s).trusted, true)
    // Trusted again: the next sync is a no-op.
    assert.equal((await cli.json(['clone', 'sync', 'behind', 'c'])).alreadySynchronized, true)
  })

  test('a clone whose image vanished: the group stays usable, the clone is fractured and records host writes, what needs it is refused by name; back, it syncs equal', async () => {
    const {src, clone} = await groupWithClone('gone', 2 * MiB)
    const away = `${clone}.away`
    await fsp.rename(clone, away)
    const d = join(dir, 'gone-d.img')
    let r = await cli.ok(['clone', 'add', 'gone', 'd', '--path', d, '--create'])
    assert.match(r.stderr, /clone c of group gone is unavailable: .*gone-c\.img does not exist; fractured/)
    let c = cloneStatus(await cli.status('gone'))
    assert.equal(c.state, 'fractured')
    assert.match(c.stateReason ?? '', /its volume was unavailable \(.*does not exist\)/)
    const writes = [{offset: 3 * EXTENT + 100, data: randomBytes(EXTENT)}, {offset: 20 * EXTENT, data: randomBytes(10)}]
    await hostWrite('gone', writes)
    c = cloneStatus(await cli.status('gone'))
    assert.equal(c.dirtyExtents, touched(writes).size, 'the writes the clone missed are in its map')
    assert.ok(cmp(src, d).same, 'the other clone was mirrored')
    for (const args of [['clone', 'sync', 'gone', 'c'], ['restore', 'gone', 'c', '--yes'], ['verify', 'gone', 'c']]) {
      r = await cli.run(args)
      assertError(r, 3, 'clone c of group gone is unavailable', 'does not exist', '`clonectl clone remove gone c`')
    }
    c = cloneStatus(await cli.status('gone'))
    assert.equal(c.state, 'fractured', 'a refused sync changed nothing')
    assert.equal((await cli.status('gone')).operation, undefined, 'no operation recorded')
    await fsp.rename(away, clone)
    const synced = await cli.json(['clone', 'sync', 'gone', 'c'])
    assert.equal(synced.completed, true)
    assert.ok(cmp(src, clone).same)
    assert.equal(cloneStatus(await cli.status('gone')).state, 'synchronized')
  })

  test('verify: a difference planted in the clone → exit 9; --repair fixes the map; a sync then makes verify clean', async () => {
    const {src, clone} = await groupWithClone('ver', 2 * MiB)
    await cli.ok(['clone', 'fracture', 'ver', 'c'])
    let v = await cli.json(['verify', 'ver', 'c'])
    assert.deepEqual(v.violations, [])
    assert.equal(v.markedDifferent, 0)
    await pwrite(clone, 5 * EXTENT + 7, randomBytes(100))
    await pwrite(clone, 20 * EXTENT, randomBytes(10))
    let r = await cli.run(['verify', 'ver', 'c'])
    assertError(r, 9, /2 extent/, /--repair/)
    // The fingerprint also marks the clone untrusted (changed outside clonectl).
    assert.match(r.stderr, /changed outside clonectl/)
    r = await cli.run(['verify', 'ver', 'c', '--json'])
    assert.equal(r.code, 9)
    assert.equal(r.json.error.code, 'VERIFY_MISMATCH')
    // The comparison comes with the error, as a passing verify prints it (README: --json).
    assert.deepEqual(r.json.result.violations, [5, 20])
    assert.equal(r.json.result.repaired, false)
    assertJsonError(r, 9, 'VERIFY_MISMATCH')
    assert.equal(cloneStatus(await cli.status('ver')).trusted, false)
    v = await cli.json(['verify', 'ver', 'c', '--repair'])
    assert.deepEqual(v.violations, [5, 20])
    assert.equal(v.repaired, true)
    let cs = cloneStatus(await cli.status('ver'))
    assert.equal(cs.dirtyExtents, 2)
    assert.equal(cs.trusted, true)
    v = await cli.json(['verify', 'ver', 'c'])
    assert.deepEqual(v.violations, [])
    assert.equal(v.markedDifferent, 2)
    const synced = await cli.json(['clone', 'sync', 'ver', 'c'])
    assert.equal(synced.compared, false)
    assert.equal(synced.copiedBytes, 2 * EXTENT, 'only the two repaired extents are copied')
    assert.ok(cmp(src, clone).same)
    v = await cli.json(['verify', 'ver', 'c'])
    assert.deepEqual(v.violations, [])
    assert.equal(v.markedDifferent, 0)
    assert.equal(v.markedEqual, 0)
    cs = cloneStatus(await cli.status('ver'))
    assert.equal(cs.state, 'synchronized')
  })
})

describe('protected restore', () => {
  test('damage the source, restore --yes: source equals the clone, the clone is bit-identical to before, only the damaged extents copied', async () => {
    const {src, clone} = await groupWithClone('rest', 4 * MiB)
    await cli.ok(['clone', 'fracture', 'rest', 'c'])
    const cloneSha = await sha256(clone)
    const damage = [
      {offset: 0, data: randomBytes(4096)},
      {offset: 17 * EXTENT + 3, data: randomBytes(EXTENT)},
      {offset: 4 * MiB - 1, data: randomBytes(1)},
    ]
    await hostWrite('rest', damage)
    assert.equal(cmp(src, clone).same, false)
    const out = await cli.json(['restore', 'rest', 'c', '--yes'])
    assert.equal(out.protected, true)
    assert.equal(out.clone, 'c')
    assert.equal(out.copiedBytes, touched(damage).size * EXTENT)
    assert.ok(cmp(src, clone).same, 'source == clone after the restore')
    assert.equal(await sha256(clone), cloneSha, 'the clone is unchanged')
    const s = await cli.status('rest')
    assert.equal(s.operation, undefined)
    assert.equal(cloneStatus(s).state, 'fractured')
    assert.equal(cloneStatus(s).dirtyExtents, 0)
    // The source damaged behind clonectl's back: the restore compares every extent.
    await pwrite(src, MiB, randomBytes(5000))
    const r = await cli.ok(['restore', 'rest', 'c', '--yes'])
    assert.match(r.stderr, /changed outside clonectl/)
    assert.ok(cmp(src, clone).same)
    assert.equal(await sha256(clone), cloneSha)
  })
})

/**
 * Flip bit `e` (an extent of page 0, within its first sector) in the current slot of page 0 of
 * a version-2 map file, leaving the header and the sector's CRC32C as they were: a hand edit.
 */
async function flipMapBit(mapPath: string, e: number): Promise<void> {
  const raw = await fsp.readFile(mapPath)
  const slot = raw.readBigUInt64LE(4096) >= raw.readBigUInt64LE(2 * 4096) ? 4096 : 2 * 4096
  const at = slot + 12 + (e >> 3)
  await pwrite(mapPath, at, Buffer.from([raw[at] ^ (1 << (e & 7))]))
}

describe('damaged map pages (every page is checked)', () => {
  test('given a D bit cleared by hand in its page (header intact) while source and clone differ there, then status shows the damage, and clone sync copies the page\'s extents so both end equal (never "copied 0 B")', async () => {
    const {src, clone} = await groupWithClone('dpage', 1 * MiB)
    await cli.ok(['clone', 'fracture', 'dpage', 'c'])
    await hostWrite('dpage', [{offset: 3 * EXTENT + 100, data: randomBytes(1000)}])
    assert.equal(cmp(src, clone).same, false)
    assert.equal(cloneStatus(await cli.status('dpage')).dirtyExtents, 1)
    const mapPath = join(cli.stateDir, 'groups', 'dpage', 'clone-c.map')
    await flipMapBit(mapPath, 3)
    // status: every extent of the damaged page (all 16 of this 1 MiB volume) counts as dirty.
    const s = cloneStatus(await cli.status('dpage'))
    assert.deepEqual(s.damagedMapPages, [0])
    assert.equal(s.dirtyExtents, 16)
    assert.ok(s.mapDamage?.includes(mapPath), s.mapDamage)
    const table = await cli.ok(['status', 'dpage'])
    assert.match(table.stdout, /map damaged: 1 page\(s\) taken as dirty/)
    assert.ok(table.stdout.includes(mapPath))
    // clone sync: warns naming the file and the page, copies the page, source == clone.
    const r = await cli.ok(['clone', 'sync', 'dpage', 'c'])
    assert.ok(r.stderr.includes(mapPath), r.stderr)
    assert.match(r.stderr, /page 0 \(extents 0-15\) failed its checksum/)
    assert.doesNotMatch(r.stdout + r.stderr, /copied 0 B/)
    assert.ok(cmp(src, clone).same, 'source == clone after the sync')
    const after = cloneStatus(await cli.status('dpage'))
    assert.equal(after.damagedMapPages, undefined, 'repaired on disk')
    assert.equal(after.dirtyExtents, 0)
  })

  test('given a damaged D page when serve starts, then serve warns, status through it shows the damage until clone sync has copied the page, and source == clone', async () => {
    const {src, clone} = await groupWithClone('spage', 1 * MiB)
    await cli.ok(['clone', 'fracture', 'spage', 'c'])
    await hostWrite('spage', [{offset: 9 * EXTENT, data: randomBytes(512)}])
    const mapPath = join(cli.stateDir, 'groups', 'spage', 'clone-c.map')
    await flipMapBit(mapPath, 9)
    const served = await startServe(cli.stateDir, 'spage')
    try {
      assert.ok(served.stderr().includes(mapPath), served.stderr())
      assert.match(served.stderr(), /page 0 \(extents 0-15\) failed its checksum/)
      const s = cloneStatus(await cli.status('spage'))
      assert.deepEqual(s.damagedMapPages, [0], 'the server repaired the file at open, and still reports what it found')
      assert.equal(s.dirtyExtents, 16)
      await cli.ok(['clone', 'sync', 'spage', 'c'])
      assert.ok(cmp(src, clone).same)
      const after = cloneStatus(await cli.status('spage'))
      assert.equal(after.damagedMapPages, undefined, 'copied: nothing left to report')
      assert.equal(after.dirtyExtents, 0)
    } finally {
      await served.stop()
    }
  })

  test('given an interrupted protected restore whose P page is damaged, then resuming refuses (exit 7) naming the file, the page and the fix, and the fix as typed resumes, copying that page\'s extents from the clone again', async () => {
    const {src, clone} = await groupWithClone('ppage', 1 * MiB)
    await cli.ok(['clone', 'fracture', 'ppage', 'c'])
    const cloneSha = await sha256(clone)
    await hostWrite('ppage', [{offset: 5 * EXTENT, data: randomBytes(EXTENT)}])
    // A protected restore that a host writes during, then stops (its process is gone).
    const ctx = {fs: nodeFs, store: new GroupStore(nodeFs, cli.stateDir)}
    await withGroup(ctx, 'ppage', {command: 'test restore'}, async (g) => {
      const io = new HostIO(g)
      io.restore = await io.gate.exclusive(() => RestoreSession.start(g, {clone: 'c', protected: true, command: 'test restore'}))
      await io.write(2 * EXTENT, Buffer.alloc(EXTENT, 0x5a), false)
      await io.flush() // P[2] is durable
      assert.ok(g.protectedMap?.get(2))
    })
    const pPath = join(cli.stateDir, 'groups', 'ppage', 'restore.pmap')
    await flipMapBit(pPath, 2)
    let r = await cli.run(['restore', 'ppage', '--yes'])
    assertError(r, 7, pPath, /page 0 \(extents 0 to 15\) cannot be trusted/, /clonectl restore ppage --force/)
    assert.equal(cloneStatus(await cli.status('ppage')).state, 'restoring', 'status still works')
    r = await cli.ok(['restore', 'ppage', '--force', '--yes'])
    assert.match(r.stderr, /page 0 \(extents 0-15\) failed its checksum; its extents are copied from the clone again/)
    assert.ok(cmp(src, clone).same, 'source == clone: the restore finished, the host write to the damaged page overwritten')
    assert.equal(await sha256(clone), cloneSha, 'the clone is unchanged')
    const s = await cli.status('ppage')
    assert.equal(s.operation, undefined)
    assert.equal(cloneStatus(s).state, 'fractured')
  })
})
