/**
 * One owner of a group's maps (issue 17 items 1 and 3): GroupMaps creates, opens (writable or
 * read-only) and deletes D[k] and P; a checkpoint commits P, awaited, before any delta map
 * (recipe 3 / INV-1 for the restore clone); and the engines reach the group only through
 * their port (no file in src/engine imports src/group).
 */
import assert from 'node:assert/strict'
import {readdirSync, readFileSync} from 'node:fs'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {describe, test} from 'node:test'
import {CorruptStateError} from '../../src/errors/errors.js'
import {Checkpointer} from '../../src/engine/Checkpointer.js'
import {GroupMaps, mapFileName, protectedMapFile} from '../../src/engine/GroupMaps.js'
import {ExtentBitmap} from '../../src/map/ExtentBitmap.js'
import {type FsOp, MemoryFs} from '../support/MemoryFs.js'

const root = join(fileURLToPath(import.meta.url), '..', '..', '..', '..')
const X = 4096
const EXTENTS = 8

function setup(): {fs: MemoryFs; maps: GroupMaps} {
  const fs = new MemoryFs()
  fs.seedDir('/state/groups/g')
  const maps = new GroupMaps(fs, {mapPath: (group, file) => `/state/groups/${group}/${file}`}, 'g', {extentSize: X, volumeSize: EXTENTS * X})
  return {fs, maps}
}

describe('GroupMaps', () => {
  test('creates, opens writable and read-only, and deletes a delta map and P, by their own names', async () => {
    const {fs, maps} = setup()
    const all = new ExtentBitmap(EXTENTS)
    all.setAll()
    const d = await maps.createDelta(mapFileName('c1'), all)
    assert.equal(d.path, `/state/groups/g/${mapFileName('c1')}`)
    await d.close()
    const P = await maps.createP('op-1')
    assert.equal(P.path, `/state/groups/g/${protectedMapFile}`)
    assert.equal(P.header.kind, 'protected')
    await P.close()

    // Read-only opens write nothing, now or at close.
    const ops = fs.opCount
    const dr = await maps.openDeltaReadOnly(mapFileName('c1'))
    assert.equal(dr.bits.countSet(), EXTENTS)
    const pr = await maps.openPReadOnly('op-1')
    assert.equal(pr.bits.countSet(), 0)
    await dr.close()
    await pr.close()
    assert.equal(fs.opCount, ops, 'a read-only open wrote')

    // P belongs to one restore: another operation's P is refused, never taken as empty.
    await assert.rejects(maps.openP('op-2'), CorruptStateError)
    // A delta map is not a P and P is not a delta map.
    await assert.rejects(maps.openDelta(protectedMapFile), CorruptStateError)

    const dw = await maps.openDelta(mapFileName('c1'))
    await maps.deleteDelta(dw)
    assert.equal(await fs.exists(`/state/groups/g/${mapFileName('c1')}`), false)
    const pw = await maps.openP('op-1')
    await maps.deleteP(pw)
    assert.equal(await GroupMaps.hasP(fs, {mapPath: (group, file) => `/state/groups/${group}/${file}`}, 'g'), false)
  })

  test('removeLeftoverP deletes a P no restore owns, and does nothing when there is none', async () => {
    const {fs, maps} = setup()
    await (await maps.createP('op-1')).close()
    await maps.removeLeftoverP()
    assert.equal(await fs.exists(`/state/groups/g/${protectedMapFile}`), false)
    await maps.removeLeftoverP()
  })

  test('a damaged delta map stands in as every extent set, in memory, until rewritten', async () => {
    const {fs, maps} = setup()
    const ops = fs.opCount
    const s = await maps.deltaStandIn(mapFileName('c1'))
    assert.equal(s.bits.countSet(), EXTENTS)
    assert.equal(fs.opCount, ops, 'the stand-in touched the state directory')
    const d = await maps.rewriteDelta(mapFileName('c1'), s)
    await d.close()
    const back = await maps.openDeltaReadOnly(mapFileName('c1'))
    assert.equal(back.bits.countSet(), EXTENTS)
    await back.close()
  })
})

describe('a checkpoint commits P first, awaited, then the delta maps', () => {
  test('given a P bit staged and a delta clear pending, when a checkpoint commits them, then no delta write is issued before P is durable', async () => {
    const {fs, maps} = setup()
    const all = new ExtentBitmap(EXTENTS)
    all.setAll()
    const D = await maps.createDelta(mapFileName('c1'), all)
    const P = await maps.createP('op-1')
    // A host write to extent 3 (P set, then staged after its data), and the copy of extent 3 done (D clear).
    P.setVolatile(3, 4)
    P.stage(3, 4)
    D.clear(3, 4)
    const checkpointer = new Checkpointer(() => ({p: P, ds: [D]}))

    const order: string[] = []
    let holdP: (() => void) | undefined
    const pHeld = new Promise<void>((resolve) => {
      holdP = resolve
    })
    let sawP!: () => void
    const pStarted = new Promise<void>((resolve) => {
      sawP = resolve
    })
    fs.onOp = async (op: FsOp) => {
      const who = op.path === P.path ? 'P' : op.path === D.path ? 'D' : op.path
      order.push(`${who}:${op.kind}`)
      if (who === 'P' && op.kind === 'datasync') {
        sawP()
        // Held: a commit order that did not await P would issue D's write meanwhile.
        await pHeld
      }
    }
    const commit = checkpointer.checkpoint()
    await pStarted
    // Let every ready continuation run: D must not move while P's datasync is held.
    await new Promise<void>((resolve) => setImmediate(resolve))
    assert.ok(!order.some((o) => o.startsWith('D:')), `a delta map was written before P was durable: ${order.join(', ')}`)
    holdP?.()
    await commit
    fs.onOp = undefined
    const firstD = order.findIndex((o) => o.startsWith('D:'))
    const lastP = order.map((o) => o.startsWith('P:')).lastIndexOf(true)
    assert.ok(firstD > lastP && firstD >= 0, `order: ${order.join(', ')}`)
    await D.close()
    await P.close()
  })
})

describe('the engines reach the group only through their port', () => {
  test('no file in src/engine imports src/group', () => {
    const dir = join(root, 'src', 'engine')
    const files = readdirSync(dir).filter((f) => f.endsWith('.ts'))
    assert.ok(files.length > 5)
    for (const f of files) {
      const text = readFileSync(join(dir, f), 'utf8')
      assert.doesNotMatch(text, /from\s+['"]\.\.\/group\//, `src/engine/${f} imports src/group`)
    }
  })
})
