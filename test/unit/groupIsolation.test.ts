/**
 * One clone's damaged map file (missing, truncated, bad header, sizes that disagree with the
 * group) is that clone's problem only: the group opens, the other clones and the source keep
 * working, status reports it, the clone is marked with every extent to copy, a sync rebuilds
 * it and `clone remove` removes it. A damaged P stays a named stop of the restore.
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import {ClonectlError, CorruptStateError} from '../../src/errors/errors.js'
import {ForwardSync} from '../../src/engine/ForwardSync.js'
import {HostIO} from '../../src/engine/HostIO.js'
import {RestoreSession} from '../../src/engine/Restore.js'
import {CloneGroup, mapFileName, protectedMapFile} from '../../src/group/CloneGroup.js'
import {addClone, fractureClones, removeClone} from '../../src/group/GroupAdmin.js'
import {groupStatus} from '../../src/group/GroupStatus.js'
import {PersistentMap} from '../../src/map/PersistentMap.js'
import {buildGroup, clonePath, fillPattern, type MemGroup, openGroup, setBits} from '../helpers/memGroup.js'

const X = 4096
const N = 8
const ALL = Array.from({length: N}, (_, e) => e)

type Damage = 'missing' | 'truncated' | 'bad header' | 'other volume size'

async function damage(m: MemGroup, clone: string, how: Damage): Promise<void> {
  const path = m.ctx.store.mapPath('g', mapFileName(clone))
  if (how === 'missing') return m.fs.unlink(path)
  const bytes = m.fs.contentOf(path)
  if (how === 'truncated') return m.fs.seedFile(path, bytes.subarray(0, 100))
  if (how === 'bad header') {
    const b = Buffer.from(bytes)
    b[40] ^= 0xff
    return m.fs.seedFile(path, b)
  }
  // A well-formed map of another volume size than the group's fingerprint says.
  await PersistentMap.create(m.fs, path, {kind: 'delta', extentSize: X, volumeSize: 2 * N * X, extentCount: 2 * N, operationId: ''}).then((p) => p.close())
}

async function durableBits(m: MemGroup, clone: string): Promise<number[]> {
  const map = await PersistentMap.open(m.fs, m.ctx.store.mapPath('g', mapFileName(clone)), {kind: 'delta', extentSize: X, volumeSize: N * X})
  try {
    return setBits(map.bits)
  } finally {
    await map.close()
  }
}

describe('a clone whose map file is damaged', () => {
  for (const how of ['missing', 'truncated', 'bad header', 'other volume size'] as Damage[]) {
    test(`given a mirrored clone whose map is ${how}, when the group opens, then only that clone is out-of-sync with every extent to copy, and the source and the other clone keep working`, async () => {
      const m = await buildGroup({extents: N, source: fillPattern(N, X, (e) => e + 1), clones: ['a', 'b'], mirrored: ['a', 'b']})
      await damage(m, 'a', how)
      const warnings: string[] = []
      m.ctx.warn = (w) => warnings.push(w)

      const st = await groupStatus(m.ctx, 'g')
      const a0 = st.clones.find((c) => c.name === 'a')
      assert.equal(a0?.state, 'out-of-sync')
      assert.match(a0?.stateReason ?? '', /^map damaged: map file .*clone-a\.map.*run `clonectl clone sync g a`/)
      assert.equal(a0?.dirtyExtents, N)
      assert.equal(st.clones.find((c) => c.name === 'b')?.state, 'synchronized')

      const g = await openGroup(m)
      const a = g.member('a')
      assert.equal(a.state, 'out-of-sync')
      assert.match(a.record.stateReason ?? '', /^map damaged: /)
      assert.deepEqual(setBits(a.map.bits), ALL)
      assert.equal(g.member('b').state, 'synchronized')
      assert.ok(warnings.some((w) => /clone a of group g: map damaged/.test(w)), warnings.join('\n'))
      // Rebuilt on disk, all set, before any host write.
      assert.deepEqual(await durableBits(m, 'a'), ALL)
      // The host goes on; b is still mirrored.
      const host = new HostIO(g)
      await host.write(2 * X, Buffer.alloc(X, 0x77), false)
      await host.flush()
      assert.equal((await g.member('b').vol.read(2 * X, 1))[0], 0x77)
      // A sync rebuilds the clone.
      const s = await ForwardSync.start(g, {clone: 'a', command: 'test'})
      assert.ok(s instanceof ForwardSync)
      assert.equal((await s.run()).completed, true)
      assert.equal(a.state, 'synchronized')
      assert.equal(a.record.stateReason, undefined)
      assert.ok((await g.src.read(0, N * X)).equals(await a.vol.read(0, N * X)))
      await g.close()
      assert.deepEqual(await durableBits(m, 'a'), [])
      const after = await groupStatus(m.ctx, 'g')
      assert.equal(after.clones.find((c) => c.name === 'a')?.state, 'synchronized')
    })
  }

  test('given a fractured clone whose map is missing, when the group opens, then it stays a fractured point-in-time copy with every extent marked, and `clone remove` removes it', async () => {
    const m = await buildGroup({extents: N, source: fillPattern(N, X, (e) => e + 1), clones: ['a', 'b']})
    await damage(m, 'a', 'missing')
    const g = await CloneGroup.open(m.ctx, 'g', {writable: true, volumes: false})
    assert.equal(g.member('a').state, 'fractured')
    assert.deepEqual(setBits(g.member('a').map.bits), ALL)
    await removeClone(g, 'a')
    await g.close()
    assert.equal(await m.fs.exists(m.ctx.store.mapPath('g', mapFileName('a'))), false)
    const st = await groupStatus(m.ctx, 'g')
    assert.deepEqual(st.clones.map((c) => c.name), ['b'])
  })

  test('given a damaged map, when the group is opened read-only, then nothing on disk is rewritten and the clone reads as all to copy', async () => {
    const m = await buildGroup({extents: N, source: fillPattern(N, X, (e) => e + 1), clones: ['a'], mirrored: ['a']})
    await damage(m, 'a', 'truncated')
    const g = await CloneGroup.open(m.ctx, 'g', {writable: false, volumes: false})
    assert.deepEqual(setBits(g.member('a').map.bits), ALL)
    await g.close()
    assert.equal(m.fs.contentOf(m.ctx.store.mapPath('g', mapFileName('a'))).length, 100, 'a read-only open leaves the file as it was')
  })

  test('given a protected restore from a clone whose D is damaged, when it resumes, then it copies every extent from the clone except those the hosts wrote (P guards them)', async () => {
    const m = await buildGroup({extents: N, source: fillPattern(N, X, (e) => e + 1), clones: ['c']})
    const w = await openGroup(m)
    const writer = new HostIO(w)
    for (let e = 0; e < N; e++) await writer.write(e * X, Buffer.alloc(X, 0xee), false)
    await writer.flush()
    await w.close()
    const g1 = await openGroup(m, ['c'])
    const host1 = new HostIO(g1)
    const s1 = await host1.gate.exclusive(() => RestoreSession.start(g1, {clone: 'c', protected: true, command: 'test'}))
    host1.restore = s1
    // A host writes extent 5 during the restore, then we stop before copying anything.
    await host1.write(5 * X, Buffer.alloc(X, 0x55), false)
    await host1.flush()
    await g1.checkpoint()
    await s1.suspend()
    await g1.close()
    await damage(m, 'c', 'bad header')

    const g = await openGroup(m, ['c'])
    assert.equal(g.member('c').state, 'restoring')
    assert.match(g.member('c').record.stateReason ?? '', /^map damaged: /)
    const host = new HostIO(g)
    const s = await host.gate.exclusive(() => RestoreSession.resume(g, {}))
    host.restore = s
    assert.equal(await s.run(), true)
    await host.gate.exclusive(() => s.finish())
    const src = await g.src.read(0, N * X)
    const want = fillPattern(N, X, (e) => (e === 5 ? 0x55 : e + 1))
    assert.ok(src.equals(want), 'the clone everywhere, the host write kept')
    await g.close()
  })

  test('given a protected restore whose P is damaged, when it resumes, then it stops with a CorruptStateError (P has no safe value)', async () => {
    const m = await buildGroup({extents: N, source: fillPattern(N, X, (e) => e + 1), clones: ['c']})
    const g1 = await openGroup(m, ['c'])
    const s1 = await RestoreSession.start(g1, {clone: 'c', protected: true, command: 'test'})
    await s1.suspend()
    await g1.close()
    const p = m.ctx.store.mapPath('g', protectedMapFile)
    m.fs.seedFile(p, m.fs.contentOf(p).subarray(0, 100))
    const g = await openGroup(m, ['c'])
    await assert.rejects(RestoreSession.resume(g, {}), CorruptStateError)
    await g.close()
  })
})


describe('a clone whose volume vanishes while the group is open', () => {
  test('given a served group whose clone image is deleted, when another clone syncs and the group closes, then the sync completes, the deleted clone alone is fractured and unavailable, and nothing stays recorded as running', async () => {
    const m = await buildGroup({extents: N, source: fillPattern(N, X, (e) => e + 1), clones: ['c1', 'c2'], mirrored: ['c1']})
    const g = await openGroup(m)
    await g.beginSession('clonectl serve g')
    const host = new HostIO(g)
    await host.write(1 * X, Buffer.alloc(X, 0x11), false)
    await host.flush()
    await m.fs.unlink(clonePath('c1'))

    const s = await ForwardSync.start(g, {clone: 'c2', command: 'test'})
    assert.ok(s instanceof ForwardSync)
    const sum = await s.run()
    assert.equal(sum.completed, true)
    assert.equal(g.member('c2').state, 'synchronized')
    assert.equal(g.record.operation, undefined)
    const c1 = g.member('c1')
    assert.equal(c1.state, 'fractured')
    assert.match(c1.record.stateReason ?? '', /its volume became unavailable/)
    assert.throws(
      () => c1.requireAvailable(),
      (e: unknown) => e instanceof ClonectlError && /^clone c1 of group g is unavailable: .*c1\.img/.test(e.message) && /`clonectl clone remove g c1`/.test(e.fix ?? ''),
    )
    // The host goes on; its writes are recorded for c1.
    await host.write(3 * X, Buffer.alloc(X, 0x33), false)
    await host.flush()
    assert.ok(c1.map.bits.get(3))
    await g.close()

    const st = await groupStatus(m.ctx, 'g')
    assert.equal(st.operation, undefined)
    assert.equal(st.clones.find((c) => c.name === 'c2')?.state, 'synchronized')
    const saved = await m.ctx.store.load('g')
    assert.equal(saved.session, undefined, 'close cleared the session marker')
  })
})

/** group.json's temp file fails to open with EMFILE (the save), until cleared. */
function emfile(fs: MemGroup['fs']): () => void {
  fs.onOp = (op) => {
    if (op.kind === 'create' && /group\.json/.test(op.path)) throw Object.assign(new Error(`EMFILE: too many open files, open '${op.path}'`), {code: 'EMFILE'})
  }
  return () => {
    fs.onOp = undefined
  }
}

describe('a request that fails with EMFILE has no effect', () => {
  test('given fracture, sync, add and remove whose save fails with EMFILE, then each fails, memory stays as group.json says, and the mirrored clone is still mirrored', async () => {
    const m = await buildGroup({extents: N, source: fillPattern(N, X, (e) => e + 1), clones: ['a', 'b'], mirrored: ['a']})
    const g = await openGroup(m)
    const host = new HostIO(g)
    const clear = emfile(m.fs)

    await assert.rejects(host.gate.exclusive(() => fractureClones(g, ['a'])), /EMFILE/)
    assert.equal(g.member('a').state, 'synchronized', 'fracture undone')
    assert.equal(g.member('a').record.lastFractureAt, undefined)

    await assert.rejects(ForwardSync.start(g, {clone: 'b', command: 'test', gate: host.gate}), /EMFILE/)
    assert.equal(g.member('b').state, 'fractured', 'sync not started')
    assert.equal(g.record.operation, undefined)

    m.fs.seedFile(clonePath('c'), Buffer.alloc(N * X))
    await assert.rejects(addClone(g, {clone: 'c', path: clonePath('c'), create: false}), /EMFILE/)
    assert.equal(await m.fs.exists(m.ctx.store.mapPath('g', mapFileName('c'))), false, 'its map is gone again')
    await assert.rejects(removeClone(g, 'b'), /EMFILE/)
    assert.deepEqual([...g.members.keys()], ['a', 'b'])
    clear()

    // Still mirrored: a host write reaches a.
    await host.write(2 * X, Buffer.alloc(X, 0x42), false)
    await host.flush()
    assert.equal((await g.member('a').vol.read(2 * X, 1))[0], 0x42)
    await g.close()
    const st = await groupStatus(m.ctx, 'g')
    assert.deepEqual(st.clones.map((c) => [c.name, c.state]), [['a', 'synchronized'], ['b', 'fractured']])
    assert.equal(st.operation, undefined)
  })
})
